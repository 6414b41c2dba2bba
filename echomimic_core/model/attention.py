"""The one attention entry point of the model, with kernels chosen by name.

``attention(q, k, v, backend)`` takes and returns ``[B, L, heads, head_dim]`` (Wan's layout).
No key masks are needed: upstream EchoMimicV3 attends over every key (padded text included).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _as_half(*tensors):
    # flash-attn / sage kernels only take fp16/bf16; upstream also casts fp32 to bf16 for them
    return [t if t.dtype in _HALF else t.to(torch.bfloat16) for t in tensors]


def _flash_attn(q, k, v):
    from flash_attn import flash_attn_func

    dtype = q.dtype
    return flash_attn_func(*_as_half(q, k, v)).to(dtype)


def _sageattention(q, k, v):
    from sageattention import sageattn

    dtype = q.dtype
    return sageattn(*_as_half(q, k, v), tensor_layout="NHD", is_causal=False).to(dtype)


def _xformers(q, k, v):
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v)


# name -> (kernel, python package it needs or None, needs CUDA tensors)
_BACKENDS: dict[str, tuple[Callable, str | None, bool]] = {
    "sdpa": (_sdpa, None, False),
    "flash_attn": (_flash_attn, "flash_attn", True),
    "sageattention": (_sageattention, "sageattention", True),
    "xformers": (_xformers, "xformers", True),
}


def available_backends() -> list[str]:
    """Backends whose package is installed (CUDA-only ones only when CUDA is available)."""
    cuda = torch.cuda.is_available()
    return [
        name
        for name, (_, pkg, needs_cuda) in _BACKENDS.items()
        if (pkg is None or importlib.util.find_spec(pkg) is not None) and (cuda or not needs_cuda)
    ]


def check_backend(backend: str) -> None:
    """Raise a clear error if ``backend`` is unknown or its package is missing."""
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {sorted(_BACKENDS)}.")
    _, pkg, needs_cuda = _BACKENDS[backend]
    if pkg is not None and importlib.util.find_spec(pkg) is None:
        raise RuntimeError(
            f"attention backend {backend!r} needs the Python package {pkg!r}, which is "
            f"not installed. Install it, or use one of: {available_backends()}."
        )
    if needs_cuda and not torch.cuda.is_available():
        raise RuntimeError(
            f"attention backend {backend!r} runs on CUDA only and no CUDA device is available; use 'sdpa' instead."
        )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D] (softmax scale 1/sqrt(D))."""
    entry = _BACKENDS.get(backend)
    if entry is None:
        check_backend(backend)
    kernel, _, needs_cuda = entry
    if needs_cuda and not q.is_cuda:
        # CPU tensors (tests, CPU offload) fall back to the exact torch kernel
        return _sdpa(q, k, v)
    return kernel(q, k, v)
