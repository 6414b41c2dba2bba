"""One generation end to end, ours against upstream EchoMimicV3's pipeline on the same weights, inputs
and settings, in one process; prints time and peak-memory ratios ours / upstream.

    python benchmarks/end_to_end.py --upstream /tmp/echomimic_v3 [--layers 4] [--size 160] \
        [--frames 17] [--steps 4] [--repeats 3] [--device cpu] [--phases]

``--upstream PATH`` is a local checkout of antgroup/echomimic_v3 (its ``src/`` package, never
committed here). Upstream's pipeline and VAE call ``einops.rearrange``, so this script needs
``einops`` (requirements-dev.txt; ``transformer_speed.py`` can stub it for preview, this cannot)
besides ``diffusers``. What is compared, per repeat:

* upstream: ``WanFunInpaintAudioPipeline.__call__`` (src/pipeline_wan_fun_inpaint_audio.py) for one
  chunk, after the input video and mask ``infer_preview.py`` builds for it (the reference tiled over
  the frames, frame 0 kept): VAE encode of the masked video, preview's three-way guided Flow-Euler
  denoising (three branches batched, as upstream always does), VAE decode.
* ours: ``pipeline.plan_generation`` + ``pipeline.render`` for the same chunk (task mask, VAE
  encode, the same guidance batched, VAE decode), as ``generate`` runs them after its encoders.

Shared by both: the transformer's weights (the preview preset's real widths with ``--layers`` blocks,
random; upstream's module takes our tensors by state dict, no copy), a full-size Wan2.1 VAE's random
weights (upstream's module gets the same tensors under the original key names), the embeddings, the
face gate, the seed and so the initial noise. The encoders are stand-ins on both sides returning the
same fixed umT5 / CLIP / wav2vec2 embeddings (each real encoder runs once per generation on either
side; ``encoders_speed.py`` measures them). Settings: preview's upstream defaults (Flow, shift 5,
CFG 4.0 / audio 2.9 dynamic) with ``--steps``, except the negative-prompt boost (upstream compounds
``neg_scale`` every step, we do not, so it is 1 here and both compute the same) and colour match
(off). The frames' max difference checks that both computed the same video.

Runs are interleaved (ours, upstream, ours, ...) so that other load on a shared machine hits both
alike; times are medians. Peak memory is measured in separate runs (see ``peak_memory.py``: live
tensor bytes on the CPU, the requested device's allocator peak on CUDA), above the level at entry
(weights excluded, they exist before). ``--phases`` adds one more run of each pipeline that
measures every phase's own peak (VAE encode, one transformer forward, VAE decode) above what is
held when the call starts; a whole-run peak above the largest of them is memory held across phases
(the decode's level plus what the denoising left behind).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import MODES, PeakMemory, return_freed_memory_to_os, synchronize  # noqa: E402
from transformer_speed import upstream_transformer  # noqa: E402

from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.demo import demo_face_box, demo_inputs  # noqa: E402
from echomimic_core.pipeline import Encoded, Models, model_face_gate, plan_generation, render  # noqa: E402
from echomimic_core.settings import GenerationSettings  # noqa: E402
from echomimic_core.tasks import Task  # noqa: E402
from echomimic_core.vae import WanVAE, diffusers_to_original  # noqa: E402

# real prompt lengths in umT5 tokens (upstream passes only the real tokens to the model)
PROMPT_TOKENS, NEGATIVE_TOKENS = 40, 64
# upstream's config/config.yaml scheduler_kwargs that FlowMatchEulerDiscreteScheduler takes
UPSTREAM_FLOW_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=5.0,
    use_dynamic_shifting=False,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def random_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter N(0, 0.02) (norm scales too: speed and memory do not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


class _Tokenizer:
    """Upstream's tokenizer slot: numbers the prompts it was given; the mask marks their real length."""

    def __init__(self, lengths: dict[str, int]):
        self.index = {prompt: i for i, prompt in enumerate(lengths)}
        self.lengths = list(lengths.values())

    def __call__(self, prompt, padding="longest", max_length=None, return_tensors="pt", **_):
        prompts = [prompt] if isinstance(prompt, str) else prompt
        width = max_length if padding == "max_length" else max(self.lengths[self.index[p]] for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row] = self.index[p]
            mask[row, : self.lengths[self.index[p]]] = 1
        return types.SimpleNamespace(input_ids=ids, attention_mask=mask)


