"""Exponential moving average of the trained weights (``ema.*`` in the training config): updated
after every optimizer step, saved beside each checkpoint (``ema_state.safetensors``, plus the
averaged weights in the loader's format), resumed, and swapped in for validation.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class EMA:
    """Exponential moving average of the trainable parameters, in float32 beside the model:
    ``ema = decay * ema + (1 - decay) * weight`` after every optimizer step. Whole-tensor
    parameters only (single process or DDP); under FSDP a rank's parameters are shards."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)

    def state_dict(self, like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's state-dict names (cast like ``like``'s tensors)."""
        if like is None:
            return {k: v.clone() for k, v in self.shadow.items()}
        return {k: v.to(like[k].dtype) for k, v in self.shadow.items() if k in like}

    def save(self, path: Path) -> None:
        from echomimic_core.checkpoints.files import save_state_dict

        save_state_dict({k: v.cpu().contiguous() for k, v in self.shadow.items()}, path)

    def load(self, path: Path) -> None:
        from echomimic_core.checkpoints.files import load_state_dict

        if not path.is_file():
            log.warning("%s: no EMA state in this checkpoint; the average restarts from the current weights", path)
            return
        for name, value in load_state_dict(path).items():
            if name in self.shadow:
                self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """The model with the averaged weights for the duration of the block."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, v in self.shadow.items():
                params[n].copy_(v)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, v in saved.items():
                    params[n].copy_(v)
