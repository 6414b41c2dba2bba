"""Raw talking-head footage -> a manifest of training windows for ``training.preprocess``.

    python -m training.prepare RAW_DIR --out data/clips.jsonl [--frames 113 --stride 113]

Every video under RAW_DIR is cut into windows of ``--frames`` frames at ``--fps`` with a stride.
The face is detected every ``--detect-every`` source frames (``echomimic_core.face_detection``, the
detector inference uses) and tracked through the window; per window the manifest row holds a
face-centred crop box of the training aspect, the ``face_box`` (the union of the tracked face
boxes) and the ``mouth_box`` (the lower half of the face box, the region inference's lip-sync task
regenerates), the window's start in the video and its audio offset, all as ``training.preprocess``
reads them. Boxes are ``{"top", "bottom", "left", "right"}`` fractions of the source frame
(``training.boxes``).

Windows that cannot train are skipped and reported with the reason (``--report``, and a summary):
``no face``, ``several faces``, ``face jump`` (the tracked face leaves its track: another person),
``cut`` (a scene cut inside the window), ``silence``, ``low resolution`` (the face crop is much
smaller than the training size), ``low sync`` (with ``--syncnet``). ``--syncnet WEIGHTS`` scores
audio-visual sync with SyncNet weights the user supplies (the paper filters by sync); it never
downloads anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echomimic_core import face_detection
from echomimic_core.boxes import Box
from echomimic_core.media import VIDEO_EXTENSIONS, MediaError
from echomimic_core.vae_frames import round_down_4k1
from training.boxes import as_manifest
from training.footage import iter_frames, probe
from training.preprocess import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_SIZE

log = logging.getLogger(__name__)

ANALYSIS_SIDE = 640  # longest side frames are analysed at: plenty for face boxes, cheap to decode
THUMB = (48, 27)  # grey thumbnail for cut detection


@dataclass
class PrepareConfig:
    frames: int = DEFAULT_FRAMES
    stride: int | None = None  # None = frames (windows do not overlap)
    fps: float = DEFAULT_FPS
    size: tuple[int, int] = DEFAULT_SIZE  # training (H, W): the crop's aspect
    detector: str = "auto"
    detect_every: int = 5  # source frames between detections
    face_scale: float = 2.6  # crop height / face height
    max_missing: float = 0.2  # share of detections allowed without a face
    max_several: float = 0.2  # share of detections allowed with several faces
    min_track_iou: float = 0.3  # consecutive face boxes of one person overlap at least this much
    cut_threshold: float = (
        0.1  # mean absolute grey thumbnail change (0..1) between frames: a scene cut (talking heads move by ~0.01-0.03)
    )
    min_voiced: float = 0.25  # share of 40 ms audio frames above the silence level
    silence_db: float = -45.0  # dBFS of an audio frame counted as silent
    min_crop_scale: float = 0.5  # crop side in source pixels / training side, below = low resolution
    min_sync: float | None = None  # SyncNet confidence threshold (with a scorer)
    caption: str = ""

    def __post_init__(self):
        if round_down_4k1(self.frames) != self.frames:
            raise ValueError(f"--frames must be 4k + 1 (e.g. {DEFAULT_FRAMES}), got {self.frames}.")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride must be at least 1 frame, got {self.stride}.")
        if self.detect_every < 1:
            raise ValueError(f"--detect-every must be at least 1, got {self.detect_every}.")
        face_detection.resolve_detector(self.detector)  # unknown or missing detector: fail now


@dataclass
class Analysis:
    """What one pass over a video measured, at analysis resolution."""

    fps: float
    size: tuple[int, int]  # analysis frame (H, W)
    source_size: tuple[int, int]  # the video's own frame (H, W)
    duration: float
    times: list[float] = field(default_factory=list)  # every frame
    change: list[float] = field(default_factory=list)  # thumbnail change to the previous frame
    detections: list[tuple[float, list[face_detection.Face]]] = field(default_factory=list)


def analyse(path: Path, cfg: PrepareConfig) -> Analysis:
    import cv2

    info = probe(path)
    result = None
    previous = None
    for index, (time, rgb, source_size) in enumerate(iter_frames(path, ANALYSIS_SIDE)):
        if result is None:
            result = Analysis(fps=info.fps, size=rgb.shape[:2], source_size=source_size, duration=info.duration)
        thumb = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), THUMB, interpolation=cv2.INTER_AREA) / 255.0
        result.times.append(time)
        result.change.append(0.0 if previous is None else float(np.abs(thumb - previous).mean()))
        previous = thumb
        if index % cfg.detect_every == 0:
            result.detections.append((time, face_detection.detect_faces(rgb, cfg.detector)))
    if result is None:
        raise MediaError(f"{path}: the video stream holds no frames.")
    result.duration = max(result.duration, result.times[-1] + 1 / result.fps)
    return result


def voiced_share(waveform: np.ndarray, sample_rate: int, silence_db: float) -> float:
    """Share of 40 ms frames louder than ``silence_db`` dBFS."""
    hop = max(1, int(0.04 * sample_rate))
    usable = len(waveform) // hop * hop
    if usable == 0:
        return 0.0
    rms = np.sqrt((waveform[:usable].reshape(-1, hop).astype(np.float64) ** 2).mean(1) + 1e-12)
    return float((20 * np.log10(rms) > silence_db).mean())


def crop_for(face: Box, frame_hw, size, face_scale: float) -> Box:
    """A face-centred crop in the frame's pixels with the aspect of ``size`` (H, W): ``face_scale``
    face heights tall, shrunk to fit the frame, shifted to stay inside it."""
    fy1, fy2, fx1, fx2 = face
    frame_h, frame_w = frame_hw
    aspect = size[1] / size[0]
    height = max((fy2 - fy1) * face_scale, (fx2 - fx1) * face_scale / aspect)
    height = min(height, frame_h, frame_w / aspect)
    width = height * aspect
    cy, cx = (fy1 + fy2) / 2, (fx1 + fx2) / 2
    y1 = min(max(cy - height / 2, 0.0), frame_h - height)
    x1 = min(max(cx - width / 2, 0.0), frame_w - width)
    return Box(y1, y1 + height, x1, x1 + width)


def to_frac(box: Box, frame_hw) -> dict[str, float]:
    """A box in pixels of a (H, W) frame -> the manifest's fractions (``training.boxes``)."""
    h, w = frame_hw
    return {edge: round(v, 5) for edge, v in as_manifest(box.scaled(1 / h, 1 / w)).items()}


