"""What each task keeps and what it generates, chunk by chunk.

A :class:`Task` names one of the paper's multi-task 0-1 masks (first frame -> video, first + last
frame, mouth-region reconstruction over a source video) or one beyond it (arbitrary keyframes,
continuing a video). ``chunk_task_inputs`` turns it into the pixel-space inputs of one long-video
chunk — the task's own kept frames that fall inside the chunk plus the previous chunk's tail — which
``task_masks`` folds into the conditioning ``y``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import task_masks
from .boxes import Box, box_region, check_box_inside
from .long_video import Chunk
from .media import to_uint8_frames
from .settings import TASKS

# preview colours: the region lip-sync regenerates, and where the preview model's audio acts
MOUTH_TINT, FACE_TINT = (1.0, 0.2, 0.2), (0.2, 1.0, 0.2)


@dataclass
class Task:
    """What to keep and what to generate (the paper's multi-task 0-1 masks, and more).

    first_frame: the reference image opens the video. first_last: ``end_image`` closes it.
    keyframes: ``keyframes`` {frame index: image [H, W, 3] 0..1} kept (negative = from the end).
    lipsync: ``source_video`` [F, H, W, 3] kept except the mouth region (``mouth_box``, a Box or
      top, bottom, left, right in the video's pixels, or ``mouth_mask`` [H, W] / [F, H, W]; default: the lower half of the
      detected face), which the audio drives. continue: ``source_video``'s last
      ``continue_frames`` frames open the new video (they are not part of the output).
    """

    kind: str = "first_frame"
    end_image: torch.Tensor | None = None
    keyframes: Mapping[int, torch.Tensor] = field(default_factory=dict)
    source_video: torch.Tensor | None = None
    mouth_box: Box | tuple[float, float, float, float] | None = None
    mouth_mask: torch.Tensor | None = None
    continue_frames: int = 8

    def validate(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.kind!r}")
        needs = {
            "first_last": ("end_image", self.end_image),
            "keyframes": ("keyframes", self.keyframes),
            "lipsync": ("source_video", self.source_video),
            "continue": ("source_video", self.source_video),
        }
        if self.kind in needs and (needs[self.kind][1] is None or len(needs[self.kind][1]) == 0):
            raise ValueError(f"the {self.kind} task needs {needs[self.kind][0]}")
        if self.kind == "continue" and not 1 <= self.continue_frames < len(self.source_video):
            raise ValueError(
                f"continue_frames must be in [1, {len(self.source_video)}) for a "
                f"{len(self.source_video)}-frame source video, got {self.continue_frames}"
            )
        if self.kind == "lipsync" and self.mouth_box is not None:
            check_box_inside(self.mouth_box, tuple(self.source_video.shape[1:3]), "mouth box (in source video pixels)")

    def keyframe_positions(self, num_frames: int) -> dict[int, int]:
        """{index as given: frame position} of the keyframes in a ``num_frames``-frame video;
        ValueError naming the indices as the user gave them when one lies outside the video or two
        name the same frame (e.g. 11 and -1 of 12 frames)."""
        positions = {i: i + num_frames if i < 0 else i for i in self.keyframes}
        bad = [i for i, p in positions.items() if not 0 <= p < num_frames]
        if bad:
            raise ValueError(
                f"keyframe {'indices' if len(bad) > 1 else 'index'} {', '.join(map(str, bad))} "
                f"{'lie' if len(bad) > 1 else 'lies'} outside the {num_frames}-frame video; use 0..{num_frames - 1}, or -{num_frames}..-1 "
                "counted from the end."
            )
        seen: dict[int, int] = {}
        for index, position in positions.items():
            if position in seen:
                raise ValueError(
                    f"keyframe indices {seen[position]} and {index} both name frame {position} of the "
                    f"{num_frames}-frame video; keep one."
                )
            seen[position] = index
        return positions


def to_uint8_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[H, W, 3] float 0..1 (or uint8) -> uint8 [H, W, 3], rounded as ``media.to_uint8_frames``."""
    if not isinstance(image, torch.Tensor):
        image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image [H, W, 3], got shape {tuple(image.shape)}")
    return to_uint8_frames(image[None])[0]


def chunk_task_inputs(
    task: Task,
    reference: np.ndarray,
    chunk: Chunk,
    start_frames: torch.Tensor | None,
    num_frames: int,
    sample_size: tuple[int, int],
    source: torch.Tensor | None,
):
    """The task mask inputs of one chunk: the task's kept frames that fall in the chunk, plus the
    previous chunk's tail as start frames (upstream's long-video continuation)."""
    lo, hi = chunk.start, chunk.start + chunk.length
    if task.kind == "lipsync":
        video = source[lo:hi]
        if len(video) < chunk.length:  # the padded tail of the last chunk repeats the last frame
            video = torch.cat([video, video[-1:].expand(chunk.length - len(video), -1, -1, -1)])
        region = lipsync_region(task, video, sample_size, start=lo)
        return task_masks.region_inputs(video.permute(3, 0, 1, 2)[None].float(), region)
    keyframes: dict[int, Any] = {}
    if start_frames is not None:
        keyframes.update({i: to_uint8_image(f) for i, f in enumerate(start_frames)})
    for index, image in global_keyframes(task, reference, num_frames).items():
        if lo <= index < hi and (index - lo) not in keyframes:
            keyframes[index - lo] = image
    if not keyframes:  # a middle chunk of a keyframe task with no anchor: keep its first frame free
        return task_masks.generate_everything_inputs(chunk.length, sample_size)
    return task_masks.keyframe_inputs(keyframes, chunk.length, sample_size)


def global_keyframes(task: Task, reference: np.ndarray, num_frames: int) -> dict[int, np.ndarray]:
    if task.kind == "first_last":
        return {0: reference, num_frames - 1: to_uint8_image(task.end_image)}
    if task.kind == "keyframes":
        positions = task.keyframe_positions(num_frames)
        return {positions[i]: to_uint8_image(img) for i, img in task.keyframes.items()}
    if task.kind == "continue":
        tail = task.source_video[-task.continue_frames :]
        return {i: to_uint8_image(f) for i, f in enumerate(tail)}
    return {0: reference}


def lipsync_region(task: Task, video: torch.Tensor, sample_size: tuple[int, int], start: int = 0) -> torch.Tensor:
    """[F, H, W] bool mouth region at sample size for a chunk of the source video.

    video: the chunk's frames [F, H, W, 3]; start: the chunk's first frame in the source video,
    where a per-frame ``mouth_mask`` [F_source, H, W] is read from (its last frame repeats past
    its end, as the chunk's padded tail repeats the video's last frame)."""
    height, width = video.shape[1:3]
    if task.mouth_mask is not None:
        mask = torch.as_tensor(task.mouth_mask).float()
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.shape[-2:] != (height, width):
            raise ValueError(
                f"mouth_mask is {tuple(mask.shape[-2:])}, the video frames are {height}x{width}; "
                "draw the mask on a frame of the same video."
            )
        index = (torch.arange(len(video)) + start).clamp(max=mask.shape[0] - 1)
        return mask[index] > 0.5
    box = task.mouth_box
    if box is None:
        from .face_detection import mouth_region
        from .face_region import detect_face_box

        face = detect_face_box(to_uint8_image(video[0]))
        if face is None:
            raise ValueError(
                "no face found in the source video to place the mouth region; give mouth_box "
                "(top, bottom, left, right) or a mouth mask."
            )
        box = mouth_region(face)
    return box_region(box, len(video), (height, width))


def task_at_sample_size(task: Task, sample_size: tuple[int, int]) -> Task:
    """The source video resized to the sample size, and the mouth box / mask (given in the source
    video's pixels) scaled with it."""
    height, width = task.source_video.shape[1:3]
    box, mask = task.mouth_box, task.mouth_mask
    if box is not None:
        box = Box.of(box, "mouth_box").scaled(sample_size[0] / height, sample_size[1] / width)
    if mask is not None:
        mask = torch.as_tensor(mask).float()
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.shape[-2:] != (height, width):
            raise ValueError(
                f"mouth_mask is {tuple(mask.shape[-2:])}, the video frames are {height}x{width}; "
                "draw the mask on a frame of the same video."
            )
        # [F, H, W] -> [F, 1, H, W] for interpolate; nearest keeps it binary
        mask = torch.nn.functional.interpolate(mask[:, None], size=tuple(sample_size), mode="nearest")[:, 0]
    return dataclasses.replace(
        task, source_video=resize_video(task.source_video, sample_size), mouth_box=box, mouth_mask=mask
    )


def resize_video(frames: torch.Tensor, sample_size: tuple[int, int]) -> torch.Tensor:
    """[F, H, W, 3] 0..1 -> sample size, LANCZOS like every other task input."""
    if tuple(frames.shape[1:3]) == tuple(sample_size):
        return frames.float()
    return (
        torch.stack(
            [torch.from_numpy(np.array(task_masks.resize_to_sample(to_uint8_image(f), sample_size))) for f in frames]
        ).float()
        / 255
    )


def preview_frames(
    task: Task,
    reference: torch.Tensor | None = None,
    face_box: Box | tuple[float, float, float, float] | None = None,
    face_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """What ``task`` keeps, as images [N, H, W, 3] 0..1 for a user to check before generating.

    The kept images in frame order (keyframes counted from the end last), continuation's kept
    source frames, or lip-sync's first source frame with the regenerated mouth region tinted red.
    The first image also shows the face region (the preview model's face gate: ``face_box``, a Box or
    top, bottom, left, right, else ``face_mask`` [H, W], in that image's pixels) tinted green. Images of
    another size than the first are left out (one batch, one size); nothing to show gives one
    black 64x64 image. reference: [H, W, 3] 0..1, what first_frame / first_last open with.
    """
    if task.kind == "lipsync":
        first = task.source_video[:1]
        region = lipsync_region(task, first, tuple(first.shape[1:3]))[0]
        frames = [_tint(first[0], region, MOUTH_TINT)]
    elif task.kind == "continue":
        frames = list(task.source_video[-task.continue_frames :])
    elif task.kind == "keyframes":
        frames = [image for _, image in sorted(task.keyframes.items(), key=lambda kv: (kv[0] < 0, kv[0]))]
    else:
        frames = [reference] if reference is not None else []
        if task.kind == "first_last":
            frames.append(task.end_image)
    if not frames:
        return torch.zeros(1, 64, 64, 3)
    size = tuple(frames[0].shape[:2])
    face = face_mask
    if face is None and face_box is not None:
        face = Box.of(face_box, "face_box").region(*size)
    if face is not None and tuple(face.shape) == size:
        frames[0] = _tint(frames[0], face, FACE_TINT)
    return torch.stack([f.float() for f in frames if tuple(f.shape[:2]) == size])


def _tint(frame: torch.Tensor, region: torch.Tensor, color) -> torch.Tensor:
    """[H, W, 3] with ``region`` [H, W] (bool or 0..1) blended half-way towards ``color``."""
    tint = torch.tensor(color, dtype=frame.dtype)
    return torch.where(region[..., None].float() > 0.5, 0.5 * frame + 0.5 * tint, frame)
