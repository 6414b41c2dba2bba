"""Wrapper prefixes and the diffusers Wan layout map onto the released checkpoints' names."""

import json

import pytest
import torch

from echomimic_core.checkpoints.keymaps import (
    diffusers_to_original,
    find_prefix,
    original_to_diffusers,
    to_original_keys,
)


@pytest.fixture(scope="module")
def manifest_keys(reference_dir):
    keys = {}
    for name in ("preview_1.3B_keys.json", "flash_1.3B_keys.json"):
        keys.update(json.loads((reference_dir / name).read_text())["tensors"])
    return sorted(keys)


def test_round_trip_every_released_key(manifest_keys):
    diffusers = [original_to_diffusers(k) for k in manifest_keys]
    assert len(set(diffusers)) == len(manifest_keys)
    assert [diffusers_to_original(k) for k in diffusers] == manifest_keys


def test_matches_diffusers_own_converter(manifest_keys):
    """Our table must agree with diffusers' single-file converter on every Wan key."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    wan_keys = [k for k in manifest_keys if "audio" not in k]
    converted = convert_wan_transformer_to_diffusers({k: torch.empty(0) for k in wan_keys})
    assert sorted(converted) == sorted(original_to_diffusers(k) for k in wan_keys)


def test_echomimic_file_converted_by_diffusers_comes_back(manifest_keys):
    """An EchoMimicV3 file someone ran through diffusers' converter (audio keys included)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    converted = convert_wan_transformer_to_diffusers({k: k for k in manifest_keys})
    back = to_original_keys(converted)
    assert back == {k: k for k in manifest_keys}


def test_real_diffusers_model_keys_convert_to_original_names(reference_dir):
    """A tiny diffusers WanTransformer3DModel (i2v) converts to exactly the Wan names and shapes."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=36,
        out_channels=16,
        text_dim=12,
        freq_dim=8,
        ffn_dim=24,
        num_layers=2,
        image_dim=20,
        added_kv_proj_dim=16,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
    )
    converted = to_original_keys({k: tuple(v.shape) for k, v in model.state_dict().items()})
    manifest = json.loads((reference_dir / "preview_1.3B_keys.json").read_text())["tensors"]
    expected = {
        k for k in manifest if "audio" not in k and not (k.startswith("blocks.") and k.split(".")[1] not in "01")
    }
    assert set(converted) == expected
    assert converted["blocks.1.norm3.weight"] == (16,)
    assert converted["head.modulation"] == (1, 2, 16)
    assert converted["img_emb.proj.1.weight"] == (20, 20)


def test_audio_keys_pass_through():
    assert original_to_diffusers("blocks.3.cross_attn.k_audio.weight") == "blocks.3.attn2.k_audio.weight"
    assert diffusers_to_original("blocks.3.attn2.norm_k_audio.weight") == "blocks.3.cross_attn.norm_k_audio.weight"
    assert diffusers_to_original("audio2token.proj.weight") == "audio2token.proj.weight"


@pytest.mark.parametrize(
    "prefix",
    ["", "model.diffusion_model.", "diffusion_model.", "model.", "module.", "module._orig_mod.", "transformer."],
)
def test_prefixes_are_stripped(prefix):
    state = {prefix + "patch_embedding.weight": 1, prefix + "blocks.0.ffn.0.bias": 2}
    if prefix == "model.diffusion_model.":  # a full ComfyUI checkpoint also carries other models
        state["first_stage_model.decoder.conv_in.weight"] = 3
    assert find_prefix(state) == prefix
    assert to_original_keys(state) == {"patch_embedding.weight": 1, "blocks.0.ffn.0.bias": 2}


def test_foreign_prefix_is_not_stripped():
    # CLIP's vision tower also has a patch_embedding, but it is no transformer wrapper prefix
    state = {"vision_model.embeddings.patch_embedding.weight": 1}
    assert find_prefix(state) is None
    assert to_original_keys(state) == state


def test_prefixed_diffusers_layout():
    state = {
        "transformer.patch_embedding.weight": 0,
        "transformer.blocks.0.attn1.to_out.0.weight": 1,
        "transformer.blocks.0.norm2.bias": 2,
        "transformer.scale_shift_table": 3,
    }
    assert to_original_keys(state) == {
        "patch_embedding.weight": 0,
        "blocks.0.self_attn.o.weight": 1,
        "blocks.0.norm3.bias": 2,
        "head.modulation": 3,
    }
