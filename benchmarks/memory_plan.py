"""The memory plan's predictions against measurements on this machine, at the real width.

    python benchmarks/memory_plan.py            # every configuration below (~15 min on 2 CPU cores)
    python benchmarks/memory_plan.py --quick    # one of each phase
    python benchmarks/memory_plan.py --toy      # tiny models, seconds: the same path (the tests run this)
    python benchmarks/memory_plan.py --calibrate

Real-width models with random weights, run on the CPU the way a generation runs them on the GPU:
the transformer at dim 1536 with 2 blocks for one guided denoising step of a chunk (every guidance
pass); umT5-XXL at width 4096 with 1 block and a small vocabulary, the CLIP ViT-H tower with 2 blocks
and wav2vec2-base, each encoding alone; the Wan2.1 VAE as released (127M parameters) encoding the
chunk's conditioning and decoding its latents, next to the transformer's weights. The VAE costs
minutes per frame on a CPU, so its configurations are small; the transformer's are as large as
one step allows. ``echomimic_core.memory_plan`` predicts each phase for the same models (its
formulas take the layer and parameter counts as inputs).

What is measured: the bytes of live tensors, which is what a GPU's caching allocator counts
(``torch.cuda.max_memory_allocated``) and what the plan predicts. On the CPU a ``TorchDispatchMode``
sees every tensor an operator creates and a weak reference sees it freed (``peak_memory.py``); the
weights, allocated before, are added as their exact byte count. Kernel-internal scratch memory is
not seen (on a GPU it is small: cuBLAS workspace, flash attention's log-sum-exp); the plan counts
it in its fixed runtime overhead. The process's resident-set growth over the run ("RSS +") is
printed as a cross-check; it includes the C allocator's slack and kernels' scratch, and the
weights are not in it (they were resident before).

``--toy`` runs the same path (models, prediction, measurement, table) with tiny models at 32-64 px:
the demo's transformer widths, encoders and VAE a few dozen wide. The transformer's formulas take
its widths, so its rows should stay close; the encode and decode rows' errors are large and say
nothing: the plan's encoder and VAE terms are the released models' (weights, activations per pixel).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # peak_memory, when imported by a test

from peak_memory import PeakMemory, _LiveTensors, return_freed_memory_to_os  # noqa: E402

from echomimic_core import memory_plan as mp  # noqa: E402
from echomimic_core import pipeline  # noqa: E402
from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.long_video import Chunk  # noqa: E402
from echomimic_core.model.transformer import EchoMimicTransformer  # noqa: E402
from echomimic_core.settings import GenerationSettings  # noqa: E402
from echomimic_core.tasks import Task, chunk_task_inputs  # noqa: E402

LAYERS = 2
PROMPT_TOKENS = 20  # the stand-in prompt's length (the plan is told it: the key cache scales with it)


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration; ``phases`` says which phases run (the VAE costs minutes per frame on a CPU,
    so the VAE cases are small, the transformer cases as large as one step allows)."""

    variant: str
    height: int
    width: int
    frames: int
    dtype: str = "float32"
    options: dict = dataclasses.field(default_factory=dict)
    phases: tuple[str, ...] = ("denoise",)
    toy: bool = False  # tiny transformer and encoders (--toy)

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.options.items())
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]
        toy = "toy " if self.toy else ""
        return f"{toy}{self.variant} {self.width}x{self.height}x{self.frames} {short}{' ' + extra if extra else ''}"


CASES = [
    # the transformer phase: one guided step of a chunk (all passes), 1.9k-5.2k tokens
    Case("flash", 384, 384, 33),
    Case("preview", 256, 256, 33),
    Case("preview", 384, 256, 17, options={"batch_guidance": False}),
    Case("flash", 320, 320, 21, "bfloat16", {"fp8": True, "block_swap": 1}),
    Case("preview", 320, 320, 17, "bfloat16", {"context_cache": False}),
    Case("flash", 448, 448, 17, options={"teacache_offload": True}),
    # the encoders (umT5 in float32 for preview, bf16 for flash, as model_files loads them)
    Case("preview", 256, 256, 17, phases=("encode",)),
    Case("flash", 256, 256, 17, phases=("encode",)),
    # the VAE: the chunk's conditioning encoded, its latents decoded
    Case("flash", 128, 128, 9, phases=("decode",)),
    Case("flash", 192, 128, 9, options={"vae_tile": 128}, phases=("decode",)),
]
QUICK = [CASES[2], CASES[6], CASES[8]]
# seconds on 2 cores: each phase, both variants, the savers the transformer cases take
TOY = [
    Case("flash", 64, 64, 17, toy=True),
    Case("preview", 48, 64, 9, options={"batch_guidance": False, "context_cache": False}, toy=True),
    Case("flash", 32, 32, 9, "bfloat16", {"fp8": True, "block_swap": 1, "teacache_offload": True}, toy=True),
    Case("preview", 32, 32, 9, phases=("encode",), toy=True),
    Case("flash", 32, 32, 9, phases=("decode",), toy=True),
]


