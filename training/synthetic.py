"""Tiny stand-in encoders and synthetic talking clips, to smoke-test a training setup end to end
(and for the tests) without any model download: shapes follow a ``TransformerConfig``.
"""

from __future__ import annotations

import torch

from echomimic_core.config import TransformerConfig
from training.preprocess import Clip, Encoders, TooShort

FRAMES, HEIGHT, WIDTH, FPS, SR = 9, 32, 48, 25.0, 800


def tiny_encoders(config: TransformerConfig) -> Encoders:
    """Fixed random maps with the real encoders' output shapes (and the causal 1 + 4k folding)."""
    g = torch.Generator().manual_seed(1234)
    w_vae = torch.randn(16, 3, generator=g)
    table = torch.randn(97, config.text_dim, generator=g)
    w_img = torch.randn(3, config.clip_dim, generator=g) * 0.5
    w_aud = torch.randn(8, config.audio_in_dim, generator=g)
    w_flash = torch.randn(16, config.audio_blocks * config.audio_channels, generator=g)

    def vae(video):  # [3, N, H, W] -> [16, F, h, w]
        groups = torch.cat([video[:, :1], video[:, 1:].unflatten(1, (-1, 4)).mean(2)], dim=1)
        pooled = torch.nn.functional.avg_pool3d(groups[None], (1, 8, 8))[0]
        return torch.tanh(torch.einsum("oc,cfhw->ofhw", w_vae, pooled))

    def text(prompt):
        ids = [sum(map(ord, word)) % 97 for word in prompt.split()] or [0]
        return table[ids]

    def image(frame):  # [3, H, W] -> [257, clip_dim]
        patches = torch.nn.functional.adaptive_avg_pool2d(frame[None], (16, 16))[0].flatten(1).T
        tokens = torch.cat([frame.mean((1, 2))[None], patches])
        return tokens @ w_img

    def audio(waveform, sample_rate, num_frames, fps):
        """preview: [2 * num_frames, audio_in_dim]; flash: [num_frames, window, blocks, channels]."""
        chunks = waveform[: len(waveform) // (2 * num_frames) * 2 * num_frames].view(2 * num_frames, -1)
        stats = chunks.unflatten(1, (8, -1)).abs().mean(2)
        if config.variant == "flash":
            per_frame = stats.view(num_frames, 16) @ w_flash  # [F, blocks * channels]
            padded = torch.cat([per_frame[:1].repeat(2, 1), per_frame, per_frame[-1:].repeat(2, 1)])
            windows = padded.unfold(0, config.audio_window, 1).transpose(1, 2)  # [F, window, B*C]
            return torch.tanh(windows.unflatten(2, (config.audio_blocks, config.audio_channels)))
        return torch.tanh(stats @ w_aud)

    return Encoders(vae=vae, text=text, image=image, audio=audio)


def synthetic_clip(path: str, frames: int, size, audio_path=None) -> Clip:
    """A blob whose brightness follows the audio envelope: a learnable audio -> video link."""
    seed = sum(map(ord, path))
    g = torch.Generator().manual_seed(seed)
    n = int(path.rsplit("_len", 1)[1].split(".")[0]) if "_len" in path else frames
    if n < frames:
        raise TooShort(f"{path}: {n} frames")
    h, w = size
    envelope = torch.rand(frames, generator=g)
    waveform = envelope.repeat_interleave(int(SR / FPS)) * torch.randn(frames * int(SR / FPS), generator=g)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    cx, cy = (torch.rand(2, generator=g) - 0.5).tolist()
    blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) * 4)
    colour = torch.rand(3, 1, 1, 1, generator=g) * 2 - 1
    video = (colour * blob[None, None] * (0.3 + envelope.view(1, -1, 1, 1))).clamp(-1, 1)
    return Clip(video=video, waveform=waveform, sample_rate=SR, fps=FPS)


def sft_rows(n: int = 6) -> list[dict]:
    return [
        {
            "id": f"clip{i}",
            "video": f"clip{i}.mp4",
            "caption": f"a person talking number {i}",
            "sync_score": 5.0 + i,
            **({"mouth_box": [0.3, 0.5, 0.7, 0.8]} if i % 2 else {}),
            **({"face_box": [0.2, 0.1, 0.8, 0.9]} if i % 3 == 0 else {}),
        }
        for i in range(n)
    ]
