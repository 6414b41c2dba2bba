"""Audio of any length: chunked generation and sliding latent windows.

Two modes, as upstream offers them:

* ``chunks`` (upstream's default): the video is generated in pixel-space chunks of
  ``partial_video_length`` frames. Each chunk after the first is conditioned on the previous
  output's last ``overlap_video_length`` frames (as several start frames of the inpainting mask)
  and cross-faded linearly over those frames. The CLIP image stays the original reference.
* ``sliding`` (upstream's ``use_longvideo_cfg``): the whole latent sequence is denoised at once;
  at every step the model runs on overlapping latent windows whose predictions are blended
  linearly over the overlap.

Frame arithmetic: the causal VAE needs 4k+1 frames per chunk. Unlike upstream, which floors every
length to 4k+1 (dropping up to 3 frames per chunk and the audio tail), the last chunk is rounded
*up* and the result trimmed, so the output covers the whole audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .vae_frames import VAE_TEMPORAL_STRIDE, round_down_4k1, round_up_4k1


@dataclass(frozen=True)
class Chunk:
    start: int  # first output frame this chunk produces
    length: int  # frames generated (4k+1); frames past the video end are trimmed
    overlap: int  # leading frames shared with the previous chunk (0 for the first)


def plan_chunks(num_frames: int, partial_video_length: int, overlap_video_length: int) -> list[Chunk]:
    """Pixel-space chunks covering ``num_frames`` frames.

    Chunks are ``partial`` frames (rounded down to 4k+1) starting every ``partial - overlap``
    frames; the last one is rounded up to 4k+1 so the chunks reach the end. A video that fits in
    one chunk is a single chunk of ``round_up_4k1(num_frames)`` frames.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {num_frames}")
    partial = round_down_4k1(partial_video_length)
    if partial < 5:
        raise ValueError(f"partial_video_length must be at least 5 frames, got {partial_video_length}")
    if not 0 <= overlap_video_length < partial:
        raise ValueError(
            f"overlap_video_length must be in [0, {partial}) for partial_video_length "
            f"{partial}, got {overlap_video_length}"
        )
    chunks, start, overlap = [], 0, 0
    while True:
        remaining = num_frames - start
        if remaining <= partial:
            chunks.append(Chunk(start, round_up_4k1(remaining), overlap))
            return chunks
        chunks.append(Chunk(start, partial, overlap))
        overlap = overlap_video_length
        start += partial - overlap


def plan_chunks_at_pauses(
    num_frames: int,
    partial_video_length: int,
    overlap_video_length: int,
    energy: Sequence[float],
    search_frames: int,
) -> list[Chunk]:
    """Like :func:`plan_chunks`, but each seam placed where the speech is quietest.

    A seam is the overlap two chunks blend over. Every chunk but the last may end up to
    ``search_frames`` frames earlier than ``partial`` (in 4-frame steps, keeping 4k+1 lengths and at
    least 4 new frames per chunk); of those, the end whose overlap frames have the lowest mean
    ``energy`` (per output frame, e.g. ``audio_alignment.frame_energy``) wins, the longest chunk on
    ties. Seams in pauses hide the blend where the mouth is at rest. Cost: chunks are at most
    ``search_frames`` shorter, so up to ``partial / (partial - search_frames)`` times as many.
    """
    if search_frames <= 0:
        return plan_chunks(num_frames, partial_video_length, overlap_video_length)
    plan_chunks(num_frames, partial_video_length, overlap_video_length)  # the same argument checks
    partial = round_down_4k1(partial_video_length)
    energy = [float(e) for e in energy] + [0.0] * max(0, num_frames - len(energy))
    chunks, start, overlap = [], 0, 0
    while True:
        remaining = num_frames - start
        if remaining <= partial:
            chunks.append(Chunk(start, round_up_4k1(remaining), overlap))
            return chunks
        best, best_cost = partial, None
        for length in _seam_lengths(partial, overlap_video_length, search_frames):
            seam = energy[start + length - overlap_video_length : start + length]
            cost = sum(seam) / max(1, len(seam))
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = length, cost
        chunks.append(Chunk(start, best, overlap))
        overlap = overlap_video_length
        start += best - overlap


