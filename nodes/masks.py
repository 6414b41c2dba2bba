"""Face region of the reference image: the area the preview model's audio attention acts on."""

from __future__ import annotations

import logging

import torch

from echomimic_core.boxes import check_box_inside, parse_box

from . import comfy_services as services
from .common import CATEGORY, image_batch, mask_batch

log = logging.getLogger(__name__)


class EchoMimicFaceMask:
    """Face box as a MASK: from a typed box, else from a drawn mask's extent, else detected."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE",)},
            "optional": {
                "mask": ("MASK", {"tooltip": "A painted face region; its bounding box is used."}),
                "box": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "top, bottom, left, right in pixels of the image (upstream's y1, y2, x1, x2 "
                        ".npy order); empty = use the mask, else detect the face.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("face_mask",)
    FUNCTION = "run"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True  # shows the reference with the box drawn over it (web/echomimic.js)

    @classmethod
    def VALIDATE_INPUTS(cls, box=""):
        try:
            parse_box(box, "face box")
        except ValueError as e:
            return str(e)
        return True

    def run(self, image, mask=None, box=""):
        from echomimic_core.face_region import box_from_mask, detect_face_box

        frame = image_batch(image)[0]
        height, width = frame.shape[:2]
        face = parse_box(box, "face box")
        if face is None and mask is not None:
            painted = mask_batch(mask)[0]
            if tuple(painted.shape) != (height, width):
                # the box is read in the mask's pixels: on another size it would gate the wrong region
                raise ValueError(
                    f"mask is {painted.shape[-1]}x{painted.shape[0]} but the image is {width}x{height}; "
                    "paint the mask on this image (Load Image's mask editor) or resize it to match."
                )
            face = box_from_mask(painted)
        if face is None:
            face = detect_face_box((frame.clamp(0, 1) * 255).round().byte().cpu().numpy())
        out = torch.zeros(1, height, width)
        boxes = []
        if face is None:
            log.warning(
                "no face found: the face mask covers the whole image (audio acts everywhere). "
                "Type a box or connect a mask to restrict it."
            )
            out[:] = 1.0
        else:
            face = check_box_inside(face, (height, width), "face box")
            out[:] = face.region(height, width).float()
            boxes.append(face._asdict())
        return {"ui": {"images": [self._preview(frame)], "echomimic_face_boxes": boxes}, "result": (out,)}

    @staticmethod
    def _preview(frame: torch.Tensor) -> dict:
        from PIL import Image

        path, subfolder, filename = services.next_output_file("echomimic/face", "png", temp=True)
        Image.fromarray((frame.clamp(0, 1) * 255).round().byte().cpu().numpy()).save(path, compress_level=1)
        return {"filename": filename, "subfolder": subfolder, "type": "temp"}


NODE_CLASS_MAPPINGS = {"EchoMimicFaceMask": EchoMimicFaceMask}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoMimicFaceMask": "EchoMimicV3 Face Mask"}
