"""umT5 text encoder: key maps, every checkpoint route vs the upstream fixture, tokenizer, errors."""

import io
import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.checkpoints.files import CheckpointError, save_state_dict
from echomimic_core.checkpoints.quant import quantize_scaled_fp8
from echomimic_core.encoders import text
from echomimic_core.verify_reference import relative_error

SENTENCES = [
    "a woman is talking to the camera with a smile",
    "the man sings a song in a bright room",
    "close-up portrait, natural light, speaking clearly",
    "Ein Mann spricht in die Kamera.",
]


@pytest.fixture(scope="module")
def fixture(reference_dir):
    data = load_file(str(reference_dir / "umt5_tiny.safetensors"))
    wan = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    return wan, data["input.ids"], data["input.mask"], data["output"]


@pytest.fixture(scope="module")
def spiece_proto():
    """A tiny sentencepiece model with umT5's special ids (pad 0, eos 1, unk 2), trained here."""
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10),
        model_writer=buf,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return buf.getvalue()


def test_verify_fixture_all_routes(reference_dir):
    meta = json.loads((reference_dir / "encoders_tiny_meta.json").read_text())
    errors = text.verify_fixture(reference_dir / "umt5_tiny.safetensors", meta)
    assert {"wan->hf", "wan->hf->wan->hf", "comfy_file->load", "wan_file->load"} <= set(errors)
    assert max(errors.values()) < 1e-5, errors


