"""One box convention (named edges; top, bottom, left, right as four numbers) and one drawing rule."""

import re
from pathlib import Path

import pytest
import torch

from echomimic_core.boxes import Box, box_region, check_box_inside, parse_box

FRACTIONAL = Box(top=2.5, bottom=5.5, left=1.2, right=3.0)


def test_forms_of_a_box_and_its_order():
    box = Box(10, 30, 20, 50)
    assert Box.of((10, 30, 20, 50)) == Box.of({"top": 10, "bottom": 30, "left": 20, "right": 50}) == box
    top, bottom, left, right = box  # upstream's y1, y2, x1, x2
    assert (top, bottom, left, right) == (10, 30, 20, 50) and (box.height, box.width) == (20, 30)
    assert box.scaled(0.5, 2) == Box(5, 15, 40, 100) and Box(0.26, 0.5, 0.1, 1.0).scaled(10, 10).rounded() == Box(
        3, 5, 1, 10
    )
    assert box.grown(0.25) == Box(5, 35, 12.5, 57.5)
    assert parse_box("10, 30; 20 50") == box and parse_box("  ") is None
    with pytest.raises(ValueError, match="expected four pixel numbers 'top, bottom, left, right'"):
        parse_box("1, 2, 3", "face box")
    with pytest.raises(
        ValueError, match=r"face box top=30, bottom=10, left=20, right=50 does not lie inside the 64x64"
    ):
        check_box_inside(parse_box("30, 10, 20, 50"), (64, 64), "face box")
    assert check_box_inside((10, 30, 20, 50), (64, 64)) == box


def test_a_box_covers_every_pixel_it_touches():
    region = FRACTIONAL.region(8, 6)
    expected = torch.zeros(8, 6, dtype=torch.bool)
    expected[2:6, 1:3] = True  # rows floor(2.5)..ceil(5.5)-1, columns floor(1.2)..ceil(3.0)-1
    assert torch.equal(region, expected)
    assert torch.equal(Box(2, 6, 1, 3).region(8, 6), expected)  # whole pixels: exactly those
    assert torch.equal(box_region(FRACTIONAL, 3, (8, 6)), expected.expand(3, 8, 6))
    per_frame = box_region([FRACTIONAL, Box(0, 1, 0, 1), (0, 8, 0, 6), FRACTIONAL], 4, (8, 6))
    assert per_frame[1].sum() == 1 and per_frame[2].all() and torch.equal(per_frame[3], expected)


def test_no_module_draws_boxes_its_own_way():
    root = Path(__file__).resolve().parents[1]
    own_rule = re.compile(r"ys >= |np\.ceil\(y2\)|int\(y1\) :")
    offenders = [
        path.relative_to(root).as_posix()
        for folder in ("echomimic_core", "nodes", "training")
        for path in (root / folder).rglob("*.py")
        if own_rule.search(path.read_text(encoding="utf-8"))
    ]
    # face_region rasterises the face gate on the token grid with upstream's own rule (parity)
    assert offenders == ["echomimic_core/face_region.py"]
