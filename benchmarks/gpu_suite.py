"""Seconds per step, total time and peak memory of real-size generations, per precision, weight
storage, block swap and attention kernel: one command, one table.

    python benchmarks/gpu_suite.py                           # on a CUDA machine: everything below
    python benchmarks/gpu_suite.py --device cuda:1 --variants flash --sizes 480x832 --modes bf16 fp8
    python benchmarks/gpu_suite.py --toy --device cpu --steps 2   # tiny models on a CPU (the tests run this)

For each variant (flash: 8 steps, preview: 25, upstream's defaults otherwise, so flash runs with
TeaCache 0.1), each size (768x768, 480x832) and each mode, one generation of ``--seconds`` (5) of
video at 25 fps in the variant's chunks. Modes (compute in ``--dtype``, bf16 by default): ``bf16``
(weights stored as computed), ``fp8`` (block matrices stored in float8_e4m3fn), ``block-swap`` (half
of the blocks kept in CPU memory and streamed in), and ``bf16`` once more with every other attention
backend installed (flash_attn, sageattention, xformers).

What runs is the real path after the encoders: a transformer of the release's size with random
weights, written to a file and loaded the way users load theirs (``load_transformer``: fp8 storage,
block swap, attention backend); a full-size Wan2.1 VAE with random weights; random embeddings in
place of umT5 / CLIP / wav2vec2 (each encoder runs once per generation; ``encoders_speed.py`` times
them); then ``pipeline.render``: task mask, VAE encode, guided denoising, VAE decode per chunk.
Columns: median seconds per denoising step, total seconds, peak memory of the requested device
(CUDA allocator; on the CPU live tensor bytes), denoising steps run, frames. A mode that fails
(out of memory, a kernel error) prints its error in its row and the suite goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint_load import write_random_file  # noqa: E402
from peak_memory import PeakMemory, synchronize  # noqa: E402

from echomimic_core.checkpoints.transformer import load_transformer  # noqa: E402
from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.demo import demo_face_box, demo_inputs  # noqa: E402
from echomimic_core.model.attention import available_backends  # noqa: E402
from echomimic_core.pipeline import Encoded, Models, model_face_gate, plan_generation, render  # noqa: E402
from echomimic_core.sampling.sampler import StepHooks  # noqa: E402
from echomimic_core.settings import GenerationSettings  # noqa: E402
from echomimic_core.tasks import Task  # noqa: E402

VARIANTS = ("flash", "preview")
SIZES = ("768x768", "480x832")
TOY_SIZES = ("64x64", "48x80")
MODES = ("bf16", "fp8", "block-swap", "backends")
FPS = 25.0
PROMPT_TOKENS, NEGATIVE_TOKENS = 40, 64  # real umT5 tokens of a typical prompt / upstream's negative prompt
REFERENCE_SIDE = 512  # the reference image; resized to each sample size as users' images are


@dataclasses.dataclass(frozen=True)
class Run:
    """One row: how the transformer is stored and run."""

    mode: str
    storage: torch.dtype | None = None
    block_swap: bool = False
    backend: str = "sdpa"


def runs_for(modes: list[str], backends: list[str]) -> list[Run]:
    runs = []
    for mode in modes:
        if mode == "bf16":
            runs.append(Run("bf16"))
        elif mode == "fp8":
            runs.append(Run("fp8", storage=torch.float8_e4m3fn))
        elif mode == "block-swap":
            runs.append(Run("block-swap", block_swap=True))
        else:
            runs += [Run("bf16", backend=b) for b in backends if b != "sdpa"]
    return runs


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), both multiples of 16."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 480x832, got {text!r}") from None
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise argparse.ArgumentTypeError(f"height and width must be positive multiples of 16, got {text!r}")
    return height, width


def model_config(variant: str, toy: bool, layers: int | None) -> TransformerConfig:
    config = TransformerConfig.preset(f"tiny_{variant}" if toy else variant)
    return dataclasses.replace(config, num_layers=layers) if layers else config


def random_vae(toy: bool):
    from diffusers import AutoencoderKLWan

    from echomimic_core.vae import WanVAE

    torch.manual_seed(0)
    if toy:  # the demo's tiny VAE: the same structure at width 8, one block per level
        model = AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    else:
        model = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE's config
    return WanVAE(model.eval())


def random_embeddings(config: TransformerConfig, frames: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random stand-ins for the encoders' outputs: context / negative [tokens, text_dim], clip_fea
    [1, clip_tokens, clip_dim], audio in the variant's layout covering ``frames`` video frames."""
    g = torch.Generator().manual_seed(seed)
    if config.variant == "flash":
        audio_shape = (1, frames, config.audio_window, config.audio_blocks, config.audio_channels)
    else:
        audio_shape = (1, config.audio_tokens_per_frame * frames, config.audio_in_dim)
    return {
        "context": torch.randn(min(PROMPT_TOKENS, config.text_len), config.text_dim, generator=g) * 0.1,
        "negative": torch.randn(min(NEGATIVE_TOKENS, config.text_len), config.text_dim, generator=g) * 0.1,
        "clip_fea": torch.randn(1, config.clip_tokens, config.clip_dim, generator=g),
        "audio": torch.randn(*audio_shape, generator=g),
    }


