import warnings

import pytest
import torch

from echomimic_core import face_region, task_masks
from echomimic_core.boxes import Box, box_region
from training.boxes import parse_frac_box, to_pixel_box
from training.config import config_from_dict
from training.tasks import build_y, face_gates, sample_tasks, task_inputs


def _y(task, box=None, frames=3, h=4, w=6):
    lat = torch.randn(1, 16, frames, h, w)
    return build_y([task], {task: lat}, [box]), lat


def test_first_frame_keeps_latent_frame_zero():
    y, lat = _y("first_frame")
    assert (y[0, :4, 0] == 1).all() and not y[0, :4, 1:].any()
    assert torch.equal(y[0, 4:], lat[0])


def test_first_last_keeps_the_last_pixel_frame_only():
    y, _ = _y("first_last")
    assert (y[0, :4, 0] == 1).all()
    assert (y[0, 3, -1] == 1).all() and not y[0, :3, -1].any()  # last of 4 folded pixel frames
    assert not y[0, :4, 1:-1].any()


def test_masks_are_the_cores_own():
    size, n = (16, 24), 9
    start = torch.rand(3, 16, 24)
    core = {
        "first_frame": task_masks.start_frames_inputs([start], n, size),
        "first_last": task_masks.start_frames_inputs([start], n, size, end=[start]),
    }
    for task, inputs in core.items():
        assert torch.equal(task_inputs(task, n, size).input_video_mask, inputs.input_video_mask)
    box = Box(top=0.5, bottom=1.0, left=0.25, right=0.75)  # fractions -> pixels rows 8..16, columns 6..18
    video = torch.rand(1, 3, n, *size)
    region = box_region(Box(8, 16, 6, 18), n, size)
    expected = task_masks.region_inputs(video, region)
    ours = task_inputs("lipsync", n, size, box, video=video)
    assert torch.equal(ours.input_video_mask, expected.input_video_mask)
    assert torch.equal(task_masks.masked_pixels(ours), task_masks.masked_pixels(expected))


def test_lipsync_region_generates_only_the_box():
    box = Box(top=0.5, bottom=1.0, left=0.5, right=1.0)  # bottom-right quarter
    y, _ = _y("lipsync", box)
    mask = y[0, :4]
    assert (mask[:, :, :2, :3] == 1).all()  # outside the box: kept in every frame
    assert (mask[:, :, 2:, 3:] == 0).all()  # inside: generated
    with pytest.raises(ValueError, match="needs a mouth box"):
        task_inputs("lipsync", 5, (8, 8))


def test_sample_tasks_respects_ratios_and_missing_mouth_boxes():
    g = torch.Generator().manual_seed(0)
    tasks = sample_tasks([True, False] * 500, g, {"first_frame": 1, "first_last": 1, "lipsync": 2})
    with_box, without = tasks[0::2], tasks[1::2]
    assert "lipsync" not in without
    assert abs(with_box.count("lipsync") / 500 - 0.5) < 0.07


def test_old_task_name_mouth_still_loads_with_a_warning():
    with pytest.warns(FutureWarning, match="'mouth' is now called 'lipsync'"):
        cfg = config_from_dict({"tasks": {"ratios": {"first_frame": 1, "mouth": 3}}})
    assert cfg.tasks.ratios == {"first_frame": 1, "lipsync": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="keep only 'lipsync'"):
            config_from_dict({"tasks": {"ratios": {"mouth": 1, "lipsync": 1}}})
    with pytest.raises(ValueError, match="tasks.ratios"):
        config_from_dict({"tasks": {"ratios": {"keyframes": 1}}})


def test_face_gates_follow_the_box_and_default_to_open():
    assert face_gates([None, None], (4, 6)) is None
    gates = face_gates([Box(top=0.0, bottom=0.5, left=0.5, right=1.0), None], (4, 6))  # top-right; 2 x 3 tokens
    assert gates.shape == (2, 6)
    assert gates[0].view(2, 3).tolist() == [[0, 1, 1], [0, 0, 0]]
    assert gates[1].all()
    # a box squeezed to nothing by an old cache's crop clamp (legacy [x0, y0, x1, y1]) opens the gate
    assert face_gates([[1.0, 0.2, 1.0, 0.6]], (4, 6)).all()


def test_face_gate_is_the_cores_gate_of_the_pixel_box():
    box = Box(top=0.2, bottom=0.7, left=0.3, right=0.9)
    size = (64, 96)
    assert to_pixel_box(box, size) == Box(13, 45, 29, 86)
    expected = face_region.face_gate_from_box((13, 45, 29, 86), size, size)  # top, bottom, left, right
    assert torch.equal(face_gates([box], (8, 12)), expected)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"top": 10, "bottom": 20, "left": 200, "right": 220}, "fractions of the frame in \\[0, 1\\]"),
        ({"top": 0.6, "bottom": 0.2, "left": 0.1, "right": 0.9}, "top < bottom"),
        ([0.6, 0.2, 0.4, 0.9], "a list is read as \\[x0, y0, x1, y1\\]"),
        ([0.1, 0.2, 0.3], "expected a box {'top'"),
        ({"top": 0.1, "bottom": 0.2, "left": 0.3}, "missing \\['right'\\]"),
        ({"x0": 0.1, "y0": 0.2, "x1": 0.3}, "missing \\['y1'\\]"),
    ],
)
def test_bad_boxes_say_what_order_is_expected(value, message):
    with pytest.raises(ValueError, match=message):
        parse_frac_box(value, "clip7: face_box")


def test_old_manifest_boxes_load_converted_with_a_warning():
    new = parse_frac_box({"top": 0.2, "bottom": 0.9, "left": 0.1, "right": 0.3})
    for old in ([0.1, 0.2, 0.3, 0.9], {"y1": 0.9, "x0": 0.1, "x1": 0.3, "y0": 0.2}):
        with pytest.warns(FutureWarning, match="'top': 0.2, 'bottom': 0.9, 'left': 0.1, 'right': 0.3"):
            assert parse_frac_box(old, "clip3: face_box") == new
