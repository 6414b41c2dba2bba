"""3-axis rotary position embedding (frame / height / width) of Wan2.1, with RIFLEx.

Wan splits each head's ``head_dim / 2`` rotation pairs into ``c - 2(c//3)`` frame pairs and
``c//3`` pairs each for height and width. Angles are built in float64 (as Wan does) and applied
in the real formulation in float32: ``(a, b) -> (a cos - b sin, a sin + b cos)`` on adjacent
pairs, which equals Wan's complex multiply up to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .ops import by_token_chunks


def axis_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """[dim/2] float64 inverse frequencies of one axis (``dim`` = real channels of that axis).

    Always on the CPU: models are often built under ``torch.device("meta")`` for loading, and
    these tables are not parameters that a state dict would fill in."""
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, L, H, D]; cos/sin: [L, 1, D/2] float32 -> rotated x in x's dtype.

    Rotates a float32 copy in place: besides that copy only one half-size temporary lives (the
    pairs' first elements), where separate products and a final stack needed three times as much
    at the model's largest activation; under no_grad the copy is made a slice of tokens at a time.
    Same operations in the same order, so the same bits."""
    return by_token_chunks(lambda part, rows: _rotate(part, cos[rows], sin[rows]), x)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    pairs = x.to(torch.float32, copy=True).unflatten(-1, (-1, 2))  # [B, L, H, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]  # single views (unbind's may not be written in place)
    first = a.clone()
    a.mul_(cos).addcmul_(b, sin, value=-1)  # a cos - b sin
    b.copy_(first.mul_(sin).addcmul_(b, cos))  # a sin + b cos (b still unrotated here)
    return pairs.flatten(-2).to(x.dtype)


@dataclass(frozen=True)
class Riflex:
    """RIFLEx (Zhao et al. 2025) as upstream applies it, an option of one forward: the k-th frame
    frequency (1-based) is set so ``L_test`` latent frames stay within 0.9 of one period, then
    divided by ``L_test_scale``. Passed per call (``Conditioning.riflex``), never stored in the
    model, so a model cached between runs (ComfyUI) carries nothing from one run into the next."""

    k: int = 6
    L_test: int = 66
    L_test_scale: float | None = 4.886

    def frame_frequencies(self, base: torch.Tensor) -> torch.Tensor:
        """The frame axis' inverse frequencies [n] float64 with RIFLEx applied (``base`` unchanged)."""
        if not 1 <= self.k <= len(base):
            raise ValueError(f"RIFLEx k must be in 1..{len(base)} (frame frequencies of this model), got {self.k}.")
        if self.L_test < 1:
            raise ValueError(f"RIFLEx L_test (latent frames generated) must be >= 1, got {self.L_test}.")
        freqs = base.clone()
        freqs[self.k - 1] = 0.9 * 2 * math.pi / self.L_test
        if self.L_test_scale is not None:
            freqs[self.k - 1] = freqs[self.k - 1] / self.L_test_scale
        return freqs


class RotaryEmbedding3D:
    """Per-grid cos/sin tables for the (F, H, W) token grid; not an nn.Module (no state dict).

    The frequencies are fixed at construction; per-call options (RIFLEx) are arguments of
    ``cos_sin`` and part of its memo key, so no call changes what a later call computes."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}.")
        self.head_dim = head_dim
        d = head_dim
        # real channels per axis, as Wan: frame gets the remainder
        self.axis_dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
        self.freqs = tuple(axis_frequencies(n, theta) for n in self.axis_dims)
        self._cache: dict = {}

    def clear(self) -> None:
        """Drop the cached tables (they sit on the device the last forward ran on)."""
        self._cache = {}

    def cos_sin(
        self, grid: tuple[int, int, int], device: torch.device, riflex: Riflex | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [F*H*W, 1, head_dim/2] float32 on ``device`` for a (F, H, W) grid."""
        key = (tuple(grid), str(device), riflex)
        if key not in self._cache:
            f, h, w = grid
            freqs = self.freqs if riflex is None else (riflex.frame_frequencies(self.freqs[0]), *self.freqs[1:])
            angles = [
                torch.outer(torch.arange(n, dtype=torch.float64, device="cpu"), fr) for n, fr in zip((f, h, w), freqs)
            ]
            full = torch.cat(
                [
                    angles[0].view(f, 1, 1, -1).expand(f, h, w, -1),
                    angles[1].view(1, h, 1, -1).expand(f, h, w, -1),
                    angles[2].view(1, 1, w, -1).expand(f, h, w, -1),
                ],
                dim=-1,
            ).reshape(f * h * w, 1, -1)
            # keep only the latest table: a sampler reuses one grid (and one RIFLEx) for every step
            self._cache = {key: (full.cos().float().to(device), full.sin().float().to(device))}
        return self._cache[key]