def judge_window(
    analysis: Analysis, start: float, seconds: float, cfg: PrepareConfig
) -> tuple[dict | None, str | None]:
    """(the window's boxes, None) or (None, the reason it cannot train)."""
    end = start + seconds
    inside = [i for i, t in enumerate(analysis.times) if start <= t < end]
    if any(analysis.change[i] > cfg.cut_threshold for i in inside[1:]):
        return None, "cut"
    dets = [faces for t, faces in analysis.detections if start <= t < end]
    if not dets:
        return None, "no face"
    missing = sum(1 for faces in dets if not faces) / len(dets)
    if missing > cfg.max_missing:
        return None, "no face"
    several = sum(1 for faces in dets if face_detection.several_faces(faces)) / len(dets)
    if several > cfg.max_several:
        return None, "several faces"
    track = [faces[0].box for faces in dets if faces]
    if any(face_detection.box_iou(a, b) < cfg.min_track_iou for a, b in zip(track, track[1:])):
        return None, "face jump"
    union = Box(
        min(b.top for b in track), max(b.bottom for b in track), min(b.left for b in track), max(b.right for b in track)
    )
    crop = crop_for(union, analysis.size, cfg.size, cfg.face_scale)
    scale = analysis.source_size[0] / analysis.size[0]  # analysis pixels -> source pixels
    if crop.height * scale < cfg.min_crop_scale * cfg.size[0]:
        return None, "low resolution"
    return {
        "crop_box": to_frac(crop, analysis.size),
        "face_box": to_frac(union, analysis.size),
        "mouth_box": to_frac(face_detection.mouth_region(union), analysis.size),
    }, None


SyncScorer = Callable[[Path, float, int, float, list], tuple[float, int]]


def prepare_video(
    path: Path,
    root: Path,
    cfg: PrepareConfig,
    sync_scorer: SyncScorer | None = None,
) -> tuple[list[dict], list[dict]]:
    """(manifest rows, skipped windows with their reason) of one video."""
    from echomimic_core.media import load_audio, to_mono

    rel = path.relative_to(root).as_posix()
    stem = rel.rsplit(".", 1)[0].replace("/", "__")
    analysis = analyse(path, cfg)
    try:
        waveform, sample_rate = load_audio(path)
        mono = to_mono(waveform).numpy()
    except MediaError:
        mono, sample_rate = None, 16000
    seconds = cfg.frames / cfg.fps
    stride = (cfg.stride or cfg.frames) / cfg.fps
    count = max(0, math.floor((analysis.duration - seconds) / stride + 1e-9) + 1)
    caption_file = path.with_suffix(".txt")
    caption = caption_file.read_text().strip() if caption_file.is_file() else cfg.caption
    rows, skipped = [], []
    if count == 0:
        skipped.append({"video": rel, "start_seconds": 0.0, "reason": f"shorter than {seconds:.2f} s"})
    for k in range(count):
        start = round(k * stride, 6)
        window_id = f"{stem}_w{k:04d}"
        boxes, reason = judge_window(analysis, start, seconds, cfg)
        if reason is None:
            if mono is None:
                reason = "no audio"
            else:
                piece = mono[int(start * sample_rate) : int((start + seconds) * sample_rate)]
                if voiced_share(piece, sample_rate, cfg.silence_db) < cfg.min_voiced:
                    reason = "silence"
        row = None
        if reason is None:
            row = {
                "id": window_id,
                "video": rel,
                "caption": caption,
                "start_seconds": start,
                "audio_offset_seconds": 0.0,
                "num_frames": cfg.frames,
                "fps": cfg.fps,
                **boxes,
            }
            if sync_scorer is not None:
                confidence, offset = sync_scorer(path, start, cfg.frames, cfg.fps, boxes["face_box"])
                row["sync_score"] = round(confidence, 4)
                row["sync_offset_frames"] = offset
                if cfg.min_sync is not None and confidence < cfg.min_sync:
                    reason = "low sync"
        if reason is None:
            rows.append(row)
        else:
            skipped.append({"id": window_id, "video": rel, "start_seconds": start, "reason": reason})
    return rows, skipped


