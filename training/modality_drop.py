"""Phase-specific modality drop and classifier-free dropout on a ``Conditioning``.

Phases (see ``flow_matching``): early = text, the CLIP image with probability
``1 - early_image_prob`` and audio with probability ``1 - early_audio_prob`` (by default the image
in half the samples, never audio); middle = all three; late = one or two of the three dropped at
random. Classifier-free dropout is then applied on top
so the unconditional branches used by inference guidance are trained.

The drop acts where the paper puts it, on the decoupled cross-attention's inputs (text, CLIP image
tokens, audio), never on the inpainting input ``y`` (reference frame + task mask): inference feeds
``y`` at every step, so every training sample sees it too. "Dropped" means what inference feeds
for an absent modality: text -> the embedding of the empty prompt; image -> zero CLIP tokens;
audio -> zero audio features. ``DropConfig.image_drop = "clip_and_y"`` restores the former
behaviour (a dropped image also zeroes ``y``: those samples train as text-to-video).
"""

from __future__ import annotations

import dataclasses

import torch

from training.config import IMAGE_DROP_TARGETS, MODALITIES, DropConfig

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
                # u[0] decides the late phase's count only, so the early phase may reuse it
                dropped[b, IMAGE] = bool(u[4] < cfg.early_image_prob)
                dropped[b, AUDIO] = bool(u[0] < cfg.early_audio_prob)
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


def apply_drop(cond, dropped: torch.Tensor, null_text: torch.Tensor, image_drop: str = "clip"):
    """A copy of ``cond`` with the modalities marked in ``dropped`` [B, 3] replaced per sample.

    ``image_drop``: "clip" (the CLIP tokens only; ``y`` is kept) or "clip_and_y" (the former
    behaviour, which also zeroes the reference frame and task mask)."""
    if image_drop not in IMAGE_DROP_TARGETS:
        raise ValueError(f"image_drop must be one of {IMAGE_DROP_TARGETS}, got {image_drop!r}.")
    changes = {}
    if dropped[:, TEXT].any():
        changes["context"] = _drop_text(cond.context, dropped[:, TEXT], null_text)
    if dropped[:, IMAGE].any():
        changes["clip_fea"] = _zero_rows(cond.clip_fea, dropped[:, IMAGE])
        if image_drop == "clip_and_y":
            changes["y"] = _zero_rows(cond.y, dropped[:, IMAGE])
    if dropped[:, AUDIO].any():
        changes["audio"] = _zero_rows(cond.audio, dropped[:, AUDIO])
    return dataclasses.replace(cond, **changes) if changes else cond