class _StandIn(torch.nn.Module):
    """A fixed-output encoder in an upstream pipeline slot; diffusers reads its device and dtype."""

    def __init__(self, *tensors: torch.Tensor):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(f"fixed{i}", t)

    @property
    def device(self) -> torch.device:
        return self.fixed0.device

    @property
    def dtype(self) -> torch.dtype:  # upstream's pipeline computes in its text encoder's dtype
        return self.fixed0.dtype


class _TextEncoder(_StandIn):
    """Upstream's umT5 slot: the fixed embedding of the prompt the tokenizer numbered, padded to the ids."""

    def forward(self, ids: torch.Tensor, attention_mask=None):
        embeddings = list(self.buffers())
        out = torch.zeros(*ids.shape, embeddings[0].shape[-1], dtype=self.dtype, device=ids.device)
        for row, index in enumerate(ids[:, 0].tolist()):
            out[row, : len(embeddings[index])] = embeddings[index]
        return (out,)


class _ClipEncoder(_StandIn):
    """Upstream's CLIP slot: the fixed CLIP features."""

    def forward(self, images):
        return self.fixed0.clone()


class Phases:
    """Wall seconds spent inside named calls of one pipeline (methods wrapped on the instance), and
    with ``memory`` set (a ``PeakMemory`` mode) each phase's peak bytes: the largest of its calls,
    above the level at the call's entry (what the phase adds to what is held when it starts)."""

    NAMES = ("VAE encode", "transformer", "VAE decode")

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.peaks = device, defaultdict(float), defaultdict(int)
        self.memory: str | None = None

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            if self.memory is not None:
                with PeakMemory(self.device, self.memory) as mem:
                    out = inner(*args, **kwargs)
                self.peaks[phase] = max(self.peaks[phase], mem.peak)
                return out
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds[phase] += time.perf_counter() - start

        setattr(obj, method, timed)


