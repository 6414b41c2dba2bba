"""Cache VAE latents, text embeddings, CLIP tokens and audio features for training.

    python -m training.preprocess --manifest clips.jsonl --out data/cache \\
        --vae Wan2.1_VAE.pth --text-encoder umt5-xxl-enc-bf16.pth --clip clip_vision_h.safetensors \\
        --audio-encoder wav2vec2-base-960h --frames 81 --height 512 --width 512

Manifest: one JSON object a line (format in docs/TRAINING.md). Resumable (items already in the
index are skipped), safe to interrupt (each shard is written to a temporary file and renamed,
then the index is replaced atomically), with a progress bar. Encoders and the clip reader are
injected callables (:class:`Encoders`), so tests run tiny ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from echomimic_core import task_masks
from echomimic_core.boxes import Box
from echomimic_core.checkpoints.files import save_state_dict
from echomimic_core.config import AUDIO_KINDS
from echomimic_core.settings import GenerationSettings
from echomimic_core.vae_frames import round_down_4k1
from training.boxes import as_manifest, parse_frac_box, to_pixel_box
from training.dataset import CACHE_DTYPES, NULLS, read_index, write_index, write_shard
from training.tasks import task_inputs

log = logging.getLogger(__name__)

# Clip length the paper trains on: preview's window at inference (partial_video_length, 113 frames).
DEFAULT_FRAMES = GenerationSettings().partial_video_length
# Clips are sampled at the frame rate the model generates at, so an audio token spans the same time.
DEFAULT_FPS = GenerationSettings.fps
DEFAULT_SIZE = (512, 512)  # (H, W) of the cached clips


@dataclass
class Encoders:
    """vae: [3, N, H, W] in [-1, 1] -> normalised latents [16, F, h, w];
    text: prompt -> [L, text_dim]; image: [3, H, W] in [-1, 1] -> CLIP tokens [257, clip_dim];
    audio: (waveform [T] mono, sample_rate, num_frames, fps) -> the variant's audio features."""

    vae: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[str], torch.Tensor]
    image: Callable[[torch.Tensor], torch.Tensor]
    audio: Callable[[torch.Tensor, int, int, float], torch.Tensor]


class TooShort(ValueError):
    """A clip with fewer frames than training uses: filtered out, not an error."""


@dataclass
class Clip:
    video: torch.Tensor  # [3, N, H, W] in [-1, 1], resized, N = the frames kept
    waveform: torch.Tensor  # [T] mono
    sample_rate: int
    fps: float
    # the part of the source frame kept by the crop, as fractions
    crop: Box = Box(0.0, 1.0, 0.0, 1.0)


@dataclass(frozen=True)
class Window:
    """Where a manifest row's clip lies in its video (``training.prepare`` writes these fields):
    ``start_seconds`` into the video, the audio ``audio_offset_seconds`` later than the video (a
    measured A/V offset), and ``crop_box`` as fractions of the source frame (None = centre crop to
    the training aspect)."""

    start_seconds: float = 0.0
    audio_offset_seconds: float = 0.0
    crop_box: Box | None = None

    @classmethod
    def from_row(cls, row: dict) -> Window:
        crop = parse_frac_box(row.get("crop_box"), f"{row.get('id')}: crop_box")
        start = float(row.get("start_seconds", 0.0))
        if start < 0:
            raise ValueError(f"{row.get('id')}: start_seconds must be >= 0, got {start}.")
        return cls(start, float(row.get("audio_offset_seconds", 0.0)), crop)


def centre_crop(src_hw: tuple[int, int], size: tuple[int, int]) -> Box:
    """The centred part of a (H, W) frame with the aspect of ``size``, as fractions."""
    src_h, src_w = src_hw
    target = size[1] / size[0]
    if src_w / src_h > target:  # too wide: crop the sides
        keep = src_h * target / src_w
        return Box(0.0, 1.0, (1 - keep) / 2, (1 + keep) / 2)
    keep = src_w / target / src_h  # too tall: crop top and bottom
    return Box((1 - keep) / 2, (1 + keep) / 2, 0.0, 1.0)


