import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from echomimic_core import media
from echomimic_core.media import MediaError


def _sine(sr, seconds, freq=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave * (c + 1) / channels for c in range(channels)])


def _write_audio(path, fmt, codec, sr, data):
    """Encode ``data [C, T]`` float32 with av (the test's own way to make each container)."""
    layout = "mono" if data.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = layout
        if data.shape[1] == 0:  # a valid header with no samples
            return
        fmt_name = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout=layout)
        frame.sample_rate = sr
        resampler = av.AudioResampler(format=fmt_name, layout=layout, rate=sr)
        for f in resampler.resample(frame) + resampler.resample(None):
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


@pytest.mark.parametrize(
    "ext, fmt, codec, sr",
    [
        ("wav", "wav", "pcm_s16le", 22050),
        ("mp3", "mp3", "libmp3lame", 44100),
        ("m4a", "ipod", "aac", 48000),
        ("flac", "flac", "flac", 16000),
        ("ogg", "ogg", "libopus", 48000),
    ],
)
def test_load_audio_each_container(tmp_path, ext, fmt, codec, sr):
    data = _sine(sr, 0.5, channels=2)
    path = tmp_path / f"tone.{ext}"
    _write_audio(path, fmt, codec, sr, data)
    wav, rate = media.load_audio(path)
    assert rate == sr and wav.shape[0] == 2 and wav.dtype == torch.float32
    # lossy codecs add a few ms of priming/padding; the duration must still be the clip's
    assert abs(wav.shape[1] / sr - 0.5) < 0.05
    # channel 1 was written at twice channel 0's level: the channel order survives
    assert float(wav[1].abs().max()) > 1.6 * float(wav[0].abs().max())
    mono16 = media.load_audio_16k(path)
    assert mono16.dim() == 1 and abs(mono16.shape[0] - 8000) < 800


def _hide_modules(monkeypatch, *names):
    import builtins

    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.split(".")[0] in names:
            raise ImportError(f"{name} hidden by test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)


def _tone_peak_hz(wav, sr):
    spectrum = torch.fft.rfft(wav[1000:-1000]).abs()
    return int(spectrum.argmax()) * sr / (wav.shape[0] - 2000)


@pytest.mark.parametrize("hidden", [(), ("soxr",), ("soxr", "torchaudio")], ids=["first-available", "torchaudio", "av"])
def test_resample_backends_agree(monkeypatch, hidden):
    sr = 44100
    wav = torch.from_numpy(_sine(sr, 1.0, freq=1000.0)[0])
    reference = media.prepare_audio(wav, sr)
    _hide_modules(monkeypatch, *hidden)
    out = media.prepare_audio(wav, sr)
    assert abs(out.shape[0] - 16000) <= 32
    assert abs(_tone_peak_hz(out, 16000) - 1000) < 5
    n = min(out.shape[0], reference.shape[0]) - 1000
    assert torch.allclose(out[1000:n], reference[1000:n], atol=0.02)


def test_soxr_resampling_matches_librosa_length_rule():
    pytest.importorskip("soxr")
    wav = torch.from_numpy(_sine(44100, 1000 / 44100)[0])
    out = media.resample(wav, 44100, 16000)
    assert out.shape == (363,)  # librosa: ceil(1000 * 16000 / 44100)
    assert out.dtype == torch.float32


def test_to_mono_layouts():
    stereo = torch.stack([torch.ones(10), -torch.ones(10) * 3])
    assert torch.equal(media.to_mono(stereo), -torch.ones(10))
    assert torch.equal(media.to_mono(stereo[None]), -torch.ones(10))
    with pytest.raises(MediaError):
        media.to_mono(torch.ones(1, 1, 1, 4))


def test_write_read_round_trip_with_audio(tmp_path):
    fps, frames_n, sr = 25, 20, 16000
    frames = torch.rand(frames_n, 48, 64, 3)
    audio = torch.from_numpy(_sine(sr, 1.3)[0])  # longer than the 0.8 s video: trimmed
    path = media.write_video(tmp_path / "out.mp4", frames, fps, audio, sr)
    video = media.load_video(path)
    assert video.frames.shape == (frames_n, 48, 64, 3)
    assert math.isclose(video.fps, fps)
    assert video.sample_rate == sr
    assert abs(video.audio.shape[-1] / sr - frames_n / fps) < 1024 / sr
    # a smooth image survives H.264 closely
    grad = torch.linspace(0, 1, 64).view(1, 1, 64, 1).expand(3, 48, 64, 3).contiguous()
    p2 = media.write_video(tmp_path / "grad.mp4", grad, 24)
    back = media.load_video(p2)
    assert back.audio is None and math.isclose(back.fps, 24)
    assert (back.frames - grad).abs().mean() < 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grad.mp4", "out.mp4"]  # no temp files left


def test_write_short_audio_padded_and_odd_size_padded(tmp_path):
    frames = np.zeros((10, 31, 45, 3), dtype=np.uint8)
    frames[:, -1, :, 0] = 255  # last row red: must be repeated by the 1-pixel pad
    audio = torch.zeros(2, 1600)  # 0.1 s stereo for a 0.4 s video
    path = media.write_video(tmp_path / "odd.mp4", frames, Fraction(25), audio, 16000)
    video = media.load_video(path)
    assert video.frames.shape == (10, 32, 46, 3)
    assert video.frames[0, -1, 10, 0] > 0.8 and video.frames[0, -2, 10, 0] > 0.8
    assert abs(video.audio.shape[-1] / 16000 - 0.4) < 1024 / 16000
    assert video.audio.shape[0] == 2


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def fail_mid_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash mid-write")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_mid_write)
    with pytest.raises(RuntimeError, match="simulated"):
        media.write_video(tmp_path / "crash.mp4", torch.rand(8, 16, 16, 3), 25)
    assert list(tmp_path.iterdir()) == []
    # an existing file is replaced only by a complete new one
    monkeypatch.undo()
    target = media.write_video(tmp_path / "keep.mp4", torch.rand(3, 16, 16, 3), 25)
    calls["n"] = 0
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_mid_write)
    with pytest.raises(RuntimeError):
        media.write_video(target, torch.rand(8, 16, 16, 3), 25)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]
    monkeypatch.undo()
    assert media.load_video(target).frames.shape[0] == 3


