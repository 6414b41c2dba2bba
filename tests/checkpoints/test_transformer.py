"""load_transformer / save_transformer on tiny models: every file layout loads the same model."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from echomimic_core.checkpoints import transformer as ckpt
from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.checkpoints.keymaps import original_to_diffusers
from echomimic_core.checkpoints.quant import quantize_scaled_fp8
from echomimic_core.checkpoints.transformer import inspect_checkpoint, load_transformer, save_transformer
from echomimic_core.config import TransformerConfig
from echomimic_core.model.conditioning import Conditioning
from echomimic_core.model.transformer import EchoMimicTransformer

# Head width 128 and text_len 512 as in the released models, so files without our metadata
# (pickles, diffusers folders) infer exactly this config from their shapes.
SMALL = dict(dim=256, num_heads=2, ffn_dim=96, freq_dim=32, text_dim=24, num_layers=2, clip_dim=16)
CONFIGS = {
    "preview": TransformerConfig(variant="preview", audio_in_dim=20, **SMALL),
    "flash": TransformerConfig(
        variant="flash",
        audio_blocks=1,
        audio_channels=768,
        audio_intermediate_dim=12,
        audio_context_tokens=2,
        **SMALL,
    ),
}


def _random_model(config):
    model = EchoMimicTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def _inputs(config, seed=1, audio_zero=False):
    g = torch.Generator().manual_seed(seed)
    frames, (f, h, w) = 9, (3, 4, 4)
    if config.variant == "preview":
        audio = torch.randn(1, 2 * frames, config.audio_in_dim, generator=g)
    else:
        audio = torch.randn(1, frames, config.audio_window, config.audio_blocks, config.audio_channels, generator=g)
    cond = Conditioning(
        context=[torch.randn(7, config.text_dim, generator=g)],
        clip_fea=torch.randn(1, config.clip_tokens, config.clip_dim, generator=g),
        y=torch.randn(1, 20, f, h, w, generator=g),
        audio=audio * (0 if audio_zero else 1),
    )
    return torch.randn(1, 16, f, h, w, generator=g), torch.tensor([700.0]), cond


def _run(model, config, **kw):
    with torch.no_grad():
        return model(*_inputs(config, **kw))


@pytest.fixture(scope="module", params=["preview", "flash"])
def reference(request):
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    model = _random_model(config)
    return request.param, config, model, _run(model, config)


def _assert_same_model(loaded, model, out, config):
    assert loaded.config == config
    ref = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    # weights are bit-identical; memory-mapped weights may sit at other alignments, which
    # lets CPU matmul kernels round differently in the last bit
    assert _rel_err(_run(loaded, config), out) < 1e-5


def _rel_err(got, ref):
    return float((got - ref).abs().max() / ref.abs().max())


def test_save_and_load_round_trip(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    meta = json.loads(ckpt.read_metadata(tmp_path / "m.safetensors")[ckpt.CONFIG_METADATA_KEY])
    assert meta["variant"] == variant
    loaded = load_transformer(tmp_path / "m.safetensors", dtype=torch.float32)
    assert not loaded.training and loaded.compute_dtype == torch.float32
    _assert_same_model(loaded, model, out, config)


def test_save_casts_to_a_dtype(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors", dtype=torch.bfloat16, metadata={"step": "10"})
    assert ckpt.read_metadata(tmp_path / "m.safetensors")["step"] == "10"
    assert {d for _, d in ckpt.read_shapes(tmp_path / "m.safetensors").values()} == {torch.bfloat16}
    loaded = load_transformer(tmp_path / "m.safetensors", dtype=torch.bfloat16)
    assert torch.equal(loaded.state_dict()["head.head.weight"], model.state_dict()["head.head.weight"].bfloat16())


def test_pth_with_comfy_prefix_and_wrapper(tmp_path, reference):
    variant, config, model, out = reference
    sd = {"model.diffusion_model." + k: v for k, v in model.state_dict().items()}
    sd["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2)  # full checkpoints carry the VAE too
    torch.save({"state_dict": sd, "global_step": 10}, tmp_path / "m.pth")
    info = inspect_checkpoint(tmp_path / "m.pth")
    assert (info.variant, info.prefix, info.layout) == (variant, "model.diffusion_model.", "original")
    _assert_same_model(load_transformer(tmp_path / "m.pth", dtype=torch.float32), model, out, config)


def test_sharded_diffusers_folder(tmp_path, reference):
    variant, config, model, out = reference
    sd = {original_to_diffusers(k): v.clone() for k, v in model.state_dict().items()}
    names = sorted(sd)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for file, keys in shards.items():
        save_file({k: sd[k] for k in keys}, tmp_path / file)
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f for f, keys in shards.items() for k in keys}})
    )
    (tmp_path / "config.json").write_text("{}")
    assert inspect_checkpoint(tmp_path).layout == "diffusers"
    _assert_same_model(load_transformer(tmp_path, dtype=torch.float32), model, out, config)


def test_bf16_compute_and_storage(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    loaded = load_transformer(tmp_path / "m.safetensors", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    got = _run(loaded, config)
    assert _rel_err(got, out) < 0.05


def test_fp8_storage_runs_close_to_fp32(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    loaded = load_transformer(tmp_path / "m.safetensors", dtype=torch.float32, storage_dtype=torch.float8_e4m3fn)
    dtypes = {k: v.dtype for k, v in loaded.state_dict().items()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.float8_e4m3fn
    assert dtypes["blocks.0.ffn.0.weight"] == torch.float8_e4m3fn
    assert (
        dtypes["blocks.0.modulation"] == dtypes["head.head.weight"] == dtypes["patch_embedding.weight"] == torch.float32
    )
    got = _run(loaded, config)
    assert torch.isfinite(got).all()
    assert 0 < _rel_err(got, out) < 0.1
    # an fp8-stored model saves as fp8 and loads back bit-identically
    save_transformer(loaded, tmp_path / "fp8.safetensors")
    again = load_transformer(tmp_path / "fp8.safetensors", dtype=torch.float32, storage_dtype=torch.float8_e4m3fn)
    assert torch.equal(_run(again, config), got)


def test_comfy_scaled_fp8_file(tmp_path, reference):
    variant, config, model, out = reference
    sd = model.state_dict()
    big = [k for k in sd if k.startswith("blocks.") and k.endswith(".weight") and sd[k].ndim == 2]
    save_file(quantize_scaled_fp8(sd, keys=big), tmp_path / "m_fp8_scaled.safetensors")
    info = inspect_checkpoint(tmp_path / "m_fp8_scaled.safetensors")
    assert info.scaled_fp8 and info.variant == variant and info.dtypes["float8_e4m3fn"] == len(big) + 1  # + the marker
    loaded = load_transformer(tmp_path / "m_fp8_scaled.safetensors", dtype=torch.float32)
    w = sd["blocks.1.ffn.2.weight"]
    assert (loaded.state_dict()["blocks.1.ffn.2.weight"] - w).abs().max() / w.abs().max() < 0.07
    got = _run(loaded, config)
    assert _rel_err(got, out) < 0.1
    # fp8 storage keeps the file's own fp8 matrices and scales: the de-quantised model's numbers
    kept = load_transformer(
        tmp_path / "m_fp8_scaled.safetensors", dtype=torch.float32, storage_dtype=torch.float8_e4m3fn
    )
    layer = kept.blocks[1].ffn[2]
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.scale_weight.dtype == torch.float32
    assert torch.equal(layer.weight.float() * layer.scale_weight, loaded.blocks[1].ffn[2].weight)
    assert _rel_err(_run(kept, config), got) < 1e-6  # (last-bit matmul rounding only, see above)
    # and saves as a scaled-fp8 file again
    save_transformer(kept, tmp_path / "resaved.safetensors")
    resaved = load_transformer(tmp_path / "resaved.safetensors", dtype=torch.float32)
    assert torch.equal(resaved.blocks[1].ffn[2].weight, loaded.blocks[1].ffn[2].weight)


def test_lora_on_a_scaled_fp8_model_adds_to_the_real_weights(tmp_path, reference):
    from echomimic_core.checkpoints.lora import apply_lora

    variant, config, model, out = reference
    sd = model.state_dict()
    big = [k for k in sd if k.startswith("blocks.") and k.endswith(".weight") and sd[k].ndim == 2]
    save_file(quantize_scaled_fp8(sd, keys=big), tmp_path / "m_fp8_scaled.safetensors")
    kept = load_transformer(
        tmp_path / "m_fp8_scaled.safetensors", dtype=torch.float32, storage_dtype=torch.float8_e4m3fn
    )
    layer = kept.blocks[0].self_attn.q
    before = layer.weight.float() * layer.scale_weight
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, layer.in_features, generator=g), torch.randn(layer.out_features, 2, generator=g)
    lora = {"blocks.0.self_attn.q.lora_A.weight": a, "blocks.0.self_attn.q.lora_B.weight": b * 0.2}
    assert apply_lora(kept, lora) == 1
    expected = before + (b * 0.2) @ a  # alpha defaults to the rank: factor 1
    after = layer.weight.float() * layer.scale_weight
    # the delta outgrows the file's range: the scale grows instead of the weights saturating
    assert expected.abs().max() > before.abs().max() * 2
    assert (after - expected).abs().max() / expected.abs().max() < 0.07


def test_base_wan_file_gets_silent_audio_layers(tmp_path, reference, caplog):
    variant, config, model, out = reference
    base = {k: v for k, v in model.state_dict().items() if "audio" not in k}
    save_file(base, tmp_path / "wan_fun_inp.safetensors")
    info = inspect_checkpoint(tmp_path / "wan_fun_inp.safetensors", variant=variant)
    assert info.variant == "base" and any("k_audio" in line for line in info.missing_audio)
    with caplog.at_level(logging.WARNING):
        loaded = load_transformer(tmp_path / "wan_fun_inp.safetensors", dtype=torch.float32, variant=variant)
    assert "without audio layers" in caplog.text and "blocks.*.cross_attn.k_audio" in caplog.text
    sd = loaded.state_dict()
    assert not sd["blocks.0.cross_attn.v_audio.weight"].any()
    assert torch.equal(sd["blocks.0.cross_attn.norm_k_audio.weight"], torch.ones(config.dim))
    assert all(torch.equal(sd[k], v) for k, v in base.items())
    # the audio widths are the released ones (nothing in the file says otherwise), and with
    # zero audio layers the audio input changes nothing
    assert loaded.config.audio_in_dim == 768 and loaded.config.audio_channels == 768
    assert torch.equal(_run(loaded, loaded.config), _run(loaded, loaded.config, audio_zero=True))


def test_base_defaults_to_preview():
    # (no file needed) the audio path given to a base file when no variant is asked for
    sd = {k: v.shape for k, v in _random_model(CONFIGS["flash"]).state_dict().items() if "audio" not in k}
    assert ckpt.infer_config(sd).variant == "preview"


def test_asking_for_the_other_variant_fails(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    other = "flash" if variant == "preview" else "preview"
    with pytest.raises(CheckpointError, match=f"expected a {other} checkpoint, found a {variant} one"):
        load_transformer(tmp_path / "m.safetensors", variant=other)


def test_loading_assigns_the_file_tensors_without_copies(tmp_path, reference, monkeypatch):
    """Peak memory is one copy: the model is built on meta, then takes the file's tensors."""
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    read, built = {}, []
    real_load, real_build = ckpt.load_state_dict, ckpt._build_on_meta

    def spy_load(path, *args, **kwargs):
        state = real_load(path, *args, **kwargs)
        read.update(state)
        return state

    def spy_build(cfg, backend):
        built_model = real_build(cfg, backend)
        built.append({p.device.type for p in built_model.parameters()})
        return built_model

    monkeypatch.setattr(ckpt, "load_state_dict", spy_load)
    monkeypatch.setattr(ckpt, "_build_on_meta", spy_build)
    loaded = load_transformer(tmp_path / "m.safetensors", dtype=torch.float32)
    assert built == [{"meta"}]
    for name, param in loaded.state_dict().items():
        assert param.data_ptr() == read[name].data_ptr(), name


