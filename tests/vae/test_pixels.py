"""decode_frames: latents -> frames [F, H, W, 3] in [0, 1], refusing non-finite VAE output."""

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.sampling.sampler import NonFiniteError
from echomimic_core.vae import from_state_dict
from echomimic_core.vae.pixels import decode_frames


@pytest.fixture(scope="module")
def fixture_data(reference_dir):
    return load_file(str(reference_dir / "vae_tiny.safetensors"))


def test_frames_are_the_decoded_video_in_0_1(fixture_data):
    weights = {k[len("weight.") :]: v for k, v in fixture_data.items() if k.startswith("weight.")}
    vae = from_state_dict(weights)
    latents = fixture_data["output.latent"][:1]  # [1, z, f, h, w]
    video = vae.decode(latents)  # [1, 3, F, H, W] in [-1, 1]
    frames = decode_frames(vae, latents)
    f, h, w = video.shape[2:]
    assert frames.shape == (f, h, w, 3) and frames.dtype == torch.float32
    torch.testing.assert_close(frames, (video[0].permute(1, 2, 3, 0) + 1) / 2)


class ConstantVAE:
    """A VAE whose decoder yields ``value`` everywhere (a damaged file, a float16 overflow)."""

    def __init__(self, value: float):
        self.value = value

    def decode(self, latents, tiling=None, progress=None):
        _, _, f, h, w = latents.shape
        return torch.full((1, 3, 4 * (f - 1) + 1, 8 * h, 8 * w), self.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_stop_the_run(bad):
    with pytest.raises(NonFiniteError, match="the VAE decoded NaN or infinite pixels from finite latents") as e:
        decode_frames(ConstantVAE(bad), torch.zeros(1, 16, 2, 2, 2))
    assert "download it again" in str(e.value) and "bfloat16" in str(e.value)
    assert decode_frames(ConstantVAE(1.0), torch.zeros(1, 16, 2, 2, 2)).eq(1).all()