def _seam_lengths(partial: int, overlap: int, search_frames: int) -> range:
    """The lengths a chunk that does not reach the end may take under seam search, longest first."""
    shortest = max(5, overlap + 4, partial - search_frames)
    return range(partial, shortest - 1, -VAE_TEMPORAL_STRIDE)


def most_chunks_at_pauses(
    num_frames: int, partial_video_length: int, overlap_video_length: int, search_frames: int
) -> int:
    """The most chunks :func:`plan_chunks_at_pauses` can return for any audio of ``num_frames``.

    Which seams the search picks depends on the audio's loudness, which a plan made before the
    audio is encoded (the frontend's plan line) does not have; this bounds its cost. The count is
    reached when every chunk takes the shortest length (speech louder towards each chunk's end).
    """
    if search_frames <= 0:
        return len(plan_chunks(num_frames, partial_video_length, overlap_video_length))
    plan_chunks(num_frames, partial_video_length, overlap_video_length)  # the same argument checks
    partial = round_down_4k1(partial_video_length)
    step = _seam_lengths(partial, overlap_video_length, search_frames)[-1] - overlap_video_length
    count, start = 1, 0
    while num_frames - start > partial:
        count, start = count + 1, start + step
    return count


def blend_into(video: torch.Tensor | None, chunk_frames: torch.Tensor, overlap: int) -> torch.Tensor:
    """Append chunk frames [F, H, W, 3] to the video, cross-fading the ``overlap`` shared frames.

    The weight of the new chunk rises linearly from 0 to 1 across the overlap (upstream's
    ``linspace(0, 1, overlap)``).
    """
    if video is None or overlap == 0:
        return chunk_frames if video is None else torch.cat([video, chunk_frames])
    ramp = torch.linspace(0, 1, overlap, dtype=chunk_frames.dtype, device=chunk_frames.device).view(-1, 1, 1, 1)
    mixed = video[-overlap:] * (1 - ramp) + chunk_frames[:overlap] * ramp
    return torch.cat([video[:-overlap], mixed, chunk_frames[overlap:]])


class Stitcher:
    """Chunk outputs in, final frames out, holding only what the next chunk blends over.

    ``add(index, frames)`` takes chunk ``index``'s frames [length, H, W, 3] and returns the frames
    that no later chunk touches any more (every frame before the next chunk's start, or up to
    ``num_frames`` after the last chunk). What stays held is exactly the next chunk's overlap, so
    memory does not grow with the video's length; ``held`` is also the next chunk's start frames.
    Concatenating every ``add`` result equals stitching all chunks in memory with ``blend_into``.
    """

    def __init__(self, chunks: list[Chunk], num_frames: int):
        self.chunks, self.num_frames = chunks, num_frames
        self.held: torch.Tensor | None = None  # frames [done, end of the last chunk added)
        self.done = 0  # frames handed out so far
        self.next_index = 0

    def start_frames(self, index: int) -> torch.Tensor | None:
        """The previous chunks' last ``chunks[index].overlap`` frames (None for the first chunk)."""
        overlap = self.chunks[index].overlap
        if self.held is None or not overlap:
            return None
        return self.held[-overlap:]

    def add(self, index: int, frames: torch.Tensor) -> torch.Tensor:
        if index != self.next_index:
            raise ValueError(f"chunks are stitched in order: expected chunk {self.next_index}, got {index}")
        chunk = self.chunks[index]
        if len(frames) != chunk.length:
            raise ValueError(f"chunk {index} must have {chunk.length} frames, got {len(frames)}")
        # overlap 0 (library callers only; settings require >= 1): independent chunks
        video = blend_into(self.held if chunk.overlap else None, frames, chunk.overlap)
        if self.held is not None and not chunk.overlap:
            video = torch.cat([self.held, video])
        last = index + 1 == len(self.chunks)
        final_until = self.num_frames if last else min(self.chunks[index + 1].start, self.num_frames)
        count = final_until - self.done
        out, self.held = video[:count], (None if last else video[count:])
        self.done, self.next_index = final_until, index + 1
        return out

    def state(self) -> dict:
        """What a resumed run needs to continue after the last chunk added."""
        return {"held": self.held, "done": self.done, "next_index": self.next_index}

    def restore(self, state: dict) -> None:
        self.held, self.done, self.next_index = state["held"], int(state["done"]), int(state["next_index"])