def test_state_dict_missing_a_block_is_one_grouped_error(tmp_path, reference):
    variant, config, model, out = reference
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    save_file(sd, tmp_path / "cut.safetensors", metadata={ckpt.CONFIG_METADATA_KEY: json.dumps(config.to_dict())})
    with pytest.raises(CheckpointError, match=r"missing \d+ keys: \d+ keys of block 1 entirely.*download"):
        load_transformer(tmp_path / "cut.safetensors")


def test_wrong_files_on_disk(tmp_path, reference_dir):
    vae = json.loads((reference_dir / "vae_keys.json").read_text())["tensors"]
    save_file({k: torch.zeros(1) for k in vae}, tmp_path / "wan_2.1_vae.safetensors")
    with pytest.raises(CheckpointError, match="found the Wan2.1 VAE"):
        load_transformer(tmp_path / "wan_2.1_vae.safetensors")
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
            "model.diffusion_model.out.2.weight": torch.zeros(1),
        },
        tmp_path / "sdxl.safetensors",
    )
    with pytest.raises(CheckpointError, match="Stable Diffusion"):
        inspect_checkpoint(tmp_path / "sdxl.safetensors")


def test_truncated_download(tmp_path, reference):
    variant, config, model, out = reference
    save_transformer(model, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_transformer(tmp_path / "m.safetensors")


def test_tiny_parity_fixture_through_the_loader(tmp_path, reference_dir):
    """The upstream fixture's weights, saved as a user file, load and reproduce upstream's output."""
    meta = json.loads((reference_dir / "tiny_meta.json").read_text())
    data = load_file(str(reference_dir / "flash_tiny.safetensors"))
    save_file(
        {"diffusion_model." + k[7:]: v for k, v in data.items() if k.startswith("weight.")},
        tmp_path / "flash.safetensors",
    )
    config = TransformerConfig.from_reference_meta(meta, "flash")
    model = load_transformer(tmp_path / "flash.safetensors", dtype=torch.float32, config=config)
    cond = Conditioning(
        context=[data["input.text_0"], data["input.text_1"]],
        clip_fea=data["input.clip_fea"],
        y=data["input.y"],
        audio=data["input.audio"],
    )
    with torch.no_grad():
        got = model(data["input.x"], data["input.t"], cond)
    assert _rel_err(got, data["output"]) < 1e-5


def test_folder_config_json_gives_heads_and_text_len(tmp_path):
    """Upstream's transformer/ folder: diffusion_pytorch_model.safetensors + Wan-style config.json."""
    config = TransformerConfig(
        variant="preview",
        audio_in_dim=8,
        dim=64,
        num_heads=4,
        ffn_dim=32,
        freq_dim=16,
        text_dim=8,
        num_layers=1,
        clip_dim=8,
        text_len=16,
    )
    model = _random_model(config)
    save_file(model.state_dict(), tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"num_heads": 4, "text_len": 16, "dim": 64}))
    for path in (tmp_path, tmp_path / "diffusion_pytorch_model.safetensors"):
        assert inspect_checkpoint(path).config == config
