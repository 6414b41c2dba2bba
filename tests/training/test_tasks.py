import torch

from training.tasks import build_y, pixel_keep_mask, sample_tasks


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


def test_mouth_region_generates_only_the_box():
    box = [0.5, 0.5, 1.0, 1.0]  # bottom-right quarter
    y, _ = _y("mouth", box)
    mask = y[0, :4]
    assert (mask[:, :, :2, :3] == 1).all()      # outside the box: kept in every frame
    assert (mask[:, :, 2:, 3:] == 0).all()      # inside: generated
    keep = pixel_keep_mask("mouth", 5, 8, 8, box)
    assert keep[:, :4].all() and not keep[:, 4:, 4:].any()


def test_sample_tasks_respects_ratios_and_missing_mouth_boxes():
    g = torch.Generator().manual_seed(0)
    tasks = sample_tasks([True, False] * 500, g, {"first_frame": 1, "first_last": 1, "mouth": 2})
    with_box, without = tasks[0::2], tasks[1::2]
    assert "mouth" not in without
    assert abs(with_box.count("mouth") / 500 - 0.5) < 0.07


def test_face_gates_follow_the_box_and_default_to_open():
    from training.tasks import face_gates

    assert face_gates([None, None], (4, 6)) is None
    gates = face_gates([[0.5, 0.0, 1.0, 0.5], None], (4, 6))  # top-right quarter; 2 x 3 token grid
    assert gates.shape == (2, 6)
    assert gates[0].view(2, 3).tolist() == [[0, 1, 1], [0, 0, 0]]
    assert gates[1].all()