def test_write_validates_inputs(tmp_path):
    with pytest.raises(MediaError, match="sample_rate"):
        media.write_video(tmp_path / "a.mp4", torch.rand(2, 8, 8, 3), 25, audio=torch.zeros(100))
    with pytest.raises(MediaError, match=r"\[F, H, W, 3\]"):
        media.write_video(tmp_path / "a.mp4", torch.rand(0, 8, 8, 3), 25)
    assert media.video_codec() in ("libx264", "mpeg4")


def test_image_exif_alpha_gray16(tmp_path):
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    img.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.png", exif=exif.tobytes())
    rot = media.load_image(tmp_path / "rot.png")
    assert rot.shape == (4, 2, 3)
    assert torch.equal(rot[0, 1], torch.tensor([0.0, 0.0, 1.0]))  # blue corner now top-right

    rgba = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 255, 0, 255))
    rgba.save(tmp_path / "a.png")
    white = media.load_image(tmp_path / "a.png")
    assert torch.allclose(white[0, 0], torch.ones(3)) and torch.allclose(white[1, 1], torch.tensor([0.0, 1, 0]))
    dropped = media.load_image(tmp_path / "a.png", alpha="drop")
    assert torch.allclose(dropped[0, 0], torch.zeros(3))

    gray16 = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    g = media.load_image(tmp_path / "g16.png")
    assert g.shape == (2, 2, 3)
    assert math.isclose(float(g[1, 0, 0]), 32768 / 65535, rel_tol=1e-6)
    assert math.isclose(float(g[1, 1, 1]), 257 / 65535, rel_tol=1e-6)

    Image.new("L", (2, 2), 128).save(tmp_path / "l.png")
    assert torch.allclose(media.load_image(tmp_path / "l.png"), torch.full((2, 2, 3), 128 / 255))
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.save(tmp_path / "p.png", transparency=0)
    assert torch.allclose(media.load_image(tmp_path / "p.png"), torch.ones(2, 2, 3))


