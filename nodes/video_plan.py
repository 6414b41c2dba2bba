"""How long a clip an audio file gives and how it is split into long-video chunks, for display.

The numbers come from the core's own rules (``echomimic_core.audio_alignment.frames_for_samples``
and ``echomimic_core.long_video.plan_chunks``), so what the node shows is what the sampler does.
The frontend computes the same plan in ``web/lib/video_plan.js``; both are tested against
``web/tests/video_plan_cases.json``, as is the one-line summary both show (:func:`plan_line`,
JavaScript ``formatPlan``). The rules:

* ``samples = round(duration_s * 16000)`` (the audio as the encoders see it, mono 16 kHz);
  ``fps`` is taken as the nearest fraction with denominator <= 1001 (29.97 -> 30000/1001);
* ``frames = floor(samples * fps / 16000)``, capped by ``max_frames`` (Flash's single window),
  as ``pipeline.output_frame_count`` (no 4k+1 rounding: the last chunk is rounded up and trimmed);
  ``latent_frames`` = the latent length of those frames rounded UP to ``4k+1`` (the VAE compresses
  time 4x and keeps the first frame);
* chunks of ``partial`` = ``partial_video_length`` rounded down to ``4k+1`` (at least 5) start
  every ``partial - overlap`` frames; the chunk that reaches the end is the remaining frames
  rounded UP to ``4k+1`` (the surplus is trimmed), so the output has exactly ``frames`` frames.
  ``0 <= overlap < partial``. Upstream instead rounds the last chunk down and loses up to 3 frames
  and the audio under them.

``chunks`` is the plan at fixed seams. With the sampler's ``seam_search_frames`` (default 12) each
chunk may end up to that many frames earlier, at a pause in the audio
(``long_video.plan_chunks_at_pauses``), which the audio's duration alone cannot tell: the sampler
may render up to ``most_chunks`` chunks, and the line shows that range ("2–3 chunks").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from echomimic_core.audio_alignment import SAMPLE_RATE, frames_for_samples
from echomimic_core.long_video import most_chunks_at_pauses, plan_chunks
from echomimic_core.vae_frames import latent_frames, round_down_4k1, round_up_4k1


@dataclass(frozen=True)
class VideoPlan:
    frames: int  # output frames
    latent_frames: int
    partial: int  # chunk length after rounding
    chunks: tuple[tuple[int, int, int], ...]  # (first frame, frames generated, overlap) per chunk
    seconds: float  # frames / fps
    most_chunks: int  # chunks the sampler's seam search may render (len(chunks) without it)


def plan_video(
    duration_s: float,
    fps: float,
    partial: int,
    overlap: int,
    max_frames: int | None = None,
    seam_search_frames: int = 0,
) -> VideoPlan:
    """Frames, latent frames and chunks for ``duration_s`` seconds of audio."""
    frames = frames_for_samples(round(duration_s * SAMPLE_RATE), fps, max_frames=max_frames, round_to_4k1=False)
    if frames < 1:
        raise ValueError(f"{duration_s:.3f} s of audio at {fps} fps is less than one frame; use a longer audio clip.")
    chunks = plan_chunks(frames, partial, overlap)
    return VideoPlan(
        frames,
        latent_frames(round_up_4k1(frames)),
        round_down_4k1(partial),
        tuple((c.start, c.length, c.overlap) for c in chunks),
        frames / fps,
        most_chunks_at_pauses(frames, partial, overlap, seam_search_frames),
    )


def plan_line(frames: int, fps: float, latent: int, chunks: int | None, most_chunks: int | None = None) -> str:
    """The sampler's summary, "125 frames · 5.00 s · 32 latent · 2 chunks"; ``chunks`` None = sliding mode.

    The frontend writes the same line before a run (``formatPlan`` in web/lib/video_plan.js), with
    "2–3 chunks" when seam search may add chunks (``most_chunks``); after a run the sampler sends it
    from the real plan (one count), so the chunk count does not vanish on execution.
    In sliding mode the windows are cut in latent frames, not these chunks, so no count is shown.
    """
    if chunks is None:
        count = "sliding windows"
    elif most_chunks is not None and most_chunks > chunks:
        count = f"{chunks}–{most_chunks} chunks"
    else:
        count = "1 chunk" if chunks == 1 else f"{chunks} chunks"
    length = "1 frame" if frames == 1 else f"{frames} frames"
    # JavaScript's toFixed(2): the exact binary value, ties away from zero (Python's format rounds
    # ties to even: 135 frames at 24 fps would read 5.62 s here and 5.63 s in the browser)
    seconds = Decimal(frames / fps).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"{length} · {seconds} s · {latent} latent · {count}"
