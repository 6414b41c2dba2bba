"""Training validation decodes as inference does: a VAE yielding NaN stops it with inference's message."""

import pytest
import torch

from echomimic_core.model.transformer import EchoMimicTransformer
from echomimic_core.sampling.sampler import NonFiniteError
from training.validation import Validator


class NaNVAE:
    def decode(self, latents, tiling=None, progress=None):
        _, _, f, h, w = latents.shape
        return torch.full((1, 3, 4 * (f - 1) + 1, 8 * h, 8 * w), float("nan"))


def test_a_vae_decoding_nan_stops_validation_before_writing(tmp_path, sft_cache, tiny_config):
    validator = Validator(sft_cache, vae_path=None, steps=1, max_items=1, seed=0, fps=25.0)
    validator._vae = NaNVAE()  # what load_vae would have returned for a damaged file
    model = EchoMimicTransformer(tiny_config)
    with pytest.raises(NonFiniteError, match="the VAE decoded NaN or infinite pixels from finite latents"):
        validator.run(model, 3, tmp_path, "cpu")
    assert not list(tmp_path.rglob("*.mp4"))
    assert model.training  # put back in training mode all the same
