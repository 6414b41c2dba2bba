"""CLIP vision encoder: key maps, every checkpoint route vs the upstream fixture, preprocessing."""

import json

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.checkpoints.files import CheckpointError, save_state_dict
from echomimic_core.encoders import image
from echomimic_core.verify_reference import relative_error


@pytest.fixture(scope="module")
def meta(reference_dir):
    return json.loads((reference_dir / "encoders_tiny_meta.json").read_text())


@pytest.fixture(scope="module")
def fixture(reference_dir, meta):
    data = load_file(str(reference_dir / "clip_vision_tiny.safetensors"))
    wan = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    heads = meta["clip_vision_tiny_config"]["num_heads"]
    return wan, data["input.image"][:, :, 0], data["output"], heads


def test_verify_fixture_all_routes(reference_dir, meta):
    errors = image.verify_fixture(reference_dir / "clip_vision_tiny.safetensors", meta)
    assert {"wan->hf", "wan->hf->wan->hf", "comfy_file->load", "wan_file->load"} <= set(errors)
    assert max(errors.values()) < 1e-5, errors


def test_key_conversion_round_trip_is_exact(fixture):
    wan = fixture[0]
    hf = image.wan_to_hf({**wan, "textual.token_embedding.weight": torch.zeros(3, 2)})  # text tower ignored
    assert hf["vision_model.embeddings.class_embedding"].shape == (wan["visual.cls_embedding"].shape[-1],)
    q = hf["vision_model.encoder.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q, wan["visual.transformer.1.attn.to_qkv.weight"][: q.shape[0]])
    back = image.hf_to_wan({**hf, "vision_model.embeddings.position_ids": torch.arange(5)[None]})
    assert back.keys() == wan.keys()
    assert all(torch.equal(back[k], wan[k]) for k in wan)


def test_full_size_manifest_gives_vit_h_with_31_blocks(reference_dir):
    shapes = json.loads((reference_dir / "clip_vit_h_wan_keys.json").read_text())["tensors"]
    wan = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith("visual.")}
    hf = image.wan_to_hf(wan)
    cfg = image.config_from_hf_state(hf)
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.image_size,
        cfg.patch_size,
        cfg.intermediate_size,
    ) == (1280, 32, 16, 224, 14, 5120)
    model = image.build_model(hf, torch.float16, "meta")
    assert model.config.num_hidden_layers == 31  # Wan's use_31_block: the last block is never built
    assert {k: tuple(v.shape) for k, v in image.hf_to_wan(hf).items()} == {
        k: tuple(s) for k, s in shapes.items() if k.startswith("visual.")
    }


