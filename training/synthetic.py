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
        span = waveform[: int(num_frames / fps * sample_rate)]  # the clip's own audio
        chunks = span[: len(span) // (16 * num_frames) * 16 * num_frames].view(2 * num_frames, -1)
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
            **({"mouth_box": {"top": 0.5, "bottom": 0.8, "left": 0.3, "right": 0.7}} if i % 2 else {}),
            **({"face_box": {"top": 0.1, "bottom": 0.9, "left": 0.2, "right": 0.8}} if i % 3 == 0 else {}),
        }
        for i in range(n)
    ]


def draw_face(
    size: tuple[int, int] = (384, 320),
    center: tuple[float, float] = (0.5, 0.42),
    scale: float = 0.34,
    skin: tuple[int, int, int] = (224, 172, 140),
    background: tuple[int, int, int] = (90, 110, 140),
    yaw: float = 0.0,
    mouth_open: float = 0.0,
    hat: bool = False,
    glasses: bool = False,
    seed: int = 0,
):
    """A drawn portrait: (RGB uint8 [H, W, 3], the face's box (y1, y2, x1, x2) in pixels).

    Shaded skin, eyes with iris and pupil, brows, nose, lips, hair, neck and shoulders, blurred and
    with sensor noise: enough face structure for the face detectors (MTCNN and Haar both find it,
    unlike a flat cartoon), drawn rather than photographed so the tests need no photo data set.
    ``center`` and ``scale`` are fractions of the frame (``scale`` = face height / frame height),
    ``yaw`` in [-1, 1] turns the features sideways, ``mouth_open`` in [0, 1] opens the mouth.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    h, w = size
    img = Image.new("RGB", (w, h), background)
    d = ImageDraw.Draw(img)
    cx, cy = center[0] * w, center[1] * h
    fh = scale * h
    fw = 0.78 * fh

    def tone(factor):
        return tuple(int(c * factor) for c in skin)

    d.ellipse([cx - 1.6 * fw, cy + 0.9 * fh, cx + 1.6 * fw, cy + 3.0 * fh], fill=(60, 70, 90))  # shoulders
    d.rectangle([cx - 0.22 * fw, cy + 0.4 * fh, cx + 0.22 * fw, cy + 1.0 * fh], fill=tone(0.85))  # neck
    d.ellipse([cx - 0.62 * fw, cy - 0.62 * fh, cx + 0.62 * fw, cy + 0.25 * fh], fill=(50, 35, 25))  # hair
    for i in range(12, 0, -1):  # skin, darker towards the edge
        f = i / 12
        ox = yaw * fw * 0.15 * (1 - f)
        d.ellipse(
            [cx - 0.5 * fw * f + ox, cy - 0.5 * fh * f, cx + 0.5 * fw * f + ox, cy + 0.5 * fh * f],
            fill=tone(1 - 0.25 * f),
        )
    ex = cx + yaw * fw * 0.2
    for side in (-1, 1):
        x = ex + side * 0.2 * fw
        brow = [x - 0.11 * fw, cy - 0.17 * fh, x + 0.11 * fw, cy - 0.19 * fh]
        d.line(brow, fill=(60, 40, 30), width=max(2, int(0.025 * fh)))
        y, rw, rh = cy - 0.08 * fh, 0.09 * fw, 0.035 * fh
        d.ellipse([x - rw, y - rh, x + rw, y + rh], fill=(240, 240, 235))
        d.ellipse([x - 1.1 * rh, y - 1.1 * rh, x + 1.1 * rh, y + 1.1 * rh], fill=(70, 50, 35))
        d.ellipse([x - 0.5 * rh, y - 0.5 * rh, x + 0.5 * rh, y + 0.5 * rh], fill=(10, 10, 10))
        d.arc([x - rw, y - 1.6 * rh, x + rw, y + 1.4 * rh], 190, 350, fill=(60, 40, 30), width=2)
        if glasses:
            d.ellipse([x - 0.14 * fw, y - 0.08 * fh, x + 0.14 * fw, y + 0.08 * fh], outline=(20, 20, 20), width=3)
    if glasses:
        d.line([ex - 0.06 * fw, cy - 0.08 * fh, ex + 0.06 * fw, cy - 0.08 * fh], fill=(20, 20, 20), width=3)
    nx = cx + yaw * fw * 0.28
    d.polygon(
        [(nx, cy - 0.05 * fh), (nx - 0.07 * fw, cy + 0.12 * fh), (nx + 0.07 * fw, cy + 0.12 * fh)], fill=tone(0.88)
    )
    for side in (-1, 1):
        d.ellipse(
            [nx + side * 0.06 * fw - 0.02 * fw, cy + 0.1 * fh, nx + side * 0.06 * fw + 0.02 * fw, cy + 0.13 * fh],
            fill=(120, 70, 60),
        )
    mx, my = cx + yaw * fw * 0.22, cy + 0.25 * fh
    gap = mouth_open * 0.07 * fh
    d.chord([mx - 0.15 * fw, my - 0.04 * fh, mx + 0.15 * fw, my + 0.06 * fh + gap], 0, 180, fill=(170, 80, 80))
    if gap:
        d.ellipse([mx - 0.11 * fw, my, mx + 0.11 * fw, my + gap + 0.02 * fh], fill=(60, 20, 25))
    d.line([mx - 0.15 * fw, my + 0.01 * fh, mx + 0.15 * fw, my + 0.01 * fh], fill=(100, 40, 40), width=2)
    if hat:  # brim shading the brow
        d.rectangle([cx - 0.9 * fw, cy - 0.33 * fh, cx + 0.9 * fw, cy - 0.26 * fh], fill=(30, 30, 40))
        d.rectangle([cx - 0.55 * fw, cy - 0.85 * fh, cx + 0.55 * fw, cy - 0.3 * fh], fill=(30, 30, 40))
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    noise = np.random.default_rng(seed).normal(0, 4, (h, w, 3))
    pixels = np.clip(np.asarray(img).astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return pixels, (cy - 0.5 * fh, cy + 0.5 * fh, cx - 0.5 * fw, cx + 0.5 * fw)


def write_talking_video(
    path,
    frames: int,
    fps: float = 25.0,
    size: tuple[int, int] = (256, 320),
    people: int = 1,
    silent: bool = False,
    cut_at: int | None = None,
    face: bool = True,
    seed: int = 0,
    **face_kwargs,
):
    """An mp4 of a drawn face talking to speech-like audio (the mouth opens with the syllables, the
    head sways a little): raw footage for ``training.prepare`` tests. ``people=2`` puts two faces
    side by side, ``cut_at`` switches to another shot (a different background, face elsewhere) at
    that frame, ``face=False`` films an empty room, ``silent`` leaves the soundtrack quiet.
    Returns the true face box (y1, y2, x1, x2) of frame 0 in pixels."""
    import numpy as np
    import torch

    from echomimic_core import media
    from echomimic_core.demo import speech_like

    sample_rate = 16000
    audio = speech_like(frames / fps + 0.2, sample_rate, phase=np.random.default_rng(seed).uniform(0, 2 * np.pi))
    if silent:
        audio = audio * 1e-4
    hop = sample_rate / fps
    height, width = size
    video, first_box = [], None
    for i in range(frames):
        loud = float(np.abs(audio[int(i * hop) : int((i + 1) * hop)]).mean()) / 0.15
        shot = 1 if cut_at is not None and i >= cut_at else 0
        sway = 0.01 * np.sin(i / 6)
        kwargs = dict(face_kwargs)
        kwargs.setdefault("center", (0.5 + sway - 0.15 * shot, 0.42))
        kwargs.setdefault("background", ((90, 110, 140), (200, 190, 150))[shot])
        kwargs["mouth_open"] = min(loud, 1.0)
        if not face:
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = kwargs["background"]
            frame = frame + (np.random.default_rng(i).normal(0, 3, frame.shape)).astype(np.int16).clip(-8, 8)
            frame, box = frame.clip(0, 255).astype(np.uint8), None
        elif people == 2:
            left, box = draw_face((height, width // 2), seed=seed + i, **kwargs)
            right, _ = draw_face((height, width - width // 2), skin=(190, 140, 110), seed=seed + i + 7, **kwargs)
            frame = np.concatenate([left, right], axis=1)
        else:
            frame, box = draw_face((height, width), seed=seed + i, **kwargs)
        first_box = first_box or box
        video.append(frame)
    frames_01 = torch.from_numpy(np.stack(video)).float() / 255
    media.write_video(path, frames_01, fps=fps, audio=torch.from_numpy(audio), sample_rate=sample_rate)
    return first_box
