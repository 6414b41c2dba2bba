"""Reference image (or video) + audio + prompt -> video frames and the audio trimmed to them.

The steps, each a function of its own module: encode the prompt (umT5), the reference (CLIP) and
the audio (wav2vec2 / Whisper, aligned to video frames); build each chunk's task mask and
conditioning ``y`` (``task_masks``, VAE); denoise with guidance (``sampling``); decode; stitch the
chunks (``long_video``); colour-match. ``generate`` runs them all; the ComfyUI nodes call the
same pieces one node at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import audio_alignment as align
from . import task_masks
from .audio_windows import FeatureSource, WindowedAudioFeatures, frames_covered, slice_features
from .boxes import check_box_inside
from .drift import DriftMeter, RedoPolicy, anchor_start_frames
from .face_region import face_gate_for_image
from .long_video import (
    Chunk,
    Stitcher,
    plan_chunks,
    plan_chunks_at_pauses,
    plan_windows,
    sliding_velocity,
    window_conditioning,
)
from .media import prepare_audio
from .memory_plan import check_video_fits_in_ram
from .model.conditioning import Conditioning
from .model.context_cache import ContextCache
from .model.rope import Riflex
from .sampling.easycache import EasyCache
from .sampling.guidance import VARIANT_MODES, GuidanceConfig
from .sampling.sampler import StepHooks, denoise, guided_velocity, run_branches
from .sampling.schedulers import make_scheduler
from .sampling.teacache import TeaCache
from .settings import GenerationSettings, offset_seed
from .streaming import ColourMatcher
from .tasks import Task, chunk_task_inputs, task_at_sample_size, to_uint8_image
from .vae.pixels import decode_frames
from .vae_frames import VAE_TEMPORAL_STRIDE, latent_frames, pixel_frames, round_down_4k1, round_up_4k1

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The networks of one generation. Encoders may be None when their embeddings are given."""

    transformer: torch.nn.Module
    vae: Any
    text_encoder: Any = None
    image_encoder: Any = None
    audio_encoder: Any = None

    @property
    def variant(self) -> str:
        return self.transformer.config.variant

    @property
    def audio_kind(self) -> str:
        """Layout of the audio features: "flash" windows or "preview"/"whisper" tokens."""
        if self.audio_encoder is not None:
            return self.audio_encoder.kind
        return "flash" if self.variant == "flash" else "preview"


@dataclass
class Result:
    frames: torch.Tensor  # [F, H, W, 3] float 0..1
    audio: torch.Tensor  # [C, T] at sample_rate, trimmed to F / fps seconds
    sample_rate: int
    fps: float
    info: dict = field(default_factory=dict)


@dataclass
class Encoded:
    """Everything the denoiser needs that does not change between chunks."""

    context: torch.Tensor  # [L, text_dim] prompt embedding
    negative_context: torch.Tensor  # [L', text_dim]
    clip_fea: torch.Tensor  # [1, 257, clip_dim]
    audio: torch.Tensor | FeatureSource  # features of every output frame, model layout (or made per chunk)
    face_gate: torch.Tensor | None  # [1, tokens per latent frame] or None


# ---------------------------------------------------------------------------------------------
# small helpers


@contextlib.contextmanager
def on_device(module, device, offload_device):
    """Move a model to ``device`` for the duration of the block, then back to ``offload_device``,
    so encoders and the VAE do not hold accelerator memory while the transformer runs."""
    if module is None or device is None:
        yield module
        return
    # every encoder wrapper and VideoVAE has ``to(device)``; an adapter whose host manages
    # memory itself (ComfyUI's VAE) makes it a no-op, so call it rather than its inner model's
    module.to(device)
    try:
        yield module
    finally:
        if offload_device is not None and torch.device(offload_device) != torch.device(device):
            module.to(offload_device)


