"""Decode audio / video / images and write mp4 (H.264 + AAC) atomically.

Tensor conventions (ComfyUI's): images and frames are float32 in ``[0, 1]``, channels last
(``[H, W, 3]``, ``[F, H, W, 3]``); audio is float32 ``[channels, samples]`` in ``[-1, 1]``.
Every unusable input raises :class:`MediaError` naming the file and the problem.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_alignment import SAMPLE_RATE, as_fraction, samples_for_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v")


class MediaError(ValueError):
    """A media file that cannot be used: missing, unreadable, empty or of the wrong kind."""


@dataclass
class VideoData:
    """A decoded video: ``frames [F, H, W, 3]`` float 0..1, its frame rate, and its audio if any."""

    frames: torch.Tensor
    fps: float
    audio: torch.Tensor | None = None  # [C, T] float32
    sample_rate: int | None = None


def _check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file.")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, expected a media file.")
    if not path.is_file():
        # a device (/dev/zero) or a named pipe would be read forever or block
        raise MediaError(f"{path}: is not a regular file (a device or a named pipe?), expected a media file.")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty.")
    return path


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(
            f"{path}: cannot be opened as audio/video ({e}). The file is corrupt or "
            "not a media format FFmpeg understands; convert it to wav or mp4."
        ) from e


# ---------------------------------------------------------------------------------------------
# audio


def _decode_audio_stream(container, stream, path: Path) -> tuple[torch.Tensor, int]:
    import av

    # Planar float output with the stream's own layout and rate: one conversion for every
    # sample format (s16 packed, fltp, s32p ...), no resampling here.
    resampler = None
    chunks = []
    rate = stream.rate or stream.codec_context.sample_rate
    try:
        for frame in container.decode(stream):
            if resampler is None:
                resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.rate)
                rate = frame.rate
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        if resampler is not None:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except av.FFmpegError as e:
        raise MediaError(f"{path}: the audio stream is corrupt ({e}).") from e
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise MediaError(f"{path}: the audio stream holds no samples (zero-length audio).")
    wav = np.concatenate(chunks, axis=-1).astype(np.float32)
    check_finite_audio(wav, str(path))
    if stream.duration and stream.time_base:
        # AAC/MP3 decoders return whole codec frames; the container's duration says where the
        # real signal ends (the encoder's tail padding is not audio).
        declared = int(round(stream.duration * stream.time_base * rate))
        if 0 < declared < wav.shape[-1]:
            wav = wav[:, :declared]
    return torch.from_numpy(wav), int(rate)


def load_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any FFmpeg-readable file (wav, mp3, m4a, flac, ogg, or
    a video's soundtrack) -> ``(waveform [C, T] float32, sample_rate)``."""
    path = _check_file(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: contains no audio stream.")
        return _decode_audio_stream(container, container.streams.audio[0], path)


def check_finite_audio(waveform, what: str = "the audio") -> None:
    """Raise :class:`MediaError` when ``waveform`` holds NaN or infinite samples: they become NaN
    features and black frames far downstream, or fail only inside the AAC encoder."""
    data = torch.as_tensor(waveform)
    if data.is_floating_point() and not bool(torch.isfinite(data).all()):
        bad = int((~torch.isfinite(data)).sum())
        raise MediaError(
            f"{what}: {bad} of {data.numel()} audio samples are NaN or infinite; the file or the node "
            "that made the audio is broken. Re-export it (e.g. as 16-bit wav) or clean the samples."
        )


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """``[T]``, ``[C, T]`` or ``[B, C, T]`` (first item, ComfyUI AUDIO) -> mono ``[T]`` (channel mean)."""
    if waveform.dim() == 3:
        waveform = waveform[0]
    if waveform.dim() == 2:  # one channel: a view (minutes of audio are not copied)
        waveform = waveform[0] if waveform.shape[0] == 1 else waveform.mean(dim=0)
    if waveform.dim() != 1:
        raise MediaError(f"expected a waveform [T], [C, T] or [B, C, T], got shape {tuple(waveform.shape)}.")
    return waveform


def _resample_av(waveform: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    import av

    data = waveform.detach().cpu().to(torch.float32).numpy().reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout="mono")
    frame.sample_rate = src
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=dst)
    outs = list(resampler.resample(frame)) + list(resampler.resample(None))
    out = np.concatenate([o.to_ndarray().reshape(-1) for o in outs]) if outs else np.zeros(0, np.float32)
    return torch.from_numpy(out.astype(np.float32))


