"""Multi-task inpainting conditioning ``y`` built from cached latents, sampled per step.

Tasks: ``first_frame`` (image-to-video), ``first_last`` (first and last frame given) and
``mouth`` (the whole clip given except the mouth box: lip re-synchronisation). ``y`` is
``[B, 20, F, h, w]``: 4 mask channels (1 = keep) then 16 channels of the VAE latents of the pixel
video with the generated parts zeroed. Those latents cannot be derived from the clip's latents
(the Wan VAE is causal and non-linear), so preprocessing caches one per task
(``cond.<task>``); the mask channels are cheap and built here by ``task_masks.mask_latents``.
"""
from __future__ import annotations

import torch
from echomimic_core import task_masks
from training.config import TASKS

VAE_STRIDE = task_masks.VAE_SPATIAL_COMPRESSION


def sample_tasks(has_mouth: list[bool], generator: torch.Generator,
                 ratios: dict[str, float]) -> list[str]:
    """One task per sample; ``mouth`` falls back to ``first_frame`` without a mouth box."""
    weights = torch.tensor([float(ratios.get(t, 0.0)) for t in TASKS])
    picks = torch.multinomial(weights, len(has_mouth), replacement=True, generator=generator)
    tasks = [TASKS[int(i)] for i in picks]
    return [("first_frame" if t == "mouth" and not m else t) for t, m in zip(tasks, has_mouth)]


def pixel_keep_mask(task: str, num_frames: int, height: int, width: int,
                    mouth_box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """``[N, H, W]`` float, 1 where the pixel is given to the model, 0 where it is generated.

    ``mouth_box`` is (x0, y0, x1, y1) as fractions of the frame width / height.
    """
    keep = torch.zeros(num_frames, height, width)
    if task == "first_frame":
        keep[0] = 1
    elif task == "first_last":
        keep[0] = keep[-1] = 1
    elif task == "mouth":
        if mouth_box is None:
            raise ValueError("task 'mouth' needs a mouth box; this clip has none.")
        x0, y0, x1, y1 = mouth_box
        keep[:] = 1
        keep[:, round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = 0
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}.")
    return keep


def generate_mask(keep: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, W]`` keep mask -> ``[B, 1, N, H, W]`` in upstream's 0 = keep / 255 = generate."""
    return torch.where(keep.bool(), task_masks.KEEP, task_masks.GENERATE)[:, None]


def build_y(tasks: list[str], cond_latents: dict[str, torch.Tensor],
            mouth_boxes: list | None = None) -> torch.Tensor:
    """``[B, 20, F, h, w]`` for one task per sample.

    ``cond_latents[task]`` is ``[B, 16, F, h, w]`` (rows of samples that did not pick that task may
    hold anything, e.g. zeros).
    """
    any_latent = next(iter(cond_latents.values()))
    batch, _, frames, h, w = any_latent.shape
    mouth_boxes = mouth_boxes or [None] * batch
    n_pixel = 4 * (frames - 1) + 1
    keep = torch.stack([pixel_keep_mask(t, n_pixel, h * VAE_STRIDE, w * VAE_STRIDE, box)
                        for t, box in zip(tasks, mouth_boxes)])
    mask = task_masks.mask_latents(generate_mask(keep), (h, w)).to(any_latent)
    missing = sorted(set(tasks) - set(cond_latents))
    if missing:
        raise KeyError(f"no cached masked-video latents for tasks {missing}; re-run "
                       "`python -m training.preprocess` or set their ratio to 0.")
    video = torch.stack([cond_latents[t][i] for i, t in enumerate(tasks)])
    return torch.cat([mask, video], dim=1)


def face_gates(face_boxes: list, latent_hw: tuple[int, int]) -> torch.Tensor | None:
    """Preview's ``ip_mask`` [B, tokens per latent frame] from face boxes (x0, y0, x1, y1) given as
    fractions of the frame, rasterised as upstream (``face_region.ip_mask_from_box``); samples
    without a box get an all-ones gate (audio acts everywhere). None when no sample has a box."""
    if all(box is None for box in face_boxes):
        return None
    from echomimic_core import face_region

    size = (latent_hw[0] * VAE_STRIDE, latent_hw[1] * VAE_STRIDE)
    tokens = face_region.token_grid(size)
    gates = []
    for box in face_boxes:
        if box is None:
            gates.append(torch.ones(1, tokens[0] * tokens[1]))
        else:
            x0, y0, x1, y1 = box
            pixel_box = (y0 * size[0], y1 * size[0], x0 * size[1], x1 * size[1])
            gates.append(face_region.ip_mask_from_box(pixel_box, size, size))
    return torch.cat(gates)
