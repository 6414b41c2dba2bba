"""Face detection shared by inference (the preview model's audio gate) and training.prepare.

Two detectors, both offline, their weights inside a wheel:

* ``mtcnn``: MTCNN (P/R/O-Net cascade) from the facenet-pytorch wheel (MIT; ``data/{p,r,o}net.pt``,
  2 MB), with five landmarks (eyes, nose, mouth corners). The wheel pins an old torch, so it is an
  optional extra installed without its dependencies: ``pip install --no-deps facenet-pytorch``
  (its code runs on current torch and numpy 2; it needs torchvision, which ComfyUI has).
* ``haar``: OpenCV's Haar cascades (``cv2.data``, in opencv-python-headless < 5, a requirement of
  the pack): always there, weaker on profiles and shadowed faces.

``auto`` takes MTCNN when it is installed, else Haar. Every raw detection gets a plausibility in
[0, 1] from its confidence, its landmarks (MTCNN's five points in face order; for Haar, eyes found
by OpenCV's eye cascade in the box's upper half), the share of skin-coloured pixels and its
position, and candidates below :data:`MIN_PLAUSIBILITY` are dropped: a confident box on a jacket's
elbow has no eyes and no skin, and no face is better than a wrong one (the audio gate would point
at the elbow). Boxes are :class:`echomimic_core.boxes.Box` in pixels.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .boxes import Box

log = logging.getLogger(__name__)

DETECTORS = ("auto", "mtcnn", "haar")
Point = tuple[float, float]  # x, y

# Candidates scoring below this are not faces (see ``plausibility``): a box with neither landmarks
# nor skin scores at most 0.40 however confident the detector is; the faces checked (drawn faces
# in tests/test_face_detection.py, the real-photo script benchmarks/face_detector.py) score >= 0.6.
MIN_PLAUSIBILITY = 0.45
# A second face at least this fraction of the main face's area makes a frame "several faces".
SECOND_FACE_AREA = 0.25
# Haar boxes are square and sit lower than the face boxes upstream ships with its demos
# (datasets/echomimicv3_demos/masks). Mean offsets over those 25 images, in units of the Haar box side
# (top, bottom, left, right), raise the token-grid IoU with upstream's gates from 0.72 to about 0.9.
HAAR_BOX_OFFSETS = (-0.05, 0.04, 0.11, -0.11)


@dataclass(frozen=True)
class Face:
    box: Box  # pixels
    confidence: float  # the detector's own score mapped to [0, 1]
    plausibility: float  # [0, 1], see module docstring
    detector: str
    # (x, y) of left eye, right eye, nose, left and right mouth corner (image left/right); None for Haar
    landmarks: tuple[Point, ...] | None = None

    @property
    def area(self) -> float:
        return self.box.height * self.box.width

    def mouth_box(self) -> Box:
        """The lip-sync region of this face (:func:`mouth_region`)."""
        return mouth_region(self.box)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (Box or top, bottom, left, right); 0 for boxes without area."""
    a, b = Box.of(a), Box.of(b)
    inter = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top)) * max(
        0.0, min(a.right, b.right) - max(a.left, b.left)
    )
    union = a.height * a.width + b.height * b.width - inter
    return inter / union if union > 0 else 0.0


def mouth_region(face_box: Box) -> Box:
    """The region lip-sync regenerates: the lower half of the face box, which holds mouth and jaw
    (inference's ``lipsync`` task and training.prepare's ``mouth_box`` alike)."""
    face = Box.of(face_box, "face box")
    return Box(face.top + face.height / 2, face.bottom, face.left, face.right)


def available_detectors() -> list[str]:
    """The concrete detectors that can run here, strongest first."""
    found = ["haar"]
    if importlib.util.find_spec("facenet_pytorch") is not None:
        found.insert(0, "mtcnn")
    return found


def resolve_detector(name: str) -> str:
    if name not in DETECTORS:
        raise ValueError(f"face detector must be one of {DETECTORS}, got {name!r}.")
    if name == "auto":
        return available_detectors()[0]
    if name not in available_detectors():
        raise ImportError(
            "the 'mtcnn' face detector needs facenet-pytorch, whose wheel carries the MTCNN weights: "
            "pip install --no-deps facenet-pytorch (without --no-deps pip would replace your torch); "
            "or use detector 'haar'."
        )
    return name


def as_rgb(image) -> np.ndarray:
    rgb = np.array(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"face detection needs an RGB image [H, W, 3]; got shape {rgb.shape}.")
    return rgb.astype(np.uint8)


# ------------------------------------------------------------------------------------ raw detectors


@functools.cache
def _cascade(name: str) -> cv2.CascadeClassifier:
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if detector.empty():
        raise RuntimeError(f"OpenCV could not load its bundled {name}; reinstall opencv-python-headless<5.")
    return detector


def _haar_raw(rgb: np.ndarray) -> list[tuple[Box, float, None]]:
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    min_side = max(24, min(gray.shape) // 20)
    out = []
    for name in ("haarcascade_frontalface_default.xml", "haarcascade_profileface.xml"):
        boxes, _, weights = _cascade(name).detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side), outputRejectLevels=True
        )
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights)):
            # the last stage's weight: ~0 at the acceptance edge, a few units for clear faces
            out.append(
                (Box(float(y), float(y + h), float(x), float(x + w)), 1 - math.exp(-max(float(weight), 0) / 2), None)
            )
        if out:  # profiles only where no frontal face was found (as before)
            break
    return out


@functools.cache
def _mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, device="cpu", min_face_size=24)