# ---------------------------------------------------------------------------------------------
# models with random weights


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def build_transformer(variant: str, dtype: torch.dtype, fp8: bool, toy: bool = False) -> EchoMimicTransformer:
    preset = TransformerConfig.preset(f"tiny_{variant}" if toy else variant)
    config = TransformerConfig.from_dict({**preset.to_dict(), "num_layers": LAYERS})
    with torch.device("meta"):
        model = EchoMimicTransformer(config)
    model = model.to_empty(device="cpu")
    _randomise(model, torch.Generator().manual_seed(0))
    model = model.to(dtype).eval().requires_grad_(False)
    model.compute_dtype = dtype
    if fp8:
        from echomimic_core.checkpoints.quant import to_fp8

        for block in model.blocks:
            for p in block.parameters():
                if p.ndim == 2:
                    p.data = to_fp8(p.data.float())
    return model


def build_vae(dtype: torch.dtype, toy: bool = False):
    from diffusers import AutoencoderKLWan

    from echomimic_core.vae import WanVAE

    # toy: the released structure at width 8 with one block per level (gpu_suite's toy VAE)
    tiny = {"base_dim": 8, "num_res_blocks": 1}
    with torch.device("meta"):
        model = AutoencoderKLWan(**(tiny if toy else {}))
    model = model.to_empty(device="cpu")
    _randomise(model, torch.Generator().manual_seed(1))
    return WanVAE(torch.nn.Module.to(model, dtype))  # nn.Module.to: diffusers' warns on every cast