@contextlib.contextmanager
def transformer_for_render(transformer, device, offload_device):
    """The transformer on ``device`` while the chunks render, if it waits on the host: a memory plan
    (``--vram-budget``) loads it there so that the encoders have the device to themselves, and
    records its block swap as ``echomimic_block_swap``. It is parked again afterwards (swapped
    blocks are never uploaded on the way out). A transformer already on ``device`` is left alone."""
    where = next(transformer.parameters()).device
    if device is None or not hasattr(transformer, "place") or _same_device(where, torch.device(device)):
        yield transformer
        return
    transformer.place(device, offload_device, getattr(transformer, "echomimic_block_swap", 0))
    try:
        yield transformer
    finally:
        transformer.park(offload_device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 are one device when 0 is the current one."""
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None):
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def sample_size_for(image_hw: tuple[int, int], settings: GenerationSettings) -> tuple[int, int]:
    if settings.width is not None:
        return settings.height, settings.width
    return task_masks.pick_sample_size(*image_hw, settings.sample_area)


def output_frame_count(num_samples_16k: int, settings: GenerationSettings) -> int:
    """Frames the audio supports: floor(duration * fps), capped by ``max_frames``. Unlike upstream
    no 4k+1 rounding here: chunks are rounded up and trimmed, so the video covers all the audio."""
    frames = align.frames_for_samples(num_samples_16k, settings.fps, max_frames=settings.max_frames, round_to_4k1=False)
    if frames < 1:
        raise ValueError(
            f"the audio lasts {num_samples_16k / align.SAMPLE_RATE:.3f} s, shorter than one "
            f"video frame at {settings.fps} fps; give at least {1 / settings.fps:.3f} s of audio."
        )
    return frames


# ---------------------------------------------------------------------------------------------
# conditioning


def encode_inputs(
    models: Models,
    reference: np.ndarray,
    wav16k: torch.Tensor,
    prompt: str,
    settings: GenerationSettings,
    sample_size: tuple[int, int],
    feature_frames: int,
    face_mask=None,
    device=None,
    offload_device="cpu",
) -> Encoded:
    """Text, CLIP, audio and face-gate conditioning; each encoder visits the device only while used."""
    if models.text_encoder is None or models.image_encoder is None or models.audio_encoder is None:
        raise ValueError(
            "generate() needs the text, image and audio encoders; the ComfyUI nodes accept "
            "pre-computed embeddings instead."
        )
    with on_device(models.text_encoder, device, offload_device) as te:
        context, negative = te.encode([prompt, settings.negative_prompt])
    reference_pil = task_masks.resize_to_sample(reference, sample_size)
    with on_device(models.image_encoder, device, offload_device) as ie:
        pixels = torch.from_numpy(np.array(reference_pil)).permute(2, 0, 1)[None].float() / 127.5 - 1
        clip_fea = ie.encode(pixels).float().cpu()
    audio = encode_audio(models.audio_encoder, wav16k, feature_frames, settings, device, offload_device)
    face_gate = model_face_gate(models, reference, sample_size, settings.face_box, face_mask)
    return Encoded(context.float().cpu(), negative.float().cpu(), clip_fea, audio, face_gate)


def encode_audio(
    encoder, wav16k: torch.Tensor, num_frames: int, settings: GenerationSettings, device=None, offload_device="cpu"
) -> torch.Tensor | FeatureSource:
    """The audio features of ``num_frames`` frames: upstream's single whole-clip pass when
    ``settings.audio_context_seconds`` is 0, else a :class:`WindowedAudioFeatures` that encodes each
    chunk's window when the chunk asks (memory independent of the clip's length; sliding mode,
    which needs every frame at every step, has them all encoded once, window by window)."""
    if not settings.audio_context_seconds:
        with on_device(encoder, device, offload_device) as ae:
            features = ae.features_for_video(
                wav16k, num_frames, settings.fps, loudness_norm=settings.loudness_normalize
            )
        return features.float().cpu()
    return WindowedAudioFeatures(
        encoder,
        wav16k,
        num_frames,
        settings.fps,
        settings.audio_context_seconds,
        loudness_norm=settings.loudness_normalize,
        device_scope=lambda: on_device(encoder, device, offload_device),
    )


def model_face_gate(models: Models, reference: np.ndarray, sample_size: tuple[int, int], box=None, mask=None):
    """The preview model's face gate [1, tokens] (box, else mask, else detector); None for flash."""
    if models.variant != "preview":
        return None
    face_gate, source = face_gate_for_image(reference, sample_size, box=box, mask=mask)
    log.info("face gate from %s", source)
    return face_gate


