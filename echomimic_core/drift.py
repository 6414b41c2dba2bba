"""Long-video drift: measuring it per chunk, and the two countermeasures that use the reference.

Metrics of one chunk, on the frames it generated itself (before the overlap blend and the colour
post-process), a few frames sampled evenly (``DriftMeter.samples``):

* ``sharpness``: variance of the Laplacian of the grey face crop (OpenCV), the usual focus measure;
  it falls as faces smear. ``reference_sharpness`` in the report is the reference's, for scale.
* ``colour_shift``: Euclidean distance between the chunk's LAB statistics (per-channel mean and
  standard deviation, 8-bit LAB units, whole frame) and the reference's: the cast that accumulates
  from chunk to chunk (the colour post-process hides it in the output, not in the conditioning).
* ``identity``: cosine similarity of CLIP ViT-H image embeddings (the class token of the tower's
  penultimate block, what Wan conditions on) of the chunk's face crop and the reference's face
  crop. A *proxy*: CLIP is not a face-recognition model; it tracks gross identity loss (a different
  face, a smeared one) but not subtle likeness.
* ``face_box``: the face found by the Haar detector in the chunk's middle sampled frame, [top,
  bottom, left, right] in output pixels; None when none was found (the reference's box is measured
  instead).

Countermeasures (settings, see README "Long videos"):

* ``reference_anchor``: "colour" colour-matches the previous chunk's tail to the reference before
  it conditions the next chunk; "keyframe" also keeps the reference itself as the last frame of
  every chunk but the last, so each chunk starts from a tail that ends on the original image.
* ``redo_identity_below`` / ``redo_sharpness_ratio``: a chunk whose identity proxy falls below the
  threshold, or whose sharpness falls below that fraction of the first chunk's, is rendered once
  more with fresh noise and the reference as its keyframe anchor; the better of the two is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .boxes import Box
from .color_match import color_transfer
from .face_region import detect_face_box
from .media import to_uint8_frames

log = logging.getLogger(__name__)

METRICS = ("sharpness", "colour_shift", "identity")
CLIP_FACE_MARGIN = 0.25  # the face crop CLIP sees: the box grown by this fraction on each side
REPORT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# metrics


def laplacian_variance(image: np.ndarray) -> float:
    """Variance of the Laplacian of a uint8 RGB image (grey), the focus measure."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def lab_statistics(images: np.ndarray) -> np.ndarray:
    """[6] per-channel mean and standard deviation of uint8 RGB images [N, H, W, 3] in 8-bit LAB."""
    lab = np.stack([cv2.cvtColor(np.ascontiguousarray(i), cv2.COLOR_RGB2LAB) for i in images]).reshape(-1, 3)
    lab = lab.astype(np.float64)
    return np.concatenate([lab.mean(0), lab.std(0)])


def crop(image: np.ndarray, box: Box, margin: float = 0.0) -> np.ndarray:
    """The pixels the box touches (grown by ``margin`` of its size on each side, clipped to the
    image); the whole image when that leaves less than 2x2."""
    rows, cols = Box.of(box).grown(margin).pixel_span(*image.shape[:2])
    if rows.stop - rows.start < 2 or cols.stop - cols.start < 2:
        return image
    return image[rows, cols]


def clip_embedder(image_encoder) -> Callable[[list[np.ndarray]], torch.Tensor]:
    """uint8 RGB crops -> CLIP embeddings [N, D]: the class token of ``encoders.image.ImageEncoder``'s
    output (penultimate block). Crops are resized to the tower's input size first (bicubic)."""
    from PIL import Image

    def embed(images: list[np.ndarray]) -> torch.Tensor:
        size = image_encoder.image_size
        batch = np.stack([np.array(Image.fromarray(i).resize((size, size), Image.Resampling.BICUBIC)) for i in images])
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1
        return image_encoder.encode(pixels)[:, 0].float().cpu()

    return embed


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


