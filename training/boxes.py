"""Boxes in training data: fractions of the frame in the manifest, pixels where the core is called.

Manifests and the cache index store a box as ``[x0, y0, x1, y1]`` fractions of the frame
(:class:`FracBox`): independent of the resolution a clip is preprocessed at. The core
(``task_masks.box_region``, ``face_region.face_gate_from_box``) takes upstream's pixel boxes
``(y1, y2, x1, x2)``. :func:`to_pixel_box` is the one conversion between the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


class FracBox(NamedTuple):
    """A box as fractions of the frame's width (x) and height (y), end-exclusive."""

    x0: float
    y0: float
    x1: float
    y1: float


def parse_frac_box(value, where: str = "box") -> FracBox | None:
    """A manifest box: a list ``[x0, y0, x1, y1]`` or a mapping with those four keys, as fractions
    in [0, 1] with x0 < x1 and y0 < y1. None stays None."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = sorted(set(FracBox._fields) - set(value))
        if missing:
            raise ValueError(f"{where}: a box mapping needs keys x0, y0, x1, y1; missing {missing}.")
        value = [value[k] for k in FracBox._fields]
    if not isinstance(value, Sequence) or len(value) != 4:
        raise ValueError(f"{where}: expected [x0, y0, x1, y1] as fractions of the frame, found {value!r}.")
    box = FracBox(*(float(v) for v in value))
    if not all(0.0 <= v <= 1.0 for v in box):
        raise ValueError(
            f"{where}: expected fractions in [0, 1] in the order [x0, y0, x1, y1], found "
            f"{list(box)}. Pixel boxes (e.g. upstream's [y1, y2, x1, x2] .npy face boxes) must "
            "be divided by the frame size and reordered."
        )
    if not (box.x0 < box.x1 and box.y0 < box.y1):
        raise ValueError(
            f"{where}: expected x0 < x1 and y0 < y1 in [x0, y0, x1, y1], found {list(box)}; "
            "is the box in another order?"
        )
    return box


def to_pixel_box(box: Sequence[float], size: Sequence[int]) -> tuple[int, int, int, int]:
    """``[x0, y0, x1, y1]`` fractions -> the core's ``(y1, y2, x1, x2)`` whole pixels of a frame of
    ``size`` (H, W). Rounded to whole pixels so that the masks preprocessing encodes and the masks
    training builds cover exactly the same pixels."""
    x0, y0, x1, y1 = box
    height, width = size
    return round(y0 * height), round(y1 * height), round(x0 * width), round(x1 * width)


def is_empty(pixel_box: Sequence[int]) -> bool:
    """A ``(y1, y2, x1, x2)`` box that covers no pixel (e.g. a box the centre crop cut away)."""
    y1, y2, x1, x2 = pixel_box
    return y2 <= y1 or x2 <= x1
