"""Boxes in training data: fractions of the frame in the manifest, pixels where the core is called.

A manifest box is the core's :class:`~echomimic_core.boxes.Box` with its edges as fractions of the
frame, written as a mapping ``{"top": .., "bottom": .., "left": .., "right": ..}``: independent of the
resolution a clip is preprocessed at, and unambiguous. :func:`to_pixel_box` is the one conversion to
the pixel boxes the core takes (``boxes.box_region``, ``face_region.face_gate_from_box``).

Manifests written before the one-box convention hold ``[x0, y0, x1, y1]`` lists or
``{"x0", "y0", "x1", "y1"}`` mappings (x0 = left, y0 = top, x1 = right, y1 = bottom); those still load,
converted, with a FutureWarning. A list is always read in that legacy order: write new boxes as
mappings.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

from echomimic_core.boxes import Box

# The legacy manifest order [x0, y0, x1, y1] = left, top, right, bottom.
LEGACY_KEYS = ("x0", "y0", "x1", "y1")


def read_box(value, where: str = "box") -> Box | None:
    """A box as manifests and caches store it (a mapping of edges, or the legacy ``[x0, y0, x1, y1]``
    list / mapping) as a :class:`Box`, unchecked: what preprocessing wrote is read back as it is."""
    return None if value is None else _convert(value, where)[0]


def parse_frac_box(value, where: str = "box") -> Box | None:
    """A manifest box as a :class:`Box` of fractions in [0, 1] with top < bottom and left < right;
    None stays None. A box in the legacy ``[x0, y0, x1, y1]`` form is converted with a FutureWarning."""
    if value is None:
        return None
    box, legacy = _convert(value, where)
    if legacy:
        warnings.warn(
            f"{where}: [x0, y0, x1, y1] boxes are the old manifest format; write {as_manifest(box)} instead.",
            FutureWarning,
            stacklevel=2,
        )
    if not all(0.0 <= v <= 1.0 for v in box):
        raise ValueError(
            f"{where}: expected fractions of the frame in [0, 1], found {as_manifest(box)}. Pixel boxes (e.g. "
            "upstream's [y1, y2, x1, x2] .npy face boxes) must be divided by the frame size."
        )
    if box.is_empty:
        raise ValueError(
            f"{where}: expected top < bottom and left < right, found {as_manifest(box)}"
            + ("; a list is read as [x0, y0, x1, y1] (left, top, right, bottom)." if legacy else ".")
        )
    return box


def _convert(value, where: str) -> tuple[Box, bool]:
    """(the Box, whether ``value`` was in the legacy x0/y0/x1/y1 form)."""
    if isinstance(value, Box):
        return value, False
    if isinstance(value, Mapping):
        if not set(Box._fields) & set(value) and set(LEGACY_KEYS) & set(value):
            missing = [k for k in LEGACY_KEYS if k not in value]
            if missing:
                raise ValueError(f"{where}: an [x0, y0, x1, y1] box mapping is missing {missing}.")
            return _legacy([value[k] for k in LEGACY_KEYS]), True
        return Box.of(value, where), False
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 4:
        return _legacy(value), True
    raise ValueError(
        f"{where}: expected a box {{'top': .., 'bottom': .., 'left': .., 'right': ..}} as fractions of the "
        f"frame, found {value!r}."
    )


def _legacy(values) -> Box:
    left, top, right, bottom = (float(v) for v in values)
    return Box(top, bottom, left, right)


def as_manifest(box: Box) -> dict[str, float]:
    """The box as manifests and the cache index store it: ``{"top", "bottom", "left", "right"}``."""
    return dict(box._asdict())


def to_pixel_box(box: Box, size: Sequence[int]) -> Box:
    """A box of fractions -> whole pixels of a frame of ``size`` (H, W). Rounded so that the masks
    preprocessing encodes and the masks training builds cover exactly the same pixels."""
    height, width = size
    return box.scaled(height, width).rounded()
