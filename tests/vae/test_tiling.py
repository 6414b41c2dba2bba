"""Tiled encode/decode: the tile geometry asked for is the one used, and tiles blend back seamlessly."""

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.vae import Tiling, from_state_dict

# 32 x 64 frames: the tilings below split them in width and, for 32/8, in height too.
VIDEO = (1, 3, 5, 32, 64)


@pytest.fixture(scope="module")
def weights(reference_dir):
    data = load_file(str(reference_dir / "vae_tiny.safetensors"))
    return {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}


@pytest.fixture(scope="module")
def local_vae(weights):
    """The tiny VAE made spatially pointwise: 3x3 kernels keep only their centre tap and the middle
    attention adds nothing. Every output pixel then depends on its own position only, so a correct
    tiling (right placement, crop and blend) must reproduce the untiled result exactly."""
    state = {}
    for k, v in weights.items():
        if ".middle.1.proj." in k:
            v = torch.zeros_like(v)
        elif k.endswith(".weight") and v.ndim >= 4 and v.shape[-2:] == (3, 3):
            centre = torch.zeros_like(v)
            centre[..., 1, 1] = 1
            v = v * centre * 3  # keeps activations at a useful scale after dropping 8/9 of the taps
        state[k] = v
    return from_state_dict(state)


@pytest.fixture(scope="module")
def video():
    return torch.rand(VIDEO, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.slow
@pytest.mark.parametrize("tiling", [Tiling(32, 8), Tiling(48, 16)])
def test_tiled_equals_untiled_for_a_local_vae(local_vae, video, tiling):
    latent = local_vae.encode(video)
    torch.testing.assert_close(local_vae.encode(video, tiling), latent, rtol=0, atol=1e-5)
    decoded = local_vae.decode(latent)
    torch.testing.assert_close(local_vae.decode(latent, tiling), decoded, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "tiling, tiles",
    [
        (Tiling(32, 8), 2 * 3),  # latent tile 4, stride 3 over a 4 x 8 latent
        (Tiling(32, 0), 1 * 2),
        (Tiling(64, 32), 0),  # the frame fits one tile: no tiling, and the frame-by-frame forward
    ],
)
def test_decoder_runs_once_per_tile_and_latent_frame(local_vae, video, tiling, tiles):
    latent = torch.zeros(1, 16, 1, VIDEO[3] // 8, VIDEO[4] // 8)
    calls = []
    hook = local_vae.model.decoder.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        local_vae.decode(latent, tiling)
    finally:
        hook.remove()
    assert len(calls) == tiles * latent.shape[2]
    if tiles > 1:
        assert calls[0][-1] == tiling.tile_size  # each decoder call sees one tile, not the frame


def test_tiling_changes_a_real_vae_and_leaves_it_untiled_after(weights, video):
    vae = from_state_dict(weights)
    latent = vae.encode(video[:, :, :1])
    plain = vae.decode(latent)
    tiled = vae.decode(latent, Tiling(32, 8))
    assert tiled.shape == plain.shape
    assert (tiled - plain).abs().max() > 1e-3  # the tiled path really ran (attention sees less)
    assert not vae.model.use_tiling
    torch.testing.assert_close(vae.decode(latent), plain, rtol=0, atol=0)


def test_a_frame_that_fits_one_tile_is_not_tiled(weights, video):
    vae = from_state_dict(weights)
    latent = vae.encode(video[:, :, :1])
    torch.testing.assert_close(vae.decode(latent, Tiling(64, 32)), vae.decode(latent), rtol=0, atol=0)
    torch.testing.assert_close(vae.encode(video[:, :, :1], Tiling(64, 32)), latent, rtol=0, atol=0)


@pytest.mark.parametrize("tiling, tiles", [(None, 1), (Tiling(32, 8), 2 * 3)])
def test_progress_counts_every_chunk_of_every_tile(local_vae, video, tiling, tiles):
    calls = []
    latent = local_vae.encode(video, tiling, progress=lambda done, total: calls.append((done, total)))
    chunks = 1 + (VIDEO[2] - 1) // 4  # the encoder sees 1, then 4 frames
    # Encoder tiles are cut in pixels (stride 24 over 32 x 64 = 2 x 3), the same count as in latents.
    assert calls == [(i, tiles * chunks) for i in range(1, tiles * chunks + 1)]
    calls.clear()
    local_vae.decode(latent, tiling, progress=lambda done, total: calls.append((done, total)))
    frames = latent.shape[2]
    assert calls == [(i, tiles * frames) for i in range(1, tiles * frames + 1)]


def test_progress_can_cancel_and_leaves_the_model_clean(local_vae, video):
    class Cancelled(Exception):
        pass

    def cancel_at_two(done, total):
        if done == 2:
            raise Cancelled

    latent = torch.zeros(1, 16, 2, VIDEO[3] // 8, VIDEO[4] // 8)
    with pytest.raises(Cancelled):
        local_vae.decode(latent, Tiling(32, 8), progress=cancel_at_two)
    assert not local_vae.model.use_tiling
    assert not local_vae.model.decoder._forward_hooks
    assert local_vae.decode(latent[:, :, :1]).shape[2] == 1  # the feature cache is reset on the next call