def test_output_is_hf_penultimate_hidden_state(fixture):
    """Our truncated tower == the full HF tower's hidden_states[-2] (ComfyUI's penultimate)."""
    from transformers import CLIPVisionModel

    wan, images, _, heads = fixture
    hf = image.wan_to_hf(wan)
    encoder = image.ImageEncoder(image.build_model(hf, torch.float32, "cpu", heads))
    full = CLIPVisionModel(image.config_from_hf_state(hf, heads)).eval()
    own = "vision_model." if hasattr(full, "vision_model") else ""
    full.load_state_dict({own + k[len("vision_model.") :]: v for k, v in hf.items() if k.startswith("vision_model.")})
    pixels = encoder.preprocess(images)
    with torch.no_grad():
        hidden = full(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == 1 + 3
    assert relative_error(encoder.forward_pixels(pixels), hidden[-2]) < 1e-6
    assert relative_error(encoder.forward_pixels(pixels), hidden[-1]) > 1e-2


def test_preprocess_squashes_whole_image_and_normalises(fixture):
    wan, _, _, heads = fixture
    encoder = image.ImageEncoder(image.build_model(image.wan_to_hf(wan), torch.float32, "cpu", heads))
    size = encoder.image_size
    flat = torch.full((1, 3, 50, 20), 0.2)
    expected = (0.6 - torch.tensor(image.CLIP_MEAN)) / torch.tensor(image.CLIP_STD)
    assert torch.allclose(encoder.preprocess(flat)[0, :, 3, 3], expected, atol=1e-6)
    # a tall image with a bright top stripe: squashing keeps it (a centre crop would cut it away)
    tall = torch.full((1, 3, 200, 20), -1.0)
    tall[:, :, :40] = 1.0
    pixels = encoder.preprocess(tall)
    assert pixels.shape == (1, 3, size, size)
    assert pixels[0, 0, 0].min() > 1.5 and pixels[0, 0, -1].max() < -1.5
    with pytest.raises(ValueError, match="B, 3, H, W"):
        encoder.preprocess(torch.zeros(3, 20, 20))


def test_batch_equals_single_images(fixture):
    wan, images, _, heads = fixture
    encoder = image.ImageEncoder(image.build_model(image.wan_to_hf(wan), torch.float32, "cpu", heads))
    other = torch.rand_like(images) * 2 - 1
    both = encoder.encode(torch.cat([images, other]))
    assert relative_error(both[1:], encoder.encode(other)) < 1e-6
    assert relative_error(both[:1], encoder.encode(images)) < 1e-6


def test_comfy_file_with_projection_and_position_ids_loads(fixture, tmp_path):
    wan, images, ref, heads = fixture
    hf = image.wan_to_hf(wan)
    hf["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
    save_state_dict(hf, tmp_path / "clip_vision_h.safetensors")
    encoder = image.ImageEncoder.load(tmp_path / "clip_vision_h.safetensors", torch.float32, num_heads=heads)
    assert relative_error(encoder.encode(images), ref) < 1e-5


def test_bf16_load_casts_every_weight(fixture, tmp_path):
    wan, images, ref, heads = fixture
    torch.save(wan, tmp_path / "models_clip.pth")
    encoder = image.ImageEncoder.load(tmp_path / "models_clip.pth", torch.bfloat16, num_heads=heads)
    assert all(p.dtype == torch.bfloat16 for p in encoder.model.parameters())
    out = encoder.encode(images)
    assert out.dtype == torch.bfloat16 and relative_error(out, ref) < 5e-2


def test_wrong_file_says_what_it_is(tmp_path):
    save_state_dict(
        {"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2), "shared.weight": torch.zeros(3, 2)},
        tmp_path / "umt5.safetensors",
    )
    with pytest.raises(CheckpointError, match="umT5"):
        image.ImageEncoder.load(tmp_path / "umt5.safetensors")


def test_unknown_width_asks_for_heads(fixture):
    with pytest.raises(CheckpointError, match="num_heads"):
        image.config_from_hf_state(image.wan_to_hf(fixture[0]))


def _wan_clip_reference(wan, images, heads, dtype):
    """Wan's CLIPModel.forward (use_31_block) written out from its formulas, on the CPU."""
    import torch.nn.functional as F

    w = {k: v.to(dtype) for k, v in wan.items()}
    patch = w["visual.patch_embedding.weight"].shape[-1]
    size = patch * int((w["visual.pos_embedding"].shape[1] - 1) ** 0.5)
    x = F.interpolate(images.to(dtype), size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean, std = (torch.tensor(t).view(1, 3, 1, 1).to(x) for t in (image.CLIP_MEAN, image.CLIP_STD))
    x = (x - mean) / std
    x = F.conv2d(x, w["visual.patch_embedding.weight"], stride=patch).flatten(2).permute(0, 2, 1)
    cls = w["visual.cls_embedding"].expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + w["visual.pos_embedding"]

    def norm(x, p):  # Wan's LayerNorm: float32 inside, cast back
        return F.layer_norm(x.float(), x.shape[-1:], w[p + ".weight"].float(), w[p + ".bias"].float(), 1e-5).type_as(x)

    x = norm(x, "visual.pre_norm")
    depth = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("visual.transformer."))
    for i in range(depth - 1):
        p = f"visual.transformer.{i}."
        h = norm(x, p + "norm1")
        b, s, c = h.shape
        qkv = F.linear(h, w[p + "attn.to_qkv.weight"], w[p + "attn.to_qkv.bias"])
        q, k, v = (t.transpose(1, 2) for t in qkv.view(b, s, 3, heads, c // heads).unbind(2))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, c)
        x = x + F.linear(o, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.gelu(F.linear(norm(x, p + "norm2"), w[p + "mlp.0.weight"], w[p + "mlp.0.bias"]))
        x = x + F.linear(h, w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_wan_formulas_bit_for_bit(fixture, dtype):
    wan, images, ref, heads = fixture
    expected = _wan_clip_reference(wan, images, heads, dtype)
    if dtype == torch.float32:
        assert relative_error(expected, ref) < 1e-6  # the reference transcription is right
    encoder = image.ImageEncoder(image.build_model(image.wan_to_hf(wan), dtype, "cpu", heads))
    got = encoder.encode(images)
    assert got.dtype == dtype and torch.equal(got, expected)