@dataclass(frozen=True)
class Window:
    start: int  # first latent frame
    length: int  # latent frames


def plan_windows(total_latent_frames: int, window_latent_frames: int, overlap_latent_frames: int) -> list[Window]:
    """Latent windows of upstream's long-video CFG mode: stride ``window - overlap``, the last
    window ending at the last latent frame (it may be shorter)."""
    if not 0 <= overlap_latent_frames < window_latent_frames:
        raise ValueError(f"the latent overlap must be in [0, {window_latent_frames}), got {overlap_latent_frames}")
    windows, start = [], 0
    while True:
        end = min(start + window_latent_frames, total_latent_frames)
        windows.append(Window(start, end - start))
        if end == total_latent_frames:
            return windows
        start += window_latent_frames - overlap_latent_frames


def window_weights(windows: list[Window], overlap: int, device=None) -> list[torch.Tensor]:
    """Per-window blend weights [length] that sum to 1 over every latent frame: a linear hand-over
    across each ``overlap`` (the new window's share rising 0 -> 1, as upstream blends)."""
    weights = []
    ramp = torch.linspace(0, 1, overlap, device=device) if overlap else None
    for k, w in enumerate(windows):
        weight = torch.ones(w.length, device=device)
        if k > 0 and overlap:
            weight[:overlap] = ramp
        if k + 1 < len(windows) and overlap:  # plan_windows makes every shared run exactly `overlap` long
            weight[-overlap:] = 1 - ramp
        weights.append(weight)
    return weights


def window_conditioning(y: torch.Tensor, window: Window) -> torch.Tensor:
    """The conditioning [B, C, window.length, h, w] one sliding window sees, from the whole video's
    ``y`` [B, C, F_lat, h, w] (channels 0-3: the keep mask).

    A task that keeps only leading frames (the reference; continuation frames) gives every window
    those frames at its start, as upstream's long-video CFG slices ``y[:, :, :window]``: each window
    stays anchored to the reference. A task that keeps frames elsewhere (first_last's end frame,
    keyframes, lip-sync's source video) gives each window its own frames, so they condition the
    window that holds them rather than being cut off after the first window.
    """
    kept = y[:, :4].flatten(3).amax(dim=(0, 1, 3)) > 0  # [F_lat]: latent frames keeping anything
    leading = int(kept.sum())
    if leading < len(kept) and bool(kept[:leading].all()):
        return y[:, :, : window.length]
    return y[:, :, window.start : window.start + window.length]


def sliding_velocity(
    window_velocity: Callable[[Window, torch.Tensor, torch.Tensor, int], torch.Tensor],
    total_latent_frames: int,
    window_latent_frames: int,
    overlap_latent_frames: int,
):
    """A velocity function over the whole latent sequence from per-window predictions.

    ``window_velocity(window, latents_window, t, step)`` predicts the velocity of one window.
    Blending velocities (rather than stepped latents, as upstream does) keeps one scheduler state
    for the whole sequence, which multistep solvers (UniPC, DPM++) need; for Euler both are equal.
    """
    windows = plan_windows(total_latent_frames, window_latent_frames, overlap_latent_frames)

    def velocity(latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        weights = window_weights(windows, overlap_latent_frames, latents.device)
        out = torch.zeros_like(latents)
        total = torch.zeros(latents.shape[2], device=latents.device)
        for w, weight in zip(windows, weights):
            v = window_velocity(w, latents[:, :, w.start : w.start + w.length], t, step)
            out[:, :, w.start : w.start + w.length] += v * weight.view(1, 1, -1, 1, 1)
            total[w.start : w.start + w.length] += weight
        # Exactly 1 where windows are at least two overlaps long; normalising keeps the blend
        # a convex combination when a user picks an overlap over half the window.
        return out / total.clamp_min(1e-6).view(1, 1, -1, 1, 1)

    return velocity
