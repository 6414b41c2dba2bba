"""The face detector on drawn portraits (no photo data set here; benchmarks/face_detector.py runs it
on real photos as a manual check) and the plausibility rule that keeps a confident wrong box out."""

import importlib.util

import numpy as np
import pytest

from echomimic_core import face_detection as fd
from echomimic_core.demo import demo_inputs
from echomimic_core.face_region import face_gate_for_image
from training.synthetic import draw_face

PORTRAITS = {
    "frontal": {},
    "glasses": {"glasses": True},
    "hat": {"hat": True},
    "turned": {"yaw": 0.6},
    "dark skin": {"skin": (120, 80, 60)},
    "small, off-centre": {"scale": 0.15, "center": (0.3, 0.3)},
    "open mouth": {"mouth_open": 1.0},
}
DETECTORS = ["haar"] + (["mtcnn"] if importlib.util.find_spec("facenet_pytorch") else [])


@pytest.mark.parametrize("detector", DETECTORS)
@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_drawn_portraits_are_found_where_the_face_is(name, detector):
    image, truth = draw_face(**PORTRAITS[name])
    faces = fd.detect_faces(image, detector)
    assert len(faces) == 1, faces
    assert fd.box_iou(faces[0].box, truth) > 0.55, (faces[0].box, truth)
    assert faces[0].plausibility > 0.55 and faces[0].detector == detector


def test_a_confident_box_on_clothing_loses_to_a_weak_face(monkeypatch):
    """The official demo case: a shadowed face and a jacket's elbow the detector is surer of."""
    image, truth = draw_face(hat=True)
    elbow = (300.0, 370.0, 40.0, 110.0)  # on the shoulders, no eyes, no skin
    face_box = tuple(float(v) for v in truth)
    monkeypatch.setattr(fd, "available_detectors", lambda: ["haar"])  # "auto" below is Haar too
    monkeypatch.setattr(fd, "_haar_raw", lambda rgb: [(elbow, 0.99, None), (face_box, 0.2, None)])
    faces = fd.detect_faces(image, "haar")
    assert len(faces) == 1 and fd.box_iou(faces[0].box, truth) > 0.7
    # with only the elbow found: no face (the gate covers the frame) rather than a wrong one
    monkeypatch.setattr(fd, "_haar_raw", lambda rgb: [(elbow, 0.99, None)])
    assert fd.detect_faces(image, "haar") == []
    gate, source = face_gate_for_image(image, (384, 320))
    assert source == "whole_frame" and gate.all()


def test_landmarks_out_of_face_order_are_implausible():
    image, truth = draw_face()
    y1, y2, x1, x2 = truth
    upright = (
        (x1 + 30, y1 + 50),
        (x2 - 30, y1 + 50),
        ((x1 + x2) / 2, y1 + 80),
        (x1 + 35, y1 + 105),
        (x2 - 35, y1 + 105),
    )
    upside_down = tuple((x, y1 + y2 - y) for x, y in upright)
    assert fd.plausibility(image, truth, 0.9, upright) > fd.MIN_PLAUSIBILITY
    assert fd.plausibility(image, truth, 0.9, upside_down) < fd.plausibility(image, truth, 0.9, upright) - 0.3


def test_two_people_are_several_faces():
    left, _ = draw_face(size=(384, 320), seed=1)
    right, _ = draw_face(size=(384, 320), skin=(190, 140, 110), seed=2)
    faces = fd.detect_faces(np.concatenate([left, right], axis=1), "haar")
    assert len(faces) == 2 and fd.several_faces(faces)
    alone = fd.detect_faces(left, "haar")
    assert not fd.several_faces(alone)


def test_box_iou():
    assert fd.box_iou((0, 10, 0, 10), (5, 15, 0, 10)) == pytest.approx(50 / 150)  # half-way down
    assert fd.box_iou((0, 10, 0, 10), (0, 10, 0, 10)) == 1.0
    assert fd.box_iou((0, 10, 0, 10), (10, 20, 0, 10)) == 0.0  # touching edges share nothing
    assert fd.box_iou((5, 5, 0, 10), (5, 5, 0, 10)) == 0.0  # no area


def test_mouth_region_is_the_lower_half_of_the_face():
    face = fd.Face((100.0, 220.0, 50.0, 150.0), 0.9, 0.9, "haar")
    assert face.mouth_box() == (160.0, 220.0, 50.0, 150.0)


def test_flat_cartoons_and_empty_frames_give_no_face():
    cartoon, _, _ = demo_inputs(size=192)
    assert fd.detect_faces(cartoon, "haar") == []
    assert fd.detect_faces(np.full((96, 128, 3), 127, np.uint8), "auto") == []


def test_detector_choice_is_checked(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        fd.detect_faces(np.zeros((64, 64, 3), np.uint8), "retinaface")
    monkeypatch.setattr(fd, "available_detectors", lambda: ["haar"])
    assert fd.resolve_detector("auto") == "haar"
    with pytest.raises(ImportError, match="pip install --no-deps facenet-pytorch"):
        fd.resolve_detector("mtcnn")
