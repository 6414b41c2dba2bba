"""The sampler node: conditioning + task -> video frames, the audio trimmed to them, and the fps.

It builds the core's ``Plan`` and ``Encoded`` from the node inputs and calls ``pipeline.render``
(``output`` images: every frame in memory) or ``streaming.stream_to_file`` (``output`` video_file:
chunk by chunk into an mp4 in the output folder, returned as ComfyUI's VIDEO for Save Video,
resumable when queued again); both also give a drift report. Progress (with latent previews),
Cancel and devices go through ``comfy_services``.

Settings: every ``GenerationSettings`` field is a widget, except those fixed upstream in the graph
(fps and max_frames shape the audio features: EchoMimicV3 Audio Encode; the negative prompt is the
``negative`` conditioning; the face box is on EchoMimicV3 Task; loudness normalisation is the audio
encoder loader's). Defaults, bounds and tooltips come from ``echomimic_core.settings``. Widgets whose upstream default
differs between preview and flash default to *auto* (``auto`` / 0 / -1, see each tooltip), which
resolves to ``GenerationSettings.for_variant(model variant)``: a flash model gets 8-step UniPC,
audio-only CFG 3.0 and TeaCache 0.1 without retyping, a preview model 25-step Flow and 4.0/2.9.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from echomimic_core.config import VARIANTS

from . import comfy_services as services
from .adapters import audio_features, clip_embedding, text_embedding, video_vae
from .common import CATEGORY, image_batch, out_of_range
from .setting_widgets import SWITCH, setting_widget
from .video_plan import plan_line

log = logging.getLogger(__name__)

OUTPUTS = ("images", "video_file")
VRAM_BUDGET_WIDGET = (
    "FLOAT",
    {
        "default": 0.0,
        "min": -1.0,
        "max": 1024.0,
        "step": 0.5,
        "tooltip": "GPU memory to fit the run into, in GB: chunk length, block swap, guidance passes one at a "
        "time, VAE tiles and the key cache are chosen to fit (settings you changed from auto are kept). "
        "0 = auto (the card's memory), -1 = off (the settings as given).",
    },
)

# The settings that are widgets, in the order saved workflows store their values (UI workflows keep
# widgets_values by position: append, never reorder). ADVANCED ones are optional inputs.
REQUIRED_WIDGETS = (
    "seed",
    "sampler",
    "steps",
    "shift",
    "guidance_scale",
    "audio_guidance_scale",
    "audio_scale",
    "width",
    "height",
    "sample_area",
    "partial_video_length",
    "overlap_video_length",
    "long_video_mode",
    "color_match",
)
ADVANCED_WIDGETS = (
    "use_dynamic_cfg",
    "use_dynamic_acfg",
    "neg_scale",
    "neg_steps",
    "cfg_skip_ratio",
    "teacache_threshold",
    "easycache_threshold",
    "teacache_skip_start_steps",
    "teacache_offload",
    "riflex_k",
    "batch_guidance",
    "vae_tile_size",
    "vae_tile_overlap",
    "seam_search_frames",
    "reference_anchor",
    "redo_identity_below",
    "redo_sharpness_ratio",
)
# What a setting means on this node beyond its help text (appended to the tooltip).
NOTES = {"redo_identity_below": "Needs the clip_vision input."}


def _widgets() -> dict[str, tuple[tuple, object, bool]]:
    """name -> (ComfyUI input spec, the value meaning "the variant's default" / "not set", advanced)."""
    widgets = {}
    for advanced, names in ((False, REQUIRED_WIDGETS), (True, ADVANCED_WIDGETS)):
        for name in names:
            spec, unset = setting_widget(name, NOTES.get(name, ""))
            if advanced:
                spec = (spec[0], {**spec[1], "advanced": True})
            widgets[name] = (spec, unset, advanced)
    return widgets


def resolve_settings(variant: str, values: dict, fps: float = 25.0):
    """Widget values -> ``GenerationSettings``: an auto value takes ``for_variant(variant)``'s default,
    0 on an optional setting leaves it unset."""
    from echomimic_core.settings import GenerationSettings

    overrides = {}
    for name, (_, unset, _) in _widgets().items():
        if name in values and not (unset is not None and values[name] == unset):
            value = values[name]
            overrides[name] = SWITCH[value] if isinstance(value, str) and value in SWITCH else value
    return GenerationSettings.for_variant(variant, fps=float(fps), **overrides)


class EchoMimicSampler:
    """Denoise and decode: IMAGE frames, the audio trimmed to them, and the frame rate."""

    @classmethod
    def INPUT_TYPES(cls):
        widgets = _widgets()
        return {
            "required": {
                "model": ("ECHOMIMIC_MODEL",),
                "vae": (
                    "ECHOMIMIC_VAE,VAE",
                    {"tooltip": "EchoMimicV3 VAE Loader or ComfyUI's Load VAE (wan_2.1_vae.safetensors)."},
                ),
                "positive": (
                    "CONDITIONING",
                    {"tooltip": "CLIP Text Encode (CLIPLoader type wan, umT5) or EchoMimicV3 Text Encode."},
                ),
                "clip_vision_output": (
                    "CLIP_VISION_OUTPUT",
                    {
                        "tooltip": "CLIP Vision Encode of the reference "
                        "(clip_vision_h, crop none) or EchoMimicV3 CLIP Vision Encode."
                    },
                ),
                "audio_embeds": (
                    "ECHOMIMIC_AUDIO_EMBEDS",
                    {
                        "tooltip": "EchoMimicV3 Audio Encode (its fps and max_frames set the video length). "
                        "ComfyUI's Audio Encoder Encode does not fit: its wav2vec2 features are not what "
                        "either model was trained on."
                    },
                ),
                **{name: spec for name, (spec, _, advanced) in widgets.items() if not advanced},
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt (preview's guidance needs it)."}),
                "image": ("IMAGE", {"tooltip": "The reference image (lipsync / continue take the video's frame)."}),
                "task": ("ECHOMIMIC_TASK", {"tooltip": "EchoMimicV3 Task; default: the image opens the video."}),
                "clip_vision": (
                    "ECHOMIMIC_CLIP_VISION,CLIP_VISION",
                    {
                        "tooltip": "CLIP vision model (clip_vision_h): adds the identity proxy to the report and "
                        "lets redo_identity_below work."
                    },
                ),
                "output": (
                    list(OUTPUTS),
                    {
                        "default": "images",
                        "tooltip": "images: every frame in memory as IMAGE (short clips; ~7 MB per 768x768 "
                        "frame). video_file: each chunk is written to output/<filename_prefix>_<run>.mp4 as "
                        "it finishes (memory flat in the length; a cancelled or crashed run queued again "
                        "resumes) - connect the video output to Save Video; images then holds the first "
                        "frame only.",
                    },
                ),
                "filename_prefix": ("STRING", {"default": "echomimic/long", "tooltip": "video_file: where it goes."}),
                "vram_budget": VRAM_BUDGET_WIDGET,
                **{name: spec for name, (spec, _, advanced) in widgets.items() if advanced},
            },
        }

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT", "VIDEO", "STRING", "IMAGE")
    RETURN_NAMES = ("images", "audio", "fps", "video", "report", "report_plot")
    OUTPUT_TOOLTIPS = (
        "The frames (output images), or the first frame (output video_file).",
        "The audio, trimmed to the video.",
        "Frames per second.",
        "The video with its audio (ComfyUI's VIDEO: Save Video). For long clips use output video_file.",
        "Drift report (JSON): per chunk index, start_frame, frames, sharpness, colour_shift, identity "
        "(CLIP proxy, with clip_vision) and the face box found.",
        "The report's metrics plotted over time.",
    )
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        width=0,
        height=0,
        partial_video_length=0,
        overlap_video_length=8,
        vae_tile_size=0,
        vae_tile_overlap=64,
        # every FLOAT widget: ComfyUI's own `value < min` check lets a NaN from an API prompt
        # through, so these are checked here (out_of_range refuses NaN) and the prompt is refused
        # when queued, before the models load; linked values are checked by sample()
        shift=5.0,
        guidance_scale=-1.0,
        audio_guidance_scale=-1.0,
        audio_scale=1.0,
        neg_scale=-1.0,
        cfg_skip_ratio=0.0,
        teacache_threshold=-1.0,
        easycache_threshold=0.0,
        redo_identity_below=0.0,
        redo_sharpness_ratio=0.0,
        vram_budget=0.0,
    ):
        values = dict(
            width=width,
            height=height,
            partial_video_length=partial_video_length,
            overlap_video_length=overlap_video_length,
            vae_tile_size=vae_tile_size,
            vae_tile_overlap=vae_tile_overlap,
            shift=shift,
            guidance_scale=guidance_scale,
            audio_guidance_scale=audio_guidance_scale,
            audio_scale=audio_scale,
            neg_scale=neg_scale,
            cfg_skip_ratio=cfg_skip_ratio,
            teacache_threshold=teacache_threshold,
            easycache_threshold=easycache_threshold,
            redo_identity_below=redo_identity_below,
            redo_sharpness_ratio=redo_sharpness_ratio,
            vram_budget=vram_budget,
        )
        problem = out_of_range(cls, values)
        if problem:
            return problem
        if partial_video_length and partial_video_length < 5:
            return f"partial_video_length must be 0 (auto) or at least 5, got {partial_video_length}"
        # The variant is not known before the model loads: refuse only what no variant accepts (an
        # overlap of 90 with auto chunks suits preview's 113); sample() validates the resolved settings.
        problems = []
        for variant in VARIANTS:
            try:
                resolve_settings(variant, values).validate()
            except (ValueError, TypeError) as e:
                problems.append(str(e))
        return problems[0] if len(problems) == 2 else True

    def sample(
        self,
        model,
        vae,
        positive,
        clip_vision_output,
        audio_embeds,
        negative=None,
        image=None,
        task=None,
        clip_vision=None,
        output="images",
        filename_prefix="echomimic/long",
        vram_budget=0.0,
        **widgets,
    ):
        from echomimic_core import audio_alignment, drift, media, pipeline, streaming
        from echomimic_core.sampling.sampler import StepHooks
        from echomimic_core.vae_frames import latent_frames, round_up_4k1

        from .task import TaskSpec

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        embeds = audio_features(audio_embeds)
        settings = resolve_settings(model.config.variant, widgets, fps=embeds["fps"])
        spec = task if task is not None else TaskSpec(pipeline.Task())
        reference = image_batch(image, "image")[0].cpu() if image is not None else None
        rate = int(embeds["audio"]["sample_rate"])
        num_frames = int(embeds["num_frames"])
        energy = None
        if settings.seam_search_frames:
            wav16k = media.prepare_audio(embeds["audio"]["waveform"], rate)
            energy = audio_alignment.frame_energy(wav16k, num_frames, settings.fps)
        # video_file holds one chunk at a time: only images must fit whole in memory
        plan = pipeline.plan_generation(reference, num_frames, settings, spec.task, energy, output == "images")
        models = pipeline.Models(transformer=model, vae=video_vae(vae))
        encoded = pipeline.encoded_from_embeddings(
            models,
            plan,
            text_embedding(positive),
            text_embedding(negative, "negative") if negative is not None else None,
            clip_embedding(clip_vision_output),
            embeds["features"],
            embeds["kind"],
            spec.face_box,
            spec.face_mask,
        )
        meter = drift_meter(plan, spec.face_box, clip_vision)
        device, offload = services.torch_device(), services.offload_device()
        settings, block_swap, working, chosen = fit_memory(
            model, models.vae, settings, plan, device, vram_budget, widgets
        )
        if chosen and settings.long_video_mode == "chunks":  # the plan may have changed the chunk length
            plan = pipeline.plan_generation(reference, num_frames, settings, spec.task, energy, output == "images")

        chunks = len(plan.chunks) if plan.chunks else 1  # sliding mode denoises all windows at once
        progress = RunProgress(services.Progress(1), chunks, settings.steps)
        hooks = StepHooks(on_step=progress.step, on_vae=progress.vae, should_stop=_interrupted)
        log.info(
            "EchoMimicV3 %s: %d frames at %dx%d, %s %d steps, %d chunk(s)",
            models.variant,
            plan.num_frames,
            plan.sample_size[1],
            plan.sample_size[0],
            settings.sampler,
            settings.steps,
            chunks,
        )
        trimmed = pipeline.trim_audio(embeds["audio"]["waveform"], rate, plan.num_frames, settings.fps)
        audio = {"waveform": trimmed[None], "sample_rate": rate}
        ui = {}
        # no autograd graph across steps; no_grad rather than inference_mode so the frames stay
        # ordinary tensors that any downstream node may modify in place
        with torch.no_grad(), services.transformer_loaded(model, device, offload, block_swap, working):
            if output == "video_file":
                inputs = streaming.run_inputs_for(models, encoded, plan, settings, meter)
                key = streaming.run_key(plan, settings, inputs)[:12]
                path, subfolder, filename = services.run_output_file(filename_prefix, key, "mp4")
                result = streaming.stream_to_file(
                    models, encoded, plan, settings, path, trimmed, rate, inputs, hooks, device, offload, meter=meter
                )
                report = result.report
                frames = media.load_video(path, max_frames=1, with_audio=False).frames
                video = services.video_from_file(path)
                ui = {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": (True,)}
            else:
                entries = []
                frames = pipeline.render(
                    models, encoded, plan, settings, hooks, device, offload, meter=meter, report=entries
                )
                report = streaming.report_meta(meter, plan, settings) | {"chunks": entries}
                video = services.video_from_frames(frames, audio, settings.fps)

        # the frontend's plan line, now from the real plan, plus what the run resolved
        text = plan_line(
            plan.num_frames,
            settings.fps,
            latent_frames(round_up_4k1(plan.num_frames)),
            len(plan.chunks) if plan.chunks else None,
        ) + (f" · {plan.sample_size[1]}x{plan.sample_size[0]}, {settings.sampler} × {settings.steps} steps")
        if chosen:
            text += f"; memory plan: {chosen}"
        plot = drift.plot_report(report["chunks"], settings.fps, report.get("reference_sharpness"))
        plot = torch.from_numpy(np.array(plot)).float()[None] / 255
        return {
            "ui": {"echomimic_plan": [text], **ui},
            "result": (
                frames.to(services.intermediate_device()),
                audio,
                float(settings.fps),
                video,
                json.dumps(report, indent=1),
                plot,
            ),
        }


def drift_meter(plan, face_box, clip_vision):
    """The per-chunk drift measure of one run: against the reference at the output size, in the
    Task's face box (else the detected one); the identity proxy only with a CLIP vision model."""
    from echomimic_core import drift, streaming

    from .adapters import image_encoder
    from .common import on_compute_device

    embed = None
    if clip_vision is not None:
        encoder = image_encoder(clip_vision)
        clip = drift.clip_embedder(encoder)

        def embed(images):
            with on_compute_device(encoder):
                return clip(images)

    return streaming.drift_meter_for(plan, face_box, embed)