def measure(models: Models, encoded: Encoded, image, frames: int, settings, device: torch.device) -> dict:
    """One generation: median s/step, total s, peak bytes, steps run, frames out."""
    stamps: list[float] = []

    def on_step(*_):
        synchronize(device)
        stamps.append(time.perf_counter())

    plan = plan_generation(image, frames, settings, Task())
    with PeakMemory(device) as memory, torch.no_grad():
        start = time.perf_counter()
        out = render(models, encoded, plan, settings, StepHooks(on_step=on_step), device=device)
        synchronize(device)
        total = time.perf_counter() - start
    # intervals inside a chunk only: a chunk boundary adds a VAE decode and encode
    per_chunk = settings.steps
    intervals = [b - a for i, (a, b) in enumerate(zip(stamps, stamps[1:])) if (i + 1) % per_chunk]
    return {
        "s/step": statistics.median(intervals) if intervals else total / max(len(stamps), 1),
        "total": total,
        "peak": memory.peak,
        "steps": len(stamps),
        "frames": len(out),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--toy", action="store_true", help="tiny models and sizes (a CPU check of the suite)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16", help="compute dtype")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--sizes", nargs="+", type=parse_size, help=f"HxW (default {' '.join(SIZES)}; toy {TOY_SIZES})")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--seconds", type=float, default=5.0, help="video length (25 fps)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the variant's, flash 8, preview 25)")
    p.add_argument("--layers", type=int, help="fewer blocks than the release's 30 (s/step scales with them)")
    p.add_argument("--partial-video-length", type=int, help="chunk length in frames (default: the variant's)")
    p.add_argument("--overlap-video-length", type=int, help="frames shared by chunks (default: the variant's)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: CUDA is not available here; use --device cpu (with --toy)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            p.error(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)  # kernels that use the current device run on the requested one
    frames = int(args.seconds * FPS)
    if frames < 1:
        p.error(f"--seconds {args.seconds}: less than one frame at {FPS:g} fps")
    sizes = args.sizes or [parse_size(s) for s in (TOY_SIZES if args.toy else SIZES)]
    overrides = {
        name: value
        for name, value in (
            ("steps", args.steps),
            ("partial_video_length", args.partial_video_length),
            ("overlap_video_length", args.overlap_video_length),
        )
        if value is not None
    }
    settings_of = {}
    for variant in args.variants:  # before any model is built
        settings_of[variant] = GenerationSettings.for_variant(variant, **overrides)
        try:
            settings_of[variant].validate()
        except ValueError as error:
            p.error(f"{variant}: {error}")
    runs = runs_for(args.modes, available_backends())
    dtype = getattr(torch, args.dtype)

    image = np.array(demo_inputs(size=REFERENCE_SIDE)[0])
    vae = random_vae(args.toy).to(device, dtype)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        for variant in args.variants:
            config = model_config(variant, args.toy, args.layers)
            path = Path(tmp) / f"{variant}.safetensors"
            write_random_file(config, torch.bfloat16, path)  # bf16, as the release's files
            base = settings_of[variant]
            e = random_embeddings(config, frames)
            for run in runs:
                transformer = load_transformer(
                    path,
                    dtype=dtype,
                    storage_dtype=run.storage,
                    device="cpu" if run.block_swap else device,
                    attention_backend=run.backend,
                )
                if run.block_swap:
                    transformer.enable_block_swap(config.num_layers // 2, device)
                models = Models(transformer=transformer, vae=vae)
                for height, width in sizes:
                    settings = dataclasses.replace(base, height=height, width=width)
                    gate = model_face_gate(models, image, (height, width), box=demo_face_box(REFERENCE_SIDE))
                    encoded = Encoded(e["context"], e["negative"], e["clip_fea"], e["audio"], gate)
                    row = {"variant": variant, "size": f"{height}x{width}", "run": run}
                    try:
                        row.update(measure(models, encoded, image, frames, settings, device))
                    except (RuntimeError, ValueError) as error:  # torch.OutOfMemoryError is a RuntimeError
                        row["error"] = str(error).splitlines()[0][:100]
                    rows.append(row)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                del models, transformer

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    memory = "allocator peak" if device.type == "cuda" else "live tensors"
    print(
        f"{'toy models' if args.toy else 'release-size models (random weights)'}, "
        f"{args.seconds:g} s at {FPS:g} fps = {frames} frames, {args.dtype} compute, {device} ({where})"
    )
    print(
        f"{'variant':<8} {'size':>8} {'mode':<11} {'attention':<13} {'s/step':>8} {'total s':>9} "
        f"{f'peak GiB ({memory})':>26} {'steps':>6} {'frames':>7}"
    )
    for row in rows:
        run = row["run"]
        head = f"{row['variant']:<8} {row['size']:>8} {run.mode:<11} {run.backend:<13}"
        if "error" in row:
            print(f"{head} failed: {row['error']}")
        else:
            print(
                f"{head} {row['s/step']:>8.3f} {row['total']:>9.1f} {row['peak'] / 2**30:>26.3f} "
                f"{row['steps']:>6} {row['frames']:>7}"
            )
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
