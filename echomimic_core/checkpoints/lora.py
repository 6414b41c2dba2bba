"""Apply LoRA files to the transformer: ``W += strength * alpha / rank * B @ A``.

Reads the file our trainer writes (``diffusion_model.<module>.lora_A/lora_B.weight`` + ``alpha``)
and the other common spellings of the same thing: kohya/ComfyUI ``lora_down``/``lora_up``, diffusers'
``transformer.`` prefix, and no prefix at all.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .files import CheckpointError, load_state_dict
from .quant import FP8_DTYPES, to_fp8

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
_SPELLINGS = ((".lora_down.", ".lora_A."), (".lora_up.", ".lora_B."))


def normalize_lora(lora: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path: (A [rank, in], B [out, rank], alpha)} from any supported key layout."""
    renamed = {}
    for key, value in lora.items():
        for old, new in _SPELLINGS:
            key = key.replace(old, new)
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        renamed[key[len(prefix):]] = value
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
        raise CheckpointError("no LoRA weights found (expected keys like "
                              "'diffusion_model.blocks.0.self_attn.q.lora_A.weight'); is this a LoRA file?")
    return modules


def merge_lora(state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor] | str | Path,
               strength: float = 1.0) -> dict[str, torch.Tensor]:
    """A copy of a transformer state dict with the LoRA merged in (each weight keeps its dtype)."""
    modules = normalize_lora(lora if isinstance(lora, dict) else load_state_dict(lora))
    out = dict(state)
    for module, (a, b, alpha) in modules.items():
        key = module + ".weight"
        if key not in out:
            raise CheckpointError(f"the LoRA targets {module!r}, which this transformer does not have "
                                  "(a LoRA trained for another model or variant?).")
        w = out[key]
        # the product on the weight's device: a [out, in] matmul is slow on the CPU
        delta = (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)) * (strength * alpha / a.shape[0])
        merged = w.float() + delta
        # fp8 storage: saturate at the format's range instead of overflowing to NaN
        out[key] = to_fp8(merged, w.dtype) if w.dtype in FP8_DTYPES else merged.to(w.dtype)
    return out


@torch.no_grad()
def apply_lora(model: torch.nn.Module, lora: dict[str, torch.Tensor] | str | Path, strength: float = 1.0) -> int:
    """Merge a LoRA into a loaded model in place; returns the number of layers changed."""
    weights = {name: p for name, p in model.named_parameters() if name.endswith(".weight")}
    merged = merge_lora(weights, lora, strength)
    changed = 0
    for name, value in merged.items():
        if value is not weights[name]:
            weights[name].copy_(value)
            changed += 1
    return changed
