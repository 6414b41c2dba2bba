"""fp8 weights: storing parameters as float8_e4m3fn, and reading ComfyUI "scaled fp8" files.

Scaled-fp8 files (e.g. ``*_fp8_scaled.safetensors``) store each linear weight as fp8 plus a
per-layer scale: ``<layer>.scale_weight`` (old ComfyUI) or ``<layer>.weight_scale`` (ComfyUI
0.8+, with a ``<layer>.comfy_quant`` JSON byte tensor), and a ``scaled_fp8`` marker tensor whose
dtype names the fp8 type. The real weight is ``weight.float() * scale``.
Plain ``*_fp8_e4m3fn`` files are unscaled casts and need no special handling.

ComfyUI 0.8 also writes ``nvfp4`` files (4-bit weights packed two per uint8 byte, an fp8 scale per
16 weights in ``weight_scale`` and a per-tensor ``weight_scale_2``). They need Blackwell FP4 matmuls
or an unpacking step we do not have; :func:`check_supported_quantization` refuses them by name
before their ``weight_scale`` could be taken for an fp8 scale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

import torch

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448: larger values would cast to NaN

_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_MARKER = "scaled_fp8"
# ComfyUI's per-layer "comfy_quant" formats that are fp8 weights with a scale (what we read)
SUPPORTED_COMFY_QUANT = ("float8_e4m3fn", "float8_e5m2")
_NVFP4_SCALE = ".weight_scale_2"  # the per-tensor scale only ComfyUI's nvfp4 layers carry
UNSUPPORTED_QUANT_ADVICE = (
    "Use the bf16/fp16 file, or an fp8 one (*_fp8_e4m3fn or *_fp8_scaled); to halve the weights' "
    "memory, load a bf16/fp16 file with fp8 weight storage (--storage-dtype float8_e4m3fn, or "
    "weight_storage fp8_e4m3fn on the model loader node)."
)


def _quant_format(key: str, value) -> str | None:
    """The format a layer's ``comfy_quant`` JSON names (None for a header-only (shape, dtype) entry)."""
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return json.loads(value.cpu().to(torch.uint8).numpy().tobytes()).get("format")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{key}: not the JSON ComfyUI writes there ({e}); the file is damaged.") from e


def check_supported_quantization(state_dict: Mapping, source: str = "checkpoint") -> None:
    """Raise a ValueError naming the layer and format when the file uses a quantisation other than
    (scaled) fp8, e.g. ComfyUI's nvfp4. ``state_dict`` maps keys to tensors, or to the (shape, dtype)
    pairs of a file's header (then the keys and dtypes decide)."""
    for key, value in state_dict.items():
        fmt = None
        if key.endswith(".comfy_quant"):
            fmt = _quant_format(key, value)
            layer = key.removesuffix(".comfy_quant")
        elif key.endswith(_NVFP4_SCALE):
            fmt, layer = "nvfp4", key.removesuffix(_NVFP4_SCALE)
        elif key.endswith(_SCALE_SUFFIXES):
            layer = key.rsplit(".", 1)[0]
            weight = state_dict.get(layer + ".weight")
            dtype = weight.dtype if isinstance(weight, torch.Tensor) else (weight or (None, None))[1]
            if dtype == torch.uint8:  # sub-byte weights packed in bytes
                fmt = "nvfp4" if layer + _NVFP4_SCALE in state_dict else "packed 4-bit"
        if fmt is not None and fmt not in SUPPORTED_COMFY_QUANT:
            raise ValueError(
                f"{source}: layer {layer!r} is quantised as ComfyUI {fmt!r}, which is not supported "
                f"(only fp8 weights with scales are). {UNSUPPORTED_QUANT_ADVICE}"
            )


def is_scaled_fp8(keys) -> bool:
    """Whether a state dict (or its key list) is a scaled-fp8 file that needs de-quantising."""
    return any(k == _MARKER or k.endswith("." + _MARKER) or k.endswith(_SCALE_SUFFIXES) for k in keys)


def dequantize_scaled_fp8(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Fold every per-layer scale into its weight and drop the quantisation bookkeeping.

    Weights with a scale come back as ``dtype``; every other tensor is returned unchanged (the
    caller casts those). Input scales only matter for fp8 matmuls, which we do not use.
    The input mapping is consumed key by key so a large file is never held twice in memory.
    """
    return split_scaled_fp8(state_dict, dtype)[0]


def split_scaled_fp8(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.bfloat16,
    keep: Callable[[str], bool] = lambda layer: False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state, scales): layers for which ``keep(layer)`` is true keep their fp8 weight, and their
    float32 scale is returned in ``scales[layer]`` ([] per tensor, [out, 1] per output channel) for
    an ``ops.Linear`` ``scale_weight`` buffer; every other scaled weight is de-quantised to
    ``dtype`` (``weight.float() * scale``, rounded once). Markers and input scales are dropped."""
    check_supported_quantization(state_dict)
    state = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}
    scales = {k: state.pop(k) for k in [k for k in state if k.endswith(_SCALE_SUFFIXES)]}
    for key in [k for k in state if k == _MARKER or k.endswith("." + _MARKER) or k.endswith(_DROPPED_SUFFIXES)]:
        del state[key]
    for scale_key, scale in scales.items():
        layer = scale_key.rsplit(".", 1)[0]
        weight_key = layer + ".weight"
        if weight_key not in state:
            raise ValueError(f"scaled fp8: {scale_key} has no matching {weight_key}; the file is damaged.")
        weight = state.pop(weight_key)
        scale = scale.to(device=weight.device, dtype=torch.float32)
        if scale.ndim == 1 and scale.numel() == weight.shape[0] and weight.ndim > 1:
            scale = scale.view(-1, *([1] * (weight.ndim - 1)))  # per output channel
        elif scale.numel() == 1:
            scale = scale.reshape(())
        if keep(layer):
            out[weight_key], kept[layer] = weight, scale
        else:
            out[weight_key] = (weight.to(torch.float32) * scale).to(dtype)
    out.update(state)
    log.info(
        "scaled fp8: %d weights de-quantised to %s, %d kept in fp8 with their scales",
        len(scales) - len(kept),
        dtype,
        len(kept),
    )
    return out, kept


def to_fp8(tensor: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Cast to fp8, saturating at the format's largest value instead of overflowing to NaN."""
    limit = torch.finfo(dtype).max
    return tensor.clamp(-limit, limit).to(dtype)


def quantize_scaled_fp8(
    state_dict: Mapping[str, torch.Tensor], keys=None, dtype: torch.dtype = torch.float8_e4m3fn
) -> dict[str, torch.Tensor]:
    """Write the ComfyUI scaled-fp8 layout (per-tensor ``scale_weight``, ``scaled_fp8`` marker).

    The inverse of :func:`dequantize_scaled_fp8`, used to produce such files (and in tests).
    ``keys``: the weights to quantise (default: every 2-D ``*.weight``).
    """
    out = dict(state_dict)
    keys = [k for k in out if k.endswith(".weight") and out[k].ndim == 2] if keys is None else keys
    for key in keys:
        weight = out[key].to(torch.float32)
        scale = weight.abs().amax().clamp_min(1e-12) / torch.finfo(dtype).max
        out[key] = to_fp8(weight / scale, dtype)
        out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
    out[_MARKER] = torch.empty(2, dtype=dtype)
    return out
