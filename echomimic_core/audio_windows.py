"""Audio features made chunk by chunk, from overlapping encoder windows.

Upstream encodes the whole clip in one pass. For minutes of audio that is the memory wall: the
wav2vec2 attention over 5 minutes (15,000 tokens at 50 Hz) needs gigabytes, and flash's features of
every frame ([F, 5, 12, 768] floats) another 1.4 GB. :class:`WindowedAudioFeatures` instead makes the
features of the frames a chunk asks for, from the audio around them, so memory depends on the chunk
and the window, not on the clip.

What "equal to the whole-clip encoding" means, per stage (tested in tests/test_audio_windows.py):

* everything before the transformer layers is exact: the waveform normalisation (preview's zero-mean
  unit-variance over the whole clip) and the CNN's first GroupNorm (per channel over the whole clip's
  time axis) use statistics of the whole clip, computed once in blocks; the CNN itself is a strided
  convolution stack, so a window of samples gives exactly the features of its span (to float
  rounding). Flash's linear stretch of the CNN features to one per frame uses the whole clip's
  positions.
* the wav2vec2 transformer layers attend over every token they are given (global attention), so a
  window's features equal the whole clip's exactly when the window holds the whole clip, and
  otherwise differ by an amount that shrinks as ``context_seconds`` grows (measured by
  benchmarks/audio_windows.py). A clip no longer than a chunk plus twice the context is always
  encoded whole, bit for bit as upstream.
* Whisper encodes independent 30 s pieces already: windows aligned to those pieces are exact.

``context_seconds`` = None keeps upstream's single whole-clip pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from . import audio_alignment as align
from .config import AUDIO_TOKENS_PER_FRAME, AUDIO_WINDOW

log = logging.getLogger(__name__)

WAV2VEC2_HOP = align.SAMPLE_RATE // align.FEATURE_RATE  # samples per 50 Hz state (wav2vec2 and Whisper)


@runtime_checkable
class FeatureSource(Protocol):
    """Audio features made on demand, in the layout the transformer consumes."""

    kind: str  # "preview", "flash" or "whisper"
    num_frames: int  # frames the audio covers

    def features(self, start_frame: int, num_frames: int) -> torch.Tensor:
        """Features of frames ``start_frame ..`` (zeros for frames before 0 or past the end)."""
        ...


def slice_features(audio: torch.Tensor | FeatureSource, start_frame: int, num_frames: int, kind: str) -> torch.Tensor:
    """The features of ``num_frames`` frames from ``start_frame`` of a feature tensor (or source);
    frames before frame 0 (continuation's kept frames) or past the end get zero features."""
    if isinstance(audio, FeatureSource):
        return audio.features(start_frame, num_frames)
    before = min(max(0, -start_frame), num_frames)
    part = align.feature_slice(audio, max(0, start_frame), num_frames - before, kind)
    if before:
        part = torch.cat([align.feature_slice(audio[:, :0], 0, before, kind), part], dim=1)
    return part


def frames_covered(audio: torch.Tensor | FeatureSource, kind: str) -> int:
    if isinstance(audio, FeatureSource):
        return audio.num_frames
    return align.frames_in_features(audio, kind)


def _interpolate_range(local: torch.Tensor, first: int, positions: torch.Tensor, total: int) -> torch.Tensor:
    """Linear interpolation at global ``positions`` of a sequence of ``total`` steps of which
    ``local`` [B, n, ...] holds steps ``first .. first + n - 1`` (clamped to the sequence, as
    ``audio_alignment.interpolate_positions`` clamps the whole one)."""
    return align.interpolate_positions(local, positions.clamp(0, total - 1) - first)


class WindowedAudioFeatures:
    """:class:`FeatureSource` running ``encoder`` (an ``encoders.audio.AudioEncoder``) on windows of
    the clip: the frames asked for plus ``context_seconds`` on each side.

    ``waveform`` is the clip at ``sample_rate``; ``device_scope()`` (optional) is a context manager
    placing the encoder on its compute device while it runs.
    """

    def __init__(
        self,
        encoder,
        waveform: torch.Tensor,
        num_frames: int,
        fps: float,
        context_seconds: float,
        sample_rate: int = align.SAMPLE_RATE,
        loudness_norm: bool | None = None,
        device_scope: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        if context_seconds is None or context_seconds < 0:
            raise ValueError(f"context_seconds must be >= 0, got {context_seconds}")
        self.encoder, self.kind = encoder, encoder.kind
        self.num_frames, self.fps = num_frames, align.as_fraction(fps)
        self.context_seconds = float(context_seconds)
        self.device_scope = device_scope or contextlib.nullcontext
        # the clip exactly as the whole-clip pass takes it (padded / cut / loudness-normalised) and
        # the model's input made from it (wav2vec2's whole-clip normalisation): 64 kB per second each
        self.prepared = encoder.prepared_waveform(waveform, num_frames, fps, sample_rate, loudness_norm)
        self.values = encoder.model_values(self.prepared)
        self._whole: torch.Tensor | None = None
        self._stats = None
        self._pieces: dict[int, torch.Tensor] = {}
        if self.kind == "whisper":
            self.per_piece = -(-encoder.feature_extractor.n_samples // WAV2VEC2_HOP)
        else:
            self.cnn_total = encoder.cnn_length(self.values.shape[-1])
            if self.cnn_total < 1:
                raise ValueError("the audio is shorter than one wav2vec2 feature (25 ms).")

    # -- public ------------------------------------------------------------------------------

    def features(self, start_frame: int, num_frames: int) -> torch.Tensor:
        lo, hi = max(0, start_frame), min(self.num_frames, start_frame + num_frames)
        if hi <= lo:
            part = self._empty()
        elif self.kind == "flash":
            part = self._flash(lo, hi)
        else:
            part = self._tokens(lo, hi)
        before = min(num_frames, max(0, -start_frame))
        after = num_frames - before - max(0, hi - lo)
        if before or after:
            per = AUDIO_TOKENS_PER_FRAME if align.kind_layout(self.kind) == "tokens" else 1
            zeros = part.new_zeros
            part = torch.cat([zeros(1, before * per, *part.shape[2:]), part, zeros(1, after * per, *part.shape[2:])], 1)
        return part

    def materialize(self, block_seconds: float = 20.0) -> torch.Tensor:
        """Every frame's features as one tensor, encoded ``block_seconds`` at a time (bounded
        encoder memory; the result itself grows with the clip)."""
        step = max(1, int(block_seconds * self.fps))
        return torch.cat([self.features(s, min(step, self.num_frames - s)) for s in range(0, self.num_frames, step)], 1)

    # -- helpers -------------------------------------------------------------------------------

    def _empty(self) -> torch.Tensor:
        if self.kind == "flash":
            return torch.zeros(1, 0, AUDIO_WINDOW, self.encoder.num_layers, self.encoder.dim)
        return torch.zeros(1, 0, self.encoder.dim)

    def _context(self, rate: Fraction) -> int:
        return int(round(self.context_seconds * rate))

    def _whole_states(self) -> torch.Tensor:
        """Upstream's single pass, for windows that would hold the whole clip anyway: preview 50 Hz
        states [1, T50, D], flash per-frame layers [F, layers, D]."""
        if self._whole is None:
            with self.device_scope():
                if self.kind == "flash":
                    self._whole = self.encoder.flash_per_frame(self.prepared, self.num_frames).cpu()
                else:
                    self._whole = self.encoder.wav2vec2_50hz(self.prepared).cpu()
        return self._whole

    def _tokens(self, lo: int, hi: int) -> torch.Tensor:
        """preview / whisper: two tokens per frame interpolated from 50 Hz states."""
        ratio = Fraction(align.FEATURE_RATE) / (self.fps * AUDIO_TOKENS_PER_FRAME)
        index = torch.arange(AUDIO_TOKENS_PER_FRAME * lo, AUDIO_TOKENS_PER_FRAME * hi, dtype=torch.float64)
        positions = index * ratio.numerator / ratio.denominator
        total = self._states_total()
        first = int(positions[0].clamp(0, total - 1).floor())
        last = min(total, int(positions[-1].clamp(0, total - 1).floor()) + 2)
        return _interpolate_range(self._states(first, last), first, positions, total)

    def _states_total(self) -> int:
        if self.kind == "whisper":  # each 30 s piece keeps ceil(samples / 320) states
            full, rest = divmod(self.values.shape[-1], self.encoder.feature_extractor.n_samples)
            return max(1, full * self.per_piece + -(-rest // WAV2VEC2_HOP))
        return self.cnn_total

    def _states(self, first: int, last: int) -> torch.Tensor:
        """50 Hz states [1, last - first, D] of the clip, from a window."""
        if self.kind == "whisper":
            pieces = range(first // self.per_piece, (last - 1) // self.per_piece + 1)
            self._pieces = {i: v for i, v in self._pieces.items() if i in pieces}
            with self.device_scope():
                for i in pieces:
                    if i not in self._pieces:
                        self._pieces[i] = self.encoder.whisper_piece(self.values, i).cpu()
            joined = torch.cat([self._pieces[i] for i in pieces])
            offset = pieces[0] * self.per_piece
            return joined[first - offset : last - offset][None]
        context = self._context(Fraction(align.FEATURE_RATE))
        lo, hi = max(0, first - context), min(self.cnn_total, last + context)
        if lo == 0 and hi == self.cnn_total:
            return self._whole_states()[:, first:last]
        with self.device_scope():
            cnn = self.encoder.cnn_features(self.values, lo, hi, self._cnn_stats())
            states, _ = self.encoder.encoder_states(cnn)
        return states[:, first - lo : last - lo].cpu()

    def _cnn_stats(self):
        if self._stats is None:
            with self.device_scope():
                self._stats = self.encoder.cnn_norm_stats(self.values)
        return self._stats

    def _flash(self, lo: int, hi: int) -> torch.Tensor:
        """flash: per-frame states of every layer, 5-frame windows clamped to the clip."""
        half = AUDIO_WINDOW // 2
        a, b = max(0, lo - half), min(self.num_frames, hi + half)
        context = self._context(self.fps)
        t0, t1 = max(0, a - context), min(self.num_frames, b + context)
        if t0 == 0 and t1 == self.num_frames:
            per_frame = self._whole_states()[a:b]
        else:
            # flash stretches the CNN features to one per frame (linear, align_corners=True) before
            # the transformer: frame i sits at CNN position i * (T50 - 1) / (F - 1), in float32 as
            # torch's interpolate computes it
            scale = np.float32(self.cnn_total - 1) / np.float32(self.num_frames - 1)
            positions = torch.from_numpy(scale * np.arange(t0, t1, dtype=np.float32)).double()
            first = int(positions[0].floor())
            last = min(self.cnn_total, int(positions[-1].floor()) + 2)
            with self.device_scope():
                cnn = self.encoder.cnn_features(self.values, first, last, self._cnn_stats()).float()
                _, layers = self.encoder.encoder_states(_interpolate_range(cnn, first, positions, self.cnn_total))
            per_frame = layers[a - t0 : b - t0].cpu()
        offsets = torch.arange(AUDIO_WINDOW) - half
        index = (torch.arange(lo, hi)[:, None] + offsets[None]).clamp(0, self.num_frames - 1) - a
        return per_frame[index][None]
