"""Multi-task inpainting conditioning ``y`` built from cached latents, sampled per step.

Tasks are the core's (``echomimic_core.tasks``): ``first_frame`` (image-to-video), ``first_last``
(first and last frame given) and ``lipsync`` (the whole clip given except the mouth box: lip
re-synchronisation). ``y`` is ``[B, 20, F, h, w]``: 4 mask channels (1 = keep) then 16 channels of
the VAE latents of the pixel video with the generated parts zeroed. Those latents cannot be derived
from the clip's latents (the Wan VAE is causal and non-linear), so preprocessing caches one per task
(``cond.<task>``). Both the pixels preprocessing zeroes and the mask channels built here come from
:func:`task_inputs`, which goes through the core's ``task_masks`` (one implementation).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from echomimic_core import task_masks
from echomimic_core import tasks as core_tasks
from echomimic_core.boxes import Box, box_region
from echomimic_core.settings import PAPER_TASKS
from echomimic_core.vae_frames import VAE_SPATIAL_STRIDE, pixel_frames
from training.boxes import read_box, to_pixel_box

# global_keyframes only needs an image to name first_last's last frame; which frames are kept is all
# we take from it.
_PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), np.uint8)


def sample_tasks(has_mouth: list[bool], generator: torch.Generator, ratios: dict[str, float]) -> list[str]:
    """One task per sample; ``lipsync`` falls back to ``first_frame`` without a mouth box."""
    weights = torch.tensor([float(ratios.get(t, 0.0)) for t in PAPER_TASKS])
    picks = torch.multinomial(weights, len(has_mouth), replacement=True, generator=generator)
    tasks = [PAPER_TASKS[int(i)] for i in picks]
    return [("first_frame" if t == "lipsync" and not m else t) for t, m in zip(tasks, has_mouth)]


def task_inputs(
    task: str, num_frames: int, size: tuple[int, int], mouth_box=None, video: torch.Tensor | None = None
) -> task_masks.TaskInputs:
    """The core's pixel-space inputs of ``task`` for a clip of ``num_frames`` x ``size`` (H, W).

    ``mouth_box``: a Box of fractions (or its manifest form; lipsync only). ``video``: [1, 3, N, H, W] in
    [0, 1]; without it a zero view stands in (enough for the mask, allocates nothing).
    """
    if task not in PAPER_TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {PAPER_TASKS}.")
    height, width = size
    if video is None:
        video = torch.zeros(()).expand(1, 3, num_frames, height, width)
    if task == "lipsync":
        if mouth_box is None:
            raise ValueError("task 'lipsync' needs a mouth box; this clip has none.")
        region = box_region(to_pixel_box(read_box(mouth_box, "mouth_box"), size), num_frames, size)
    else:
        kept = core_tasks.global_keyframes(
            core_tasks.Task(kind=task, end_image=_PLACEHOLDER_IMAGE), _PLACEHOLDER_IMAGE, num_frames
        )
        region = torch.ones(num_frames, height, width, dtype=torch.bool)
        region[sorted(kept)] = False
    return task_masks.region_inputs(video, region)


@functools.lru_cache(maxsize=64)
def _mask_latents(task: str, latent_shape: tuple[int, int, int], mouth_box: Box | None) -> torch.Tensor:
    frames, h, w = latent_shape
    size = (h * VAE_SPATIAL_STRIDE, w * VAE_SPATIAL_STRIDE)
    pixel = task_inputs(task, pixel_frames(frames), size, mouth_box).input_video_mask  # [1, 1, N, H, W]
    return task_masks.mask_latents(pixel, (h, w))[0].bool()


def mask_latents(task: str, latent_shape, mouth_box=None) -> torch.Tensor:
    """``[4, F, h, w]`` mask channels of ``task`` for latents of ``latent_shape`` (F, h, w): the
    full-resolution pixel mask folded by the core (``task_masks.mask_latents``). Building the pixel
    mask takes seconds at 113 frames x 480p, so results are cached per (task, shape, box) and the
    dataset computes them in its DataLoader workers (``CachedDataset``), not the training step."""
    box = read_box(mouth_box, "mouth_box")  # a Box: hashable, so the cache can key on it
    return _mask_latents(task, tuple(int(v) for v in latent_shape), box if task == "lipsync" else None).float()


def build_y(
    tasks: list[str],
    cond_latents: dict[str, torch.Tensor],
    mouth_boxes: list | None = None,
    masks: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[B, 20, F, h, w]`` for one task per sample.

    ``cond_latents[task]`` is ``[B, 16, F, h, w]`` (rows of samples that did not pick that task may
    hold anything, e.g. zeros); ``masks[task]`` ``[B, 4, F, h, w]`` the mask channels when the
    dataset already built them (else they are built here).
    """
    any_latent = next(iter(cond_latents.values()))
    batch, _, frames, h, w = any_latent.shape
    mouth_boxes = mouth_boxes or [None] * batch
    missing = sorted(set(tasks) - set(cond_latents))
    if missing:
        raise KeyError(
            f"no cached masked-video latents for tasks {missing}; re-run "
            "`python -m training.preprocess` or set their ratio to 0."
        )
    masks = masks or {}
    mask = torch.stack(
        [
            masks[t][i] if t in masks else mask_latents(t, (frames, h, w), box)
            for i, (t, box) in enumerate(zip(tasks, mouth_boxes))
        ]
    ).to(any_latent)
    video = torch.stack([cond_latents[t][i] for i, t in enumerate(tasks)])
    return torch.cat([mask, video], dim=1)


def face_gates(face_boxes: list, latent_hw: tuple[int, int]) -> torch.Tensor | None:
    """Preview's ``face_gate`` [B, tokens per latent frame] from face boxes (Boxes of fractions),
    rasterised by the core (``face_region.face_gate_from_box``) on the sample's own pixel
    grid; samples without a box get an all-ones gate (audio acts everywhere). None when no sample
    has a box."""
    if all(box is None for box in face_boxes):
        return None
    from echomimic_core import face_region

    size = (latent_hw[0] * VAE_SPATIAL_STRIDE, latent_hw[1] * VAE_SPATIAL_STRIDE)
    rows, cols = face_region.token_grid(size)
    gates = []
    for box in face_boxes:
        pixel_box = None if box is None else to_pixel_box(read_box(box, "face_box"), size)
        if pixel_box is None or pixel_box.is_empty:
            # caches from before preprocessing dropped boxes the crop cut away can hold empty ones
            gates.append(torch.ones(1, rows * cols))
        else:
            gates.append(face_region.face_gate_from_box(pixel_box, size, size))
    return torch.cat(gates)