def find_videos(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def prepare(
    raw_dir: str | Path,
    out: str | Path,
    cfg: PrepareConfig,
    report: str | Path | None = None,
    sync_scorer: SyncScorer | None = None,
    progress: bool = True,
) -> dict:
    """Write the manifest (paths relative to ``out``'s folder, as preprocess resolves them) and
    return a summary: windows kept, skipped per reason, videos that failed."""
    import os

    from tqdm.auto import tqdm

    raw = Path(raw_dir)
    if not raw.exists():
        raise FileNotFoundError(f"{raw}: no such folder of videos.")
    videos = find_videos(raw)
    if not videos:
        raise FileNotFoundError(f"{raw}: holds no videos ({', '.join(VIDEO_EXTENSIONS)}).")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = raw if raw.is_dir() else raw.parent
    rows, skipped, failed = [], [], []
    for path in tqdm(videos, desc="prepare", disable=not progress):
        try:
            kept, dropped = prepare_video(path, base, cfg, sync_scorer)
        except MediaError as e:
            log.warning("skipping %s: %s", path, e)
            failed.append({"video": str(path), "reason": str(e)})
            continue
        # the manifest's paths are relative to its own folder (preprocess's default --root)
        prefix = os.path.relpath(base, out.parent)
        for row in kept:
            row["video"] = Path(prefix, row["video"]).as_posix()
        rows += kept
        skipped += dropped
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(out)
    if report is not None:
        Path(report).write_text("".join(json.dumps(s) + "\n" for s in skipped + failed))
    summary = {
        "videos": len(videos),
        "windows": len(rows),
        "skipped": dict(Counter(s["reason"] for s in skipped)),
        "failed_videos": len(failed),
    }
    log.info("prepare %s -> %s: %s", raw, out, summary)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dir", help="folder of talking-head videos (searched recursively), or one video")
    p.add_argument("--out", required=True, help="manifest to write (JSONL, for training.preprocess)")
    p.add_argument("--report", default=None, help="JSONL of the skipped windows with their reason")
    d = PrepareConfig.__dataclass_fields__
    p.add_argument("--frames", type=int, default=d["frames"].default, help="window length, 4k+1")
    p.add_argument("--stride", type=int, default=None, help="frames between window starts (default: --frames)")
    p.add_argument("--fps", type=float, default=d["fps"].default)
    height, width = d["size"].default
    p.add_argument("--height", type=int, default=height, help="training height (the crop's aspect)")
    p.add_argument("--width", type=int, default=width, help="training width (the crop's aspect)")
    p.add_argument("--detector", choices=face_detection.DETECTORS, default=d["detector"].default)
    p.add_argument("--detect-every", type=int, default=d["detect_every"].default)
    p.add_argument("--face-scale", type=float, default=d["face_scale"].default, help="crop height / face height")
    p.add_argument("--cut-threshold", type=float, default=d["cut_threshold"].default)
    p.add_argument("--silence-db", type=float, default=d["silence_db"].default)
    p.add_argument("--min-voiced", type=float, default=d["min_voiced"].default)
    p.add_argument(
        "--caption", default=d["caption"].default, help="caption for every window (a VIDEO.txt beside a video wins)"
    )
    p.add_argument("--syncnet", default=None, help="SyncNet weights (syncnet_v2.model layout) to score sync")
    p.add_argument("--min-sync", type=float, default=None, help="skip windows whose SyncNet confidence is below")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = PrepareConfig(
            frames=args.frames,
            stride=args.stride,
            fps=args.fps,
            size=(args.height, args.width),
            detector=args.detector,
            detect_every=args.detect_every,
            face_scale=args.face_scale,
            cut_threshold=args.cut_threshold,
            silence_db=args.silence_db,
            min_voiced=args.min_voiced,
            min_sync=args.min_sync,
            caption=args.caption,
        )
        scorer = None
        if args.syncnet is not None:
            from training.syncnet import SyncNetScorer

            scorer = SyncNetScorer.load(args.syncnet)
        elif args.min_sync is not None:
            p.error("--min-sync needs --syncnet WEIGHTS")
    except (ValueError, ImportError, FileNotFoundError) as e:
        p.error(str(e))
    summary = prepare(args.raw_dir, args.out, cfg, args.report, scorer)
    print(json.dumps(summary))
    return 0 if summary["windows"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