def encoded_from_embeddings(
    models: Models,
    plan: Plan,
    context: torch.Tensor,
    negative_context: torch.Tensor | None,
    clip_fea: torch.Tensor,
    audio: torch.Tensor,
    audio_kind: str,
    face_box=None,
    face_mask=None,
) -> Encoded:
    """``Encoded`` from embeddings computed elsewhere (the ComfyUI nodes), checked against the model.

    context / negative_context: [L, text_dim] (real tokens only); clip_fea: [1, 257, clip_dim];
    audio: the audio encoder's ``features_for_video`` output covering at least ``plan.num_frames``.
    """
    config = models.transformer.config
    if align.kind_layout(audio_kind) != align.kind_layout(models.audio_kind):
        raise ValueError(
            f"the audio features are {audio_kind!r} features but the model is {models.variant}; "
            f"encode the audio with the {models.variant} audio encoder."
        )
    if frames_covered(audio, audio_kind) < plan.num_frames:
        raise ValueError(
            f"the audio features cover {frames_covered(audio, audio_kind)} frames, the "
            f"video needs {plan.num_frames}; encode the whole audio clip."
        )
    if negative_context is None:
        if guidance_needs_negative(models):
            raise ValueError("the preview model's guidance needs the negative prompt's embedding; connect it.")
        negative_context = context.new_zeros(0, context.shape[-1])
    for name, tensor, dim in (
        ("prompt", context, config.text_dim),
        ("negative prompt", negative_context, config.text_dim),
        ("CLIP vision", clip_fea, config.clip_dim),
    ):
        if tensor.shape[-1] != dim:
            raise ValueError(
                f"the {name} embedding has width {tensor.shape[-1]}, the model expects {dim}; "
                "use the encoder that belongs to this model (umT5-XXL / CLIP ViT-H)."
            )
    face_gate = model_face_gate(models, plan.reference, plan.sample_size, face_box, face_mask)
    if isinstance(audio, torch.Tensor):
        audio = audio.float().cpu()
    return Encoded(context.float().cpu(), negative_context.float().cpu(), clip_fea.float().cpu(), audio, face_gate)


def guidance_needs_negative(models: Models) -> bool:
    """Preview's three-way guidance runs the negative prompt; flash's audio-only guidance does not."""
    return models.variant != "flash"


def branches_for(
    encoded: Encoded, y: torch.Tensor, audio: torch.Tensor, audio_scale: float, riflex: Riflex | None = None
) -> dict[str, Conditioning]:
    """The three guidance branches: cond (prompt, audio), drop_audio (prompt, zero audio) and
    uncond (negative prompt, zero audio)."""
    cond = Conditioning(
        context=[encoded.context],
        clip_fea=encoded.clip_fea,
        y=y,
        audio=audio,
        face_gate=encoded.face_gate,
        audio_scale=audio_scale,
        riflex=riflex,
    )
    drop = cond.without_audio()
    return {"cond": cond, "drop_audio": drop, "uncond": dataclasses.replace(drop, context=[encoded.negative_context])}


def guidance_for_variant(variant: str, settings: GenerationSettings) -> GuidanceConfig:
    """The guidance of a ``variant`` model under ``settings``."""
    return GuidanceConfig(
        mode=VARIANT_MODES[variant],
        guidance_scale=settings.guidance_scale,
        audio_guidance_scale=settings.audio_guidance_scale,
        use_dynamic_cfg=settings.use_dynamic_cfg,
        use_dynamic_acfg=settings.use_dynamic_acfg,
        neg_scale=settings.neg_scale,
        neg_steps=settings.neg_steps,
        cfg_skip_ratio=settings.cfg_skip_ratio,
    )


@dataclass
class Plan:
    """The frame and size arithmetic of one generation, fixed before any model runs."""

    reference: np.ndarray  # uint8 [H, W, 3], the image CLIP sees and frame 0 keeps
    sample_size: tuple[int, int]  # (H, W) generated
    num_frames: int  # output frames
    task: Task  # with any source video resized to sample_size
    lead: int = 0  # continuation: kept source frames before the output
    chunks: list[Chunk] | None = None  # pixel chunks; None in sliding mode

    @property
    def total_frames(self) -> int:
        return self.num_frames + self.lead

    def info(self, variant: str) -> dict:
        """The run's summary that both the in-memory and the streamed result carry."""
        return {
            "frames": self.num_frames,
            "size": self.sample_size,
            "variant": variant,
            "task": self.task.kind,
            "chunks": len(self.chunks) if self.chunks else 1,
        }


