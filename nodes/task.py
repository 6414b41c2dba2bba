"""Task builder: which frames (or pixels) are kept and which the model generates.

Outputs ``ECHOMIMIC_TASK`` (:class:`TaskSpec`: the core's ``pipeline.Task`` plus the face region
for the preview model's face gate) and an ``IMAGE`` preview of what is kept, composed by the core's
``tasks.preview_frames``: the kept images, the lip-sync mouth region tinted red, the face region green.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echomimic_core.boxes import Box, parse_box
from echomimic_core.settings import TASKS

from .common import CATEGORY, image_batch, linked_type_mismatch, mask_batch

# inputs each task needs connected (checked before any tensor exists when ComfyUI tells us the links)
NEEDS = {
    "first_last": "end_image",
    "keyframes": "keyframe_images",
    "lipsync": "source_video",
    "continue": "source_video",
}


@dataclass
class TaskSpec:
    """ECHOMIMIC_TASK: the core task and where the preview model's audio acts (box, else mask, else detected)."""

    task: object  # echomimic_core.pipeline.Task
    face_box: Box | None = None  # in the reference's pixels
    face_mask: torch.Tensor | None = None  # [H, W] in the reference's pixels


def parse_indices(text: str) -> list[int]:
    """ "0, 40, -1" -> [0, 40, -1] (negative counts from the end); duplicates are an error."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        indices = [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"keyframe_indices {text!r}: expected whole frame numbers separated by commas, "
            "e.g. '0, 40, -1' (-1 = the last frame)."
        ) from None
    if len(set(indices)) != len(indices):
        raise ValueError(f"keyframe_indices {text!r} names a frame twice; give each frame once.")
    return indices


class EchoMimicTask:
    """What to keep and what to generate: first frame, first+last, keyframes, lip-sync a video, continue."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "task": (
                    list(TASKS),
                    {
                        "default": "first_frame",
                        "tooltip": "first_frame: the reference opens the video. first_last: end_image closes it. "
                        "keyframes: keyframe_images at keyframe_indices. lipsync: redo the mouth of "
                        "source_video. continue: source_video's last frames lead into the new video.",
                    },
                ),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The reference image; only used for the preview."}),
                "end_image": ("IMAGE", {"tooltip": "first_last: the last frame."}),
                "keyframe_images": ("IMAGE", {"tooltip": "keyframes: one image per index."}),
                "keyframe_indices": (
                    "STRING",
                    {"default": "", "tooltip": "keyframes: frame numbers, e.g. '0, 40, -1' (-1 = the last frame)."},
                ),
                "source_video": ("IMAGE", {"tooltip": "lipsync / continue: the video frames."}),
                "mouth_mask": (
                    "MASK",
                    {
                        "tooltip": "lipsync: the region to regenerate, on a frame of "
                        "source_video (one mask, or one per frame)."
                    },
                ),
                "mouth_box": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "lipsync: top, bottom, left, right in source_video pixels; empty = the mask, "
                        "else the lower half of the detected face.",
                    },
                ),
                "continue_frames": (
                    "INT",
                    {
                        "default": 8,
                        "min": 1,
                        "max": 1000,
                        "tooltip": "continue: how many of source_video's last frames are kept.",
                    },
                ),
                "face_mask": (
                    "MASK",
                    {
                        "tooltip": "preview model: where the audio acts (its bounding box), "
                        "e.g. painted in the mask editor or from EchoMimicV3 Face Mask."
                    },
                ),
                "face_box": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "preview model: top, bottom, left, right in reference pixels; empty = "
                        "face_mask, else detected.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("ECHOMIMIC_TASK", "IMAGE")
    RETURN_NAMES = ("task", "preview")
    FUNCTION = "build"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, task, keyframe_indices="", mouth_box="", face_box="", continue_frames=8, input_types=None):
        if task not in TASKS:
            return f"task must be one of {TASKS}, got {task!r}"
        try:
            parse_box(mouth_box, "mouth box")
            parse_box(face_box, "face box")
            indices = parse_indices(keyframe_indices or "")
        except ValueError as e:
            return str(e)
        if not isinstance(continue_frames, int) or continue_frames < 1:
            return f"continue_frames must be a whole number >= 1, got {continue_frames!r}"
        if task == "keyframes" and not indices:
            return "the keyframes task needs keyframe_indices, e.g. '0, 40, -1'."
        if isinstance(input_types, dict) and task in NEEDS and NEEDS[task] not in input_types:
            return f"the {task} task needs its {NEEDS[task]} input connected."
        return linked_type_mismatch(cls, input_types) or True

    def build(
        self,
        task,
        image=None,
        end_image=None,
        keyframe_images=None,
        keyframe_indices="",
        source_video=None,
        mouth_mask=None,
        mouth_box="",
        continue_frames=8,
        face_mask=None,
        face_box="",
    ):
        from echomimic_core.tasks import Task, preview_frames

        problem = self.VALIDATE_INPUTS(task, keyframe_indices, mouth_box, face_box, continue_frames)
        if problem is not True:
            raise ValueError(problem)
        video = image_batch(source_video, "source_video").cpu() if source_video is not None else None
        keyframes = {}
        if task == "keyframes":
            if keyframe_images is None:
                raise ValueError("the keyframes task needs keyframe_images connected.")
            images = image_batch(keyframe_images, "keyframe_images").cpu()
            indices = parse_indices(keyframe_indices)
            if len(indices) != len(images):
                raise ValueError(
                    f"keyframe_indices names {len(indices)} frames but keyframe_images holds "
                    f"{len(images)} images; give one index per image."
                )
            keyframes = dict(zip(indices, images))
        end = image_batch(end_image, "end_image")[0].cpu() if end_image is not None else None
        mouth = mask_batch(mouth_mask, "mouth_mask") if mouth_mask is not None else None
        if mouth is not None and len(mouth) == 1:  # one mask for every frame
            mouth = mouth[0]
        core = Task(
            kind=task,
            end_image=end,
            keyframes=keyframes,
            source_video=video,
            mouth_box=parse_box(mouth_box, "mouth box"),
            mouth_mask=mouth,
            continue_frames=int(continue_frames),
        )
        core.validate()
        face = mask_batch(face_mask, "face_mask")[0] if face_mask is not None else None
        spec = TaskSpec(core, parse_box(face_box, "face box"), face)
        reference = image_batch(image, "image")[0].cpu() if image is not None else None
        return (spec, preview_frames(core, reference, spec.face_box, spec.face_mask))


NODE_CLASS_MAPPINGS = {"EchoMimicTask": EchoMimicTask}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoMimicTask": "EchoMimicV3 Task"}
