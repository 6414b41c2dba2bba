"""Latents -> output frames: the VAE's decoded video ``[1, 3, F, H, W]`` in [-1, 1] as frames
``[F, H, W, 3]`` in [0, 1], checked finite first. Inference (``pipeline.Denoiser``) and training
validation both decode through here, so both stop on the same damaged or overflowing VAE.
"""

from __future__ import annotations

import torch

from ..sampling.sampler import NonFiniteError
from .wan import Progress, Tiling, VideoVAE


def decode_frames(
    vae: VideoVAE, latents: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
) -> torch.Tensor:
    """Normalised latents ``[1, z_dim, f, h, w]`` -> frames ``[4(f-1)+1, 8h, 8w, 3]`` float32 in
    [0, 1] on the CPU. Raises :class:`NonFiniteError` when the decoded pixels hold NaN or inf: the
    clamp to [0, 1] would otherwise pass NaN on to become a black video."""
    video = vae.decode(latents, tiling, progress)
    if not bool(torch.isfinite(video).all()):
        raise NonFiniteError(
            "the VAE decoded NaN or infinite pixels from finite latents; stopped, nothing written. "
            "The VAE file is likely damaged (download it again), or it overflowed in float16 (use bfloat16)."
        )
    return (video[0].float().cpu().permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0, 1)
