"""The Wan VAE's strides and the frame counts it accepts: the one home of these facts.

The causal VAE encodes the first pixel frame alone and every following group of
``VAE_TEMPORAL_STRIDE`` (4) frames into one latent frame, so a clip must have ``4k + 1`` frames and
has ``k + 1`` latent frames; each latent pixel covers ``VAE_SPATIAL_STRIDE`` (8) pixels per side.
Everything that counts frames (chunks, audio alignment, task masks, the audio projector's windows,
training, the frontend's plan preview via ``web/lib/facts.js``) reads these.

Torch-free on purpose: the CLI, the nodes' cheap checks and the JS generator import it.
"""

from __future__ import annotations

VAE_TEMPORAL_STRIDE = 4  # pixel frames per latent frame after the first
VAE_SPATIAL_STRIDE = 8  # pixels per latent pixel, per side


def round_up_4k1(frames: int) -> int:
    """Smallest ``4k + 1`` at or above ``frames`` (1 for ``frames < 1``)."""
    stride = VAE_TEMPORAL_STRIDE
    return (max(frames, 1) - 1 + stride - 1) // stride * stride + 1


def round_down_4k1(frames: int) -> int:
    """Largest ``4k + 1`` at or below ``frames``; 0 when ``frames < 1`` (no clip fits)."""
    if frames < 1:
        return 0
    return (frames - 1) // VAE_TEMPORAL_STRIDE * VAE_TEMPORAL_STRIDE + 1


def latent_frames(frames: int) -> int:
    """Latent frames of a ``4k + 1``-frame pixel clip: ``k + 1``."""
    return (frames - 1) // VAE_TEMPORAL_STRIDE + 1


def pixel_frames(latents: int) -> int:
    """Pixel frames a clip of ``latents`` latent frames decodes to: ``4 (latents - 1) + 1``."""
    return VAE_TEMPORAL_STRIDE * (latents - 1) + 1