def test_key_tables_round_trip(fixture):
    wan = fixture[0]
    hf = text.wan_to_hf(wan)
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in hf
    assert hf["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] is wan["blocks.0.ffn.gate.0.weight"]
    assert hf["encoder.block.0.layer.1.DenseReluDense.wi_1.weight"] is wan["blocks.0.ffn.fc1.weight"]
    back = text.hf_to_wan(hf)
    assert back.keys() == wan.keys() and all(back[k] is wan[k] for k in wan)
    # the tied copy HF files may carry is dropped, not reported as unknown
    assert text.hf_to_wan({**hf, "encoder.embed_tokens.weight": hf["shared.weight"]}).keys() == wan.keys()


def test_full_size_manifest_builds_umt5_xxl(reference_dir):
    """Every name in Wan's umT5-XXL file maps, and the implied model loads it strictly (meta device)."""
    shapes = json.loads((reference_dir / "umt5_xxl_wan_keys.json").read_text())["tensors"]
    wan = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    hf = text.wan_to_hf(wan)
    cfg = text.config_from_hf_state(hf)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (
        256384,
        4096,
        10240,
        64,
        64,
        24,
    )
    model = text.build_model(hf, torch.bfloat16, "meta")
    stored = {k: v.dtype for k, v in model.state_dict().items()}
    assert stored["encoder.block.5.layer.1.DenseReluDense.wi_0.weight"] == torch.bfloat16
    assert stored["shared.weight"] == torch.bfloat16
    assert stored["encoder.block.5.layer.0.layer_norm.weight"] == torch.float32
    assert model.encoder.block[23].layer[0].SelfAttention.relative_attention_bias.weight.shape == (32, 64)


def test_tied_embedding_is_one_tensor(fixture):
    model = text.build_model(text.wan_to_hf(fixture[0]), torch.float32, "cpu")
    assert model.shared.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()


def test_softmax_runs_in_float32_like_wan(fixture):
    """In bf16 the Wan kernel equals Wan's formula (fp32 softmax), which HF's eager path does not."""
    wan, ids, mask, _ = fixture
    hf = text.wan_to_hf(wan)
    model = text.build_model(hf, torch.bfloat16, "cpu", compute_dtype=torch.bfloat16)
    attn = model.encoder.block[0].layer[0].SelfAttention
    x = model.shared(ids)
    x = model.encoder.block[0].layer[0].layer_norm(x)
    b, n, c = x.shape[0], attn.n_heads, attn.key_value_proj_dim
    q, k, v = (lin(x).view(b, -1, n, c) for lin in (attn.q, attn.k, attn.v))
    bias = attn.compute_bias(ids.shape[1], ids.shape[1]).expand(b, -1, -1, -1)
    bias = bias.masked_fill(mask.view(b, 1, 1, -1) == 0, torch.finfo(x.dtype).min)
    scores = torch.einsum("binc,bjnc->bnij", q, k) + bias
    expected = torch.einsum("bnij,bjnc->binc", torch.softmax(scores.float(), -1).type_as(scores), v)
    got, _ = text.wan_t5_attention(
        attn,
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        mask.bool()[:, None, None, :],
        position_bias=attn.compute_bias(ids.shape[1], ids.shape[1]),
    )
    assert torch.equal(got, expected)


def test_bf16_storage_float32_compute_equals_upstream_float32_model(fixture):
    """Upstream copies the bf16 release into a float32 model: same numbers at half the storage."""
    wan, ids, mask, _ = fixture
    rounded = {k: v.to(torch.bfloat16) for k, v in text.wan_to_hf(wan).items()}
    upstream_like = text.build_model({k: v.float() for k, v in rounded.items()}, torch.float32, "cpu")
    light = text.build_model(rounded, torch.bfloat16, "cpu", compute_dtype=torch.float32)
    expected = upstream_like(input_ids=ids, attention_mask=mask).last_hidden_state
    got = light(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # weights went back to bf16 storage after the forward
    assert light.encoder.block[1].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    fast = text.build_model(rounded, torch.bfloat16, "cpu", compute_dtype=torch.bfloat16)
    out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.dtype == torch.bfloat16 and 0 < relative_error(out, expected) < 0.15


def test_comfy_file_with_embedded_tokenizer_encodes_prompts(fixture, spiece_proto, tmp_path):
    wan = fixture[0]
    path = tmp_path / "umt5_xxl_fp16.safetensors"
    text.save_comfy_file(text.wan_to_hf(wan), path, spiece_proto)
    enc = text.TextEncoder.load(path, dtype=torch.float32, text_len=24)
    prompts = ["a woman is talking", "the man sings a song in a bright room"]
    out = enc.encode(prompts)
    ids, mask = enc.tokenize(prompts)
    assert ids.shape == (2, 24) and ids[0, mask[0].sum() - 1] == 1  # ends with </s>, pad 0 after
    assert [o.shape for o in out] == [(int(m.sum()), 32) for m in mask]
    # the real tokens do not depend on the padding that follows (up to float summation order)
    n = int(mask[0].sum())
    alone = enc.forward_ids(ids[:1, :n], mask[:1, :n])[0]
    assert relative_error(out[0], alone) < 1e-5
    short = enc.encode(prompts, pad_to_text_len=False)
    assert [o.shape for o in short] == [o.shape for o in out]
    assert all(relative_error(a, b) < 1e-5 for a, b in zip(short, out))
    garbage = ids[:1].clone()
    garbage[:, n:] = 7
    assert relative_error(enc.forward_ids(garbage, mask[:1])[0, :n], out[0]) < 1e-5


def test_tokenizer_matches_sentencepiece(spiece_proto):
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_proto=spiece_proto)
    tok = text.tokenizer_from_spiece(spiece_proto)
    for s in ["a woman is talking", "  the   man  sings ", "Kamera!", ""]:
        assert tok(s)["input_ids"] == sp.encode(s) + [1]


def test_prompt_truncated_to_text_len_with_warning(fixture, spiece_proto, caplog):
    enc = text.TextEncoder(
        text.build_model(text.wan_to_hf(fixture[0]), torch.float32, "cpu"),
        text.tokenizer_from_spiece(spiece_proto),
        text_len=6,
    )
    with caplog.at_level(logging.WARNING):
        (out,) = enc.encode(SENTENCES[0])
    assert out.shape == (6, 32) and "truncated" in caplog.text


def test_scaled_fp8_file_is_dequantised(fixture, spiece_proto, tmp_path):
    wan, ids, mask, ref = fixture
    hf = text.wan_to_hf(wan)
    quant = quantize_scaled_fp8(hf)
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    text.save_comfy_file(quant, path, spiece_proto)
    enc = text.TextEncoder.load(path, dtype=torch.float32)
    expected = {
        k: (
            quant[k].float() * quant[k[: -len("weight")] + "scale_weight"]
            if quant[k].dtype == torch.float8_e4m3fn
            else quant[k]
        )
        for k in hf
    }
    key = "encoder.block.1.layer.0.SelfAttention.o.weight"
    assert torch.equal(enc.model.state_dict()[key], expected[key])
    assert not torch.equal(expected[key], hf[key])  # the file really was quantised
    by_hand = text.TextEncoder(text.build_model(expected, torch.float32, "cpu"))
    assert torch.equal(enc.forward_ids(ids, mask), by_hand.forward_ids(ids, mask))


def test_wan_pth_file_loads(fixture, tmp_path):
    wan, ids, mask, ref = fixture
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan, path)
    enc = text.TextEncoder.load(path, dtype=torch.float32)
    assert enc.tokenizer is None
    assert relative_error(enc.forward_ids(ids, mask), ref) < 1e-5
    with pytest.raises(RuntimeError, match="tokenizer_path"):
        enc.encode(["hello"])


def test_hf_folder_with_tokenizer(fixture, spiece_proto, tmp_path):
    wan, ids, mask, ref = fixture
    save_state_dict(text.wan_to_hf(wan), tmp_path / "text_encoder" / "model.safetensors")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(spiece_proto)
    enc = text.TextEncoder.load(tmp_path / "text_encoder", dtype=torch.float32)
    assert enc.tokenizer is not None and enc.tokenizer("hi")["input_ids"][-1] == 1
    assert relative_error(enc.forward_ids(ids, mask), ref) < 1e-5


def test_full_umt5_checkpoint_uses_encoder_only(fixture, tmp_path):
    wan, ids, mask, ref = fixture
    hf = text.wan_to_hf(wan)
    extra = {
        "decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(32, 32),
        "lm_head.weight": torch.zeros(97, 32),
    }
    save_state_dict({**hf, **extra}, tmp_path / "umt5_full.safetensors")
    enc = text.TextEncoder.load(tmp_path / "umt5_full.safetensors", dtype=torch.float32)
    assert relative_error(enc.forward_ids(ids, mask), ref) < 1e-5


