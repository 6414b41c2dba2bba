"""Boxes: one convention for every box in the project, and the one rule that draws them.

A :class:`Box` is an axis-aligned region with named edges, end-exclusive: rows ``top .. bottom`` and
columns ``left .. right``. Written as four numbers it is always ``top, bottom, left, right`` — upstream's
``[y1, y2, x1, x2]`` order (its face-box ``.npy`` files): the CLI's ``--face-box`` / ``--mouth-box``,
the nodes' box widgets and ``GenerationSettings.face_box`` use it. The core's boxes are in pixels of
the image they refer to; training manifests hold the same edges as fractions of the frame
(``training.boxes``), and :meth:`Box.scaled` converts between the two.

Drawing (:meth:`Box.region`, :func:`box_region`): a pixel belongs to a box when the box covers any
part of it, i.e. rows ``floor(top) .. ceil(bottom) - 1``; whole-pixel boxes cover exactly their
pixels, and a fractional box (a mouth box scaled to the sample size) never leaves a sliver of the
region it names uncovered.

Torch is imported only to draw, so the CLI and the settings can use boxes without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Box(NamedTuple):
    """Rows ``top .. bottom`` and columns ``left .. right`` (end-exclusive), in pixels or fractions.

    A named tuple: ``top, bottom, left, right = box`` and ``box[0]`` read it in upstream's
    ``y1, y2, x1, x2`` order, and it equals the plain tuple of those four numbers.
    """

    top: float
    bottom: float
    left: float
    right: float

    @classmethod
    def of(cls, value: Box | Sequence[float] | Mapping[str, float], what: str = "box") -> Box:
        """A Box from a Box, four numbers ``top, bottom, left, right`` or a mapping of those edges."""
        if isinstance(value, Box):
            return value
        if isinstance(value, Mapping):
            missing = [edge for edge in cls._fields if edge not in value]
            if missing:
                raise ValueError(f"{what}: a box mapping needs the keys {', '.join(cls._fields)}; missing {missing}.")
            return cls(*(float(value[edge]) for edge in cls._fields))
        values = list(value) if isinstance(value, Sequence) or hasattr(value, "__len__") else []
        if len(values) != 4:
            raise ValueError(f"{what}: expected four numbers top, bottom, left, right; got {value!r}.")
        return cls(*(float(v) for v in values))

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def is_empty(self) -> bool:
        """Whether the box covers no area (e.g. a box a crop cut away)."""
        return self.bottom <= self.top or self.right <= self.left

    def scaled(self, sy: float, sx: float) -> Box:
        """The box with rows multiplied by ``sy`` and columns by ``sx`` (resizing, fractions -> pixels)."""
        return Box(self.top * sy, self.bottom * sy, self.left * sx, self.right * sx)

    def grown(self, fraction: float) -> Box:
        """The box with each edge moved outwards by ``fraction`` of its height (rows) or width (columns)."""
        dy, dx = self.height * fraction, self.width * fraction
        return Box(self.top - dy, self.bottom + dy, self.left - dx, self.right + dx)

    def rounded(self) -> Box:
        """Edges rounded to whole pixels."""
        return Box(*(float(round(v)) for v in self))

    def inside(self, height: float, width: float) -> bool:
        """Whether the box is a non-empty part of a ``height`` x ``width`` image."""
        return 0 <= self.top < self.bottom <= height and 0 <= self.left < self.right <= width

    def pixel_span(self, height: int, width: int) -> tuple[slice, slice]:
        """(rows, columns) slices of the pixels the box touches, clipped to the image."""
        rows = slice(max(0, math.floor(self.top)), min(height, math.ceil(self.bottom)))
        cols = slice(max(0, math.floor(self.left)), min(width, math.ceil(self.right)))
        return rows, cols

    def region(self, height: int, width: int):
        """[H, W] bool tensor, True on the pixels the box touches (the project's one drawing rule)."""
        import torch

        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[self.pixel_span(height, width)] = True
        return mask


def check_box_inside(box, image_size: Sequence[int], what: str = "face box") -> Box:
    """The box (a Box or top, bottom, left, right) as a Box, or ValueError when it is not four numbers,
    inverted, empty or reaches outside the (height, width) image: such a box gates or regenerates
    nothing, silently. The face box and the lip-sync mouth box are checked alike."""
    box = Box.of(box, what)
    height, width = image_size
    if not box.inside(height, width):
        raise ValueError(
            f"{what} top={box.top:g}, bottom={box.bottom:g}, left={box.left:g}, right={box.right:g} does not lie "
            f"inside the {height}x{width} (height x width) image it refers to; give pixel coordinates with "
            "0 <= top < bottom <= height and 0 <= left < right <= width."
        )
    return box


def box_region(boxes, num_frames: int, size: Sequence[int]):
    """[F, H, W] bool region from one box (a Box or ``top, bottom, left, right``) or one per frame."""
    import torch

    height, width = size
    boxes = [boxes] * num_frames if _one_box(boxes) else list(boxes)
    if len(boxes) != num_frames:
        raise ValueError(f"got {len(boxes)} boxes for {num_frames} frames; give one box or one per frame.")
    return torch.stack([Box.of(box).region(height, width) for box in boxes])


def _one_box(boxes) -> bool:
    """One box rather than one per frame: a Box, a mapping, or four numbers."""
    if isinstance(boxes, (Box, Mapping)):
        return True
    return len(boxes) == 4 and all(
        not isinstance(v, (Box, Mapping, Sequence)) and getattr(v, "ndim", 0) == 0 for v in boxes
    )


def parse_box(text: str, what: str = "box") -> Box | None:
    """A box typed as text, "top, bottom, left, right" in pixels (commas, semicolons or spaces);
    empty -> None."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError(
            f"{what} {text!r}: expected four pixel numbers 'top, bottom, left, right' (upstream's "
            "y1, y2, x1, x2), or leave it empty."
        )
    return Box(*values)  # check_box_inside judges it against the image it refers to
