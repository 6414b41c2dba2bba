"""Colour-match post-process: every frame's LAB mean/std matched to the first frame's.

Upstream (``save_videos_grid(..., color_transfer_post_process=True)``) converts each output frame to
uint8, then for frames 1.. : OpenCV RGB -> LAB (8-bit LAB: L scaled to 0..255, a/b offset by 128),
per-channel mean and std from ``cv2.meanStdDev`` rounded to 2 decimals,
``(src - src_mean) * (ref_std / src_std) + ref_mean`` in float64, clipped to [0, 255], rounded by
``cv2.convertScaleAbs`` and converted back LAB -> RGB. The same OpenCV calls are used here, so from
the same uint8 frames the results are upstream's bytes. Two deliberate differences: a channel with
zero spread (a flat frame) keeps scale 1 instead of dividing by zero; and float frames become uint8
by ``media.to_uint8_frames`` (rounding, as every video we write) where upstream truncates
``(x * 255).astype(uint8)``: truncating darkens by half a level on average, and the colour-matched
video would otherwise differ from the unmatched one by that bias.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from .media import to_uint8_frames

log = logging.getLogger(__name__)


def _mean_std(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = cv2.meanStdDev(lab)
    return np.hstack(np.around(mean, 2)), np.hstack(np.around(std, 2))


def color_transfer(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """source, reference: uint8 RGB [H, W, 3]. Returns source with reference's LAB mean/std, uint8 RGB."""
    for name, image in (("source", source), ("reference", reference)):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name} must be a uint8 RGB image [H, W, 3]; got {image.dtype} {image.shape}.")
    src = cv2.cvtColor(np.ascontiguousarray(source), cv2.COLOR_RGB2LAB)
    ref = cv2.cvtColor(np.ascontiguousarray(reference), cv2.COLOR_RGB2LAB)
    src_mean, src_std = _mean_std(src)
    ref_mean, ref_std = _mean_std(ref)
    scale = np.divide(ref_std, src_std, out=np.ones_like(ref_std), where=src_std != 0)
    out = np.clip((src - src_mean) * scale + ref_mean, 0, 255)
    return cv2.cvtColor(cv2.convertScaleAbs(out), cv2.COLOR_LAB2RGB)


def match_to_first_frame(frames, reference: np.ndarray | None = None) -> np.ndarray:
    """Colour-match frames [F, H, W, 3] (uint8, or float in [0, 1]) to their first frame (or to
    `reference`, uint8 [H, W, 3]). Returns uint8 [F, H, W, 3]; frame 0 is returned unchanged when it
    is the reference, as upstream."""
    frames = to_uint8_frames(frames)
    out = frames.copy()
    if reference is None:
        reference, start = frames[0], 1
    else:
        start = 0
    for i in range(start, len(frames)):
        out[i] = color_transfer(frames[i], reference)
    return out
