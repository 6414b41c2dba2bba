"""Template thumbnails: what a workflow does, drawn as inputs -> output under its title.

ComfyUI's Templates browser shows ``custom_nodes/<pack>/workflows/<name>.jpg`` on the card of
``<name>.json``. With no real output to show (the examples need the released weights), each card
draws its workflow's inputs and result with the demo's cartoon face: a portrait and a speech wave
becoming a film strip whose mouth moves; two images framing it (first + last frame); a video whose
mouth region is redone (lip-sync); a long wave cut into overlapping chunks; noise from the tiny
random demo models.

The JPEG's comment records a digest of what it was drawn from (scene, title, this module's
``VERSION``), so ``workflows.build --check`` can tell a stale thumbnail without comparing bytes
(JPEG encoders differ between Pillow builds).
"""

from __future__ import annotations

import hashlib
import io
import math

VERSION = 1  # bump when the drawing changes
SCENES = ("talking_head", "flash", "first_last", "lipsync", "long_audio", "demo", "demo_flash")
SIZE = 512
MARGIN = 24
BACKGROUND = (23, 23, 24)
ACCENT = (154, 170, 221)
TEXT = (240, 240, 240)
PORTRAIT_BG = (70, 110, 160)
END_BG = (150, 95, 140)
FILM = (12, 12, 12)
GREEN, RED, WAVE = (0, 255, 0), (255, 80, 80), (102, 204, 204)
_MARK = "echomimic-thumbnail sha256:"


def digest(scene: str, title: str) -> str:
    return hashlib.sha256(f"{VERSION}|{scene}|{title}".encode()).hexdigest()


def is_current(jpeg: bytes, scene: str, title: str) -> bool:
    """Whether ``jpeg`` is this module's drawing of ``scene`` under ``title``."""
    from PIL import Image

    try:
        comment = Image.open(io.BytesIO(jpeg)).info.get("comment", b"")
    except OSError:
        return False
    if isinstance(comment, bytes):
        comment = comment.decode("ascii", "replace")
    return comment == _MARK + digest(scene, title)


def thumbnail_jpeg(scene: str, title: str) -> bytes:
    """The thumbnail as JPEG bytes, marked for :func:`is_current`."""
    out = io.BytesIO()
    render(scene, title).save(out, "JPEG", quality=88, comment=(_MARK + digest(scene, title)).encode("ascii"))
    return out.getvalue()


def render(scene: str, title: str):
    """A ``SIZE`` x ``SIZE`` PIL image of ``scene`` (one of ``SCENES``) with ``title`` on top."""
    from PIL import Image, ImageDraw, ImageFont

    if scene not in SCENES:
        raise ValueError(f"thumbnail scene must be one of {SCENES}, got {scene!r}.")
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 22), "EchoMimicV3", fill=ACCENT, font=ImageFont.load_default(size=20))
    draw.text((MARGIN, 50), title, fill=TEXT, font=ImageFont.load_default(size=34))
    small = ImageFont.load_default(size=16)

    if scene == "lipsync":
        _strip(draw, (MARGIN, 130), [0.1, 0.1, 0.1], frame=56)
        draw.text((MARGIN, 232), "video", fill=ACCENT, font=small)
    elif scene == "first_last":
        _face(draw, (MARGIN, 130, MARGIN + 96, 226), 0.1)
        _face(draw, (MARGIN + 112, 130, MARGIN + 208, 226), 0.1, background=END_BG)
        draw.text((MARGIN, 232), "first + last", fill=ACCENT, font=small)
    elif scene != "long_audio":
        # the preview model's face region (flash has none)
        _face(draw, (MARGIN, 130, MARGIN + 96, 226), 0.1, face_box=scene in ("talking_head", "demo"))
        draw.text((MARGIN, 232), "image", fill=ACCENT, font=small)
    long = scene == "long_audio"
    _wave(draw, (MARGIN, 262, SIZE - MARGIN if long else MARGIN + 208, 318), cycles=24 if long else 9)
    draw.text((MARGIN, 324), "speech (minutes)" if long else "speech", fill=ACCENT, font=small)
    if not long:
        _arrow(draw, (MARGIN + 232, 224), (MARGIN + 280, 224))

    if scene == "long_audio":
        for i, top in enumerate((380, 394)):  # two chunks sharing their overlap
            draw.rectangle([MARGIN + i * 250, top, MARGIN + i * 250 + 300, top + 6], fill=ACCENT)
        _strip(draw, (MARGIN, 414), [0.1, 0.6, 0.3, 0.8, 0.2, 0.5, 0.1], frame=52)
    elif scene == "lipsync":
        _strip(draw, (MARGIN + 296, 150), [0.7, 0.2, 0.9], mouth_box=RED, vertical=True)
    elif scene in ("demo", "demo_flash"):
        _strip(draw, (MARGIN + 296, 150), [None, None, None], vertical=True)
        draw.text((MARGIN, 380), "tiny random models: the video is noise,", fill=TEXT, font=small)
        draw.text((MARGIN, 402), "the path through ComfyUI is the real one", fill=TEXT, font=small)
    else:
        last = END_BG if scene == "first_last" else None
        _strip(draw, (MARGIN + 296, 150), [0.1, 0.8, 0.3], vertical=True, last_background=last)
    if scene == "flash":
        _badge(draw, (MARGIN, 390), "8 steps · audio-only CFG")
    return image


