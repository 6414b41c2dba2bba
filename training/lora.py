"""LoRA on the transformer with peft, saved as a small ComfyUI-style safetensors file.

peft fits: our ``ops.Linear`` subclasses ``nn.Linear``, so ``peft.inject_adapter_in_model`` wraps
it (the base layer keeps its cast-on-the-fly forward) and the model keeps its own class and
``forward(x, t, cond)`` (no ``PeftModel`` wrapper in the way of accelerate or the sampler).

File format (what ComfyUI's LoRA loader and ``echomimic_core.checkpoints.lora`` read)::

    diffusion_model.<module>.lora_A.weight   [rank, in]
    diffusion_model.<module>.lora_B.weight   [out, rank]
    diffusion_model.<module>.alpha           scalar
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch
from torch import nn

from echomimic_core.checkpoints.files import save_state_dict
from echomimic_core.checkpoints.lora import merge_lora  # noqa: F401  (re-exported for training users)
from training.config import LoRAConfig

PREFIX = "diffusion_model."


def require_peft():
    """peft is a training-only dependency (not in ComfyUI's Python): import it or say how to get it."""
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "LoRA training needs peft, which the node pack does not install: "
            "pip install -r requirements-train.txt (or pip install peft)"
        ) from e
    return peft


def add_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> nn.Module:
    """Inject LoRA adapters into the Linear layers named by ``cfg.target_modules`` (names are
    matched against the end of module paths, e.g. ``"q"`` -> ``blocks.3.self_attn.q``) and
    freeze everything else. peft draws ``lora_A`` from the global RNG; it is drawn here from
    ``seed`` (without touching the caller's RNG), so two runs with one seed start alike."""
    peft = require_peft()
    targets = "|".join(re.escape(t) for t in cfg.target_modules)
    pattern = rf".*\.({targets})$"
    if not any(re.fullmatch(pattern, name) for name, m in model.named_modules() if isinstance(m, nn.Linear)):
        raise ValueError(
            f"lora.target_modules {cfg.target_modules} match no Linear layer of the "
            "model; use names such as 'q', 'k', 'v', 'o', 'ffn.0'."
        )
    model.requires_grad_(False)
    peft_cfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=pattern, lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.inject_adapter_in_model(peft_cfg, model)


def lora_state_dict(
    model: nn.Module, alpha: float, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapters in the file format above, read from ``state_dict`` (the model's full state
    dict, e.g. ``accelerator.get_state_dict``) or else from the model's own parameters. Under FSDP
    the module's parameters are this rank's shards, so the gathered state dict must be given."""
    out = {}
    for key, value in require_peft().get_peft_model_state_dict(model, state_dict=state_dict).items():
        out[PREFIX + key] = value.detach().float().cpu()
        module = key.rsplit(".lora_", 1)[0]
        out[PREFIX + module + ".alpha"] = torch.tensor(float(alpha))
    return out


def save_lora(
    model: nn.Module, path: str | Path, cfg: LoRAConfig, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    save_state_dict(
        lora_state_dict(model, cfg.alpha, state_dict),
        path,
        metadata={"format": "lora", "rank": str(cfg.rank), "alpha": str(cfg.alpha)},
    )


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model (the frozen DPO reference when training LoRA) without a second copy."""
    require_peft()
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
