"""The one attention entry point of the model, with kernels chosen by name.

``attention(q, k, v, backend)`` takes and returns ``[B, L, heads, head_dim]`` (Wan's layout).

An additive logit ``bias`` (``[B or 1, 1, 1, Lk]``) is taken by the text cross-attention only:
upstream attends over the prompt zero-padded to 512 rows, and the model (in float32) keeps one
row for the identical pad rows with log(count) added to its logit (``model.context_cache``), plus -inf on the
filler rows of a batch of prompts of different lengths. Such a call goes to SDPA (a float
``attn_mask``) whatever the backend: flash-attn and SageAttention take no bias, and that key set
is short (a prompt's ~50 tokens instead of 512), so the kernel choice costs nothing there while
the compact keys save ~10x of its work. Self-attention and the other cross-attentions are unchanged.

SageAttention is used only where it is exact. Its Triton kernels (sageattention 1.0.6, and 2.x on
RTX 30xx) read keys in blocks of 64 and load the missing keys of the last block as zeros without
masking them out of the softmax: each such phantom key adds exp(0 - max) to the denominator. The
error is about the phantom keys' share of the block-rounded key set (measured: 0.64 at 17 keys,
0.39 at 32, 0.13 at 257; at 512 only its int8 rounding, 0.001). So a key set goes to SageAttention
only when it is long (self-attention over thousands of tokens) and its phantom share is below that
rounding; the short cross-attentions (text, CLIP, audio windows) take SDPA, which costs nothing
noticeable there (their key sets are tiny next to the self-attention's).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_HALF = (torch.float16, torch.bfloat16)

SAGE_HEAD_DIMS = (64, 96, 128)  # the head widths SageAttention 1.x has kernels for (2.x pads to them)
SAGE_KEY_BLOCK = 64  # keys per block of SageAttention's Triton kernels
SAGE_MIN_KEYS = 1024  # shorter key sets (cross-attention) gain nothing from it
SAGE_MAX_PHANTOM_SHARE = 2**-10  # at most its own int8 rounding error


def _sdpa(q, k, v, bias=None):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    return out.transpose(1, 2)


def _as_half(*tensors):
    # flash-attn / sage kernels only take fp16/bf16; upstream also casts fp32 to bf16 for them
    return [t if t.dtype in _HALF else t.to(torch.bfloat16) for t in tensors]


def _flash_attn(q, k, v):
    from flash_attn import flash_attn_func

    dtype = q.dtype
    return flash_attn_func(*_as_half(q, k, v)).to(dtype)


def sage_is_exact(key_len: int) -> bool:
    """Whether SageAttention over ``key_len`` keys is as exact as its int8 rounding allows: enough
    keys, and the unmasked phantom keys of the last 64-key block a negligible share of them."""
    phantom = -key_len % SAGE_KEY_BLOCK
    return key_len >= SAGE_MIN_KEYS and phantom <= key_len * SAGE_MAX_PHANTOM_SHARE


def _sageattention(q, k, v):
    if not sage_is_exact(k.shape[1]):
        log.debug("SageAttention would be inexact over %d keys: SDPA instead", k.shape[1])
        return _sdpa(q, k, v)
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


def check_backend(backend: str, head_dim: int | None = None) -> None:
    """Raise a clear error if ``backend`` is unknown, its package is missing, or it has no kernel
    for heads ``head_dim`` wide (when given)."""
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {sorted(_BACKENDS)}.")
    if backend == "sageattention" and head_dim is not None and head_dim not in SAGE_HEAD_DIMS:
        raise ValueError(
            f"attention backend 'sageattention' has kernels for head dims {SAGE_HEAD_DIMS}; this model's "
            f"heads are {head_dim} wide. Use 'sdpa' or 'flash_attn' for it."
        )
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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa", bias: torch.Tensor | None = None
) -> torch.Tensor:
    """q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D] (softmax scale 1/sqrt(D)).
    ``bias``: [B or 1, 1, 1, Lk] added to the logits, in q's dtype (always through SDPA, see above)."""
    entry = _BACKENDS.get(backend)
    if entry is None:
        check_backend(backend)
    kernel, _, needs_cuda = entry
    if q.is_meta:
        # shape-only execution (memory planning): a fused kernel allocates just its output,
        # while SDPA's meta path would materialise the [Lq, Lk] scores
        return q.new_empty(*q.shape[:-1], v.shape[-1])
    if bias is not None:
        return _sdpa(q, k, v, bias)
    if needs_cuda and not q.is_cuda:
        # CPU tensors (tests, CPU offload) fall back to the exact torch kernel
        return _sdpa(q, k, v)
    return kernel(q, k, v)
