"""Layers of the DiT built through one "operations" policy.

Weights may be *stored* in any dtype (fp32, bf16, fp16, float8_e4m3fn) and on another device;
each layer casts them on the fly to the activation's dtype and device. A checkpoint loader can
therefore keep fp8 weights resident and the forward still runs in bf16/fp32. Norms compute in
float32 as Wan does (``x.float()`` then back to the activation dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Inference computes the float32 insides of norms and rotations over slices of at most this many
# elements, so their float32 temporaries stay small next to the [B, L, C] activations (each token
# is computed alone either way: the same bits). 4 Mi elements = 16 MiB of float32 per slice.
CHUNK_ELEMENTS = 1 << 22


def by_token_chunks(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x_part, part)`` over token slices ``part`` of ``x`` [B, L, ...], into one output
    [B, L, ...]. ``fn`` must treat tokens independently. Under autograd, or for a small ``x``, one
    call ``fn(x, slice(None))``."""
    if torch.is_grad_enabled() or x.ndim < 2 or x.numel() <= CHUNK_ELEMENTS:
        return fn(x, slice(None))
    step = max(1, CHUNK_ELEMENTS // (x.numel() // x.shape[1]))
    out = None
    for start in range(0, x.shape[1], step):
        part = slice(start, start + step)
        y = fn(x[:, part], part)
        if out is None:
            out = y.new_empty(x.shape[0], x.shape[1], *y.shape[2:])
        out[:, part] = y
    return out


def cast_to(weight: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``weight`` in ``like``'s dtype and device (no copy when they already match)."""
    if weight is None or (weight.dtype == like.dtype and weight.device == like.device):
        return weight
    return weight.to(device=like.device, dtype=like.dtype)


class Linear(nn.Linear):
    """nn.Linear with on-the-fly weight casting. The loader registers a float32 ``scale_weight``
    buffer on layers kept from a scaled-fp8 file: the weight used is then
    ``(weight.float() * scale_weight).to(x.dtype)``, rounded once, exactly the de-quantised weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, "scale_weight", None)
        if scale is None:
            weight = cast_to(self.weight, x)
        else:
            # the product in float32: a bf16 scale would bias every weight of the layer alike
            weight = (
                self.weight.to(device=x.device, dtype=torch.float32) * scale.to(device=x.device, dtype=torch.float32)
            ).to(x.dtype)
        return F.linear(x, weight, cast_to(self.bias, x))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan's ``WanLayerNorm``), result in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def norm(part, _):
            xf = part.float()
            return F.layer_norm(
                xf, self.normalized_shape, cast_to(self.weight, xf), cast_to(self.bias, xf), self.eps
            ).to(part.dtype)

        return by_token_chunks(norm, x)


class RMSNorm(nn.Module):
    """Wan's RMSNorm: normalise in float32, round to the input dtype, then scale by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., C]"""
        normed = by_token_chunks(lambda part, _: F.rms_norm(part.float(), (x.shape[-1],), eps=self.eps).to(x.dtype), x)
        weight = cast_to(self.weight, normed)
        # normed is this call's own tensor: scaling it in place saves a buffer (same product)
        return normed * weight if torch.is_grad_enabled() else normed.mul_(weight)


class Operations:
    """The default policy: cast stored weights to the activation dtype in every layer.

    Pass another class with the same four attributes to ``EchoMimicTransformer(ops=...)`` to
    change how layers store or compute (e.g. scaled fp8 matmuls).
    """

    Linear = Linear
    Conv3d = Conv3d
    LayerNorm = LayerNorm
    RMSNorm = RMSNorm
