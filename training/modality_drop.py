"""Phase-specific modality drop and classifier-free dropout on a ``Conditioning``.

Phases (see ``flow_matching``): early = text only (image and audio dropped), middle = all three,
late = one or two of the three dropped at random. Classifier-free dropout is then applied on top
so the unconditional branches used by inference guidance are trained.

"Dropped" means what upstream's inference feeds for an absent modality, so training and guidance
agree: text -> the embedding of the empty prompt; image -> zero CLIP tokens and a zero ``y`` (no
kept frames, no masked-video latents); audio -> zero audio features.
"""

from __future__ import annotations

import dataclasses

import torch

from training.config import MODALITIES, DropConfig

TEXT, IMAGE, AUDIO = range(3)


def drop_plan(phases: torch.Tensor, generator: torch.Generator, cfg: DropConfig) -> torch.Tensor:
    """[B, 3] bool, columns (text, image, audio): which modality each sample loses."""
    batch = phases.shape[0]
    dropped = torch.zeros(batch, len(MODALITIES), dtype=torch.bool)
    for b in range(batch):
        u = torch.rand(5, generator=generator)  # fixed draw count per sample keeps streams aligned
        order = torch.randperm(len(MODALITIES), generator=generator)
        if cfg.phase_drop:
            if int(phases[b]) == 0:
                dropped[b, IMAGE] = dropped[b, AUDIO] = True
            elif int(phases[b]) == 2:
                count = 2 if u[0] < cfg.late_two_prob else 1
                dropped[b, order[:count]] = True
        if u[1] < cfg.cfg_text:
            dropped[b, TEXT] = True
        if u[2] < cfg.cfg_audio:
            dropped[b, AUDIO] = True
        if u[3] < cfg.cfg_all:
            dropped[b] = True
    return dropped


def _fit_length(null: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or trim ``[L, D]`` to ``length`` rows; the model zero-pads text to text_len anyway."""
    if null.shape[0] >= length:
        return null[:length]
    return torch.cat([null, null.new_zeros(length - null.shape[0], null.shape[1])])


def _drop_text(context, rows: torch.Tensor, null_text: torch.Tensor):
    if isinstance(context, (list, tuple)):
        return [null_text.to(c) if bool(rows[i]) else c for i, c in enumerate(context)]
    keep = (~rows).to(context.device).view(-1, 1, 1)
    null = _fit_length(null_text.to(context), context.shape[1]).expand_as(context)
    return torch.where(keep, context, null)


def _zero_rows(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    if tensor is None:
        return None
    keep = (~rows).to(tensor.device).view(-1, *([1] * (tensor.dim() - 1)))
    return tensor * keep.to(tensor.dtype)


def apply_drop(cond, dropped: torch.Tensor, null_text: torch.Tensor):
    """A copy of ``cond`` with the modalities marked in ``dropped`` [B, 3] replaced per sample."""
    changes = {}
    if dropped[:, TEXT].any():
        changes["context"] = _drop_text(cond.context, dropped[:, TEXT], null_text)
    if dropped[:, IMAGE].any():
        changes["clip_fea"] = _zero_rows(cond.clip_fea, dropped[:, IMAGE])
        changes["y"] = _zero_rows(cond.y, dropped[:, IMAGE])
    if dropped[:, AUDIO].any():
        changes["audio"] = _zero_rows(cond.audio, dropped[:, AUDIO])
    return dataclasses.replace(cond, **changes) if changes else cond
