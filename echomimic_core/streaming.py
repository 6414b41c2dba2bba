"""Long videos straight to an mp4: frames leave chunk by chunk as uint8, never the whole video.

``generate_to_file`` is ``pipeline.generate`` for any length: each chunk's final frames (see
``pipeline.render_chunks``) are colour-matched, converted to uint8 and encoded into a part file
beside the output (``OUT.mp4.parts/``, see ``resume``), and once every chunk is done the parts are
joined without re-encoding and the audio added (``media.join_video_parts``). Peak memory is one
chunk's worth of frames, latents and audio features, whatever the duration; a killed run resumes
at the first unfinished chunk.

The frames are exactly those of the in-memory path: colour matching is per frame against the
video's first frame (kept from the first chunk on, and across a resume), and the uint8 conversion
is the one ``media.write_video`` applies to ``generate``'s result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import color_match, media
from . import resume as resuming
from .boxes import Box
from .drift import DriftMeter, RedoPolicy, clip_embedder, write_report
from .task_masks import resize_to_sample

log = logging.getLogger(__name__)


class ColourMatcher:
    """Upstream's colour post-process applied block by block: every frame's LAB mean/std matched to
    the video's first frame (``color_match.match_to_first_frame``, which it equals frame for frame).

    Frames become uint8 by ``media.to_uint8_frames`` (rounding) either way, as ``media.write_video`` does.
    """

    def __init__(self, enabled: bool, reference: np.ndarray | None = None):
        self.enabled, self.reference = enabled, reference

    def __call__(self, frames) -> np.ndarray:
        """frames [n, H, W, 3] 0..1 -> uint8 [n, H, W, 3]."""
        if not len(frames):
            return np.zeros((0, *frames.shape[1:]), np.uint8)
        images = media.to_uint8_frames(frames)
        if not self.enabled:
            return images
        out = images.copy()
        start = 0
        if self.reference is None:  # the video's first frame: kept as it is, the others follow it
            self.reference, start = images[0].copy(), 1
        for i in range(start, len(images)):
            out[i] = color_match.color_transfer(images[i], self.reference)
        return out

    def to_float(self, frames: torch.Tensor) -> torch.Tensor:
        """For the in-memory result: the matched frames as float 0..1 (unchanged when disabled)."""
        if not self.enabled:
            return frames
        return torch.from_numpy(self(frames)).float() / 255


@dataclass
class StreamResult:
    path: Path
    frames: int
    fps: float
    info: dict
    report: dict | None = None  # the drift report, when one was asked for
    report_paths: tuple[Path, Path] | None = None  # (json, png)


def stream_to_file(
    models,
    encoded,
    plan,
    settings,
    out: str | Path,
    audio: torch.Tensor | None,
    sample_rate: int | None,
    run_inputs: dict[str, Any],
    hooks=None,
    device=None,
    offload_device="cpu",
    resume: bool = True,
    meter=None,
    report: str | Path | None = None,
    crf: int = 18,
    parallel=None,
    write: bool = True,
) -> StreamResult:
    """Render ``plan`` chunk by chunk into ``out`` (an mp4 with ``audio``, already trimmed to the
    video), resuming a killed run of the same generation (``run_inputs`` names its inputs for the
    fingerprint: digests of the reference, audio, task, models ...). ``meter``: a
    ``drift.DriftMeter``; with ``report`` the per-chunk metrics go to that JSON file and a PNG plot.

    ``parallel`` (see ``pipeline.render``): every rank calls this with the same arguments and renders
    the same chunks; only the one with ``write`` (rank 0) writes parts, state and the mp4, the others
    only read a resumed run's state.
    """
    from . import pipeline

    out = Path(out)
    chunks = plan.chunks or [None]
    description = run_description(plan, settings, run_inputs)
    store = resuming.PartStore(out, resuming.fingerprint(description), len(chunks), description)
    point = store.open(resume) if write else store.peek(resume)
    entries: list[dict] = list(point.values.get("report", []))
    colour_reference = point.tensors.get("colour_reference")
    colour = ColourMatcher(settings.color_match, None if colour_reference is None else colour_reference.numpy())
    resume_from = None
    if point.next_chunk:
        resume_from = {
            "held": point.tensors.get("held"),
            "generator": point.tensors["generator"],
            "done": point.values["done"],
            "next_index": point.next_chunk,
            "baseline_sharpness": point.values.get("baseline_sharpness"),
        }
    written = point.values.get("written", 0)
    pieces = pipeline.render_chunks(
        models, encoded, plan, settings, hooks, device, offload_device, resume_from, meter, parallel
    )
    for piece in pieces:
        images = colour(piece.frames)
        if piece.metrics is not None:
            entries.append(piece.metrics)
        written += len(images)
        tensors = {"generator": piece.resume.get("generator"), "held": piece.resume.get("held")}
        if colour.reference is not None:
            tensors["colour_reference"] = torch.from_numpy(colour.reference)
        values = {
            "done": piece.resume.get("done", 0),
            "baseline_sharpness": piece.resume.get("baseline_sharpness"),
            "report": entries,
            "written": written,
        }

        def write_part(path, images=images):
            if len(images):
                media.write_video_part(path, images, settings.fps, crf=crf)

        if write:
            store.save_chunk(piece.index, write_part, resuming.ResumePoint(piece.resume["next_chunk"], tensors, values))
            log.info("chunk %d of %d done (%d frames so far)", piece.index + 1, piece.count, written)
    if write:
        media.join_video_parts(out, store.parts(), settings.fps, audio, sample_rate)
    result = StreamResult(out, written, settings.fps, plan.info(models.variant))
    if meter is not None:
        result.report = report_meta(meter, plan, settings) | {"chunks": entries}
        if report is not None and write:
            result.report_paths = write_report(report, entries, report_meta(meter, plan, settings))
    if write:
        store.discard()
    return result


def run_description(plan, settings, run_inputs: dict[str, Any]) -> dict[str, Any]:
    """What a run's frames depend on, JSON-able (recorded in OUT.mp4.parts/run.json)."""
    return {
        "settings": resuming.settings_summary(settings),
        "inputs": run_inputs,
        "plan": {
            "frames": plan.num_frames,
            "size": list(plan.sample_size),
            "chunks": [[c.start, c.length, c.overlap] for c in plan.chunks] if plan.chunks else "sliding",
        },
    }


