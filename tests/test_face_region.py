import logging

import numpy as np
import pytest
import torch
from PIL import Image

import echomimic_core.face_region as face_region
from echomimic_core.boxes import Box
from echomimic_core.face_region import (
    box_from_mask,
    detect_face_box,
    face_gate_for_image,
    face_gate_from_box,
    face_gate_from_mask,
    token_grid,
)

IMAGE_HW = (1024, 768)
SAMPLE_HW = (880, 656)  # pick_sample_size(1024, 768, 768 * 768)


def test_box_rasterised_on_token_grid_as_upstream():
    mask = face_gate_from_box([200, 500, 250, 520], IMAGE_HW, SAMPLE_HW)
    rows, cols = token_grid(SAMPLE_HW)
    assert (rows, cols) == (55, 41) and mask.shape == (1, rows * cols)
    # r = sqrt(880*656 / (1024*768)); rows floor(200r/16)=10 .. floor(500r/16)=26, cols 13 .. 27 (exclusive)
    expected = torch.zeros(rows, cols)
    expected[10:26, 13:27] = 1
    assert torch.equal(mask, expected.reshape(1, -1))


def test_mask_image_uses_its_bounding_box_or_shape():
    drawn = np.zeros(IMAGE_HW, np.uint8)
    drawn[200:500, 250:520] = 255
    assert box_from_mask(drawn) == Box(200.0, 500.0, 250.0, 520.0)
    assert torch.equal(
        face_gate_from_mask(drawn, IMAGE_HW, SAMPLE_HW), face_gate_from_box([200, 500, 250, 520], IMAGE_HW, SAMPLE_HW)
    )
    circle = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    circle[(yy - 32) ** 2 + (xx - 32) ** 2 < 20**2] = 1.0
    shape = face_gate_from_mask(torch.from_numpy(circle)[None], (64, 64), (64, 64), mode="shape").reshape(4, 4)
    assert shape[1:3, 1:3].all() and not shape[0, 0] and shape.sum() < 16


def test_wrong_sizes_give_clear_errors():
    with pytest.raises(ValueError, match="same image"):
        face_gate_from_mask(np.ones((10, 10)), IMAGE_HW, SAMPLE_HW)
    with pytest.raises(ValueError, match="inside"):
        face_gate_from_box([0, 2000, 0, 10], IMAGE_HW, SAMPLE_HW)
    with pytest.raises(ValueError, match="multiples of 16"):
        token_grid((100, 64))


def test_no_face_falls_back_to_whole_frame(caplog):
    image = Image.fromarray(np.full((96, 128, 3), 127, np.uint8))
    assert detect_face_box(image) is None
    with caplog.at_level(logging.WARNING):
        mask, source = face_gate_for_image(image, (96, 128))
    assert source == "whole_frame" and mask.shape == (1, 6 * 8) and (mask == 1).all()
    assert "no face" in caplog.text


def test_sources_in_priority_order(monkeypatch):
    image = np.zeros((64, 64, 3), np.uint8)
    monkeypatch.setattr(face_region, "detect_face_box", lambda _: (16.0, 48.0, 16.0, 48.0))
    detected, source = face_gate_for_image(image, (64, 64))
    assert source == "detected" and detected.reshape(4, 4)[1:3, 1:3].all() and detected.sum() == 4
    boxed, source = face_gate_for_image(image, (64, 64), box=[0, 16, 0, 16])
    assert source == "box" and boxed.reshape(4, 4)[0, 0] == 1 and boxed.sum() == 1
    masked, source = face_gate_for_image(image, (64, 64), mask=np.pad(np.ones((16, 16)), ((48, 0), (48, 0))))
    assert source == "mask" and masked.reshape(4, 4)[3, 3] == 1 and masked.sum() == 1
