"""Output nodes: upstream's colour post-process and an mp4 writer that keeps audio in sync."""

from __future__ import annotations

import torch

from . import comfy_services as services
from .common import CATEGORY, audio_input, image_batch, out_of_range


class EchoMimicColorMatch:
    """Upstream's post-process: every frame's LAB mean/std matched to the first frame (or a reference)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"images": ("IMAGE",)},
            "optional": {"reference": ("IMAGE", {"tooltip": "Match to this image instead of frame 0."})},
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    FUNCTION = "match"
    CATEGORY = CATEGORY

    def match(self, images, reference=None):
        from echomimic_core.color_match import match_to_first_frame
        from echomimic_core.media import to_uint8_frames

        frames = image_batch(images, "images")
        ref = None
        if reference is not None:
            ref = to_uint8_frames(image_batch(reference, "reference")[:1])[0]
            if ref.shape != tuple(frames.shape[1:]):
                raise ValueError(
                    f"reference is {ref.shape[1]}x{ref.shape[0]} but the frames are "
                    f"{frames.shape[2]}x{frames.shape[1]}; resize it to the video size first."
                )
        matched = match_to_first_frame(frames, ref)  # the core converts any dtype / device to uint8
        return (torch.from_numpy(matched).float().div(255.0),)


class EchoMimicSaveVideo:
    """Frames (+ audio, trimmed or padded to the video's length) -> mp4 (H.264 / AAC) in the output folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01}),
                "filename_prefix": ("STRING", {"default": "echomimic/clip"}),
                "crf": ("INT", {"default": 18, "min": 0, "max": 51, "tooltip": "H.264 quality: lower is better."}),
            },
            "optional": {"audio": ("AUDIO",)},
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True

    @classmethod
    def VALIDATE_INPUTS(cls, fps=25.0):
        # ComfyUI's own check lets a NaN fps from an API prompt through; refused when queued
        return out_of_range(cls, {"fps": fps}) or True

    def save(self, images, fps, filename_prefix, crf, audio=None):
        from echomimic_core.media import write_video

        frames = image_batch(images, "images")
        path, subfolder, filename = services.next_output_file(filename_prefix, "mp4")
        waveform, rate = audio_input(audio) if audio is not None else (None, None)
        write_video(path, frames.cpu(), fps, audio=waveform, sample_rate=rate, crf=crf)
        item = {"filename": filename, "subfolder": subfolder, "type": "output"}
        return {"ui": {"images": [item], "animated": (True,)}, "result": (str(path),)}


NODE_CLASS_MAPPINGS = {
    "EchoMimicColorMatch": EchoMimicColorMatch,
    "EchoMimicSaveVideo": EchoMimicSaveVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoMimicColorMatch": "EchoMimicV3 Color Match",
    "EchoMimicSaveVideo": "EchoMimicV3 Save Video",
}