def upstream_vae(path: Path, ours: WanVAE):
    """Upstream's Wan VAE module holding our VAE's tensors under the original key names."""
    module = importlib.import_module("src.wan_vae").AutoencoderKLWan()
    state = {"model." + k: v for k, v in diffusers_to_original(ours.model.state_dict()).items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SystemExit(f"upstream's VAE does not take our VAE's weights: missing {missing}, unexpected {unexpected}")
    return module


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", type=Path, required=True, help="local antgroup/echomimic_v3 checkout (with src/)")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks (the release has 30)")
    p.add_argument("--size", type=int, default=160, help="square sample size in pixels (multiple of 16)")
    p.add_argument("--frames", type=int, default=17, help="video frames, 4k+1")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory", choices=MODES, default="tensors", help="CPU peak: live tensor bytes or sampled RSS")
    p.add_argument(
        "--phases", action="store_true", help="also each phase's peak memory (one more run of each pipeline)"
    )
    args = p.parse_args(argv)
    if args.size % 16 or (args.frames - 1) % 4:
        p.error(f"--size must be a multiple of 16 and --frames 4k+1; got {args.size} and {args.frames}")
    if not (args.upstream / "src" / "pipeline_wan_fun_inpaint_audio.py").is_file():
        p.error(
            f"--upstream {args.upstream}: no src/pipeline_wan_fun_inpaint_audio.py there (a checkout of "
            "antgroup/echomimic_v3 is expected)"
        )

    device, dtype = torch.device(args.device), torch.float32
    if device.type == "cpu":
        return_freed_memory_to_os()
    sys.path.insert(0, str(args.upstream))
    try:
        pipeline_module = importlib.import_module("src.pipeline_wan_fun_inpaint_audio")
    except ModuleNotFoundError as e:  # einops above all: upstream's code needs it, ours does not
        p.exit(2, f"{p.prog}: upstream's pipeline imports {e.name!r}, not installed here; pip install {e.name}\n")

    # --- weights, shared
    config = TransformerConfig.from_dict({**TransformerConfig.preset("preview").to_dict(), "num_layers": args.layers})
    from echomimic_core.model.transformer import EchoMimicTransformer

    with torch.device("meta"):
        transformer = EchoMimicTransformer(config)
    transformer = random_weights(transformer.to_empty(device="cpu")).eval()
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = WanVAE(AutoencoderKLWan().eval())  # diffusers' defaults are the Wan2.1 VAE's config
    up_transformer = upstream_transformer(args.upstream, config, transformer.state_dict())
    up_vae = upstream_vae(args.upstream, vae)
    transformer, vae, up_transformer, up_vae = (m.to(device) for m in (transformer, vae, up_transformer, up_vae))

    # --- inputs, shared
    g = torch.Generator().manual_seed(1)
    image = np.array(demo_inputs(size=args.size)[0])
    context = torch.randn(PROMPT_TOKENS, config.text_dim, generator=g) * 0.1
    negative = torch.randn(NEGATIVE_TOKENS, config.text_dim, generator=g) * 0.1
    clip_fea = torch.randn(1, config.clip_tokens, config.clip_dim, generator=g)
    audio = torch.randn(1, config.audio_tokens_per_frame * args.frames, config.audio_in_dim, generator=g)
    settings = GenerationSettings.for_variant(
        "preview",
        steps=args.steps,
        width=args.size,
        height=args.size,
        partial_video_length=args.frames,  # one chunk: the overlap never applies
        overlap_video_length=min(GenerationSettings.overlap_video_length, args.frames - 2),
        neg_scale=1.0,
        color_match=False,
    )
    models = Models(transformer=transformer, vae=vae)
    face_gate = model_face_gate(models, image, (args.size, args.size), box=demo_face_box(args.size))
    encoded = Encoded(context, negative, clip_fea, audio, face_gate)

    prompt = "a person is talking"
    pipeline = pipeline_module.WanFunInpaintAudioPipeline(
        tokenizer=_Tokenizer({prompt: PROMPT_TOKENS, settings.negative_prompt: NEGATIVE_TOKENS}),
        text_encoder=_TextEncoder(context.to(device, dtype), negative.to(device, dtype)),
        vae=up_vae,
        transformer=up_transformer,
        clip_image_encoder=_ClipEncoder(clip_fea.to(device)),
        scheduler=pipeline_module.FlowMatchEulerDiscreteScheduler(**UPSTREAM_FLOW_SCHEDULER),
    )
    from PIL import Image

    reference = Image.fromarray(image)
    # what infer_preview.py hands the pipeline for a first chunk: the reference on every frame (0..1),
    # a mask of 0 (keep) on frame 0 and 255 (generate) after it, and the reference for CLIP
    video = torch.from_numpy(image).permute(2, 0, 1)[None, :, None].float().repeat(1, 1, args.frames, 1, 1) / 255
    mask = torch.full((1, 1, args.frames, args.size, args.size), 255.0)
    mask[:, :, 0] = 0

    def run_upstream() -> torch.Tensor:
        out = pipeline(
            prompt,
            negative_prompt=settings.negative_prompt,
            num_frames=args.frames,
            audio_embeds=audio.to(device),
            audio_scale=settings.audio_scale,
            ip_mask=face_gate.repeat(3, 1).to(device),
            height=args.size,
            width=args.size,
            generator=torch.Generator("cpu").manual_seed(settings.seed),
            neg_scale=settings.neg_scale,
            neg_steps=settings.neg_steps,
            use_dynamic_cfg=settings.use_dynamic_cfg,
            use_dynamic_acfg=settings.use_dynamic_acfg,
            guidance_scale=settings.guidance_scale,
            audio_guidance_scale=settings.audio_guidance_scale,
            num_inference_steps=settings.steps,
            video=video,
            mask_video=mask,
            clip_image=reference,
            shift=settings.shift,
            partial_video_length=args.frames,
        ).videos
        return out[0].permute(1, 2, 3, 0)  # [F, H, W, 3] 0..1

    def run_ours() -> torch.Tensor:
        plan = plan_generation(image, args.frames, settings, Task())
        return render(models, encoded, plan, settings, device=device)

    runs = {"ours": run_ours, "upstream": run_upstream}
    phases = {name: Phases(device) for name in runs}
    for name, (model, vae_object) in {"ours": (transformer, vae), "upstream": (up_transformer, up_vae)}.items():
        phases[name].wrap(model, "forward", "transformer")
        phases[name].wrap(vae_object, "encode", "VAE encode")
        phases[name].wrap(vae_object, "decode", "VAE decode")
    times = {name: defaultdict(list) for name in runs}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, run in runs.items():
                synchronize(device)
                phases[name].seconds.clear()
                wall, cpu = time.perf_counter(), time.process_time()
                outputs[name] = run()
                synchronize(device)
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
                for phase in Phases.NAMES:
                    times[name][phase].append(phases[name].seconds[phase])
        peaks = {}
        for name, run in runs.items():
            with PeakMemory(device, args.memory) as mem:
                run()
            peaks[name] = mem.peak
        if args.phases:  # separate runs: a phase's PeakMemory would reset a CUDA run's peak
            for name, run in runs.items():
                phases[name].memory = args.memory
                run()
                phases[name].memory = None

    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    latent = ((args.frames - 1) // 4 + 1, args.size // 8, args.size // 8)
    tokens = latent[0] * latent[1] * latent[2] // 4
    print(
        f"preview, {config.num_layers} blocks (dim {config.dim}), full-size Wan2.1 VAE, {args.frames} frames at "
        f"{args.size}x{args.size} ({tokens} tokens), {args.steps} steps x 3 guidance branches, float32 on {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    memory = "live tensors" if device.type == "cpu" and args.memory == "tensors" else args.memory
    if device.type == "cuda":
        memory = "allocator"
    columns = ("wall", "cpu", *Phases.NAMES)
    heads = ("wall s", "CPU s", *(f"{n} s" for n in Phases.NAMES))
    print(f"{'pipeline':<10}" + "".join(f"{h:>16}" for h in heads) + f"{f'peak MiB ({memory})':>25}")
    for name in runs:
        cells = "".join(f"{median[name][c]:>16.2f}" for c in columns)
        print(f"{name:<10}{cells}{peaks[name] / 2**20:>25.1f}")
    ratios = "".join(f"{median['ours'][c] / max(median['upstream'][c], 1e-9):>16.3f}" for c in columns)
    print(f"{'ratio':<10}{ratios}{peaks['ours'] / max(peaks['upstream'], 1):>25.3f}")
    print("ratios are ours / upstream; targets: <= 0.8 time, <= 0.5 peak memory")
    if args.phases:
        print(f"peak MiB ({memory}) of each phase, above what is held when it starts; whole run as above")
        print(f"{'pipeline':<10}" + "".join(f"{n:>16}" for n in (*Phases.NAMES, "whole run")))
        for name in runs:
            cells = "".join(f"{phases[name].peaks[n] / 2**20:>16.1f}" for n in Phases.NAMES)
            print(f"{name:<10}{cells}{peaks[name] / 2**20:>16.1f}")
    ours, theirs = outputs["ours"].float().cpu(), outputs["upstream"].float().cpu()
    print(f"frames {tuple(ours.shape)}: max |ours - upstream| = {float((ours - theirs).abs().max()):.2e} (0..1 scale)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
