"""Audio <-> video time alignment: frame counts, pad/trim rules, feature resampling, windows.

Pure tensor arithmetic, no encoder. Conventions shared by every variant:

* Audio reaches the encoders as mono 16 kHz (``SAMPLE_RATE``); wav2vec2 and the Whisper encoder
  both emit features at 50 Hz (``FEATURE_RATE``: one per 320 samples).
* Video frame ``k`` starts at ``k / fps`` seconds, i.e. at sample ``ceil(k * 16000 / fps)``.
* The number of frames an audio clip supports is ``floor(duration * fps)``, rounded down to the
  VAE's ``4n + 1`` lengths (upstream's rule), optionally capped by a requested maximum.
* Audio shorter than the video is padded with silence (zeros) at the end. Audio longer than the
  video: flash trims it to ``samples_for_frames(num_frames, fps)`` before encoding (upstream);
  preview / whisper encode the whole clip and keep the tokens of the video's span (upstream
  preview does so, and wav2vec2 features depend on later audio). See ``encoders/audio.py``.

Layouts the transformer consumes ("token layouts"):

* preview / whisper: ``[B, 2 * frames, D]`` - two feature tokens per video frame.
* flash: ``[B, frames, 5, layers, D]`` - per frame, the features of frames ``k-2 .. k+2`` (index
  clamped to the clip), all encoder layers stacked.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .config import AUDIO_TOKENS_PER_FRAME, AUDIO_WINDOW
from .vae_frames import round_down_4k1

SAMPLE_RATE = 16000
FEATURE_RATE = 50
TOKEN_KINDS = ("preview", "whisper")
WINDOW_KINDS = ("flash",)


def as_fraction(fps: float | Fraction) -> Fraction:
    """fps as an exact fraction: a float becomes the nearest fraction with denominator <= 1001, so
    ``30000 / 1001`` (NTSC 29.97) is recovered exactly from its float value."""
    if isinstance(fps, Fraction):
        frac = fps
    else:
        if not math.isfinite(fps):
            raise ValueError(f"fps must be a finite positive number, got {fps}.")
        frac = Fraction(fps).limit_denominator(1001)
    if frac <= 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    return frac


def frames_for_samples(
    num_samples: int,
    fps: float | Fraction,
    sample_rate: int = SAMPLE_RATE,
    max_frames: int | None = None,
    round_to_4k1: bool = True,
) -> int:
    """Video frames an audio clip of ``num_samples`` supports: ``floor(duration * fps)``, capped at
    ``max_frames``, then rounded down to ``4n + 1`` (skip with ``round_to_4k1=False``).

    Computed in exact integer arithmetic (upstream uses a float duration, which can land one frame
    low when ``duration * fps`` is an integer that floats miss).
    """
    fps = as_fraction(fps)
    frames = num_samples * fps.numerator // (sample_rate * fps.denominator)
    if max_frames is not None:
        frames = min(frames, max_frames)
    return round_down_4k1(frames) if round_to_4k1 else frames


def upstream_frames_for_samples(
    num_samples: int,
    fps: float,
    sample_rate: int = SAMPLE_RATE,
    max_frames: int | None = None,
) -> int:
    """The frame count upstream's scripts arrive at, for parity runs.

    Upstream takes ``AudioFileClip(path).duration`` (moviepy parses FFmpeg's "Duration:" line,
    which is rounded to the nearest 1/100 s), computes ``int(duration * fps)`` in floating point,
    caps it (flash: ``video_length``) and rounds down to ``4n + 1``. That is one frame more than
    :func:`frames_for_samples` when the clip ends up to 5 ms before a frame boundary; use this
    only to reproduce an upstream run's length (assumes FFmpeg's duration = the sample count,
    true for PCM files).
    """
    micros = (num_samples * 1_000_000 + sample_rate // 2) // sample_rate
    centis = (micros + 5000) // 10000  # FFmpeg prints durations to 1/100 s, rounding to nearest
    secs, cc = divmod(centis, 100)
    hours, secs = divmod(secs, 3600)
    mins, secs = divmod(secs, 60)
    # "HH:MM:SS.cc" summed seconds-first in floats, as moviepy's convert_to_seconds does
    duration = 0.0 + float(f"{secs}.{cc:02d}") + 60 * float(mins) + 3600 * float(hours)
    frames = int(duration * fps)
    if max_frames is not None:
        frames = min(frames, max_frames)
    return round_down_4k1(frames)


def frame_to_sample(frame: int, fps: float | Fraction, sample_rate: int = SAMPLE_RATE) -> int:
    """First audio sample of video frame ``frame``: the first sample at or after its start time,
    ``ceil(frame * sample_rate / fps)`` (so ``sample_to_frame(frame_to_sample(k)) == k``)."""
    fps = as_fraction(fps)
    return -(-frame * sample_rate * fps.denominator // fps.numerator)


def sample_to_frame(sample: int, fps: float | Fraction, sample_rate: int = SAMPLE_RATE) -> int:
    """The video frame that audio sample ``sample`` falls in: ``floor(sample * fps / sample_rate)``."""
    fps = as_fraction(fps)
    return sample * fps.numerator // (sample_rate * fps.denominator)


def samples_for_frames(num_frames: int, fps: float | Fraction, sample_rate: int = SAMPLE_RATE) -> int:
    """Audio samples covering ``num_frames`` frames: ``floor(num_frames / fps * sample_rate)``
    (upstream flash's trim length ``int(video_length / 25 * sr)``, generalised to any fps)."""
    fps = as_fraction(fps)
    return num_frames * sample_rate * fps.denominator // fps.numerator


def frame_energy(waveform: torch.Tensor, num_frames: int, fps: float | Fraction, sample_rate: int = SAMPLE_RATE):
    """RMS of each video frame's audio samples ``[num_frames]`` (frames past the clip: 0), for
    placing chunk seams in pauses. ``waveform``: mono ``[T]``."""
    wav = waveform.reshape(-1).float()
    bounds = [min(frame_to_sample(k, fps, sample_rate), wav.numel()) for k in range(num_frames + 1)]
    out = torch.zeros(num_frames)
    for k in range(num_frames):
        piece = wav[bounds[k] : bounds[k + 1]]
        if piece.numel():
            out[k] = piece.square().mean().sqrt()
    return out


def fit_audio(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Trim (drop the tail) or pad with trailing silence so that the last axis is ``num_samples``."""
    length = waveform.shape[-1]
    if length >= num_samples:
        return waveform[..., :num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - length))


def pad_audio_to(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Pad with trailing silence up to ``num_samples``; never trims (longer audio is kept whole)."""
    return fit_audio(waveform, num_samples) if waveform.shape[-1] < num_samples else waveform


def interpolate_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``features [B, T, ...]`` along T at fractional ``positions [N]``.

    Positions are clamped to ``[0, T - 1]`` (edge features repeat). Integer positions return the
    stored feature exactly (weight 0 on the neighbour), which keeps the 25 fps path bit-exact.
    """
    length = features.shape[1]
    if length == 0:
        raise ValueError("cannot interpolate an empty feature sequence (T = 0).")
    # index arithmetic in float64 on the CPU (MPS has no float64), then moved to the features
    pos = positions.detach().cpu().to(torch.float64).clamp(0, length - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=length - 1)
    w = (pos - lo.to(torch.float64)).to(features.dtype)
    lo, hi, w = lo.to(features.device), hi.to(features.device), w.to(features.device)
    w = w.view(1, -1, *([1] * (features.dim() - 2)))
    a, b = features[:, lo], features[:, hi]
    return torch.where(w == 0, a, a + (b - a) * w)


def resample_feature_rate(features: torch.Tensor, src_rate: float, dst_rate: float, length: int) -> torch.Tensor:
    """Resample ``features [B, T, ...]`` sampled at ``src_rate`` Hz to ``length`` steps at ``dst_rate`` Hz.

    Output step ``i`` is the linear interpolation of the input at time ``i / dst_rate``, i.e. at
    input position ``i * src_rate / dst_rate`` (clamped to the last feature). When ``src_rate`` is
    an integer multiple of ``dst_rate`` this is plain picking, exact to the last digit.
    """
    ratio = Fraction(src_rate).limit_denominator(1001) / Fraction(dst_rate).limit_denominator(1001)
    idx = torch.arange(length, dtype=torch.float64)
    positions = idx * ratio.numerator / ratio.denominator
    return interpolate_positions(features, positions)


def tokens_for_frames(
    features_50hz: torch.Tensor,
    num_frames: int,
    fps: float | Fraction,
    feature_rate: float = FEATURE_RATE,
    tokens_per_frame: int = AUDIO_TOKENS_PER_FRAME,
) -> torch.Tensor:
    """preview / whisper layout: ``[B, T50, D]`` -> ``[B, tokens_per_frame * num_frames, D]``.

    Rule: token ``j`` of frame ``k`` stands for time ``(k + j / tokens_per_frame) / fps``, and takes
    the 50 Hz features linearly interpolated at that time, i.e. at feature position
    ``(tokens_per_frame * k + j) * feature_rate / (tokens_per_frame * fps)``. At 25 fps that is
    position ``2k + j`` exactly, which is upstream's layout (it is locked to 25 fps); at other rates
    the tokens keep the same meaning (two per frame, evenly spaced in time) so the projector, which
    was trained on that meaning, sees audio at the right moments.
    """
    fps = as_fraction(fps)
    token_rate = fps * tokens_per_frame
    return resample_feature_rate(features_50hz, feature_rate, token_rate, tokens_per_frame * num_frames)


def interpolate_to_length(features: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, T, C]`` -> ``[B, length, C]``: linear, ``align_corners=True`` (first and last feature kept).

    This is how flash stretches the wav2vec2 CNN features to one per video frame before the
    transformer layers (upstream ``src/wav2vec2.py``).
    """
    if length < 1:
        raise ValueError(f"target length must be at least 1, got {length}.")
    out = torch.nn.functional.interpolate(features.transpose(1, 2), size=length, mode="linear", align_corners=True)
    return out.transpose(1, 2)


def window_indices(num_frames: int, window: int = AUDIO_WINDOW, length: int | None = None) -> torch.Tensor:
    """``[num_frames, window]`` indices ``k - window//2 .. k + window//2`` clamped to ``[0, length - 1]``
    (``length`` defaults to ``num_frames``): frames at the clip edges repeat the edge frame."""
    length = num_frames if length is None else length
    half = window // 2
    offsets = torch.arange(window) - half
    return (torch.arange(num_frames).unsqueeze(1) + offsets.unsqueeze(0)).clamp(0, length - 1)


def flash_windows(per_frame: torch.Tensor, window: int = AUDIO_WINDOW) -> torch.Tensor:
    """flash layout: per-frame stacked layers ``[F, L, D]`` (or ``[B, F, L, D]``) -> ``[B, F, window, L, D]``."""
    if per_frame.dim() == 3:
        per_frame = per_frame.unsqueeze(0)
    if per_frame.dim() != 4:
        raise ValueError(
            f"expected per-frame features [F, layers, D] or [B, F, layers, D], got shape {tuple(per_frame.shape)}."
        )
    idx = window_indices(per_frame.shape[1], window).to(per_frame.device)
    return per_frame[:, idx]


def kind_layout(kind: str) -> str:
    if kind in TOKEN_KINDS:
        return "tokens"
    if kind in WINDOW_KINDS:
        return "windows"
    raise ValueError(f"unknown audio kind {kind!r}; expected one of {TOKEN_KINDS + WINDOW_KINDS}.")


def frames_in_features(features: torch.Tensor, kind: str) -> int:
    """How many video frames a feature tensor in ``kind``'s layout covers."""
    if kind_layout(kind) == "tokens":
        return features.shape[1] // AUDIO_TOKENS_PER_FRAME
    return features.shape[1]


def feature_slice(features: torch.Tensor, start_frame: int, num_frames: int, kind: str) -> torch.Tensor:
    """The features of video frames ``start_frame .. start_frame + num_frames - 1``, for chunked
    generation. preview/whisper ``[B, 2F, D]`` slice tokens ``2*start .. 2*(start+n)``; flash
    ``[B, F, 5, L, D]`` slices frames (windows were built over the whole clip, so a chunk's edge
    frames see their real neighbours). Frames past the end get zero features - the same
    "no audio" input the unconditional branch uses - rather than an error, so the last chunk
    of a long video may be longer than the audio.
    """
    if start_frame < 0 or num_frames < 0:
        raise ValueError(f"start_frame and num_frames must be >= 0, got {start_frame}, {num_frames}.")
    per = AUDIO_TOKENS_PER_FRAME if kind_layout(kind) == "tokens" else 1
    begin, end = start_frame * per, (start_frame + num_frames) * per
    part = features[:, begin:end]
    missing = (end - begin) - part.shape[1]
    if missing > 0:
        pad = features.new_zeros(features.shape[0], missing, *features.shape[2:])
        part = torch.cat([part, pad], dim=1)
    return part
