"""How long a clip an audio file gives, and how upstream's long-video loop splits it into chunks.

The frontend shows the same numbers on the sampler node (``web/lib/video_plan.js``); both are
tested against one table of cases (``web/tests/video_plan_cases.json``). Rules, from upstream
``infer_preview.py``:

* ``raw = int(duration_s * fps)`` (truncation); the clip is ``raw`` rounded DOWN to ``4k+1``
  frames (the VAE compresses time 4x and keeps the first frame), except that one frame stays one.
  ``max_frames`` (Flash's ``video_length``) caps ``raw`` first: Flash renders one window and
  truncates the audio.
* ``latent_frames = (frames - 1) // 4 + 1``.
* ``partial`` (``partial_video_length``) is rounded down to ``4k+1`` too.
* Chunks: start at 0 with ``partial`` frames; while the chunk ends before the clip does, the next
  starts ``partial - overlap`` frames later (it is conditioned on the last ``overlap`` output
  frames); the chunk that reaches the end is shortened to the remaining frames, rounded down to
  ``4k+1``. Consecutive chunks share ``overlap`` frames, cross-faded, so the output has
  ``sum(lengths) - overlap * (chunks - 1)`` frames; that can be a few frames fewer than
  ``frames`` because of the last rounding. A last chunk shorter than the overlap (possible
  only when ``overlap`` is not a multiple of 4) contributes no new frames.
"""
from __future__ import annotations

from dataclasses import dataclass

TEMPORAL_COMPRESSION = 4


def round_frames(n: int) -> int:
    """``n`` rounded down to ``4k+1`` frames (1 stays 1)."""
    return n if n == 1 else (n - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_COMPRESSION + 1


@dataclass(frozen=True)
class VideoPlan:
    frames: int                          # clip length implied by the audio, 4k+1
    latent_frames: int
    partial: int                         # chunk length after rounding
    chunks: tuple[tuple[int, int], ...]  # (first frame, frame count) per chunk
    output_frames: int                   # frames the chunk loop delivers
    seconds: float                       # output_frames / fps


def plan_video(duration_s: float, fps: float, partial: int, overlap: int,
               max_frames: int | None = None) -> VideoPlan:
    """Frames, latent frames and long-video chunks for ``duration_s`` seconds of audio."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    raw = int(duration_s * fps)
    if max_frames is not None:
        raw = min(raw, int(max_frames))
    if raw < 1:
        raise ValueError(f"{duration_s:.3f} s of audio at {fps} fps is less than one frame; "
                         "use a longer audio clip.")
    frames = round_frames(raw)
    part = 1 if frames == 1 else round_frames(int(partial))
    if part < 1:
        raise ValueError(f"partial_video_length must be at least 1 frame, got {partial}.")
    if frames > part and not 0 <= overlap < part:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and below the chunk length "
                         f"({part} after rounding partial_video_length={partial} to 4k+1); "
                         "lower the overlap or raise partial_video_length.")
    chunks = []
    start, length = 0, part
    while True:
        if start + length >= frames:
            chunks.append((start, round_frames(frames - start)))
            break
        chunks.append((start, length))
        start += length - overlap
    output = chunks[0][1] + sum(max(0, n - overlap) for _, n in chunks[1:])
    return VideoPlan(frames, latent_frames(frames), part, tuple(chunks), output, output / fps)
