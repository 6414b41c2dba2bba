"""The reference image at the size the video is generated at, as upstream feeds CLIP.

Upstream resizes the reference to the sample size (LANCZOS) before CLIP sees it; CLIP Vision
Encode on the original image squashes a different picture to 224x224. Run the reference through
this node first and give its output to CLIP Vision Encode, the sampler and the task: the sampler
then finds the image already at its sample size (the size rule is idempotent) and the CLIP tokens
match upstream's.
"""

from __future__ import annotations

import numpy as np
import torch

from .common import CATEGORY, image_batch, out_of_range
from .setting_widgets import setting_widget


class EchoMimicReferenceImage:
    """IMAGE -> the same image(s) at the generation size, plus that width and height."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "width": setting_widget("width", "Set both width and height for a fixed size.")[0],
                "height": setting_widget("height")[0],
                "sample_area": setting_widget("sample_area", "Keep it equal to the sampler's.")[0],
            }
        }

    RETURN_TYPES = ("IMAGE", "INT", "INT")
    RETURN_NAMES = ("image", "width", "height")
    FUNCTION = "resize"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, width=0, height=0):
        problem = out_of_range(cls, {"width": width, "height": height})
        if problem:
            return problem
        if (width == 0) != (height == 0):
            return "width and height go together: set both, or leave both at 0 to use sample_area."
        if width and (width % 16 or height % 16 or min(width, height) < 32):
            return f"width and height must be multiples of 16 and at least 32, got {width}x{height}."
        return True

    def resize(self, image, width, height, sample_area):
        from echomimic_core.pipeline import sample_size_for
        from echomimic_core.settings import GenerationSettings
        from echomimic_core.task_masks import resize_to_sample
        from echomimic_core.tasks import to_uint8_image

        problem = self.VALIDATE_INPUTS(width, height)
        if problem is not True:
            raise ValueError(problem)
        frames = image_batch(image, "image")
        settings = GenerationSettings(width=width or None, height=height or None, sample_area=sample_area)
        size = sample_size_for(tuple(frames.shape[1:3]), settings)
        out = [torch.from_numpy(np.array(resize_to_sample(to_uint8_image(f), size))) for f in frames]
        return (torch.stack(out).float() / 255.0, size[1], size[0])


NODE_CLASS_MAPPINGS = {"EchoMimicReferenceImage": EchoMimicReferenceImage}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoMimicReferenceImage": "EchoMimicV3 Reference Image"}