def test_wrong_file_says_what_it_is(reference_dir, tmp_path):
    shapes = json.loads((reference_dir / "vae_keys.json").read_text())["tensors"]
    save_state_dict({k: torch.zeros(1) for k in shapes}, tmp_path / "wan_2.1_vae.safetensors")
    with pytest.raises(CheckpointError, match="VAE"):
        text.TextEncoder.load(tmp_path / "wan_2.1_vae.safetensors")


def _wan_t5_reference(wan, ids, mask, dtype):
    """Wan's umT5 encoder written out from its formulas (the test's independent reference)."""
    import torch.nn.functional as F

    w = {k: v.to(dtype) for k, v in wan.items()}
    heads = w["blocks.0.pos_embedding.embedding.weight"].shape[1]
    num_buckets = w["blocks.0.pos_embedding.embedding.weight"].shape[0]
    b, length = ids.shape
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    far = exact + (torch.log(rel.abs().float() / exact) / math.log(128 / exact) * (half - exact)).long()
    buckets = (rel > 0).long() * half + torch.where(rel.abs() < exact, rel.abs(), far.clamp(max=half - 1))

    def norm(x, weight):
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return weight * (y.type_as(weight) if weight.dtype in (torch.float16, torch.bfloat16) else y)

    x = F.embedding(ids, w["token_embedding.weight"])
    for i in range(1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))):
        p = f"blocks.{i}."
        h = norm(x, w[p + "norm1.weight"])
        q, k, v = (F.linear(h, w[p + f"attn.{n}.weight"]).view(b, length, heads, -1) for n in "qkv")
        bias = (
            x.new_zeros(b, heads, length, length)
            + F.embedding(buckets, w[p + "pos_embedding.embedding.weight"]).permute(2, 0, 1)[None]
        )
        bias = bias.masked_fill(mask.view(b, 1, 1, -1) == 0, torch.finfo(x.dtype).min)
        a = torch.einsum("binc,bjnc->bnij", q, k) + bias
        a = torch.softmax(a.float(), dim=-1).type_as(a)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", a, v).reshape(b, length, -1), w[p + "attn.o.weight"])
        h = norm(x, w[p + "norm2.weight"])
        g = F.linear(h, w[p + "ffn.gate.0.weight"])
        g = 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * torch.pow(g, 3.0))))
        x = x + F.linear(F.linear(h, w[p + "ffn.fc1.weight"]) * g, w[p + "ffn.fc2.weight"])
    return norm(x, w["norm.weight"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_wan_formulas_bit_for_bit(fixture, dtype):
    """float32 = preview scripts' T5, bfloat16 = flash script's T5 (low_cpu_mem_usage, bf16)."""
    wan, ids, mask, ref = fixture
    expected = _wan_t5_reference(wan, ids, mask, dtype)
    if dtype == torch.float32:
        assert relative_error(expected, ref) < 1e-5  # the reference transcription is right
    model = text.build_model(text.wan_to_hf(wan), dtype, "cpu", compute_dtype=dtype)
    got = text.TextEncoder(model).forward_ids(ids, mask)
    assert got.dtype == dtype and torch.equal(got, expected)


def test_t5_v1_1_file_is_refused_by_name(fixture, tmp_path):
    hf = text.wan_to_hf(fixture[0])
    del hf["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]  # T5 v1.1 layout
    save_state_dict(hf, tmp_path / "t5xxl_fp16.safetensors")
    with pytest.raises(CheckpointError, match="T5 v1.1"):
        text.TextEncoder.load(tmp_path / "t5xxl_fp16.safetensors")


def test_unknown_tensor_names_are_listed(fixture):
    with pytest.raises(CheckpointError, match="blocks.0.attn.extra.weight"):
        text.wan_to_hf({**fixture[0], "blocks.0.attn.extra.weight": torch.zeros(1)})


def test_plain_fp8_file_is_upcast(fixture, tmp_path):
    wan, ids, mask, _ = fixture
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in text.wan_to_hf(wan).items()}
    save_state_dict(fp8, tmp_path / "umt5_xxl_fp8_e4m3fn.safetensors")
    enc = text.TextEncoder.load(tmp_path / "umt5_xxl_fp8_e4m3fn.safetensors")
    assert enc.model.shared.weight.dtype == torch.bfloat16
    expected = text.build_model({k: v.float() for k, v in fp8.items()}, torch.float32, "cpu")
    expected_out = expected(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(enc.forward_ids(ids, mask), expected_out)


def test_failed_forward_does_not_leave_weights_upcast(fixture):
    wan, ids, mask, _ = fixture
    model = text.build_model(text.wan_to_hf(wan), torch.bfloat16, "cpu", compute_dtype=torch.float32)
    wo = model.encoder.block[0].layer[1].DenseReluDense.wo
    with pytest.raises(RuntimeError):
        model.encoder.block[0](torch.zeros(1, 3, 5))  # wrong width: fails inside the block
    model(input_ids=ids, attention_mask=mask)
    assert wo.weight.dtype == torch.bfloat16
