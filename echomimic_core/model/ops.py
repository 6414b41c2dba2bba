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
        xf = x.float()
        return F.layer_norm(xf, self.normalized_shape, cast_to(self.weight, xf), cast_to(self.bias, xf), self.eps).to(
            x.dtype
        )


class RMSNorm(nn.Module):
    """Wan's RMSNorm: normalise in float32, round to the input dtype, then scale by the weight."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., C]"""
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * cast_to(self.weight, normed)


class Operations:
    """The default policy: cast stored weights to the activation dtype in every layer.

    Pass another class with the same four attributes to ``EchoMimicTransformer(ops=...)`` to
    change how layers store or compute (e.g. scaled fp8 matmuls).
    """

    Linear = Linear
    Conv3d = Conv3d
    LayerNorm = LayerNorm
    RMSNorm = RMSNorm
