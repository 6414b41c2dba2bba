"""Variant detection, config inference and wrong-file errors, on header-like shape maps only."""

import json

import pytest
import torch

from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.checkpoints.keymaps import original_to_diffusers
from echomimic_core.checkpoints.transformer import check_state_dict, detect_variant, group_keys, infer_config


def _manifest(reference_dir, name):
    data = json.loads((reference_dir / f"{name}_1.3B_keys.json").read_text())
    return {k: tuple(shape) for k, (shape, _) in data["tensors"].items()}, data["config"]


@pytest.fixture(scope="module")
def preview(reference_dir):
    return _manifest(reference_dir, "preview")


@pytest.fixture(scope="module")
def flash(reference_dir):
    return _manifest(reference_dir, "flash")


def _base(shapes):
    return {k: v for k, v in shapes.items() if "audio" not in k}


def test_detects_released_variants(preview, flash):
    assert detect_variant(preview[0]) == "preview"
    assert detect_variant(flash[0]) == "flash"
    assert detect_variant(_base(preview[0])) == "base"


def test_detects_through_prefix_and_diffusers_layout(flash):
    shapes = {"model.diffusion_model." + original_to_diffusers(k): v for k, v in flash[0].items()}
    assert detect_variant(shapes) == "flash"
    tensors = {k: torch.empty(v, device="meta") for k, v in flash[0].items()}
    assert detect_variant(tensors) == "flash"


@pytest.mark.parametrize("name", ["preview", "flash"])
def test_infers_released_config(reference_dir, name):
    shapes, config = _manifest(reference_dir, name)
    inferred = infer_config(shapes).to_dict()
    for key, value in config.items():
        assert inferred[key] == value, key
    assert inferred["variant"] == name
    assert inferred["clip_dim"] == 1280
    if name == "preview":
        assert inferred["audio_in_dim"] == 768
    else:
        assert (
            inferred["audio_window"],
            inferred["audio_blocks"],
            inferred["audio_channels"],
            inferred["audio_intermediate_dim"],
            inferred["audio_context_tokens"],
        ) == (5, 12, 768, 512, 32)


def test_infers_tiny_fixture_config(reference_dir):
    """Shapes of the tiny parity fixtures give back the tiny_meta.json widths."""
    from safetensors import safe_open

    meta = json.loads((reference_dir / "tiny_meta.json").read_text())
    for name in ("preview", "flash"):
        with safe_open(str(reference_dir / f"{name}_tiny.safetensors"), "pt") as f:
            shapes = {
                k[len("weight.") :]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("weight.")
            }
        tiny = meta["tiny_config"]
        config = infer_config(shapes, num_heads=tiny["num_heads"], text_len=tiny["text_len"])
        for key in ("dim", "ffn_dim", "freq_dim", "text_dim", "in_dim", "out_dim", "num_layers", "clip_dim"):
            assert getattr(config, key) == tiny[key], key
        if name == "preview":
            assert config.audio_in_dim == meta["preview"]["audio_in_dim"]
        else:
            f = meta["flash"]
            assert config.audio_window == f["audio_window"]
            assert config.audio_blocks * config.audio_channels == f["blocks"] * f["channels"]
            assert (config.audio_intermediate_dim, config.audio_context_tokens) == (
                f["intermediate_dim"],
                f["context_tokens"],
            )


def test_base_defaults_to_preview_audio_path(preview):
    config = infer_config(_base(preview[0]))
    assert config.variant == "preview" and config.audio_in_dim == 768
    assert infer_config(_base(preview[0]), "flash").variant == "flash"


def test_sd_checkpoint_is_named(tmp_path):
    shapes = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    with pytest.raises(CheckpointError, match="expected an EchoMimicV3 / Wan2.1 transformer.*Stable Diffusion"):
        detect_variant(shapes)


def test_flux_is_named():
    with pytest.raises(CheckpointError, match="Flux"):
        detect_variant({"double_blocks.0.img_attn.qkv.weight": (9216, 3072), "img_in.weight": (3072, 64)})


def test_wan_vae_is_named(reference_dir):
    shapes = json.loads((reference_dir / "vae_keys.json").read_text())["tensors"]
    with pytest.raises(CheckpointError, match="Wan2.1 VAE") as e:
        detect_variant(shapes)
    assert len(str(e.value)) < 600


@pytest.mark.parametrize(
    "keys,what",
    [
        ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096), "shared.weight": (256384, 4096)}, "T5"),
        ({"vision_model.encoder.layers.0.layer_norm1.weight": (1280,)}, "CLIP"),
        ({"blocks.0.cross_attn.q.lora_A.weight": (8, 1536)}, "LoRA"),
        ({"foo.bar": (1,)}, "unrecognised model"),
    ],
)
def test_other_wrong_files(keys, what):
    with pytest.raises(CheckpointError, match=what):
        detect_variant(keys)


def test_text_to_video_wan_is_refused(preview):
    t2v = {k: v for k, v in _base(preview[0]).items() if "img" not in k}
    with pytest.raises(CheckpointError, match="text-to-video"):
        detect_variant(t2v)


def test_audio_layers_without_projector(preview):
    partial = {k: v for k, v in preview[0].items() if not k.startswith("audio2token")}
    with pytest.raises(
        CheckpointError, match="30 keys under blocks.\\*.cross_attn.k_audio \\(blocks 0-29\\).*no audio projector"
    ):
        detect_variant(partial)


def test_grouped_error_for_a_truncated_state_dict(preview):
    shapes = preview[0]
    found = {k: v for k, v in shapes.items() if not k.startswith(("blocks.28.", "blocks.29."))}
    found["blocks.0.ffn.0.weight"] = (100, 1536)
    with pytest.raises(CheckpointError) as e:
        check_state_dict(shapes, found)
    msg = str(e.value)
    assert "missing 70 keys: 70 keys of blocks 28-29 entirely" in msg
    assert "blocks.0.ffn.0.weight (100, 1536) vs (8960, 1536)" in msg
    assert msg.count("blocks.") < 20 and len(msg) < 1200


def test_group_keys_collapses_blocks():
    keys = [f"blocks.{i}.cross_attn.k_audio.{p}" for i in (0, 1, 2, 5) for p in ("weight", "bias")]
    assert group_keys(keys + ["audio2token.proj.weight"]) == [
        "8 keys under blocks.*.cross_attn.k_audio (blocks 0-2, 5)",
        "1 key under audio2token.proj",
    ]


@pytest.mark.parametrize("name", ["preview", "flash"])
def test_released_files_would_load_strictly(reference_dir, name):
    """The config read from a released file's shapes builds a model with exactly its tensors."""
    from echomimic_core.checkpoints.transformer import _expected_shapes

    shapes, _ = _manifest(reference_dir, name)
    expected = _expected_shapes(infer_config(shapes))
    check_state_dict(expected, shapes)
    data = json.loads((reference_dir / f"{name}_1.3B_keys.json").read_text())
    assert sum(torch.Size(s).numel() for s in expected.values()) == data["num_params"]