class RunProgress:
    """One bar over a whole run: each chunk's VAE encode, its denoising steps, its VAE decode.

    A VAE pass weighs as much as one step (on the real models a chunk's encode or decode costs
    about a step; on a CPU or the demo models far more, which is why the bar must move during it).
    The bar counts in ``UNITS`` per step so a VAE pass moves it pass by pass.
    """

    UNITS = 20

    def __init__(self, bar, chunks: int, steps: int):
        self.bar, self.steps = bar, max(int(steps), 1)
        self.per_chunk = self.steps + 2  # encode, steps, decode
        self.total = max(int(chunks), 1) * self.per_chunk * self.UNITS

    def step(self, step: int, total: int, latents=None, denoised=None) -> None:
        """StepHooks.on_step: ``step`` counts over all chunks (1 .. chunks x steps)."""
        chunk, within = divmod(step - 1, self.steps)
        self.bar((chunk * self.per_chunk + 1 + within + 1) * self.UNITS, self.total, latents=denoised)

    def vae(self, phase: str, chunk: int, done: int, total: int) -> None:
        """StepHooks.on_vae: ``done`` of ``total`` passes of a chunk's encode or decode."""
        start = chunk * self.per_chunk + (0 if phase == "encode" else 1 + self.steps)
        self.bar(round((start + done / max(total, 1)) * self.UNITS), self.total)