def plan_generation(
    image,
    num_frames: int,
    settings: GenerationSettings,
    task: Task,
    speech_energy: torch.Tensor | None = None,
    in_memory: bool = True,
) -> Plan:
    """Reference, size, chunking for ``num_frames`` output frames of ``task``.

    ``speech_energy`` (per output frame, ``audio_alignment.frame_energy``) lets chunk seams move to
    pauses (``settings.seam_search_frames``); without it seams sit at fixed frame counts.
    ``in_memory``: the whole decoded video will be held (``render``), so it must fit in RAM; the
    streaming path (``streaming``) holds one chunk at a time, except in sliding mode.
    """
    settings.validate()
    task.validate()
    if task.kind in ("lipsync", "continue"):
        if image is None:
            image = task.source_video[0] if task.kind == "lipsync" else task.source_video[-1]
        if task.kind == "lipsync" and num_frames > len(task.source_video):
            log.warning(
                "the audio covers %d frames but the source video has %d; the output stops with the video.",
                num_frames,
                len(task.source_video),
            )
            num_frames = len(task.source_video)
    if image is None:
        raise ValueError(f"the {task.kind} task needs a reference image")
    reference = to_uint8_image(image)
    if settings.face_box is not None:
        check_box_inside(settings.face_box, reference.shape[:2], "face box (in reference image pixels)")
    if task.kind == "keyframes":
        task.keyframe_positions(num_frames)
    sample_size = sample_size_for(reference.shape[:2], settings)
    if task.source_video is not None:
        task = task_at_sample_size(task, sample_size)
    lead = task.continue_frames if task.kind == "continue" else 0
    chunks = None
    if settings.long_video_mode == "chunks":
        if speech_energy is not None and settings.seam_search_frames:
            energy = [0.0] * lead + [float(e) for e in speech_energy[:num_frames]]  # kept frames: silent
            chunks = plan_chunks_at_pauses(
                num_frames + lead,
                settings.partial_video_length,
                settings.overlap_video_length,
                energy,
                settings.seam_search_frames,
            )
        else:
            chunks = plan_chunks(num_frames + lead, settings.partial_video_length, settings.overlap_video_length)
    held = num_frames + lead if in_memory or chunks is None else max(c.length for c in chunks)
    check_video_fits_in_ram(held, sample_size)
    return Plan(reference, sample_size, num_frames, task, lead, chunks)


def redo_seed(seed: int, index: int) -> int:
    """The seed of chunk ``index``'s redo: its own noise, apart from the main sequence."""
    return offset_seed(seed, 1_000_003 * (index + 1))


@dataclass
class RenderedChunk:
    """One chunk's contribution to the video, as :func:`render_chunks` hands it out."""

    index: int  # chunk index (0 in sliding mode, which renders the video as one piece)
    count: int  # chunks in the plan
    first_frame: int  # output frame index of frames[0]
    frames: torch.Tensor  # [n, H, W, 3] 0..1: output frames no later chunk changes (not colour-matched)
    own_frames: torch.Tensor  # [m, H, W, 3] 0..1: the frames this chunk generated itself (drift metrics)
    resume: dict  # tensors + counters a resumed run restores to continue after this chunk
    metrics: dict | None = None  # drift metrics of the chunk, when measured


