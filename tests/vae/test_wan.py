"""WanVAE: parity with upstream, loading every layout, tiling, input and file errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.checkpoints.files import CheckpointError, save_state_dict
from echomimic_core.vae import (
    Tiling,
    VideoVAE,
    WanVAE,
    denormalize_latents,
    from_state_dict,
    load_vae,
    normalize_latents,
    verify_fixture,
)


@pytest.fixture(scope="module")
def fixture_data(reference_dir):
    return load_file(str(reference_dir / "vae_tiny.safetensors"))


@pytest.fixture(scope="module")
def weights(fixture_data):
    """Tiny random Wan2.1 VAE weights in the original layout."""
    return {k[len("weight.") :]: v for k, v in fixture_data.items() if k.startswith("weight.")}


@pytest.fixture(scope="module")
def vae(weights):
    return from_state_dict(weights)


def _assert_same_weights(vae: WanVAE, weights):
    ours = vae.original_state_dict()
    assert ours.keys() == weights.keys()
    for k, v in weights.items():
        torch.testing.assert_close(ours[k].float(), v.float(), rtol=0, atol=0, msg=k)


# -- parity -------------------------------------------------------------------------------------
def test_fixture_parity(reference_dir):
    meta = json.loads((reference_dir / "vae_tiny_meta.json").read_text())
    errors = verify_fixture(reference_dir / "vae_tiny.safetensors", meta)
    assert set(errors) == {"latent", "log_var", "decoded"}
    assert all(e < 1e-5 for e in errors.values()), errors


def test_shapes_follow_the_video(vae, fixture_data):
    video = fixture_data["input.video"]
    latent = vae.encode(video)
    assert latent.shape == fixture_data["output.latent"].shape == vae.latent_shape(video.shape)
    assert latent.dtype == torch.float32
    decoded = vae.decode(latent)
    assert decoded.shape == video.shape == vae.video_shape(latent.shape)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_batch_is_per_sample(vae):
    video = torch.rand(2, 3, 1, 16, 24) * 2 - 1
    both = vae.encode(video)
    torch.testing.assert_close(both[1:], vae.encode(video[1:]), rtol=1e-6, atol=1e-6)


def test_normalisation_round_trip(vae):
    raw = torch.randn(1, 16, 2, 3, 4)
    norm = normalize_latents(raw, vae.latents_mean, vae.latents_std)
    torch.testing.assert_close(norm[0, 3], (raw[0, 3] - 0.1075) / 2.6558)
    torch.testing.assert_close(denormalize_latents(norm, vae.latents_mean, vae.latents_std), raw)


def test_implements_the_protocol_and_moves(weights, fixture_data):
    vae = from_state_dict(weights)
    assert isinstance(vae, VideoVAE)
    reference = vae.encode(fixture_data["input.video"][:, :, :1])
    assert vae.to(dtype=torch.bfloat16) is vae and vae.dtype == torch.bfloat16
    latent = vae.encode(fixture_data["input.video"][:, :, :1])
    assert latent.dtype == torch.float32
    assert (latent - reference).abs().max() < 0.05 * reference.abs().max()
    assert vae.device == torch.device("cpu")


# -- loading ------------------------------------------------------------------------------------
def test_load_original_pth(tmp_path, weights):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(dict(weights), path)
    _assert_same_weights(load_vae(path), weights)


def test_load_comfy_safetensors_in_bf16(tmp_path, weights, fixture_data):
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_state_dict({k: v.to(torch.bfloat16) for k, v in weights.items()}, path)
    vae = load_vae(path, dtype=torch.bfloat16)
    assert vae.dtype == torch.bfloat16
    _assert_same_weights(vae, {k: v.to(torch.bfloat16) for k, v in weights.items()})
    assert vae.encode(fixture_data["input.video"][:, :, :1]).isfinite().all()


def test_load_prefixed_and_diffusers_named_single_files(tmp_path, weights, vae):
    save_state_dict({"vae." + k: v for k, v in weights.items()}, tmp_path / "prefixed.safetensors")
    _assert_same_weights(load_vae(tmp_path / "prefixed.safetensors"), weights)
    save_state_dict(vae.model.state_dict(), tmp_path / "diffusers_names.safetensors")
    _assert_same_weights(load_vae(tmp_path / "diffusers_names.safetensors"), weights)


def test_load_diffusers_folder(tmp_path, vae, weights, fixture_data):
    vae.model.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    _assert_same_weights(loaded, weights)
    torch.testing.assert_close(loaded.latents_std, vae.latents_std)
    video = fixture_data["input.video"][:, :, :1]
    torch.testing.assert_close(loaded.encode(video), vae.encode(video), rtol=0, atol=0)


# -- bad files ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "state, message",
    [
        (
            {"patch_embedding.weight": torch.zeros(2, 36, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(2, 2)},
            "diffusion transformer",
        ),
        (
            {
                "encoder.conv_in.weight": torch.zeros(2, 3, 3, 3),
                "encoder.down.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3),
            },
            "Stable Diffusion",
        ),
        ({"text_model.embeddings.token_embedding.weight": torch.zeros(2, 2)}, "not a Wan VAE"),
    ],
)
def test_wrong_model_file_is_named(tmp_path, state, message):
    path = tmp_path / "model.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_vae(path)
    assert "wan_2.1_vae.safetensors" in str(info.value)


def test_wan22_vae_is_rejected(weights):
    state = dict(weights)
    state["conv2.weight"] = torch.zeros(48, 48, 1, 1, 1)
    with pytest.raises(CheckpointError, match="Wan2.2"):
        from_state_dict(state)


def test_incomplete_or_misshapen_vae(weights):
    state = {k: v for k, v in weights.items() if k != "decoder.head.2.bias"}
    with pytest.raises(CheckpointError, match="1 missing tensors.*decoder.head.2.bias"):
        from_state_dict(state)
    state = dict(weights)
    state["decoder.middle.1.proj.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(CheckpointError, match="shapes"):
        from_state_dict(state)


def test_vae_without_its_first_layer(weights):
    state = {k: v for k, v in weights.items() if not k.startswith("encoder.conv1.")}
    with pytest.raises(CheckpointError, match="not a complete Wan2.1 VAE.*encoder.conv1.weight"):
        from_state_dict(state)


def test_wan22_diffusers_folder_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"_class_name": "AutoencoderKLWan", "z_dim": 48, "is_residual": True})
    )
    with pytest.raises(CheckpointError, match="48 latent channels.*Wan2.2"):
        load_vae(tmp_path)


def test_diffusers_folder_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(CheckpointError, match="AutoencoderKL, expected an AutoencoderKLWan"):
        load_vae(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "vae.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_vae(tmp_path / "vae.safetensors")


# -- inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 4, 16, 16), "4k\\+1"),
        ((1, 3, 5, 20, 16), "multiples of 8"),
        ((1, 4, 5, 16, 16), "colour channels"),
        ((3, 5, 16, 16), "\\[B, 3, T, H, W\\]"),
    ],
)
def test_bad_video_shapes(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_bad_latents(vae):
    with pytest.raises(ValueError, match="16 latent channels"):
        vae.decode(torch.zeros(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="expected latents"):
        vae.decode(torch.zeros(16, 1, 2, 2))


@pytest.mark.parametrize("tile, overlap", [(60, 16), (64, 12), (64, 64), (64, -8)])
def test_bad_tiling(tile, overlap):
    with pytest.raises(ValueError):
        Tiling(tile, overlap)