class DriftMeter:
    """Measures chunks against the reference (uint8 [H, W, 3] at the output size).

    ``face_box``: the reference's face (output pixels), else detected, else the whole frame.
    ``embed``: images -> embeddings [N, D] for the identity proxy (see :func:`clip_embedder`); None leaves
    ``identity`` out.
    """

    def __init__(
        self,
        reference: np.ndarray,
        face_box: Box | None = None,
        embed: Callable[[list[np.ndarray]], torch.Tensor] | None = None,
        samples: int = 3,
    ):
        self.reference = to_uint8_frames(reference[None])[0]
        h, w = self.reference.shape[:2]
        self.face_box = Box.of(face_box) if face_box is not None else detect_face_box(self.reference)
        if self.face_box is None:
            self.face_box = Box(0.0, float(h), 0.0, float(w))
        self.embed, self.samples = embed, samples
        self.reference_stats = lab_statistics(self.reference[None])
        self.reference_sharpness = laplacian_variance(crop(self.reference, self.face_box))
        self.reference_embedding = embed([crop(self.reference, self.face_box, CLIP_FACE_MARGIN)])[0] if embed else None

    def measure(self, index: int, start_frame: int, frames) -> dict[str, Any]:
        """One report entry for chunk ``index`` whose own frames [n, H, W, 3] begin at output frame
        ``start_frame``."""
        images = to_uint8_frames(frames) if len(frames) else np.zeros((0, 1, 1, 3), np.uint8)
        entry = {"index": index, "start_frame": start_frame, "frames": len(images)}
        if not len(images):
            return {**entry, **dict.fromkeys(METRICS), "face_box": None}
        picks = images[np.unique(np.linspace(0, len(images) - 1, min(self.samples, len(images))).round().astype(int))]
        found = detect_face_box(picks[len(picks) // 2])
        box = found if found is not None else self.face_box
        entry["sharpness"] = float(np.mean([laplacian_variance(crop(p, box)) for p in picks]))
        entry["colour_shift"] = float(np.linalg.norm(lab_statistics(picks) - self.reference_stats))
        entry["identity"] = None
        if self.embed is not None:
            crops = self.embed([crop(p, box, CLIP_FACE_MARGIN) for p in picks])
            entry["identity"] = float(np.mean([_cosine(c, self.reference_embedding) for c in crops]))
        entry["face_box"] = [round(float(v), 1) for v in found] if found is not None else None
        return entry


# ---------------------------------------------------------------------------------------------
# countermeasures


def anchor_start_frames(start_frames: torch.Tensor | None, reference: np.ndarray) -> torch.Tensor | None:
    """The previous chunk's tail [n, H, W, 3] 0..1 with each frame's LAB mean/std matched to the
    reference, so a colour cast does not seed the next chunk."""
    if start_frames is None:
        return None
    matched = [color_transfer(f, reference) for f in to_uint8_frames(start_frames)]
    return torch.from_numpy(np.stack(matched)).float() / 255


@dataclass(frozen=True)
class RedoPolicy:
    """When a chunk is rendered again (0 switches a criterion off)."""

    identity_below: float = 0.0
    sharpness_ratio: float = 0.0

    @classmethod
    def of(cls, settings) -> RedoPolicy:
        """The policy a run's ``GenerationSettings`` ask for."""
        return cls(settings.redo_identity_below, settings.redo_sharpness_ratio)

    @property
    def active(self) -> bool:
        return self.identity_below > 0 or self.sharpness_ratio > 0

    def reason(self, entry: dict, baseline_sharpness: float | None) -> str | None:
        """Why chunk ``entry`` should be redone, or None."""
        identity, sharpness = entry.get("identity"), entry.get("sharpness")
        if self.identity_below > 0 and identity is not None and identity < self.identity_below:
            return f"identity proxy {identity:.3f} < {self.identity_below}"
        if self.sharpness_ratio > 0 and sharpness is not None and baseline_sharpness:
            if sharpness < self.sharpness_ratio * baseline_sharpness:
                return f"sharpness {sharpness:.1f} < {self.sharpness_ratio} x first chunk's {baseline_sharpness:.1f}"
        return None

    @staticmethod
    def better(new: dict, old: dict) -> bool:
        """Whether the redone chunk beats the first try: higher identity proxy, else sharper."""
        if new.get("identity") is not None and old.get("identity") is not None:
            return new["identity"] > old["identity"]
        return (new.get("sharpness") or 0) > (old.get("sharpness") or 0)


# ---------------------------------------------------------------------------------------------
# report


def write_report(path: str | Path, entries: Sequence[dict], meta: dict[str, Any]) -> tuple[Path, Path]:
    """``path`` (JSON: ``meta`` + one entry per chunk under "chunks") and a PNG plot beside it
    (same name, ``.png``). Returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"version": REPORT_VERSION, **meta, "chunks": list(entries)}
    path.write_text(json.dumps(report, indent=1))
    plot = path.with_suffix(".png")
    plot_report(entries, meta.get("fps", 25.0), meta.get("reference_sharpness")).save(plot)
    return path, plot


def plot_report(entries: Sequence[dict], fps: float, reference_sharpness: float | None = None, width: int = 720):
    """A PIL image: one panel per metric over time (chunk start, seconds), a dot per chunk (ringed
    when the chunk was redone); the dashed line in the sharpness panel is the reference's."""
    from PIL import Image, ImageDraw

    panel_h, left, right, top = 150, 70, 20, 26
    image = Image.new("RGB", (width, top + len(METRICS) * (panel_h + top) + 20), "white")
    draw = ImageDraw.Draw(image)
    times = [e["start_frame"] / fps for e in entries]
    t_max = max(times + [1e-6])
    for k, name in enumerate(METRICS):
        y0 = top + k * (panel_h + top)
        box = (left, y0, width - right, y0 + panel_h)
        reference = reference_sharpness if name == "sharpness" else None
        _panel(draw, box, name, times, entries, t_max, reference)
    draw.text((left, image.height - 16), f"chunk start (s), 0 .. {t_max:.1f}", fill=(0, 0, 0))
    return image


_COLOURS = {"sharpness": (31, 119, 180), "colour_shift": (214, 39, 40), "identity": (44, 160, 44)}


def _panel(draw, box, name: str, times, entries, t_max: float, reference: float | None) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(120, 120, 120))
    draw.text((x0, y0 - 14), "identity (CLIP proxy)" if name == "identity" else name, fill=(0, 0, 0))
    measured = [(t, e) for t, e in zip(times, entries) if e.get(name) is not None]
    if not measured:
        draw.text((x0 + 10, (y0 + y1) // 2), "not measured", fill=(120, 120, 120))
        return
    values = [e[name] for _, e in measured] + ([reference] if reference else [])
    lo, hi = min(values), max(values)
    if name == "identity":
        lo, hi = min(lo, 0.0), max(hi, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    draw.text((4, y0), f"{hi:.3g}", fill=(0, 0, 0))
    draw.text((4, y1 - 12), f"{lo:.3g}", fill=(0, 0, 0))

    def to_xy(t, v):
        return x0 + 6 + (x1 - x0 - 12) * t / t_max, y1 - 6 - (y1 - y0 - 12) * (v - lo) / (hi - lo)

    if reference:
        ry = to_xy(0, reference)[1]
        for xs in range(x0, x1, 12):
            draw.line([xs, ry, min(xs + 6, x1), ry], fill=(150, 150, 150))
    points = [to_xy(t, e[name]) for t, e in measured]
    if len(points) > 1:
        draw.line(points, fill=_COLOURS[name], width=2)
    for (px, py), (_, e) in zip(points, measured):
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=_COLOURS[name])
        if e.get("redone"):
            draw.ellipse([px - 6, py - 6, px + 6, py + 6], outline=(0, 0, 0))