def load_clip(
    path: str,
    frames: int,
    size: tuple[int, int],
    audio_path: str | None = None,
    fps: float | None = DEFAULT_FPS,
    window: Window = Window(),
) -> Clip:
    """``frames`` frames at ``fps`` (nearest source frame; None keeps the source rate) from
    ``window.start_seconds`` on, cropped (``window.crop_box``, else centred to the aspect of
    ``size`` (H, W)) and resized to ``size``, with the audio of the same span."""
    import torch.nn.functional as F

    from echomimic_core import media
    from training.footage import WindowPastEnd, probe, read_window

    info = probe(path)
    rate = fps or info.fps
    last = window.start_seconds + (frames - 1) / rate  # the last frame's time
    if last > info.duration - 0.5 / info.fps + 1e-6:
        raise TooShort(
            f"{path}: lasts {info.duration:.2f} s; {frames} frames at {rate:g} fps from "
            f"{window.start_seconds:.2f} s need {last + 1 / info.fps:.2f} s."
        )
    try:
        pixels = read_window(path, window.start_seconds, frames, rate)
    except WindowPastEnd as e:
        raise TooShort(str(e)) from e
    video = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255  # [F, 3, H, W]
    src_h, src_w = video.shape[2:]
    crop = window.crop_box or centre_crop((src_h, src_w), size)
    top, bottom, left, right = (int(v) for v in crop.scaled(src_h, src_w).rounded())
    video = F.interpolate(
        video[:, :, top:bottom, left:right], size=size, mode="bilinear", antialias=True, align_corners=False
    ).permute(1, 0, 2, 3)  # [3, F, H, W]
    if audio_path is not None:
        waveform, sr = media.load_audio(audio_path)
    else:
        waveform, sr = media.load_audio(path) if info.has_audio else (None, None)
        if waveform is None:
            raise ValueError(f'{path}: has no soundtrack; give an "audio" file in the manifest row.')
    first = round((window.start_seconds + window.audio_offset_seconds) * sr)
    mono = media.to_mono(waveform)
    if first > 0:
        mono = mono[first:]
    elif first < 0:  # audio starts later than the window: silence before it
        mono = torch.cat([mono.new_zeros(-first), mono])
    return Clip(video=video.clamp(0, 1) * 2 - 1, waveform=mono, sample_rate=int(sr), fps=rate, crop=crop)


BOX_FIELDS = ("mouth_box", "face_box")


def crop_box(box: Box | None, crop: Box) -> Box | None:
    """A box in fractions of the source frame -> fractions of the cropped frame (clamped to it);
    None when the crop cuts the box away."""
    if box is None:
        return None

    def inside(value: float, start: float, length: float) -> float:
        return min(max((value - start) / length, 0.0), 1.0)

    cropped = Box(
        inside(box.top, crop.top, crop.height),
        inside(box.bottom, crop.top, crop.height),
        inside(box.left, crop.left, crop.width),
        inside(box.right, crop.left, crop.width),
    )
    return None if cropped.is_empty else cropped


def clip_boxes(row: dict, crop, size: tuple[int, int]) -> dict:
    """The row's boxes checked (:func:`training.boxes.parse_frac_box`) and remapped to the crop.
    A box that covers no pixel of the (H, W) = ``size`` output is dropped: without a mouth box the
    clip has no lipsync task, without a face box the audio acts on the whole frame."""
    row = dict(row)
    for key in BOX_FIELDS:
        box = crop_box(parse_frac_box(row.get(key), f"{row['id']}: {key}"), crop)
        if box is None or to_pixel_box(box, size).is_empty:
            if row.pop(key, None) is not None:
                log.warning("%s: %s lies outside the cropped %dx%d frame; ignored", row["id"], key, *size)
        else:
            row[key] = as_manifest(box)
    return row


def masked_video(video: torch.Tensor, task: str, mouth_box=None) -> torch.Tensor:
    """The [-1, 1] video [3, N, H, W] with every pixel ``task`` generates zeroed: what the VAE
    encodes (the core's ``masked_pixels``, applied to a video already in [-1, 1] so that kept pixels
    stay bit-exact)."""
    _, n, h, w = video.shape
    generate = task_masks.binary_mask(task_inputs(task, n, (h, w), mouth_box).input_video_mask)
    return video * (1 - generate[0])  # [1, N, H, W] broadcasts over the 3 channels


def encode_sft_item(row: dict, clip: Clip, enc: Encoders) -> dict[str, torch.Tensor]:
    n = clip.video.shape[1]
    out = {
        "latents": enc.vae(clip.video),
        "text": enc.text(row.get("caption", "")),
        "clip": enc.image(clip.video[:, 0]),
        "audio": enc.audio(clip.waveform, clip.sample_rate, n, clip.fps),
    }
    tasks = ["first_frame", "first_last"] + (["lipsync"] if row.get("mouth_box") else [])
    for task in tasks:
        out[f"cond.{task}"] = enc.vae(masked_video(clip.video, task, row.get("mouth_box")))
    return out


