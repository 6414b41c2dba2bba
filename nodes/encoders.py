"""Text and reference-image encoding with the pack's own encoders, into ComfyUI's native types.

Outputs are native so they mix with ComfyUI's own nodes: ``CONDITIONING`` holds the umT5 tokens
(``[1, L, 4096]``; the transformer zero-pads to 512 as Wan does, so ComfyUI's already zero-padded
Wan conditioning is interchangeable) and ``CLIP_VISION_OUTPUT`` carries Wan's CLIP tokens as
``penultimate_hidden_states`` ``[B, 257, 1280]``, the field ComfyUI's Wan nodes read.
"""

from __future__ import annotations

import torch

from .adapters import image_encoder
from .common import CATEGORY, image_batch, on_compute_device, to_signed_nchw


class ClipVisionOutput:
    """Stand-in for ``comfy.clip_vision.Output``: attribute and item access to the same fields."""

    def __init__(self, penultimate_hidden_states: torch.Tensor):
        self.penultimate_hidden_states = penultimate_hidden_states
        self.last_hidden_state = None
        self.image_embeds = None

    def __getitem__(self, key):
        return getattr(self, key)

    def __contains__(self, key):
        return getattr(self, key, None) is not None


class EchoMimicTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        from echomimic_core.settings import DEFAULT_NEGATIVE_PROMPT

        return {
            "required": {
                "text_encoder": ("ECHOMIMIC_TEXT_ENCODER",),
                "prompt": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "What the person does and looks like."},
                ),
                "negative_prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": DEFAULT_NEGATIVE_PROMPT,
                        "tooltip": "Upstream's default negative prompt is prefilled.",
                    },
                ),
            }
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, text_encoder, prompt, negative_prompt):
        with on_compute_device(text_encoder):
            positive, negative = text_encoder.encode([prompt, negative_prompt])
        # [L, D] -> ComfyUI's [[tokens [1, L, D], options]]
        return ([[positive[None].float().cpu(), {}]], [[negative[None].float().cpu(), {}]])


class EchoMimicCLIPVisionEncode:
    @classmethod
    def INPUT_TYPES(cls):
        # Either loader: ComfyUI's Load CLIP Vision (clip_vision_h) or the pack's.
        return {"required": {"clip_vision": ("ECHOMIMIC_CLIP_VISION,CLIP_VISION",), "image": ("IMAGE",)}}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    RETURN_NAMES = ("clip_vision_output",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = (
        "Wan's CLIP preprocessing: the whole image squashed to 224x224 (no crop, no antialiasing), as "
        "upstream. Takes Load CLIP Vision's model too; ComfyUI's own CLIP Vision Encode resizes "
        "differently, so its tokens are not upstream's."
    )

    def encode(self, clip_vision, image):
        pixels = to_signed_nchw(image_batch(image, "image"))
        # ComfyUI's own CLIP model (ComfyImageEncoder) places itself: its ``to`` does nothing
        with on_compute_device(image_encoder(clip_vision)) as encoder:
            tokens = encoder.encode(pixels)
        return (ClipVisionOutput(tokens.float().cpu()),)


NODE_CLASS_MAPPINGS = {
    "EchoMimicTextEncode": EchoMimicTextEncode,
    "EchoMimicCLIPVisionEncode": EchoMimicCLIPVisionEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoMimicTextEncode": "EchoMimicV3 Text Encode",
    "EchoMimicCLIPVisionEncode": "EchoMimicV3 CLIP Vision Encode",
}
