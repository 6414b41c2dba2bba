"""Apply LoRA files to the transformer: ``W += strength * alpha / rank * B @ A``.

Reads the file our trainer writes (``diffusion_model.<module>.lora_A/lora_B.weight`` + ``alpha``)
and the other common spellings of the same thing: kohya/ComfyUI ``lora_down``/``lora_up``, kohya /
musubi-tuner's flattened module names (``lora_unet_blocks_0_self_attn_q``), diffusers'
``transformer.`` prefix, and no prefix at all.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from .files import CheckpointError, load_state_dict
from .quant import FP8_DTYPES, to_fp8
from .transformer import is_finite

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
_SPELLINGS = ((".lora_down.", ".lora_A."), (".lora_up.", ".lora_B."))
_FLAT_PREFIXES = ("lora_unet_", "lora_transformer_")


def resolve_modules(modules, weight_names) -> dict[str, str]:
    """{LoRA module name: the model's module path}. kohya names flatten the path with underscores
    (``lora_unet_blocks_0_self_attn_q``), which is ambiguous to split, so they are looked up among
    the model's own weight names instead."""
    paths = {name[: -len(".weight")] for name in weight_names if name.endswith(".weight")}
    flat = {path.replace(".", "_"): path for path in paths}
    resolved = {}
    for module in modules:
        prefix = next((p for p in _FLAT_PREFIXES if module.startswith(p)), None)
        target = flat.get(module[len(prefix) :]) if prefix and module not in paths else module
        if target is None or target not in paths:
            raise CheckpointError(
                f"the LoRA targets {module!r}, which this transformer does not have "
                "(a LoRA trained for another model or variant?)."
            )
        resolved[module] = target
    return resolved


class LoraModules(dict):
    """{module path: (A [rank, in], B [out, rank], alpha)}: a LoRA read and checked (normalize_lora)."""


def normalize_lora(lora: dict[str, torch.Tensor]) -> LoraModules:
    """{module path: (A [rank, in], B [out, rank], alpha)} from any supported key layout."""
    renamed = {}
    for key, value in lora.items():
        for old, new in _SPELLINGS:
            key = key.replace(old, new)
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        renamed[key[len(prefix) :]] = value
    modules = {}
    for key in renamed:
        if ".lora_A." not in key:
            continue
        module = key.rsplit(".lora_A.", 1)[0]
        b = renamed.get(f"{module}.lora_B.weight")
        if b is None:
            raise CheckpointError(f"LoRA file has {key} but no matching lora_B/lora_up weight; the file is incomplete.")
        a = renamed[key]
        alpha = renamed.get(f"{module}.alpha")
        modules[module] = (a, b, float(alpha) if alpha is not None else float(a.shape[0]))
    if not modules:
        raise CheckpointError(
            "no LoRA weights found (expected keys like "
            "'diffusion_model.blocks.0.self_attn.q.lora_A.weight'); is this a LoRA file?"
        )
    # one NaN would turn the merged weights, and so every frame, NaN: name it before merging
    bad = [m for m, (a, b, alpha) in modules.items() if not (is_finite(a) and is_finite(b) and math.isfinite(alpha))]
    if bad:
        raise CheckpointError(
            f"{len(bad)} of {len(modules)} LoRA modules hold NaN or infinite values (first: {bad[0]}); the file "
            "is damaged or its training diverged: use an earlier checkpoint."
        )
    return LoraModules(modules)


def read_lora(lora: LoraModules | dict[str, torch.Tensor] | str | Path) -> LoraModules:
    """:func:`normalize_lora` of a state dict or a file (a file's problems name it); one already
    read is returned as it is."""
    if isinstance(lora, LoraModules):
        return lora
    if isinstance(lora, dict):
        return normalize_lora(lora)
    try:
        return normalize_lora(load_state_dict(lora))
    except CheckpointError as e:
        raise CheckpointError(f"{lora}: {e}") from e


def check_strength(strength: float) -> None:
    """Refuse a NaN or infinite strength (it would make every merged weight non-finite)."""
    if not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be a finite number, got {strength}; e.g. 1.0 (0 = off).")


def merge_lora(
    state: dict[str, torch.Tensor],
    lora: dict[str, torch.Tensor] | str | Path,
    strength: float = 1.0,
    scales: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A copy of a transformer state dict with the LoRA merged in (each weight keeps its dtype).

    ``scales``: {module: scale_weight} of layers stored as scaled fp8 (the real weight is
    ``weight.float() * scale``): the delta is added to the real weight, which is re-quantised with
    the scale grown where the merged weight outgrows fp8's range; such a layer's (new) scale comes
    back under ``<module>.scale_weight``."""
    check_strength(strength)
    modules = read_lora(lora)
    names = resolve_modules(modules, state)
    scales = scales or {}
    out = dict(state)
    for lora_module, (a, b, alpha) in modules.items():
        module = names[lora_module]
        key = module + ".weight"
        w = out[key]
        # the product on the weight's device: a [out, in] matmul is slow on the CPU
        delta = (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)) * (strength * alpha / a.shape[0])
        scale = scales.get(module)
        if scale is None:
            merged = w.float() + delta
            # fp8 storage: saturate at the format's range instead of overflowing to NaN
            out[key] = to_fp8(merged, w.dtype) if w.dtype in FP8_DTYPES else merged.to(w.dtype)
            continue
        scale = scale.to(w.device, torch.float32)
        real = w.float() * scale + delta
        # per tensor ([]) or per output channel ([out, 1]), as the file stored it
        dims = tuple(range(real.ndim)) if scale.ndim == 0 else tuple(range(1, real.ndim))
        peak = real.abs().amax(dim=dims, keepdim=scale.ndim > 0) / torch.finfo(w.dtype).max
        scale = torch.maximum(scale, peak)
        out[key] = to_fp8(real / scale, w.dtype)
        out[module + ".scale_weight"] = scale
    return out


@torch.no_grad()
def apply_lora(model: torch.nn.Module, lora: dict[str, torch.Tensor] | str | Path, strength: float = 1.0) -> int:
    """Merge a LoRA into a loaded model in place; returns the number of layers changed."""
    weights = {name: p for name, p in model.named_parameters() if name.endswith(".weight")}
    scales = {name: m.scale_weight for name, m in model.named_modules() if getattr(m, "scale_weight", None) is not None}
    merged = merge_lora(weights, lora, strength, scales)
    changed = 0
    for name, value in merged.items():
        if name.endswith(".scale_weight"):
            scales[name[: -len(".scale_weight")]].copy_(value)
        elif value is not weights[name]:
            weights[name].copy_(value)
            changed += 1
    return changed


def with_lora(
    model: torch.nn.Module, lora: dict[str, torch.Tensor] | str | Path, strength: float = 1.0
) -> torch.nn.Module:
    """A copy of ``model`` with the LoRA merged in, leaving ``model`` untouched.

    Only the weights the LoRA changes (and their fp8 scales) are new tensors; every other parameter
    and buffer is shared with ``model``, so a LoRA on a 1.3B model costs the size of the layers it
    touches, not a second model. A model with block swap enabled is copied whole (its host copies
    of the weights are tied to the parameters).
    """
    check_strength(strength)  # before the copy
    lora = read_lora(lora)  # read once; apply_lora merges what it read
    modules = resolve_modules(lora, dict(model.named_parameters())).values()
    changed = {m + suffix for m in modules for suffix in (".weight", ".scale_weight")}
    # the copy starts without the original's run state: no block swap (a CUDA stream cannot be
    # copied; the copy sets up its own when placed) and no host memory-manager handle
    memo = {id(state): None for state in (getattr(model, "_swap", None), getattr(model, "echomimic_patcher", None))}
    memo.pop(id(None), None)
    if getattr(model, "_swap", None) is None:
        tensors = [*model.named_parameters(), *model.named_buffers()]
        memo = {id(t): t for name, t in tensors if name not in changed}
    clone = copy.deepcopy(model, memo)
    apply_lora(clone, lora, strength)
    return clone