def _resample_soxr(waveform: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    import soxr

    data = waveform.detach().cpu().to(torch.float32).numpy()
    out = soxr.resample(data, src, dst, quality="HQ")
    # librosa.resample(fix=True) then pads / trims to ceil(T * dst / src) samples
    length = -(-data.shape[0] * dst // src)
    out = np.pad(out, (0, max(0, length - out.shape[0])))[:length]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def resample(waveform: torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Mono ``[T]`` -> ``target_rate`` with a band-limited resampler, the first available of:

    * soxr "HQ" - what upstream's ``librosa.load(path, sr=16000)`` runs (``res_type="soxr_hq"``),
      so features match upstream for any input rate;
    * torchaudio's sinc resampler;
    * FFmpeg's swresample through av (always there).
    """
    if sample_rate == target_rate:
        return waveform
    if sample_rate <= 0:
        raise MediaError(f"sample rate must be positive, got {sample_rate}.")
    try:
        return _resample_soxr(waveform, sample_rate, target_rate).to(waveform.dtype)
    except ImportError:
        pass
    try:
        import torchaudio.functional as AF
    except ImportError:
        return _resample_av(waveform, sample_rate, target_rate).to(waveform.dtype)
    return AF.resample(waveform.to(torch.float32), sample_rate, target_rate).to(waveform.dtype)


def prepare_audio(waveform: torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Any waveform layout and rate -> mono float32 ``[T]`` at ``target_rate`` (16 kHz for encoders)."""
    mono = to_mono(torch.as_tensor(waveform)).to(torch.float32)
    if mono.numel() == 0:
        raise MediaError("the audio is empty (zero samples).")
    check_finite_audio(mono)
    return resample(mono, int(sample_rate), target_rate)


def load_audio_16k(path: str | Path) -> torch.Tensor:
    """Decode, mono-mix and resample a file to the encoders' input: ``[T]`` float32 at 16 kHz."""
    wav, sr = load_audio(path)
    return prepare_audio(wav, sr)


# ---------------------------------------------------------------------------------------------
# video


def open_video(path: str | Path):
    """The av container of a video file that has a video stream (MediaError otherwise)."""
    path = _check_file(path)
    container = _open(path)
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: contains no video stream.")
    return container


def frame_rate(stream, path: str | Path) -> float:
    """A video stream's frames per second (MediaError when the file states none)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(f"{path}: the video stream has no frame rate.")
    return float(rate)


def upright_frame(frame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """The frame as displayed, RGB uint8 (scaled to ``width`` x ``height`` of the stored pixels
    first, when given): phone videos store a display rotation (counter-clockwise degrees, as av
    reports it) instead of rotated pixels; players, and FFmpeg's CLI, apply it."""
    image = frame.to_ndarray(format="rgb24", width=width, height=height)
    try:
        quarter_turns = round((frame.rotation or 0) / 90) % 4
    except AttributeError:  # av < 14 does not expose the display matrix
        return image
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def load_video(path: str | Path, max_frames: int | None = None, with_audio: bool = True) -> VideoData:
    """Decode a video (mp4, mov, webm, ...) -> :class:`VideoData` (frames ``[F, H, W, 3]`` 0..1,
    turned upright by the container's display rotation, as players show them)."""
    import av

    path = _check_file(path)
    with open_video(path) as container:
        stream = container.streams.video[0]
        rate = frame_rate(stream, path)
        frames = []
        try:
            for frame in container.decode(stream):
                frames.append(upright_frame(frame))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the video stream is corrupt ({e}).") from e
    if not frames:
        raise MediaError(f"{path}: the video stream holds no frames.")
    video = torch.from_numpy(np.stack(frames)).to(torch.float32) / 255.0
    audio, sr = None, None
    if with_audio:
        with _open(path) as container:
            if container.streams.audio:
                try:
                    audio, sr = _decode_audio_stream(container, container.streams.audio[0], path)
                except MediaError as e:
                    log.warning("%s: ignoring the soundtrack: %s", path, e)
    return VideoData(frames=video, fps=rate, audio=audio, sample_rate=sr)


# ---------------------------------------------------------------------------------------------
# images


def load_image(path: str | Path, alpha: str = "white") -> torch.Tensor:
    """Read an image -> ``[H, W, 3]`` float32 0..1.

    EXIF orientation is applied; 16-bit grayscale keeps its precision; an alpha channel is
    composited onto white (``alpha="white"``) or discarded (``alpha="drop"``).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}.")
    path = _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise MediaError(f"{path}: {e} Scale the image down first; the video is generated at about 768x768.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"{path}: not a readable image ({e}). The file is corrupt or not an image.") from e
    return pil_to_tensor(img, alpha=alpha)


def pil_to_tensor(img, alpha: str = "white") -> torch.Tensor:
    """A PIL image in any mode -> ``[H, W, 3]`` float32 0..1 (see :func:`load_image`)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale PNGs decode as I;16 (or I); scale by their real range, not by 255.
        arr = np.asarray(img).astype(np.float32)
        scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / scale, 0.0, 1.0)
        return torch.from_numpy(np.repeat(gray[..., None], 3, axis=-1).copy())
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(np.repeat(gray[..., None], 3, axis=-1).copy())
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0
        rgb, a = rgba[..., :3], rgba[..., 3:]
        if alpha == "white":
            rgb = rgb * a + (1.0 - a)
        return torch.from_numpy(np.ascontiguousarray(rgb))
    rgb = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb))


