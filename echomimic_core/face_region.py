"""Face-region gate (``face_gate``) of the preview model: audio attention acts only on face tokens.

Upstream calls this gate ``ip_mask``. It takes a face box ``[y1, y2, x1, x2]`` (our ``Box(top,
bottom, left, right)``, same order) in pixels of the reference image (h0 x w0) — from a
stored ``.npy`` or RetinaFace — and rasterises it on the token grid of one latent frame
(``H/16 x W/16`` for a sample of H x W): with ``r = sqrt(H * W / (h0 * w0))`` the box becomes
``floor(y1 * r / 16) <= row < floor(y2 * r / 16)`` and likewise for columns, flattened row-major to
``[1, tokens]``. ``face_gate_from_box`` reproduces that exactly.

Other sources: a user mask image (its bounding box is rasterised the same way, or its shape pooled
onto the grid), or the built-in detector (``face_detection``: MTCNN when facenet-pytorch is
installed, else OpenCV's Haar cascades; implausible detections are dropped); give a box for
upstream's exact gate. When no face is found we warn and gate nothing out (all ones: audio attends
everywhere, the same as running without a face mask), which suits non-human subjects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .boxes import Box, check_box_inside
from .config import PATCH_SIZE
from .vae_frames import VAE_SPATIAL_STRIDE

log = logging.getLogger(__name__)

TOKEN_STRIDE = VAE_SPATIAL_STRIDE * PATCH_SIZE[1]  # pixels per token side: 8 x 2 = 16 (TransformerConfig.token_stride)


def token_grid(sample_size: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of one latent frame's tokens for a sample of (H, W)."""
    height, width = sample_size
    if height % TOKEN_STRIDE or width % TOKEN_STRIDE:
        raise ValueError(
            f"sample size {height}x{width} must be multiples of {TOKEN_STRIDE}; use task_masks.pick_sample_size."
        )
    return height // TOKEN_STRIDE, width // TOKEN_STRIDE


def face_gate_from_box(
    box: Box | Sequence[float], image_size: Sequence[int], sample_size: Sequence[int]
) -> torch.Tensor:
    """[1, rows * cols] float 0/1 gate from a face box (a Box or top, bottom, left, right) in pixels
    of an image of image_size (h0, w0), for a sample of sample_size (H, W). Exactly upstream's
    get_ip_mask (its token rasterisation, not the pixel drawing rule of ``Box.region``)."""
    top, bottom, left, right = check_box_inside(box, image_size, "face box")
    image_h, image_w = image_size
    rows, cols = token_grid(sample_size)
    ratio = math.sqrt(sample_size[0] * sample_size[1] / image_h / image_w)
    ty1, ty2, tx1, tx2 = (v * ratio // TOKEN_STRIDE for v in (top, bottom, left, right))
    ys, xs = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    mask = (ys >= ty1) & (ys < ty2) & (xs >= tx1) & (xs < tx2)
    return mask.reshape(1, -1).float()


def _as_2d_mask(mask) -> np.ndarray:
    if isinstance(mask, Image.Image):
        mask = np.array(mask.convert("L"))
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().float().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:  # ComfyUI MASK [1, H, W]
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"face mask must be [H, W] (or [1, H, W]); got shape {mask.shape}.")
    return mask


def _binary(array: np.ndarray) -> np.ndarray:
    """Face pixels: above half the mask's peak (works for 0..1 float and 0..255 masks)."""
    peak = float(array.max(initial=0))
    return array > 0.5 * peak if peak > 0 else np.zeros(array.shape, bool)


def box_from_mask(mask) -> Box | None:
    """Bounding box (end-exclusive) of the mask's face pixels, or None if empty."""
    rows, cols = np.nonzero(_binary(_as_2d_mask(mask)))
    if len(rows) == 0:
        return None
    return Box(float(rows.min()), float(rows.max() + 1), float(cols.min()), float(cols.max() + 1))


def face_gate_from_mask(mask, image_size: Sequence[int], sample_size: Sequence[int], mode: str = "box") -> torch.Tensor:
    """[1, tokens] gate from a mask image of the reference image's size (h0, w0); nonzero = face.

    mode "box": the mask's bounding box, rasterised exactly like a face box (upstream's behaviour);
    "shape": the mask itself, area-pooled onto the token grid (a token is on if half its area is).
    """
    array = _as_2d_mask(mask)
    if tuple(array.shape) != tuple(image_size):
        raise ValueError(
            f"face mask is {array.shape[0]}x{array.shape[1]} but the reference image is "
            f"{image_size[0]}x{image_size[1]}; draw the mask on the same image (or resize it)."
        )
    if mode == "box":
        box = box_from_mask(array)
        if box is None:
            log.warning("face mask is empty; the audio will act on the whole frame")
            return torch.ones(1, math.prod(token_grid(sample_size)))
        return face_gate_from_box(box, image_size, sample_size)
    if mode == "shape":
        rows, cols = token_grid(sample_size)
        on = torch.from_numpy(_binary(array).astype(np.float32))[None, None]
        pooled = F.interpolate(on, size=(rows, cols), mode="area")
        return (pooled >= 0.5).reshape(1, -1).float()
    raise ValueError(f"mode must be 'box' or 'shape', got {mode!r}.")


def detect_face_box(image, detector: str = "auto") -> Box | None:
    """The main plausible face in an RGB image (PIL or uint8 [H, W, 3]) as a Box in pixels; None
    when there is none (``face_detection.detect_faces``)."""
    from .face_detection import detect_faces, main_face

    face = main_face(detect_faces(image, detector))
    return None if face is None else face.box


def face_gate_for_image(
    image, sample_size: Sequence[int], box: Box | Sequence[float] | None = None, mask=None, mask_mode: str = "box"
) -> tuple[torch.Tensor, str]:
    """The preview model's face_gate [1, tokens] for a reference image (PIL or uint8 [H, W, 3]).

    Priority: an explicit `box` (a Box or top, bottom, left, right) in the image's pixels, then a `mask` of the image's
    size, then the built-in detector. Returns (face_gate, source) with source one of "box", "mask",
    "detected", "whole_frame" (no face found: all ones, with a warning).
    """
    image_size = (image.height, image.width) if isinstance(image, Image.Image) else np.asarray(image).shape[:2]
    if box is not None:
        return face_gate_from_box(box, image_size, sample_size), "box"
    if mask is not None:
        return face_gate_from_mask(mask, image_size, sample_size, mask_mode), "mask"
    found = detect_face_box(image)
    if found is None:
        log.warning(
            "no face found in the reference image; the audio will act on the whole frame. "
            "Give a face box or mask to restrict it."
        )
        return torch.ones(1, math.prod(token_grid(sample_size))), "whole_frame"
    return face_gate_from_box(found, image_size, sample_size), "detected"