def build_encoders(variant: str, dtype: torch.dtype, toy: bool = False):
    """umT5 (1 block, width 4096, 1k vocabulary), CLIP ViT-H (2 blocks, the last dropped as Wan
    does), wav2vec2-base; returns them and the plan's EncoderSizes for exactly these. ``toy``: the
    same models a few dozen wide."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel, Wav2Vec2Config

    from echomimic_core.encoders import image, text
    from echomimic_core.encoders.audio import AudioEncoder

    g = torch.Generator().manual_seed(2)
    width, heads = (64, 4) if toy else (4096, 64)
    t5_config = UMT5Config(
        vocab_size=1000,
        d_model=width,
        d_kv=width // heads,
        d_ff=2 * width if toy else 10240,
        num_layers=1,
        num_heads=heads,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    t5 = UMT5EncoderModel(t5_config)
    _randomise(t5, g)
    compute = getattr(torch, text.VARIANT_COMPUTE_DTYPES[variant])  # as model_files.load_models
    state = {k: v for k, v in t5.state_dict().items()}
    text_encoder = text.TextEncoder(text.build_model(state, torch.bfloat16, "cpu", compute))
    del t5, state
    clip_width, clip_heads = (64, 4) if toy else (1280, 16)
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=clip_width,
            intermediate_size=4 * clip_width,
            num_hidden_layers=2,
            num_attention_heads=clip_heads,
            patch_size=14,
            image_size=28 if toy else 224,
        )
    )
    _randomise(clip, g)
    # transformers 5 keeps the tower at the top of CLIPVisionModel; the loader reads HF names
    state = {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in clip.state_dict().items()}
    image_encoder = image.ImageEncoder(image.build_model(state, dtype, "cpu", clip_heads))
    del clip
    from transformers import Wav2Vec2Model

    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    tiny |= {"conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
    w2v = Wav2Vec2Model(Wav2Vec2Config(**(tiny if toy else {}))).eval()
    _randomise(w2v, g)
    audio_encoder = AudioEncoder(w2v.to(dtype), kind=variant)
    block = sum(p.numel() for p in text_encoder.model.encoder.block[0].parameters())
    sizes = mp.EncoderSizes(
        text_params=sum(p.numel() for p in text_encoder.model.parameters()),
        text_layers=1,
        text_block_params=block,
        text_storage_bytes=2,
        text_compute_bytes=compute.itemsize,
        text_width=width,
        clip_params=sum(p.numel() for p in image_encoder.model.parameters()),
        audio_params=sum(p.numel() for p in w2v.parameters()),
    )
    return text_encoder, image_encoder, audio_encoder, sizes


def tensor_bytes(*modules) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            s = t.untyped_storage()
            if id(s) not in seen:
                seen.add(id(s))
                total += s.nbytes()
    return total


# ---------------------------------------------------------------------------------------------
# one configuration


class PhaseTracker(_LiveTensors):
    """Live tensor bytes with the peak kept per phase (the pipeline's methods switch ``phase``)."""

    def __init__(self):
        super().__init__("cpu")
        self.phase, self.peaks = "idle", {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.current)
        return out


def _in_phase(tracker: PhaseTracker, name: str, fn):
    def wrapped(*args, **kwargs):
        before, tracker.phase = tracker.phase, name
        try:
            return fn(*args, **kwargs)
        finally:
            tracker.phase = before

    return wrapped


def run_case(case: Case) -> dict:
    dtype = getattr(torch, case.dtype)
    o = case.options
    settings = GenerationSettings.for_variant(
        case.variant,
        steps=1,
        partial_video_length=case.frames,
        overlap_video_length=4,
        batch_guidance=o.get("batch_guidance", True),
        vae_tile_size=o.get("vae_tile"),
        vae_tile_overlap=32,
        context_cache=o.get("context_cache", True),
        teacache_offload=o.get("teacache_offload", False),
        color_match=False,
    )
    torch.manual_seed(0)
    transformer = build_transformer(case.variant, dtype, o.get("fp8", False), case.toy)
    encoders = build_encoders(case.variant, dtype, case.toy) if "encode" in case.phases else None
    vae = build_vae(dtype, case.toy) if "decode" in case.phases else None
    workload = mp.workload_for(
        case.variant,
        settings,
        (case.height, case.width),
        case.frames,
        case.dtype,
        transformer.config,
        prompt_tokens=PROMPT_TOKENS,
    )
    if encoders is not None:
        workload = dataclasses.replace(workload, encoders=encoders[3])
    options = mp.Options(
        chunk=case.frames,
        fp8=o.get("fp8", False),
        block_swap=o.get("block_swap", 0),
        batch_guidance=settings.batch_guidance,
        vae_tile=settings.vae_tile_size,
        context_cache=settings.context_cache,
        teacache_offload=settings.teacache_offload,
    )
    predicted = mp.estimate(workload, options)

    # the weights the device holds in each phase, counted exactly; the tracker adds what the
    # phase allocates on top
    swap = options.block_swap
    if swap:
        transformer.place("cpu", "cpu", swap)
    block = tensor_bytes(transformer.blocks[0])
    resident = tensor_bytes(transformer) - swap * block + min(swap, 2) * block

    g = torch.Generator().manual_seed(3)
    reference = (torch.rand(case.height, case.width, 3, generator=g) * 255).to(torch.uint8).numpy()
    wav = torch.randn(int(case.frames / settings.fps * 16000) + 800, generator=g) * 0.1
    config = transformer.config
    measured = {}
    return_freed_memory_to_os()
    with torch.no_grad(), PeakMemory("cpu", mode="rss") as rss:
        if encoders is not None:  # each encoder alone, as pipeline.encode_inputs runs them
            text_encoder, image_encoder, audio_encoder, _ = encoders
            peaks = {}
            for name, module, run in (
                ("text", text_encoder.model, lambda: text_encoder.forward_ids(*_ids(g))),
                ("clip", image_encoder.model, lambda: image_encoder.encode(torch.rand(1, 3, 256, 256) * 2 - 1)),
                ("audio", audio_encoder.model, lambda: audio_encoder.features_for_video(wav, case.frames, 25.0)),
            ):
                tracker = _LiveTensors("cpu")
                with tracker:
                    run()
                peaks[name] = tensor_bytes(module) + tracker.peak
            measured["encode"] = max(peaks.values())
        if "denoise" in case.phases or "decode" in case.phases:
            models = pipeline.Models(transformer=transformer, vae=vae)
            plan = pipeline.plan_generation(reference, case.frames, settings, Task())
            text = torch.randn(PROMPT_TOKENS, config.text_dim, generator=g)
            audio_frames = case.frames + 8
            audio = (
                torch.randn(1, audio_frames, 5, config.audio_blocks, config.audio_channels, generator=g)
                if case.variant == "flash"
                else torch.randn(1, 2 * audio_frames, config.audio_in_dim, generator=g)
            )
            encoded = pipeline.Encoded(
                text,
                text * 0.5,
                torch.randn(1, 257, config.clip_dim, generator=g),
                audio,
                pipeline.model_face_gate(
                    models, reference, plan.sample_size, box=(0, case.height // 2, 0, case.width // 2)
                ),
            )
            denoiser = pipeline.Denoiser(models, encoded, settings, "cpu", "cpu", None)
            tracker = PhaseTracker()
            if vae is None:  # transformer cases: a random conditioning y in place of the VAE's
                lat = (1, config.in_dim - config.out_dim, (case.frames - 1) // 4 + 1, case.height // 8, case.width // 8)
                denoiser._y = lambda inputs, chunk: torch.randn(lat, generator=g)
                denoiser.decode = lambda latents, chunk: torch.zeros(case.frames, case.height, case.width, 3)
            else:
                denoiser._y = _in_phase(tracker, "vae", denoiser._y)
                denoiser.decode = _in_phase(tracker, "vae", denoiser.decode)
            inputs = chunk_task_inputs(
                plan.task, plan.reference, Chunk(0, case.frames, 0), None, case.frames, plan.sample_size, None
            )
            with tracker:
                tracker.phase = "denoise"
                denoiser.chunk(inputs, 0, 0, settings.steps)
            if "denoise" in case.phases:
                measured["denoise"] = resident + tracker.peaks["denoise"]
            if "decode" in case.phases:
                measured["decode"] = resident + tensor_bytes(vae.model) + tracker.peaks["vae"]
    return {"case": case, "predicted": predicted, "measured": measured, "rss": rss.peak}


def _ids(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt and negative prompt as TextEncoder.encode gives them: 2 x 512 ids (padding included)."""
    ids = torch.randint(2, 1000, (2, 512), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 40:] = 0
    return ids, mask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one configuration of each phase")
    p.add_argument("--toy", action="store_true", help="tiny models and sizes: the same path in seconds (a check)")
    p.add_argument("--calibrate", action="store_true", help="print the plan's coefficients from meta traces")
    p.add_argument("--cards", action="store_true", help="print the README's table: the plan for 8-80 GB cards")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calibrate:
        return calibrate()
    if args.cards:
        return cards()
    cases = TOY if args.toy else QUICK if args.quick else CASES
    models = "toy models (encode/decode errors not meaningful)" if args.toy else "transformer dim 1536"
    print(f"threads={torch.get_num_threads()}; {models}, {LAYERS} blocks; MiB of live tensors")
    print(f"{'configuration':<48} {'phase':<8} {'predicted':>9} {'measured':>9} {'error':>6} {'RSS +':>7} {'s':>5}")
    worst = 0.0
    for case in cases:
        started = time.time()
        r = run_case(case)
        for phase, meas in r["measured"].items():
            pred = r["predicted"].phase(phase)
            err = abs(pred - meas) / meas
            if not case.toy or phase == "denoise":  # see the docstring: toy encoders / VAE are not the plan's
                worst = max(worst, err)
            print(
                f"{case.label():<48} {phase:<8} {pred / 2**20:>9.1f} {meas / 2**20:>9.1f} {err:>6.1%} "
                f"{r['rss'] / 2**20:>7.0f} {time.time() - started:>5.0f}",
                flush=True,
            )
    print(f"max relative error {worst:.1%}{' (denoise rows)' if args.toy else ''}")
    return 0


def cards() -> int:
    """The plan for 5 s of audio on 8 / 12 / 16 / 24 / 80 GB cards, as a markdown table."""
    print("| variant | size | card | chosen settings | encode | denoise | decode | needs (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in ("flash", "preview"):
        for height, width in ((768, 768), (832, 480)):
            settings = GenerationSettings.for_variant(variant)
            workload = mp.workload_for(variant, settings, (height, width), int(5 * settings.fps), "bfloat16")
            for gb in (8, 12, 16, 24, 80):
                result = mp.plan(workload, gb * mp.GIB)
                e = result.chosen
                if e is None:
                    print(
                        f"| {variant} | {width}x{height} | {gb} GB | nothing fits | | | | {result.smallest.required / mp.GIB:.1f} |"
                    )
                    continue
                print(
                    f"| {variant} | {width}x{height} | {gb} GB | {e.options.describe()} | {e.encode / mp.GIB:.1f} | "
                    f"{e.denoise / mp.GIB:.1f} | {e.decode / mp.GIB:.1f} | {e.required / mp.GIB:.1f} |"
                )
    return 0


def calibrate() -> int:
    """The coefficients memory_plan uses, re-read from shape-only traces of the code (meta device)."""
    from diffusers import AutoencoderKLWan

    from echomimic_core.model.conditioning import Conditioning
    from echomimic_core.vae import WanVAE

    def trace(fn) -> int:
        tracker = _LiveTensors("meta")
        with torch.no_grad(), tracker:
            fn()
        return tracker.peak

    for dtype in (torch.bfloat16, torch.float32):
        config = TransformerConfig.from_dict({**TransformerConfig.preset("preview").to_dict(), "num_layers": 2})
        with torch.device("meta"):
            model = EchoMimicTransformer(config).to(dtype).eval()
        peaks = {}
        for batch in (1, 2):
            lat = (29, 96, 96)
            cond = Conditioning(
                context=[torch.empty(100, config.text_dim, device="meta")] * batch,
                clip_fea=torch.empty(batch, 257, config.clip_dim, device="meta"),
                y=torch.empty(batch, 20, *lat, device="meta"),
                audio=torch.empty(batch, 226, config.audio_in_dim, device="meta"),
            ).to(dtype=dtype)
            x = torch.empty(batch, 16, *lat, device="meta", dtype=dtype)
            peaks[batch] = trace(lambda: model(x, torch.full((batch,), 500.0, device="meta"), cond))
        unit = 29 * 48 * 48 * config.dim * dtype.itemsize
        print(f"ACT_BUFFERS ({dtype}): {(peaks[2] - peaks[1]) / unit:.3f}")
        with torch.device("meta"):
            vae = WanVAE(torch.nn.Module.to(AutoencoderKLWan(), dtype))
        key = dtype.itemsize

        def coefficients(run, shape) -> tuple[float, float]:
            """Bytes per pixel of a 128x128 frame and per pixel of every frame, from 3 and 9 latent
            frames (9 and 33 video frames); the input is made inside the trace, as it is on the device."""
            per_px = {f: trace(lambda: run(torch.empty(shape(f), device="meta"))) / (128 * 128) for f in (3, 9)}
            slope = (per_px[9] - per_px[3]) / 24
            return per_px[3] - 9 * slope, slope

        latents = lambda f: (1, 16, f, 16, 16)  # noqa: E731
        video = lambda f: (1, 3, 4 * (f - 1) + 1, 128, 128)  # noqa: E731
        per_pixel, per_frame = coefficients(vae.decode, latents)
        print(
            f"VAE_DECODE_WORK {per_pixel / key - mp.VAE_DECODE_HISTORY:.0f}, VAE_DECODE_PER_FRAME_PIXEL[{key}] {per_frame:.2f}"
        )
        per_pixel, per_frame = coefficients(vae.encode, video)
        print(
            f"VAE_ENCODE_WORK {per_pixel / key - mp.VAE_ENCODE_HISTORY:.0f}, VAE_ENCODE_PER_FRAME_PIXEL[{key}] {per_frame:.2f}"
        )
        # a tile runs diffusers' own forward (and WanVAE's float32 copy of its output)
        per_pixel, per_frame = coefficients(lambda z: vae.model.decode(z.to(dtype)).sample.float(), latents)
        print(f"VAE_TILED_DECODE_PER_PIXEL[{key}] {per_pixel:.0f}, per frame pixel {per_frame:.2f}")
        per_pixel, per_frame = coefficients(lambda v: vae.model.encode(v.to(dtype)).latent_dist.parameters, video)
        print(f"VAE_TILED_ENCODE_PER_PIXEL[{key}] {per_pixel:.0f}, per frame pixel {per_frame:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