def render_chunks(
    models: Models,
    encoded: Encoded,
    plan: Plan,
    settings: GenerationSettings,
    hooks: StepHooks | None = None,
    device=None,
    offload_device="cpu",
    resume_from: dict | None = None,
    meter: DriftMeter | None = None,
    parallel=None,
) -> Iterator[RenderedChunk]:
    """Denoise and decode chunk after chunk, handing out each chunk's final frames as soon as no
    later chunk blends over them; memory holds one chunk plus the overlap, whatever the length.

    ``resume_from`` is a :attr:`RenderedChunk.resume` of an earlier run of the same generation:
    rendering continues with the chunk after it. ``meter`` measures each chunk's drift (needed
    for ``settings.redo_*``). Sliding mode denoises the whole sequence at once and yields it as a
    single piece. ``parallel``: see :func:`render`.
    """
    denoiser = Denoiser(models, encoded, settings, device, offload_device, hooks, parallel, lead=plan.lead)
    task, total = plan.task, plan.total_frames
    source = task.source_video if task.kind == "lipsync" else None
    if plan.chunks is None:
        if isinstance(encoded.audio, WindowedAudioFeatures):  # every window at every step: encode once
            denoiser.encoded = dataclasses.replace(encoded, audio=encoded.audio.materialize())
        whole = Chunk(0, round_up_4k1(total), 0)
        inputs = chunk_task_inputs(task, plan.reference, whole, None, total, plan.sample_size, source)
        latents = denoiser.denoise_sliding(inputs)
        del inputs  # the task's video and masks (host memory) are not needed for the decode
        frames = denoiser.decode(latents, 0)[plan.lead : total]
        metrics = meter.measure(0, 0, frames) if meter is not None else None
        yield RenderedChunk(0, 1, 0, frames, frames, {"next_chunk": 1}, metrics)
        return
    chunks = plan.chunks
    stitcher = Stitcher(chunks, total)
    baseline = None  # the first chunk's sharpness, what redo_sharpness_ratio compares with
    if resume_from is not None:
        stitcher.restore(resume_from)
        denoiser.generator.set_state(resume_from["generator"])
        baseline = resume_from.get("baseline_sharpness")
    redo = RedoPolicy.of(settings)
    anchor = settings.reference_anchor if task.kind != "lipsync" else "off"  # lipsync keeps the source video
    reference = np.array(task_masks.resize_to_sample(plan.reference, plan.sample_size))
    total_steps = len(chunks) * settings.steps
    for index in range(stitcher.next_index, len(chunks)):
        chunk = chunks[index]
        before = stitcher.done
        start_frames = stitcher.start_frames(index)
        if anchor != "off":
            start_frames = anchor_start_frames(start_frames, reference)
        inputs = chunk_task_inputs(task, plan.reference, chunk, start_frames, total, plan.sample_size, source)
        last = index + 1 == len(chunks)
        if anchor == "keyframe" and not last:
            inputs = task_masks.keep_frame(inputs, chunk.length - 1, reference)
        # the chunk's own new frames that are output frames: what drift is measured on
        lo, hi = max(chunk.start + chunk.overlap, plan.lead), min(chunk.start + chunk.length, total)

        def own_part(frames, lo=lo, hi=hi, chunk=chunk):
            return frames[lo - chunk.start : max(lo, hi) - chunk.start]

        latents = denoiser.denoise_chunk(inputs, chunk.start, index, total_steps)
        if not redo.active:  # only a redo reads the chunk's task video and masks again
            del inputs
        frames = denoiser.decode(latents, index)
        metrics = meter.measure(index, lo - plan.lead, own_part(frames)) if meter is not None else None
        reason = redo.reason(metrics, baseline) if metrics is not None and redo.active else None
        if reason is not None:
            log.info("chunk %d of %d: %s; rendering it again anchored on the reference", index + 1, len(chunks), reason)
            again = inputs if last else task_masks.keep_frame(inputs, chunk.length - 1, reference)
            # fresh noise from its own generator: the main sequence (and a resumed run) is unchanged
            noise = torch.Generator("cpu").manual_seed(redo_seed(settings.seed, index))
            retry = denoiser.chunk(again, chunk.start, index, total_steps, generator=noise)
            retry_metrics = meter.measure(index, lo - plan.lead, own_part(retry))
            kept = RedoPolicy.better(retry_metrics, metrics)
            if kept:
                frames, metrics = retry, retry_metrics
            metrics = {**metrics, "redone": True, "redo_reason": reason, "redo_kept": kept}
        if metrics is not None and index == 0:
            baseline = metrics.get("sharpness")
        final = stitcher.add(index, frames)
        drop = max(0, plan.lead - before)  # continuation's kept source frames are not output
        yield RenderedChunk(
            index,
            len(chunks),
            max(before, plan.lead) - plan.lead,
            final[drop:],
            own_part(frames),
            {
                **stitcher.state(),
                "next_chunk": index + 1,
                "generator": denoiser.generator.get_state(),
                "baseline_sharpness": baseline,
            },
            metrics,
        )


def render(
    models: Models,
    encoded: Encoded,
    plan: Plan,
    settings: GenerationSettings,
    hooks: StepHooks | None = None,
    device=None,
    offload_device="cpu",
    parallel=None,
    meter: DriftMeter | None = None,
    report: list | None = None,
) -> torch.Tensor:
    """Denoise and decode every chunk (or the sliding windows) -> frames [num_frames, H, W, 3] 0..1,
    in memory (for short clips and ComfyUI's IMAGE; ``streaming.generate_to_file`` writes long ones).

    ``encoded.audio`` holds features for the ``plan.num_frames`` output frames; frames past its end
    (the rounded-up tail of the last chunk) get zero audio, as do continuation's kept frames. With a
    ``meter`` each chunk's drift metrics are appended to ``report``. ``parallel``: this rank's
    ``parallel.Parallel`` when the transformer's forwards are shared between processes (every rank
    calls ``render`` with the same arguments).
    """
    colour = ColourMatcher(settings.color_match)
    blocks = []
    pieces = render_chunks(
        models, encoded, plan, settings, hooks, device, offload_device, meter=meter, parallel=parallel
    )
    for piece in pieces:
        blocks.append(colour.to_float(piece.frames))
        if report is not None and piece.metrics is not None:
            report.append(piece.metrics)
    return torch.cat(blocks)