# ---------------------------------------------------------------------------------------------
# writing


def video_codec() -> str:
    """H.264 (``libx264``) when this av build can encode it, else MPEG-4 part 2 (``mpeg4``)."""
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.FFmpegError, ValueError):
            continue
    raise MediaError(
        "this PyAV build has neither the libx264 nor the mpeg4 encoder; "
        "install the PyPI 'av' wheel, which bundles both."
    )


def to_uint8_frames(frames) -> np.ndarray:
    """``[F, H, W, 3]`` float 0..1 (tensor or array) or uint8 -> uint8 ``[F, H, W, 3]``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        # numpy has no bfloat16: widen half-precision frames first
        arr = (frames if frames.dtype == torch.uint8 else frames.float()).numpy()
    else:
        arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or arr.shape[0] == 0:
        raise MediaError(f"expected frames [F, H, W, 3] with F >= 1, got shape {arr.shape}.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return arr


def make_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: an odd size is padded by one pixel that repeats the
    last row / column (nothing is cropped away)."""
    h, w = frames.shape[1:3]
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def _add_video_stream(container, rate, width: int, height: int, crf: int):
    """The H.264 (else MPEG-4) yuv420p stream every mp4 we write uses."""
    codec = video_codec()
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        # without x264's macroblock-tree rate control: with it, the same frames written from two runs
        # of the CLI (torch loaded and run first) came out as different videos, the first frame up to
        # 23 levels apart; the same video every time matters more here
        stream.options = {"crf": str(crf), "x264-params": "mbtree=0"}
    else:
        stream.bit_rate = 8_000_000
    return stream


def _encode_video_frames(container, stream, frames: np.ndarray) -> None:
    import av

    for image in frames:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