def test_bad_inputs_raise_media_error_naming_file(tmp_path):
    with pytest.raises(MediaError, match="missing.wav: no such file"):
        media.load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.mp3"
    empty.touch()
    with pytest.raises(MediaError, match="empty.mp3: the file is empty"):
        media.load_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(MediaError, match="junk.wav"):
        media.load_audio(junk)
    zero = tmp_path / "zero.wav"
    _write_audio(zero, "wav", "pcm_s16le", 16000, np.zeros((1, 0), np.float32))
    with pytest.raises(MediaError, match="zero.wav"):
        media.load_audio(zero)
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(MediaError, match="bad.png: not a readable image"):
        media.load_image(bad_img)
    with pytest.raises(MediaError, match="is a folder"):
        media.load_image(tmp_path)
    audio_only = tmp_path / "tone.wav"
    _write_audio(audio_only, "wav", "pcm_s16le", 16000, _sine(16000, 0.1))
    with pytest.raises(MediaError, match="no video stream"):
        media.load_video(audio_only)
    with pytest.raises(MediaError, match="empty"):
        media.prepare_audio(torch.zeros(0), 16000)
    assert issubclass(MediaError, ValueError)


@pytest.mark.parametrize("ext, fmt, codec", [("webm", "webm", "libvpx-vp9"), ("mov", "mov", "mpeg4")])
def test_load_video_other_containers(tmp_path, ext, fmt, codec):
    path = tmp_path / f"clip.{ext}"
    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    frames[:, :, :24] = 200  # left half bright: survives any codec
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for image in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    video = media.load_video(path)
    assert video.frames.shape == (6, 32, 48, 3) and math.isclose(video.fps, 30)
    assert video.audio is None
    assert video.frames[:, :, :20].mean() > 0.7 and video.frames[:, :, 28:].mean() < 0.1
    assert media.load_video(path, max_frames=2).frames.shape[0] == 2


def test_write_falls_back_to_mpeg4(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "video_codec", lambda: "mpeg4")
    path = media.write_video(tmp_path / "m.mp4", torch.full((5, 16, 16, 3), 0.5), 25, torch.zeros(3200), 16000)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
        assert c.streams.audio[0].codec_context.name == "aac"
    assert abs(float(media.load_video(path).frames.mean()) - 0.5) < 0.03


@pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="this av cannot write a display rotation"
)
def test_load_video_applies_display_rotation(tmp_path):
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[:8, :8] = 255  # marker in the stored top-left corner
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)  # shown turned a quarter counter-clockwise
        for p in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(p)
        for p in stream.encode():
            out.mux(p)
    frames = media.load_video(path).frames
    assert frames.shape == (1, 48, 32, 3)  # portrait, as a player shows it
    assert frames[0, -6:, :6].mean() > 0.8 and frames[0, :6, :6].mean() < 0.1  # now bottom-left


def test_to_uint8_frames_rounds_clips_and_takes_bfloat16():
    frames = torch.tensor([[[[0.0, 0.5, 1.2]]]], dtype=torch.bfloat16)  # [1, 1, 1, 3]
    assert media.to_uint8_frames(frames).tolist() == [[[[0, 128, 255]]]]


def test_parts_join_into_one_video_without_reencoding(tmp_path):
    fps, sr = 25, 16000
    g = torch.Generator().manual_seed(0)
    pieces = [torch.rand(n, 32, 48, 3, generator=g) for n in (9, 5, 7)]
    parts = [media.write_video_part(tmp_path / f"p{i}.mp4", p, fps) for i, p in enumerate(pieces)]
    audio = torch.from_numpy(_sine(sr, 2.0)[0])
    out = media.join_video_parts(tmp_path / "joined.mp4", parts, fps, audio, sr)
    video = media.load_video(out)
    expected = torch.cat([media.load_video(p).frames for p in parts])
    assert torch.equal(video.frames, expected)  # the parts' own encoded frames, not re-encoded
    assert abs(video.audio.shape[-1] / sr - 21 / fps) < 1024 / sr  # audio trimmed to the 21 frames
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
        assert len(pts) == 21 and len(set(pts)) == 21  # every frame has its own time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.mp4", "p0.mp4", "p1.mp4", "p2.mp4"]
    with pytest.raises(MediaError, match="no video parts"):
        media.join_video_parts(tmp_path / "none.mp4", [], fps)
