"""Audio features -> audio context tokens, and which tokens each latent frame attends to.

Two variants, one interface (``forward(audio) -> AudioTokens``):

* preview (``audio2token``): per-token Linear(no bias)+LayerNorm over ``[B, N, audio_in_dim]``
  (N = 2 tokens per video frame); each latent frame attends to a window of tokens around its
  video frames (``preview_window_ranges``, upstream's split_audio_sequence + expand 4), zero
  padded where the window leaves the clip.
* flash (``audio_injection``): MultiTalk-style MLP over ``[B, F_video, 5, blocks, channels]``,
  producing ``context_tokens`` tokens per latent frame; each latent frame attends to its own.

Windows are not materialised here: the cross-attention projects each unique token once to K/V
and gathers the windows afterwards (``AudioTokens.windows``), which is exact because K/V are
per-token maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import TransformerConfig
from ..vae_frames import VAE_TEMPORAL_STRIDE
from .ops import Operations

# upstream's overlap constants in split_audio_sequence (tokens, independent of the VAE stride)
_CENTER_OVERLAP = 4


@dataclass
class AudioTokens:
    """Audio context of one forward.

    tokens: [B, N, C] projected audio tokens.
    window_index: [T, W] long indices into ``tokens`` per latent frame, where index N means a zero
        (padding) token; None when ``tokens`` is already ``[B, T*W, C]`` frame-major.
    frames: T, the number of latent frames.
    """

    tokens: torch.Tensor
    window_index: torch.Tensor | None
    frames: int

    def frame_range(self, start: int, stop: int) -> AudioTokens:
        """The audio context of latent frames ``start:stop`` only (a sequence-parallel rank's frames)."""
        if self.window_index is not None:
            return AudioTokens(self.tokens, self.window_index[start:stop], stop - start)
        per_frame = self.tokens.shape[1] // self.frames
        return AudioTokens(self.tokens[:, start * per_frame : stop * per_frame], None, stop - start)

    def windows(self, per_token: torch.Tensor) -> torch.Tensor:
        """[B, N, C] (a per-token map of ``tokens``, zero at zero input) -> [B*T, W, C]."""
        b, n, c = per_token.shape
        if self.window_index is None:
            return per_token.reshape(b * self.frames, -1, c)
        padded = torch.cat([per_token, per_token.new_zeros(b, 1, c)], dim=1)
        return padded[:, self.window_index.to(per_token.device)].flatten(0, 1)


def preview_window_ranges(num_tokens: int, tokens_per_frame: int, expand: int) -> list[tuple[int, int]]:
    """Inclusive [start, end] token ranges, one per latent frame, exactly as upstream computes them
    (float token rate, centre of each 4-frame group, first range ending where the second starts,
    then widened by ``expand`` on both sides)."""
    num_frames = num_tokens // tokens_per_frame
    if num_frames < 1:
        raise ValueError(
            f"audio has {num_tokens} tokens, fewer than one video frame "
            f"({tokens_per_frame} tokens); pass audio features covering the video."
        )
    rate = num_tokens / num_frames  # tokens per video frame, a float as upstream
    stride = VAE_TEMPORAL_STRIDE  # video frames per latent frame after the first
    half = int(rate * stride / 2)
    latent = int((num_frames - 1) / stride) + 1

    def center(i: int) -> int:
        start = rate * ((i - 1) * stride + 1) - _CENTER_OVERLAP
        end = rate * (i * stride + 1) + _CENTER_OVERLAP
        return int((start + end) / 2) - 1

    # upstream needs a second latent frame to place the first window; with one latent frame we
    # place it where the second frame's window would start (same rule, no crash)
    second_start = center(1) - half
    ranges = [(-(2 * half - second_start), second_start)]
    ranges += [(center(i) - half, center(i) + half) for i in range(1, latent)]
    return [(s - expand, e + expand) for s, e in ranges]


def preview_window_index(num_tokens: int, tokens_per_frame: int, expand: int) -> torch.Tensor:
    """[T, W] indices for ``preview_window_ranges``; out-of-clip positions point at ``num_tokens``."""
    ranges = preview_window_ranges(num_tokens, tokens_per_frame, expand)
    width = ranges[0][1] - ranges[0][0] + 1
    index = torch.tensor([s for s, _ in ranges]).unsqueeze(1) + torch.arange(width)
    return index.masked_fill((index < 0) | (index >= num_tokens), num_tokens)


class PreviewAudioProjector(nn.Module):
    """``audio2token``: [B, N, audio_in_dim] -> tokens [B, N, dim] + per-latent-frame windows."""

    def __init__(self, config: TransformerConfig, ops=Operations):
        super().__init__()
        self.config = config
        self.proj = ops.Linear(config.audio_in_dim, config.dim, bias=False)
        self.norm = ops.LayerNorm(config.dim, eps=1e-5)

    def forward(self, audio: torch.Tensor) -> AudioTokens:
        c = self.config
        if audio.ndim != 3 or audio.shape[-1] != c.audio_in_dim:
            raise ValueError(
                f"preview audio must be [B, tokens, {c.audio_in_dim}], got {tuple(audio.shape)}; "
                f"check the audio encoder matches the model (preset audio_in_dim)."
            )
        # built once per forward on the tokens' device: every block gathers with it twice
        windows = preview_window_index(audio.shape[1], c.audio_tokens_per_frame, c.audio_window_expand)
        index = windows.to(audio.device)
        return AudioTokens(self.norm(self.proj(audio)), index, index.shape[0])


class FlashAudioProjector(nn.Module):
    """``audio_injection``: [B, F_video, window, blocks, channels] -> [B, T*tokens, dim] frame-major.

    Latent frame 0 sees video frame 0's window (``proj1``, 5 positions); every later latent frame
    folds its 4 video frames into 8 positions: the first frame's window up to the centre, the
    middle frames' centres, the last frame's window from the centre (``proj1_vf``).
    """

    def __init__(self, config: TransformerConfig, ops=Operations):
        super().__init__()
        self.config = config
        c = config
        per_pos = c.audio_blocks * c.audio_channels
        self.proj1 = ops.Linear(c.audio_window * per_pos, c.audio_intermediate_dim)
        self.proj1_vf = ops.Linear(c.audio_window_vf * per_pos, c.audio_intermediate_dim)
        self.proj2 = ops.Linear(c.audio_intermediate_dim, c.audio_intermediate_dim)
        self.proj3 = ops.Linear(c.audio_intermediate_dim, c.audio_context_tokens * c.dim)
        self.norm = ops.LayerNorm(c.dim, eps=1e-5)

    def fold_frames(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 1+4(T-1), w, blocks, ch] -> first [B, 1, w*blocks*ch], later [B, T-1, w_vf*blocks*ch]."""
        c = self.config
        b, frames = audio.shape[:2]
        stride, mid = VAE_TEMPORAL_STRIDE, c.audio_window // 2
        expected = (c.audio_window, c.audio_blocks, c.audio_channels)
        if audio.ndim != 5 or tuple(audio.shape[2:]) != expected or (frames - 1) % stride:
            raise ValueError(
                f"flash audio must be [B, 1 + {stride}k, {', '.join(map(str, expected))}] "
                f"(a window per video frame over stacked encoder layers), got "
                f"{tuple(audio.shape)}."
            )
        first = audio[:, :1].flatten(2)
        groups = audio[:, 1:].unflatten(1, (-1, stride))  # [B, T-1, 4, w, blocks, ch]
        later = torch.cat(
            [groups[:, :, 0, : mid + 1], groups[:, :, 1:-1, mid], groups[:, :, -1, mid:]], dim=2
        )  # [B, T-1, w_vf, blocks, ch]
        return first, later.flatten(2)

    def forward(self, audio: torch.Tensor) -> AudioTokens:
        c = self.config
        first, later = self.fold_frames(audio)
        hidden = torch.cat([torch.relu(self.proj1(first)), torch.relu(self.proj1_vf(later))], dim=1)
        hidden = torch.relu(self.proj2(hidden))  # [B, T, inter]
        b, t = hidden.shape[:2]
        tokens = self.norm(self.proj3(hidden).view(b, t * c.audio_context_tokens, c.dim))
        return AudioTokens(tokens, None, t)


def build_audio_projector(config: TransformerConfig, ops=Operations) -> nn.Module:
    return (FlashAudioProjector if config.variant == "flash" else PreviewAudioProjector)(config, ops)