@torch.no_grad()  # inference only; block swap refuses to run where autograd might need its blocks
def generate(
    models: Models,
    image: torch.Tensor | np.ndarray | None,
    audio: torch.Tensor,
    sample_rate: int,
    prompt: str,
    settings: GenerationSettings | None = None,
    task: Task | None = None,
    face_mask=None,
    hooks: StepHooks | None = None,
    device=None,
    offload_device="cpu",
    parallel=None,
    encoder_device=None,
) -> Result:
    """Generate a talking video.

    image: the reference [H, W, 3] float 0..1 or uint8 (None for lipsync/continue, which use the
    source video's frames). audio: waveform [T], [C, T] or [B, C, T] at ``sample_rate``.
    Returns exactly ``floor(duration * fps)`` frames (capped by ``settings.max_frames``; for lip-sync
    by the source video's length) and the input audio trimmed to them. ``parallel``: see ``render``.
    ``encoder_device``: where umT5 / CLIP / the audio encoder run (default ``device``; "cpu" keeps
    them off a small GPU). A transformer waiting on the host is placed for the render only
    (``transformer_for_render``).
    """
    settings = settings or GenerationSettings.for_variant(models.variant)
    plan, encoded = plan_and_encode(
        models, image, audio, sample_rate, prompt, settings, task, face_mask, encoder_device or device, offload_device
    )
    with transformer_for_render(models.transformer, device, offload_device):
        frames = render(models, encoded, plan, settings, hooks, device, offload_device, parallel)
    return Result(
        frames,
        trim_audio(audio, sample_rate, plan.num_frames, settings.fps),
        sample_rate,
        settings.fps,
        plan.info(models.variant),
    )


def plan_and_encode(
    models: Models,
    image,
    audio: torch.Tensor,
    sample_rate: int,
    prompt: str,
    settings: GenerationSettings,
    task: Task | None,
    face_mask,
    encoder_device,
    offload_device,
    in_memory: bool = True,
) -> tuple[Plan, Encoded]:
    """The model-free checks and plan (:func:`plan_inputs`), then the encoders' conditioning: what
    :func:`generate` and the streamed ``generate_to_file`` do before rendering."""
    wav16k, plan = plan_inputs(image, audio, sample_rate, settings, task or Task(), in_memory=in_memory)
    encoded = encode_inputs(
        models,
        plan.reference,
        wav16k,
        prompt,
        settings,
        plan.sample_size,
        plan.num_frames,
        face_mask,
        encoder_device,
        offload_device,
    )
    return plan, encoded


def generate_to_file(*args, **kwargs):
    """:func:`generate` written straight to an mp4 chunk by chunk: memory flat in the duration,
    resumable, optional drift report. See ``streaming.generate_to_file`` for the arguments."""
    from .streaming import generate_to_file as stream

    return stream(*args, **kwargs)


def plan_inputs(
    image, audio: torch.Tensor, sample_rate: int, settings: GenerationSettings, task: Task, in_memory: bool = True
) -> tuple[torch.Tensor, Plan]:
    """Every check that needs no model, on the inputs of :func:`generate`: the audio (finite, long
    enough), the settings, the task (keyframe indices, mouth box), the face box, the sizes.
    Returns (16 kHz mono audio, plan, with chunk seams at the audio's pauses). The command line
    runs it before loading any model. ``in_memory``: see :func:`plan_generation`."""
    wav16k = prepare_audio(audio, sample_rate)
    num_frames = output_frame_count(wav16k.numel(), settings)
    energy = align.frame_energy(wav16k, num_frames, settings.fps) if settings.seam_search_frames else None
    return wav16k, plan_generation(image, num_frames, settings, task, energy, in_memory)


def trim_audio(audio: torch.Tensor, sample_rate: int, num_frames: int, fps: float) -> torch.Tensor:
    """The input audio as [C, T], cut to the video's duration."""
    wav = torch.as_tensor(audio).float()
    wav = wav[0] if wav.ndim == 3 else wav
    wav = wav[None] if wav.ndim == 1 else wav
    return wav[:, : align.samples_for_frames(num_frames, fps, sample_rate)]