def run_key(plan, settings, run_inputs: dict[str, Any]) -> str:
    """The fingerprint a resumed run must match (see ``resume``)."""
    return resuming.fingerprint(run_description(plan, settings, run_inputs))


def run_inputs_for(models, encoded, plan, settings, meter: DriftMeter | None) -> dict[str, Any]:
    """Digests of everything besides the settings that shapes a run's frames: the conditioning
    (prompt and CLIP embeddings, audio, face gate), the reference and task, the weights, and the
    drift meter when a redo threshold lets it choose chunks to render again.

    The command line's streamed run and the sampler node both key their resumable parts on this,
    so what one of them counts the other does too. The prompt text and the face mask are not
    listed: the prompt's embedding and the face gate are (what the model sees of them; the node
    only ever gets the embeddings), and the meter's face box is, where it matters."""
    audio = encoded.audio
    if isinstance(audio, torch.Tensor):
        audio_digest = resuming.tensor_digest(audio)
    else:  # a WindowedAudioFeatures: its model input and its window
        audio_digest = {
            "values": resuming.tensor_digest(getattr(audio, "values", None)),
            "context_seconds": getattr(audio, "context_seconds", None),
            "kind": audio.kind,
        }
    return {
        "context": resuming.tensor_digest(encoded.context),
        "negative_context": resuming.tensor_digest(encoded.negative_context),
        "clip": resuming.tensor_digest(encoded.clip_fea),
        "audio": audio_digest,
        "face_gate": resuming.tensor_digest(encoded.face_gate),
        "reference": resuming.tensor_digest(plan.reference),
        "task": task_digest(plan.task),
        "drift": meter_digest(meter, settings),
        "models": {
            slot: resuming.module_digest(getattr(models, slot, None))
            for slot in ("transformer", "vae", "text_encoder", "image_encoder", "audio_encoder")
        },
    }


def meter_digest(meter: DriftMeter | None, settings) -> dict[str, Any] | None:
    """What of the drift meter shapes the frames: with a redo threshold set, its face box (the
    node's comes from the Task, not the settings, and a box moved within one token does not change
    the face gate) and its identity embedding of the reference (another CLIP model measures other
    identities) decide which chunks are rendered again. Without one it only writes the report,
    so a resumed run may add or drop the report without discarding its chunks."""
    if meter is None or not RedoPolicy.of(settings).active:
        return None
    return {
        "face_box": [round(float(v), 3) for v in meter.face_box],
        "identity": resuming.tensor_digest(meter.reference_embedding),
        "samples": meter.samples,
    }


