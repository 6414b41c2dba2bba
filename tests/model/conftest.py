"""Tiny EchoMimic transformers and matching random conditioning for the model tests."""

import pytest
import torch

from echomimic_core.config import TransformerConfig
from echomimic_core.model.conditioning import Conditioning
from echomimic_core.model.transformer import EchoMimicTransformer

LATENT = (3, 4, 4)  # F, H, W: 3 latent frames = 9 video frames, 4 tokens per latent frame


def tiny_config(variant: str, **overrides) -> TransformerConfig:
    cfg = TransformerConfig.preset(f"tiny_{variant}").to_dict()
    cfg.update(
        dict(dim=32, ffn_dim=48, num_heads=2, freq_dim=16, text_len=8, text_dim=12, clip_dim=10, clip_tokens=5),
        **overrides,
    )
    return TransformerConfig.from_dict(cfg)


def random_model(config: TransformerConfig) -> EchoMimicTransformer:
    model = EchoMimicTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial values everywhere (biases and norms included)
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == config.dim else 0.0))
    return model


def random_inputs(config: TransformerConfig, batch: int = 2, text_lens=(5, 7), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f, h, w = LATENT
    video_frames = 4 * (f - 1) + 1
    if config.variant == "preview":
        audio = torch.randn(batch, config.audio_tokens_per_frame * video_frames, config.audio_in_dim, generator=g)
    else:
        audio = torch.randn(
            batch, video_frames, config.audio_window, config.audio_blocks, config.audio_channels, generator=g
        )
    tokens_per_frame = (h // 2) * (w // 2)
    cond = Conditioning(
        context=[torch.randn(text_lens[i % len(text_lens)], config.text_dim, generator=g) for i in range(batch)],
        clip_fea=torch.randn(batch, config.clip_tokens, config.clip_dim, generator=g),
        y=torch.randn(batch, config.in_dim - 16, f, h, w, generator=g),
        audio=audio,
        face_gate=(torch.rand(batch, tokens_per_frame, generator=g) > 0.4).float(),
        audio_scale=0.7,
    )
    x = torch.randn(batch, 16, f, h, w, generator=g)
    t = torch.tensor([900.0, 250.0][:batch] + [500.0] * max(0, batch - 2))
    return x, t, cond


@pytest.fixture(params=["preview", "flash"])
def variant(request) -> str:
    return request.param


# pytest's importlib mode cannot import conftest as a module: tests get the helpers as fixtures
@pytest.fixture
def tiny_config_fn():
    return tiny_config


@pytest.fixture
def random_model_fn():
    return random_model


@pytest.fixture
def random_inputs_fn():
    return random_inputs