AUDIO_BLOCK = 1024 * 64  # samples per AudioFrame handed to the AAC encoder (bounded memory for long clips)


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int, pts: int = 0, flush: bool = True) -> None:
    """Encode ``audio`` [C, T] float32 starting at sample ``pts``, in blocks (a long clip is never one frame)."""
    import av

    layout = "mono" if audio.shape[0] == 1 else "stereo"
    for start in range(0, audio.shape[-1], AUDIO_BLOCK):
        block = np.ascontiguousarray(audio[:, start : start + AUDIO_BLOCK], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = pts + start
        for packet in stream.encode(frame):
            container.mux(packet)
    if flush:
        for packet in stream.encode():
            container.mux(packet)


def _prepare_audio_track(audio, sample_rate: int | None, num_frames: int, rate, what: str) -> np.ndarray | None:
    """``audio`` ([T], [C, T] or [B, C, T]) as float32 [C<=2, T] trimmed or padded with silence to
    exactly ``num_frames`` frames at ``rate``; None when there is nothing to write."""
    if audio is None:
        return None
    if not sample_rate:
        raise MediaError("write_video: audio was given without its sample_rate.")
    wav = torch.as_tensor(audio).detach().cpu().to(torch.float32)
    check_finite_audio(wav, what)
    if wav.dim() == 3:
        wav = wav[0]
    if wav.dim() == 1:
        wav = wav[None]
    if wav.shape[0] > 2:  # AAC here is written mono or stereo; mix surround down
        wav = wav.mean(0, keepdim=True)
    total = samples_for_frames(num_frames, rate, int(sample_rate))
    if wav.shape[-1] < total:
        wav = torch.nn.functional.pad(wav, (0, total - wav.shape[-1]))
    wav = wav[:, :total].clamp(-1, 1).numpy()  # one copy of the track, however long
    return None if wav.shape[-1] == 0 else wav


def write_video(
    path: str | Path,
    frames,
    fps: float,
    audio: torch.Tensor | None = None,
    sample_rate: int | None = None,
    crf: int = 18,
) -> Path:
    """Write ``frames [F, H, W, 3]`` (float 0..1 or uint8) as an mp4 (H.264 yuv420p, or MPEG-4 where
    H.264 is missing), with ``audio`` (``[T]`` or ``[C, T]``) muxed as AAC, trimmed (or padded
    with silence) to exactly the video's duration.

    The extension picks the container (``output_files.CONTAINERS``: .mp4, .mov, .mkv); a path
    that cannot take a video is refused before anything is encoded. Written to a partial file in
    the same folder (``output_files.partial_path``), then renamed into place, so the path never
    holds half a video; partial files that killed processes left in the folder are removed.
    Odd sizes are padded by one pixel (see :func:`make_even`).
    """
    import av

    from .output_files import check_output_path, clean_stale_partials, container_for, partial_path

    path = check_output_path(path, announce_replace=False)
    rate = as_fraction(fps)
    images = make_even(to_uint8_frames(frames))
    wav = _prepare_audio_track(audio, sample_rate, images.shape[0], rate, f"{path}: the audio to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path.parent)
    tmp = partial_path(path)
    try:
        with av.open(str(tmp), mode="w", format=container_for(path)) as container:
            stream = _add_video_stream(container, rate, images.shape[2], images.shape[1], crf)
            astream = None
            if wav is not None:
                astream = container.add_stream("aac", rate=int(sample_rate))
                astream.layout = "mono" if wav.shape[0] == 1 else "stereo"
            _encode_video_frames(container, stream, images)
            if astream is not None:
                _encode_audio(container, astream, wav, int(sample_rate))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# long videos: one video-only mp4 per chunk, joined without re-encoding


def write_video_part(path: str | Path, frames, fps: float, crf: int = 18) -> Path:
    """One piece of a long video: ``frames`` (uint8 or float 0..1) as a video-only mp4 that
    :func:`join_video_parts` later joins with others. Written atomically, like :func:`write_video`."""
    return write_video(path, frames, fps, crf=crf)


def _video_frame_count(stream) -> int:
    if stream.frames:
        return int(stream.frames)
    return sum(1 for _ in stream.container.decode(stream))


def join_video_parts(
    path: str | Path,
    parts: list[Path],
    fps: float,
    audio: torch.Tensor | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Concatenate the video-only mp4 ``parts`` (each from :func:`write_video_part`, same size and
    fps) into one mp4 without re-encoding them, and add ``audio`` as AAC, trimmed or padded to the
    joined video's length.

    Packets are copied with their timestamps shifted by the frames before them, so each part keeps
    its own encoding (every part starts on a key frame). Audio is encoded part by part, interleaved
    with the video, so neither the frames nor the sound of the whole video are held at once. The
    result is written to a temporary file and renamed into place.
    """
    import av

    from .output_files import check_output_path, clean_stale_partials, container_for, partial_path

    path = check_output_path(path, announce_replace=False)
    if not parts:
        raise MediaError(f"{path}: no video parts to join.")
    rate = as_fraction(fps)
    counts = []
    for part in parts:
        with _open(_check_file(part)) as container:
            if not container.streams.video:
                raise MediaError(f"{part}: holds no video stream; delete it so its chunk is made again.")
            counts.append(_video_frame_count(container.streams.video[0]))
    wav = _prepare_audio_track(audio, sample_rate, sum(counts), rate, f"{path}: the audio to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path.parent)
    tmp = partial_path(path)
    try:
        with av.open(str(tmp), mode="w", format=container_for(path)) as out:
            vstream = astream = None
            frames_before = 0
            audio_done = 0
            for part, count in zip(parts, counts):
                with _open(part) as container:
                    source = container.streams.video[0]
                    if vstream is None:
                        vstream = out.add_stream_from_template(source)
                        if wav is not None:
                            astream = out.add_stream("aac", rate=int(sample_rate))
                            astream.layout = "mono" if wav.shape[0] == 1 else "stereo"
                    # one frame lasts 1 / rate seconds = this many ticks of the part's time base
                    shift = int(round(frames_before / rate / source.time_base))
                    for packet in container.demux(source):
                        if packet.dts is None:  # the demuxer's end-of-stream marker
                            continue
                        packet.pts += shift
                        packet.dts += shift
                        packet.stream = vstream
                        out.mux(packet)
                frames_before += count
                if astream is not None:
                    until = samples_for_frames(frames_before, rate, int(sample_rate))
                    _encode_audio(out, astream, wav[:, audio_done:until], int(sample_rate), pts=audio_done, flush=False)
                    audio_done = until
            if astream is not None:
                for packet in astream.encode():
                    out.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
