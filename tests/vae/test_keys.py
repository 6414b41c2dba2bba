"""Original <-> diffusers key maps and config inference for the Wan2.1 VAE."""

import inspect
import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.vae import (
    config_from_original,
    diffusers_key_to_original,
    diffusers_to_original,
    original_key_to_diffusers,
    original_to_diffusers,
)


@pytest.fixture(scope="module")
def full_manifest(reference_dir):
    """The real Wan2.1_VAE.pth names and shapes, as meta tensors."""
    tensors = json.loads((reference_dir / "vae_keys.json").read_text())["tensors"]
    return {k: torch.empty(shape, device="meta") for k, shape in tensors.items()}


def _meta_model(**config):
    # diffusers < 0.35 predates in/out_channels; at 3 they change nothing.
    accepted = inspect.signature(AutoencoderKLWan.__init__).parameters
    with torch.device("meta"):
        return AutoencoderKLWan(**{k: v for k, v in config.items() if k in accepted})


def test_full_size_matches_diffusers_conversion(full_manifest):
    ours = original_to_diffusers(full_manifest)
    theirs = convert_wan_vae_to_diffusers(full_manifest)
    assert ours.keys() == theirs.keys()
    assert all(ours[k] is theirs[k] for k in ours)


def test_full_size_fits_autoencoder_and_round_trips(full_manifest):
    config = config_from_original(full_manifest)
    assert config == {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "in_channels": 3,
        "out_channels": 3,
    }
    model_state = _meta_model(**config).state_dict()
    converted = original_to_diffusers(full_manifest)
    assert converted.keys() == model_state.keys()
    assert all(converted[k].shape == model_state[k].shape for k in converted)
    back = diffusers_to_original(converted)
    assert back.keys() == full_manifest.keys()
    assert all(back[k] is full_manifest[k] for k in back)


def test_tiny_fixture_config_matches_its_meta(reference_dir):
    from safetensors import safe_open

    meta = json.loads((reference_dir / "vae_tiny_meta.json").read_text())["tiny_config"]
    with safe_open(str(reference_dir / "vae_tiny.safetensors"), "pt") as f:
        state = {k[len("weight.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("weight.")}
    config = config_from_original(state)
    assert config["base_dim"] == meta["dim"]
    for name in ("z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample"):
        assert config[name] == meta[name], name


@pytest.mark.parametrize(
    "config",
    [
        {"base_dim": 8, "num_res_blocks": 1, "dim_mult": [1, 2, 2], "temperal_downsample": [True, False]},
        {"base_dim": 8, "num_res_blocks": 3, "dim_mult": [1, 1, 2, 4], "temperal_downsample": [False, False, True]},
    ],
)
def test_other_block_counts_round_trip_and_infer_config(config):
    state = _meta_model(**config).state_dict()
    original = diffusers_to_original(state)
    assert all(
        k.startswith(
            (
                "encoder.downsamples.",
                "decoder.upsamples.",
                "encoder.middle.",
                "decoder.middle.",
                "encoder.head.",
                "decoder.head.",
                "encoder.conv1.",
                "decoder.conv1.",
                "conv1.",
                "conv2.",
            )
        )
        for k in original
    )
    assert original_to_diffusers(original).keys() == state.keys()
    inferred = config_from_original(original)
    for name, value in config.items():
        assert inferred[name] == value, name


def test_single_key_examples():
    assert (
        original_key_to_diffusers("decoder.upsamples.4.shortcut.weight")
        == "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    )
    assert (
        original_key_to_diffusers("decoder.upsamples.11.resample.1.bias")
        == "decoder.up_blocks.2.upsamplers.0.resample.1.bias"
    )
    assert original_key_to_diffusers("encoder.middle.1.to_qkv.weight") == "encoder.mid_block.attentions.0.to_qkv.weight"
    assert original_key_to_diffusers("conv1.weight") == "quant_conv.weight"
    assert (
        diffusers_key_to_original("decoder.up_blocks.3.resnets.2.norm2.gamma")
        == "decoder.upsamples.14.residual.3.gamma"
    )
    with pytest.raises(KeyError, match="original layout"):
        original_key_to_diffusers("blocks.0.self_attn.q.weight")


def test_non_vae_state_dict_is_rejected_with_a_reason():
    with pytest.raises(CheckpointError, match="resample"):
        original_to_diffusers({"encoder.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="AutoencoderKLWan"):
        diffusers_to_original({"encoder.conv_in.weight": torch.zeros(1)})