def encode_dpo_item(
    row: dict, chosen: Clip, rejected: Clip, enc: Encoders, reference: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """A preference pair generated from one reference image: the conditioning is shared."""
    if chosen.video.shape != rejected.video.shape:
        raise ValueError(
            f"pair {row['id']}: chosen {tuple(chosen.video.shape)} and rejected "
            f"{tuple(rejected.video.shape)} clips differ in shape; they must come from "
            "the same generation settings."
        )
    first = chosen.video[:, 0] if reference is None else reference
    given = chosen.video.clone()
    given[:, 0] = first
    n = chosen.video.shape[1]
    return {
        "chosen.latents": enc.vae(chosen.video),
        "rejected.latents": enc.vae(rejected.video),
        "cond.first_frame": enc.vae(masked_video(given, "first_frame")),
        "text": enc.text(row.get("caption", "")),
        "clip": enc.image(first),
        "audio": enc.audio(chosen.waveform, chosen.sample_rate, n, chosen.fps),
    }


def read_manifest(path: str | Path) -> list[dict]:
    """The manifest's rows; ValueError naming the line of a row that is not a JSON object with an
    "id", or whose id an earlier line already used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest file.")
    rows, first_line = [], {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON object ({e.msg} at column {e.colno}): {line[:80]!r}") from None
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f'{path}:{i}: every row is a JSON object with an "id" (unique, used to resume).')
        if row["id"] in first_line:
            raise ValueError(
                f"{path}:{i}: id {row['id']!r} is already used on line {first_line[row['id']]}; ids must be unique "
                "(a repeated id would be counted twice and one row's tensors lost)."
            )
        first_line[row["id"]] = i
        rows.append(row)
    return rows


def check_unique_ids(rows: list[dict]) -> None:
    """ValueError naming the first repeated id: two rows with one id share one cache entry."""
    seen = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"id {row['id']!r} appears twice among the rows; ids must be unique.")
        seen.add(row["id"])


def _resolve(root: Path, value: str | None) -> str | None:
    return None if value is None else str(root / value)


def preprocess(
    rows: Iterable[dict],
    out_dir: str | Path,
    encoders: Encoders,
    *,
    kind: str = "sft",
    frames: int = DEFAULT_FRAMES,
    size: tuple[int, int] = DEFAULT_SIZE,
    root: str | Path = ".",
    shard_size: int = 64,
    min_sync_score: float | None = None,
    sync_column: str = "sync_score",
    min_frames: int | None = None,
    loader: Callable[..., Clip] = load_clip,
    progress: bool = True,
    cache_dtype: str = "bf16",
) -> dict[str, int]:
    """Encode every row not already cached; returns counts (done, skipped_filter, failed, cached)."""
    from tqdm.auto import tqdm

    if kind not in ("sft", "dpo"):
        raise ValueError(f"kind must be 'sft' or 'dpo', got {kind!r}.")
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}.")
    if round_down_4k1(frames) != frames:
        raise ValueError(f"frames must be 4k + 1 (e.g. 81), got {frames}: the Wan VAE folds 4 frames.")
    out, root = Path(out_dir), Path(root)
    out.mkdir(parents=True, exist_ok=True)
    index = read_index(out)
    if index["kind"] not in (None, kind):
        raise ValueError(f"{out}: already holds {index['kind']!r} items; use another folder for {kind!r}.")
    index["kind"] = kind
    done = {item["id"] for item in index["items"]}
    if not (out / NULLS).is_file():
        # the empty prompt's embedding is what dropped text becomes (upstream's negative prompt "")
        save_state_dict({"text": encoders.text("").contiguous()}, out / NULLS)

    rows = list(rows)
    check_unique_ids(rows)
    stats = {"done": 0, "skipped_filter": 0, "failed": 0, "cached": 0}
    todo = []
    for row in rows:
        if row["id"] in done:
            stats["cached"] += 1
        elif min_sync_score is not None and float(row.get(sync_column, float("-inf"))) < min_sync_score:
            stats["skipped_filter"] += 1
        elif "num_frames" in row and int(row["num_frames"]) < max(frames, min_frames or 0):
            stats["skipped_filter"] += 1  # known short from the manifest: not even decoded
        else:
            todo.append(row)

    pending: dict[str, dict] = {}
    pending_meta: list[dict] = []

    def flush():
        if not pending:
            return
        shard = f"shard-{len({i['shard'] for i in index['items']}):05d}.safetensors"
        write_shard(out, shard, pending, cache_dtype)
        index["items"].extend({**meta, "shard": shard} for meta in pending_meta)
        write_index(out, index)
        pending.clear()
        pending_meta.clear()

    for row in tqdm(todo, desc=f"preprocess {kind}", disable=not progress):
        try:
            if kind == "sft":
                window = Window.from_row(row)
                extra = {} if window == Window() else {"window": window}
                clip = loader(_resolve(root, row["video"]), frames, size, _resolve(root, row.get("audio")), **extra)
                row = clip_boxes(row, clip.crop, size)
                tensors = encode_sft_item(row, clip, encoders)
            else:
                audio = _resolve(root, row.get("audio"))
                chosen = loader(_resolve(root, row["chosen"]), frames, size, audio)
                rejected = loader(_resolve(root, row["rejected"]), frames, size, audio)
                tensors = encode_dpo_item(row, chosen, rejected, encoders)
        except TooShort as e:
            log.info("filtered %s: %s", row["id"], e)
            stats["skipped_filter"] += 1
            continue
        except (ValueError, OSError) as e:  # a bad clip is skipped and counted, not fatal
            log.warning("skipping %s: %s", row["id"], e)
            stats["failed"] += 1
            continue
        pending[row["id"]] = tensors
        meta = {
            k: row[k]
            for k in ("id", "mouth_box", "face_box", sync_column, "caption", "video", "start_seconds")
            if k in row
        }
        meta["shape"] = list(tensors["latents" if kind == "sft" else "chosen.latents"].shape)
        pending_meta.append(meta)
        stats["done"] += 1
        if len(pending) >= shard_size:
            flush()
    flush()
    log.info("preprocess %s -> %s: %s", kind, out, stats)
    return stats


# ------------------------------------------------------------------------------------ CLI


def build_encoders(args) -> Encoders:
    """The node pack's own encoders (the exact inference preprocessing), on ``args.device``."""
    from echomimic_core.encoders.audio import AudioEncoder
    from echomimic_core.encoders.image import ImageEncoder
    from echomimic_core.encoders.text import TextEncoder
    from echomimic_core.vae import load_vae

    device = torch.device(args.device)
    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = load_vae(args.vae, dtype=torch.float32, device=device)
    text_encoder = TextEncoder.load(args.text_encoder, device=device)
    image_encoder = ImageEncoder.load(args.clip, dtype=half, device=device)
    audio_encoder = AudioEncoder.load(args.audio_encoder, kind=args.audio_kind, device=device)

    def audio(waveform, sample_rate, num_frames, fps):
        return audio_encoder.features_for_video(waveform, num_frames, fps, sample_rate)[0].float().cpu()

    return Encoders(
        vae=lambda video: vae.encode(video[None].to(device))[0].cpu(),
        text=lambda prompt: text_encoder.encode(prompt)[0].float().cpu(),
        image=lambda frame: image_encoder.encode(frame[None].to(device))[0].float().cpu(),
        audio=audio,
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.preprocess", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="JSONL rows (see docs/TRAINING.md)")
    p.add_argument("--out", required=True, help="cache folder (resumable)")
    p.add_argument("--kind", choices=("sft", "dpo"), default="sft")
    p.add_argument(
        "--root", default=None, help="folder the manifest's paths are relative to (default: the manifest's folder)"
    )
    p.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help=f"clip length, 4k+1 (default {DEFAULT_FRAMES}, as the paper)"
    )
    p.add_argument("--height", type=int, default=DEFAULT_SIZE[0])
    p.add_argument("--width", type=int, default=DEFAULT_SIZE[1])
    p.add_argument(
        "--fps",
        type=float,
        default=DEFAULT_FPS,
        help=f"frame rate to sample the clips at (EchoMimicV3 generates at {DEFAULT_FPS:g}); 0 keeps the source rate",
    )
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument(
        "--cache-dtype",
        choices=sorted(CACHE_DTYPES),
        default="bf16",
        help="storage of the cached tensors (bf16 halves the cache; training reads them as float32)",
    )
    p.add_argument(
        "--min-sync-score",
        type=float,
        default=None,
        help="skip rows whose sync column is below this (e.g. SyncNet confidence)",
    )
    p.add_argument("--sync-column", default="sync_score")
    p.add_argument(
        "--min-frames",
        type=int,
        default=None,
        help="skip rows whose num_frames column is below this (clips shorter than --frames are always skipped)",
    )
    p.add_argument("--vae", required=True)
    p.add_argument("--text-encoder", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument(
        "--audio-encoder",
        required=True,
        help="wav2vec2-base-960h (preview), chinese-wav2vec2-base (flash) or Whisper-Tiny",
    )
    p.add_argument(
        "--audio-kind",
        default=None,
        choices=AUDIO_KINDS,
        help="audio feature layout; default: guessed from the encoder files",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.root or str(Path(args.manifest).parent)
    try:
        rows = read_manifest(args.manifest)  # before the encoders load: a bad manifest costs seconds
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with torch.inference_mode():
        stats = preprocess(
            rows,
            args.out,
            build_encoders(args),
            kind=args.kind,
            frames=args.frames,
            size=(args.height, args.width),
            root=root,
            shard_size=args.shard_size,
            min_sync_score=args.min_sync_score,
            sync_column=args.sync_column,
            min_frames=args.min_frames,
            loader=functools.partial(load_clip, fps=args.fps or None),
            cache_dtype=args.cache_dtype,
        )
    print(json.dumps(stats))
    return 0 if stats["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