def _face(draw, box, mouth: float, background=PORTRAIT_BG, face_box=False, noise_seed=None):
    """The demo's cartoon portrait in ``box`` (x0, y0, x1, y1); ``mouth`` 0 (closed) .. 1 (open)."""
    x0, y0, x1, y1 = box
    s = (x1 - x0) / 96  # the demo image's proportions (echomimic_core.demo.demo_inputs)

    def r(a, b, c, d):
        return [x0 + a * s, y0 + b * s, x0 + c * s, y0 + d * s]

    if noise_seed is not None:  # what random weights render
        cell = max(int(6 * s), 2)
        for j, y in enumerate(range(int(y0), int(y1), cell)):
            for i, x in enumerate(range(int(x0), int(x1), cell)):
                v = (noise_seed * 7919 + i * 104729 + j * 1299709) % 997 / 997
                draw.rectangle(
                    [x, y, x + cell, y + cell], fill=(int(90 + 120 * v), int(80 + 100 * v), int(110 + 90 * v))
                )
        return
    draw.rectangle(r(0, 0, 96, 96), fill=background)
    draw.rectangle(r(22, 66, 74, 96), fill=(200, 60, 60))  # shoulders
    draw.ellipse(r(28, 14, 68, 66), fill=(232, 190, 160))  # face
    draw.ellipse(r(37, 30, 43, 36), fill=(40, 30, 30))  # eyes
    draw.ellipse(r(53, 30, 59, 36), fill=(40, 30, 30))
    half = 1.5 + 4.5 * mouth
    draw.ellipse(r(42, 51.5 - half, 54, 51.5 + half), fill=(150, 50, 60))
    if face_box:  # the face region the preview model's audio acts on, as the Face Mask node shows it
        draw.rectangle(r(28, 14, 68, 66), outline=GREEN, width=2)


def _strip(draw, origin, mouths, frame=84, vertical=False, mouth_box=None, last_background=None):
    """A film strip of portraits at ``origin`` with the given mouth openings (None: noise)."""
    x, y = origin
    pad, n = 8, len(mouths)
    length = n * (frame + pad) + pad
    w, h = (frame + 2 * pad + 12, length) if vertical else (length, frame + 2 * pad + 12)
    draw.rectangle([x, y, x + w, y + h], fill=FILM)
    for k in range(0, length - 6, 14):  # sprocket holes along both edges
        if vertical:
            draw.rectangle([x + 3, y + k + 4, x + 8, y + k + 9], fill=(200, 200, 200))
            draw.rectangle([x + w - 8, y + k + 4, x + w - 3, y + k + 9], fill=(200, 200, 200))
        else:
            draw.rectangle([x + k + 4, y + 3, x + k + 9, y + 8], fill=(200, 200, 200))
            draw.rectangle([x + k + 4, y + h - 8, x + k + 9, y + h - 3], fill=(200, 200, 200))
    for i, mouth in enumerate(mouths):
        if vertical:
            fx, fy = x + pad + 6, y + pad + i * (frame + pad)
        else:
            fx, fy = x + pad + i * (frame + pad), y + pad + 6
        background = last_background if last_background and i == n - 1 else PORTRAIT_BG
        box = (fx, fy, fx + frame, fy + frame)
        _face(draw, box, mouth or 0.0, background=background, noise_seed=i + 1 if mouth is None else None)
        if mouth_box is not None:
            s = frame / 96
            draw.rectangle([fx + 34 * s, fy + 42 * s, fx + 62 * s, fy + 62 * s], outline=mouth_box, width=2)


def _wave(draw, box, cycles: int):
    """Syllable-shaped bars of a speech waveform."""
    x0, y0, x1, y1 = box
    mid, amp = (y0 + y1) / 2, (y1 - y0) / 2
    for i, x in enumerate(range(int(x0), int(x1), 4)):
        t = i / max((x1 - x0) / 4, 1)
        syllable = max(math.sin(2 * math.pi * cycles * t / 2), 0) ** 0.6
        jitter = 0.55 + 0.45 * abs(math.sin(i * 2.3))
        half = max(amp * syllable * jitter, 1)
        draw.rectangle([x, mid - half, x + 2, mid + half], fill=WAVE)


def _arrow(draw, start, end):
    draw.line([start, end], fill=TEXT, width=4)
    ex, ey = end
    draw.polygon([(ex + 10, ey), (ex - 4, ey - 9), (ex - 4, ey + 9)], fill=TEXT)


def _badge(draw, at, text):
    from PIL import ImageFont

    font = ImageFont.load_default(size=18)
    x, y = at
    right = x + draw.textlength(text, font=font) + 20
    draw.rounded_rectangle([x, y, right, y + 32], radius=8, fill=(60, 50, 110))
    draw.text((x + 10, y + 6), text, fill=(255, 226, 120), font=font)