def step_cache(settings: GenerationSettings):
    """The run's step cache: EasyCache when its threshold is set (it then takes TeaCache's place),
    else TeaCache when its threshold is set, else none."""
    if settings.easycache_threshold > 0:
        if settings.teacache_threshold > 0:
            log.info("EasyCache (threshold %g) replaces TeaCache for this run", settings.easycache_threshold)
        return EasyCache(settings.easycache_threshold, offload=settings.teacache_offload)
    if settings.teacache_threshold > 0:
        return TeaCache(
            settings.teacache_threshold, settings.teacache_skip_start_steps, offload=settings.teacache_offload
        )
    return None


class Denoiser:
    """Runs the transformer over one chunk (or the sliding windows) with guidance and caching."""

    def __init__(
        self,
        models: Models,
        encoded: Encoded,
        settings: GenerationSettings,
        device,
        offload_device,
        hooks: StepHooks | None,
        parallel=None,
        lead: int = 0,
    ):
        self.models, self.encoded, self.settings = models, encoded, settings
        self.run_branches = parallel.run_branches if parallel is not None else run_branches
        self.lead = lead  # continuation's kept frames before the output: silent
        self.device = torch.device(device) if device is not None else next(models.transformer.parameters()).device
        self.offload_device, self.hooks = offload_device, hooks
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.cache = step_cache(settings)
        self.tiling = None
        if settings.vae_tile_size:
            from .vae import Tiling

            self.tiling = Tiling(settings.vae_tile_size, settings.vae_tile_overlap)

    def _vae_progress(self, phase: str, chunk: int):
        """The VAE's per-pass callback: Cancel between its chunks/tiles (on a CPU a decode takes many
        seconds) and ``on_vae`` progress for the host's bar."""

        def report(done: int, total: int) -> None:
            if self.hooks is None:
                return
            self.hooks.check_stop()
            if self.hooks.on_vae is not None:
                self.hooks.on_vae(phase, chunk, done, total)

        return report

    def _y(self, inputs, chunk: int) -> torch.Tensor:
        progress = self._vae_progress("encode", chunk)
        with on_device(self.models.vae, self.device, self.offload_device) as vae:
            return task_masks.conditioning_y(
                inputs, encode=lambda px: vae.encode(px.to(self.device), self.tiling, progress).cpu()
            )

    def _noise(self, frames: int, y: torch.Tensor, generator=None) -> torch.Tensor:
        shape = (1, 16, latent_frames(frames), *y.shape[3:])
        return torch.randn(shape, generator=generator or self.generator, dtype=torch.float32).to(self.device)

    def decode(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        """Frames [length, H, W, 3] 0..1 of denoised ``latents`` [1, 16, F, h, w]."""
        with on_device(self.models.vae, self.device, self.offload_device) as vae:
            return decode_frames(vae, latents, self.tiling, self._vae_progress("decode", chunk))

    def _scheduler(self):
        s = self.settings
        return make_scheduler(s.sampler, s.steps, s.shift, variant=self.models.variant)

    def _riflex(self, latent_count: int) -> Riflex | None:
        """RIFLEx for windows of ``latent_count`` latent frames: an input of each forward, so the
        transformer (which ComfyUI caches across runs) is never changed by it."""
        return None if self.settings.riflex_k is None else Riflex(self.settings.riflex_k, L_test=latent_count)

    def _audio(self, start_frame: int, frames: int) -> torch.Tensor:
        """Audio features of frames ``start_frame ..`` counted with the lead (whose frames are silent)."""
        return slice_features(self.encoded.audio, start_frame - self.lead, frames, self.models.audio_kind)

    def _context_cache(self) -> ContextCache | None:
        """A text/CLIP key cache for one chunk's (or the sliding windows') denoising. Made per chunk
        and dropped before the VAE decodes: its keys (every block's, of every prompt and the image)
        would otherwise sit beside the decode's activations; recomputing them once per chunk costs
        one projection per block and prompt against steps x branches forwards."""
        return ContextCache() if self.settings.context_cache else None

    def chunk(self, inputs, start_frame: int, index: int, total_steps: int, generator=None) -> torch.Tensor:
        """Frames [length, H, W, 3] 0..1 of one chunk (noise from ``generator``, default the run's)."""
        return self.decode(self.denoise_chunk(inputs, start_frame, index, total_steps, generator), index)

    def denoise_chunk(self, inputs, start_frame: int, index: int, total_steps: int, generator=None) -> torch.Tensor:
        """Denoised latents [1, 16, F, h, w] of one chunk. Its conditioning, key cache and closures
        die with this call, before the caller decodes: the decode holds the latents and the VAE."""
        frames = inputs.num_frames
        y = self._y(inputs, index)
        audio = self._audio(start_frame, frames)
        riflex = self._riflex(y.shape[2])
        branches = {
            k: v.to(self.device)
            for k, v in branches_for(self.encoded, y, audio, self.settings.audio_scale, riflex).items()
        }
        velocity = guided_velocity(
            self.models.transformer,
            branches,
            guidance_for_variant(self.models.variant, self.settings),
            self.settings.steps,
            batched=self.settings.batch_guidance,
            cache=self.cache,
            hooks=self.hooks,
            run=self.run_branches,
            context_cache=self._context_cache(),
        )
        return denoise(
            velocity,
            self._noise(frames, y, generator),
            self._scheduler(),
            hooks=self.hooks,
            cache=self.cache,
            step_offset=index * self.settings.steps,
            total_steps=total_steps,
        )

    def denoise_sliding(self, inputs) -> torch.Tensor:
        """Upstream's long-video CFG mode: the whole sequence at once, windows blended every step;
        returns the denoised latents (``decode`` makes the frames). Each window sees the audio of its
        own frames and the conditioning ``window_conditioning`` gives it (the reference at its start,
        as upstream, or the task's frames inside it). With TeaCache each window keeps its own
        residuals (``TeaCache.scoped``)."""
        s = self.settings
        y = self._y(inputs, 0)
        total_latents = y.shape[2]
        # as chunks mode and upstream: a partial length that is not 4k+1 rounds down
        window = latent_frames(round_down_4k1(s.partial_video_length))
        # as upstream's long-video CFG mode, the overlap counts LATENT frames here (its default 8 =
        # 29 pixel frames blended), while chunks mode counts pixel frames
        overlap = min(s.overlap_video_length, window - 1)
        guidance = guidance_for_variant(self.models.variant, s)
        riflex = self._riflex(min(window, total_latents))
        if self.cache is not None:
            self._warn_residual_memory(plan_windows(total_latents, window, overlap), y, guidance)
        context_cache = self._context_cache()  # one for all windows: they share prompts and image

        def window_velocity(w, lat, t, step):
            audio = self._audio(VAE_TEMPORAL_STRIDE * w.start, pixel_frames(w.length))
            branches = {
                k: v.to(self.device)
                for k, v in branches_for(self.encoded, window_conditioning(y, w), audio, s.audio_scale, riflex).items()
            }
            velocity = guided_velocity(
                self.models.transformer,
                branches,
                guidance,
                s.steps,
                batched=s.batch_guidance,
                cache=self.cache.scoped(f"window{w.start}") if self.cache is not None else None,
                hooks=self.hooks,
                run=self.run_branches,
                context_cache=context_cache,
            )
            return velocity(lat, t, step)

        velocity = sliding_velocity(window_velocity, total_latents, window, overlap)
        return denoise(
            velocity, self._noise(inputs.num_frames, y), self._scheduler(), hooks=self.hooks, cache=self.cache
        )

    def _warn_residual_memory(self, windows, y: torch.Tensor, guidance: GuidanceConfig) -> None:
        """TeaCache keeps a residual [branches, tokens, dim] per sliding window: at 768x768 with
        21-latent-frame windows and three guidance branches ~0.45 GB each in bf16, and a minute of
        video has ~30 windows. Say so when they would sit on the accelerator, rather than fail later."""
        if self.settings.teacache_offload or self.device.type == "cpu":
            return
        transformer = self.models.transformer
        dtype = getattr(transformer, "compute_dtype", None) or next(transformer.parameters()).dtype
        _, ph, pw = transformer.config.patch_size
        tokens = sum(w.length for w in windows) * (y.shape[3] // ph) * (y.shape[4] // pw)
        branches = len(guidance.passes_for_step(0, self.settings.steps))
        gib = tokens * branches * transformer.config.dim * dtype.itemsize / 2**30
        if gib > 2:
            log.warning(
                "TeaCache in sliding mode keeps residuals of %d windows, about %.1f GiB on %s; "
                "set teacache_offload to keep them on the CPU (or use chunks mode).",
                len(windows),
                gib,
                self.device,
            )