def _mtcnn_raw(rgb: np.ndarray) -> list[tuple[Box, float, tuple[Point, ...]]]:
    import torch

    with torch.inference_mode():
        boxes, probs, points = _mtcnn().detect(rgb, landmarks=True)
    if boxes is None:
        return []
    h, w = rgb.shape[:2]
    out = []
    for (x1, y1, x2, y2), prob, pts in zip(boxes, probs, points):
        box = Box(max(0.0, float(y1)), min(float(h), float(y2)), max(0.0, float(x1)), min(float(w), float(x2)))
        out.append((box, float(prob), tuple((float(px), float(py)) for px, py in pts)))
    return out


# ------------------------------------------------------------------------------------ plausibility


def _skin_fraction(rgb: np.ndarray, box: Box) -> float | None:
    """Share of skin-coloured pixels in the box's centre (YCrCb range that covers light to dark
    skin); None for an image without colour, where it says nothing."""
    y1, y2, x1, x2 = (int(round(v)) for v in box)
    hh, ww = y2 - y1, x2 - x1
    patch = rgb[y1 + hh // 5 : y2 - hh // 5, x1 + ww // 5 : x2 - ww // 5]
    if patch.size == 0:
        return 0.0
    if np.ptp(patch.astype(np.int16), axis=2).max() < 8:  # grey: no colour to judge
        return None
    ycrcb = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2YCrCb)
    cr, cb = ycrcb[..., 1], ycrcb[..., 2]
    return float(((cr >= 133) & (cr <= 180) & (cb >= 70) & (cb <= 130)).mean())


def _haar_eyes(rgb: np.ndarray, box: Box) -> int:
    """Eyes OpenCV's eye cascade finds in the upper 60 % of the box (0, 1 or 2)."""
    y1, y2, x1, x2 = (int(round(v)) for v in box)
    top = rgb[y1 : y1 + int(0.6 * (y2 - y1)), x1:x2]
    if min(top.shape[:2]) < 12:
        return 0
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(top), cv2.COLOR_RGB2GRAY))
    side = max(6, (x2 - x1) // 10)
    eyes = _cascade("haarcascade_eye.xml").detectMultiScale(gray, 1.1, 3, minSize=(side, side))
    return min(len(eyes), 2)


def _landmarks_in_face_order(box: Box, points: tuple[Point, ...]) -> bool:
    """Eyes above the nose above the mouth, all inside the box, eyes a sane distance apart."""
    y1, y2, x1, x2 = box
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = points
    inside = all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in points)
    eye_y, mouth_y = (ley + rey) / 2, (mly + mry) / 2
    spread = abs(rex - lex) / max(x2 - x1, 1)
    return inside and eye_y < ny < mouth_y and 0.15 < spread < 0.8


def plausibility(rgb: np.ndarray, box: Box, confidence: float, landmarks: tuple[Point, ...] | None) -> float:
    """How face-like a detection is, in [0, 1] (0 for a box far too small or too large)."""
    h, w = rgb.shape[:2]
    y1, y2, x1, x2 = box
    side = math.sqrt(max(y2 - y1, 0) * max(x2 - x1, 0))
    if not 0.03 * min(h, w) <= side <= 0.98 * max(h, w):
        return 0.0
    if landmarks is not None:
        shape = 1.0 if _landmarks_in_face_order(box, landmarks) else 0.0
    else:
        shape = (0.0, 0.6, 1.0)[_haar_eyes(rgb, box)]
    skin = _skin_fraction(rgb, box)
    # clothing, walls and hair reach 5-17 % "skin" pixels in this colour range, faces 40 % and more
    skin_term = 0.3 if skin is None else min(max(skin - 0.15, 0.0) / 0.35, 1.0)
    centre_y = (y1 + y2) / 2 / h  # portraits put faces high; clothing sits low
    position = 1.0 if centre_y < 0.7 else max(0.0, 1 - (centre_y - 0.7) / 0.3)
    return 0.25 * confidence + 0.35 * shape + 0.25 * skin_term + 0.15 * position


def _haar_reference_box(box: Box, image_hw) -> Box:
    """A Haar box moved towards upstream's demo face boxes (``HAAR_BOX_OFFSETS``)."""
    y1, y2, x1, x2 = box
    side_h, side_w = y2 - y1, x2 - x1
    top, bottom, left, right = HAAR_BOX_OFFSETS
    return Box(
        max(0.0, y1 + top * side_h),
        min(float(image_hw[0]), y2 + bottom * side_h),
        max(0.0, x1 + left * side_w),
        min(float(image_hw[1]), x2 + right * side_w),
    )


def detect_faces(image, detector: str = "auto", min_plausibility: float = MIN_PLAUSIBILITY) -> list[Face]:
    """Plausible faces in an RGB image (PIL or uint8 [H, W, 3]), the main one first (plausibility
    weighted by size: the subject of a portrait is large)."""
    rgb = as_rgb(image)
    name = resolve_detector(detector)
    raw = _mtcnn_raw(rgb) if name == "mtcnn" else _haar_raw(rgb)
    faces = []
    for raw_box, confidence, landmarks in raw:
        box = Box.of(raw_box)
        score = plausibility(rgb, box, confidence, landmarks)
        if score < min_plausibility:
            log.debug("%s candidate %s rejected: plausibility %.2f", name, box, score)
            continue
        if name == "haar":
            box = _haar_reference_box(box, rgb.shape[:2])
        faces.append(Face(box, confidence, score, name, landmarks))
    return sorted(faces, key=lambda f: -f.plausibility * math.sqrt(f.area))


def main_face(faces: list[Face]) -> Face | None:
    return faces[0] if faces else None


def several_faces(faces: list[Face]) -> bool:
    """More than one face of comparable size (a second face at least ``SECOND_FACE_AREA`` of the
    main face's area)."""
    return len(faces) > 1 and any(f.area >= SECOND_FACE_AREA * faces[0].area for f in faces[1:])