def report_meta(meter, plan, settings) -> dict[str, Any]:
    return {
        "fps": float(settings.fps),
        "frames": plan.num_frames,
        "size": list(plan.sample_size),
        "reference_face_box": [round(float(v), 1) for v in meter.face_box],
        "reference_sharpness": meter.reference_sharpness,
        "identity_measure": "cosine similarity of CLIP ViT-H class tokens of the face crops (a proxy)"
        if meter.embed is not None
        else None,
        "settings": {
            k: getattr(settings, k)
            for k in (
                "reference_anchor",
                "seam_search_frames",
                "audio_context_seconds",
                "redo_identity_below",
                "redo_sharpness_ratio",
                "partial_video_length",
                "overlap_video_length",
            )
        },
    }


@torch.no_grad()
def generate_to_file(
    models,
    image,
    audio: torch.Tensor,
    sample_rate: int,
    prompt: str,
    out: str | Path,
    settings=None,
    task=None,
    face_mask=None,
    hooks=None,
    device=None,
    offload_device="cpu",
    resume: bool = True,
    report: str | Path | None = None,
    crf: int = 18,
    parallel=None,
    write: bool = True,
    encoder_device=None,
) -> StreamResult:
    """``pipeline.generate`` written straight to the mp4 ``out``, with the audio: memory flat in the
    duration, resumable (``resume=False`` starts afresh), and a drift report (JSON + PNG) at
    ``report`` when given. Same arguments as ``generate``; ``write``: see :func:`stream_to_file`."""
    from . import pipeline
    from .settings import GenerationSettings

    settings = settings or GenerationSettings.for_variant(models.variant)
    plan, encoded = pipeline.plan_and_encode(
        models,
        image,
        audio,
        sample_rate,
        prompt,
        settings,
        task,
        face_mask,
        encoder_device or device,
        offload_device,
        in_memory=False,
    )
    meter = None
    if report is not None or RedoPolicy.of(settings).active:
        embed = None
        if models.image_encoder is not None:
            embed = on_device_embedder(models.image_encoder, device, offload_device)
        meter = drift_meter_for(plan, settings.face_box, embed)
    run_inputs = run_inputs_for(models, encoded, plan, settings, meter)
    trimmed = pipeline.trim_audio(audio, sample_rate, plan.num_frames, settings.fps)
    with pipeline.transformer_for_render(models.transformer, device, offload_device):
        return stream_to_file(
            models,
            encoded,
            plan,
            settings,
            out,
            trimmed,
            sample_rate,
            run_inputs,
            hooks,
            device,
            offload_device,
            resume,
            meter,
            report,
            crf,
            parallel,
            write,
        )


def on_device_embedder(image_encoder, device, offload_device):
    """The CLIP identity embedder, moving the image encoder to ``device`` only while it runs."""
    from .pipeline import on_device

    embed = clip_embedder(image_encoder)

    def run(images):
        with on_device(image_encoder, device, offload_device):
            return embed(images)

    return run


def drift_meter_for(plan, face_box, embed) -> DriftMeter:
    """The per-chunk drift measure of one run: against the reference at the output size, in
    ``face_box`` (reference pixels; else the detected face); the identity proxy only with ``embed``."""
    reference = np.array(resize_to_sample(plan.reference, plan.sample_size))
    return DriftMeter(reference, face_box_at(face_box, plan.reference.shape[:2], plan.sample_size), embed)


def face_box_at(box, image_hw, sample_size) -> Box | None:
    """A face box (top, bottom, left, right) in the reference image's pixels, in output pixels (None stays None)."""
    if box is None:
        return None
    return Box.of(box, "face box").scaled(sample_size[0] / image_hw[0], sample_size[1] / image_hw[1])


def task_digest(task) -> dict[str, Any]:
    """What of a task shapes the frames, as digests."""
    return {
        "kind": task.kind,
        "end_image": resuming.tensor_digest(task.end_image),
        "keyframes": {str(k): resuming.tensor_digest(v) for k, v in sorted(task.keyframes.items())},
        "source_video": resuming.tensor_digest(task.source_video),
        "mouth_box": list(task.mouth_box) if task.mouth_box is not None else None,
        "mouth_mask": resuming.tensor_digest(task.mouth_mask),
        "continue_frames": task.continue_frames,
    }