def fit_memory(model, vae, settings, plan, device, vram_budget: float, widgets: dict):
    """(settings, block swap, working bytes, what the plan chose or "") for one run.

    With a budget (``vram_budget`` > 0 GB, or 0 = the card's memory) the memory plan chooses chunk
    length, block swap, sequential guidance, VAE tiles and the key cache; what the user set by hand
    (a chunk length or tile size other than auto, guidance passes one at a time, the loader's block
    swap and fp8 storage) is kept. Working bytes (activations, caches, our VAE: everything but the
    transformer's resident weights) are what ComfyUI is asked to free besides the weights.
    """
    import dataclasses

    from echomimic_core import memory_plan as mp
    from echomimic_core.checkpoints.quant import FP8_DTYPES

    swap = getattr(model, "echomimic_block_swap", 0)
    fp8 = any(p.dtype in FP8_DTYPES for p in model.blocks[0].parameters())
    dtype = str(model.compute_dtype or next(model.parameters()).dtype).removeprefix("torch.")
    workload = mp.workload_for(
        model.config.variant, settings, plan.sample_size, plan.total_frames, dtype, model.config, encoders=False
    )
    budget = None
    if vram_budget >= 0:
        budget = int(vram_budget * mp.GIB) if vram_budget > 0 else services.vram_budget_auto(device)
    chosen = ""
    if budget is None:
        estimate = mp.estimate(
            workload,
            mp.Options(
                chunk=settings.partial_video_length,
                fp8=fp8,
                block_swap=swap,
                batch_guidance=settings.batch_guidance,
                vae_tile=settings.vae_tile_size,
                context_cache=settings.context_cache,
                teacache_offload=settings.teacache_offload,
            ),
        )
    else:
        fixed = {"fp8": fp8}
        if swap:
            fixed["block_swap"] = swap
        if widgets.get("partial_video_length"):
            fixed["chunk"] = settings.partial_video_length
        if widgets.get("vae_tile_size"):
            fixed["vae_tile"] = settings.vae_tile_size
        if not settings.batch_guidance:
            fixed["batch_guidance"] = False
        result = mp.plan(workload, budget, fixed)
        log.info("EchoMimicV3 memory plan:\n%s", mp.format_plan(result))
        estimate = result.chosen
        if estimate is None:
            estimate = result.smallest
            log.warning(
                "EchoMimicV3: nothing fits %.1f GiB; running the smallest plan (%.2f GiB), which may run out of "
                "memory. Lower the resolution or set weight_storage fp8 on the model loader.",
                budget / mp.GIB,
                estimate.required / mp.GIB,
            )
        options = estimate.options
        settings = dataclasses.replace(settings, **options.settings_overrides())
        swap = options.block_swap
        chosen = options.describe()
    # ComfyUI's own VAE asks ComfyUI for its memory when it runs (unloading ours if it must)
    ours = getattr(vae, "model", None) is not None
    working = (max(estimate.denoise, estimate.decode) if ours else estimate.denoise) - estimate.phases["denoise"][
        "transformer weights"
    ]
    return settings, swap, working, chosen


def _interrupted() -> bool:
    """StepHooks.should_stop: inside ComfyUI, Cancel raises its own exception from here."""
    services.check_interrupted()
    return False


NODE_CLASS_MAPPINGS = {"EchoMimicSampler": EchoMimicSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoMimicSampler": "EchoMimicV3 Sampler"}
