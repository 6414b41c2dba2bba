"""Raw footage for training: stream a long video's frames, or read one window of it, without
holding the whole video in memory (minutes of 1080p are many GB as frames).

Files are opened and frames turned upright by the container's display rotation through
``echomimic_core.media`` (as inference decodes them), so boxes measured here (``training.prepare``)
and pixels read for preprocessing agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echomimic_core.media import MediaError, frame_rate, open_video, upright_frame


class WindowPastEnd(MediaError):
    """The video ends before the window asked of :func:`read_window` does."""


@dataclass
class VideoInfo:
    fps: float
    duration: float  # seconds (the container's, or frames / fps)
    has_audio: bool


def _origin(stream) -> float:
    """The stream's first timestamp: times here count from the first frame, as frame indices do."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe(path: str | Path) -> VideoInfo:
    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = frame_rate(stream, path)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = (stream.frames or 0) / fps
        return VideoInfo(fps=fps, duration=duration, has_audio=bool(container.streams.audio))


def iter_frames(path: str | Path, max_side: int | None = None) -> Iterator[tuple[float, np.ndarray, tuple[int, int]]]:
    """(time in seconds, RGB uint8 [H, W, 3], the frame's own upright (H, W)) for every frame,
    scaled so the longer side is at most ``max_side`` (analysis needs no full resolution).

    Decoded without FFmpeg's frame threads: closing a container while they run (a caller that
    stops early) can deadlock."""
    import av

    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = frame_rate(stream, path)
        origin = _origin(stream)
        index = 0
        try:
            for frame in container.decode(stream):
                width = height = None
                if max_side and max(frame.width, frame.height) > max_side:
                    scale = max_side / max(frame.width, frame.height)
                    width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
                time = float(frame.time) - origin if frame.time is not None else index / fps
                image = upright_frame(frame, width, height)
                turned = image.shape[0] != (height or frame.height)  # a quarter turn swaps the sides
                full = (frame.width, frame.height) if turned else (frame.height, frame.width)
                yield time, image, full
                index += 1
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the video stream is corrupt ({e}).") from e


def read_window(path: str | Path, start: float, count: int, fps: float) -> np.ndarray:
    """``count`` frames sampled at ``fps`` from ``start`` seconds on (nearest source frame), as RGB
    uint8 [count, H, W, 3]. Seeks to the keyframe before ``start`` instead of decoding from 0.
    :class:`WindowPastEnd` when the video stops before the window does."""
    import av

    wanted = [start + i / fps for i in range(count)]
    with open_video(path) as container:
        stream = container.streams.video[0]
        src_fps = frame_rate(stream, path)
        half = 0.5 / src_fps
        origin = _origin(stream)
        if start > 0 and stream.time_base is not None:
            container.seek(int((origin + max(0.0, start - 1.0)) / stream.time_base), stream=stream, backward=True)
        out: list[np.ndarray | None] = [None] * count
        pending = 0  # next wanted frame still to fill
        previous = None
        try:
            for frame in container.decode(stream):
                time = float(frame.time) - origin
                # the latest frame at or before each wanted time (within half a source frame)
                while pending < count and time > wanted[pending] + half:
                    if previous is None:
                        raise MediaError(f"{path}: no frame at {wanted[pending]:.3f} s (seek went past it).")
                    out[pending] = previous
                    pending += 1
                if pending == count:
                    break
                previous = upright_frame(frame)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the video stream is corrupt ({e}).") from e
        while pending < count and previous is not None and wanted[pending] <= time + 1.5 / src_fps:
            out[pending] = previous  # the last frames of the file
            pending += 1
    if pending < count:
        raise WindowPastEnd(
            f"{path}: ends before {start + count / fps:.2f} s; a window of {count} frames at {fps:g} fps "
            f"from {start:.2f} s does not fit."
        )
    return np.stack(out)
