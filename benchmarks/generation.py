"""End-to-end generation cost of the memory/speed options, on any model folder or the tiny demo.

    python benchmarks/generation.py [--models DIR] [--seconds 2] [--steps 4] [--device cpu]

Runs the same generation with each option set (guidance batched vs one pass at a time, TeaCache
off/on, chunked vs sliding long video) and prints wall time, time per denoising step and peak
memory (CUDA: the requested device's allocator peak; CPU: resident-memory growth; both above the
level at the start of the run, see peak_memory.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory, return_freed_memory_to_os  # noqa: E402

from echomimic_core.demo import demo_face_box, demo_inputs, write_demo_models  # noqa: E402
from echomimic_core.model_files import find_model_files, load_models  # noqa: E402
from echomimic_core.pipeline import generate  # noqa: E402
from echomimic_core.sampling.sampler import StepHooks  # noqa: E402
from echomimic_core.settings import GenerationSettings  # noqa: E402

VARIANTS = {
    "batched guidance": {},
    "sequential guidance": {"batch_guidance": False},
    "TeaCache 0.1 (skip 1)": {"teacache_threshold": 0.1, "teacache_skip_start_steps": 1},
    "sliding windows": {"long_video_mode": "sliding"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="model folder (default: the tiny demo models)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=96, help="reference image side (demo image)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--partial", type=int, default=33)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()

    if torch.device(args.device).type == "cpu":
        return_freed_memory_to_os()
    folder = args.models or Path(tempfile.mkdtemp(prefix="echomimic-bench-"))
    files = find_model_files(folder) if args.models else write_demo_models(folder)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    models = load_models(files, dtype=dtype, device=args.device)
    image, audio, sr = demo_inputs(seconds=args.seconds, size=args.size)
    base = GenerationSettings.for_variant(
        models.variant,
        steps=args.steps,
        partial_video_length=args.partial,
        overlap_video_length=4,
        color_match=False,
        face_box=demo_face_box(args.size),
    )
    rows = []
    for name, overrides in VARIANTS.items():
        settings = dataclasses.replace(base, **overrides)
        steps = []
        hooks = StepHooks(on_step=lambda step, total, *_: steps.append(time.perf_counter()))
        start = time.perf_counter()
        # RSS on the CPU: tensor tracking would slow the timed run down
        with PeakMemory(args.device, mode="rss") as memory:
            result = generate(
                models, image, audio, sr, "a person is talking", settings, hooks=hooks, device=args.device
            )
        wall = time.perf_counter() - start
        # median step interval: chunk boundaries (VAE decode + encode) do not count as a step
        per_step = statistics.median(b - a for a, b in zip(steps, steps[1:])) if len(steps) > 1 else float("nan")
        rows.append((name, wall, per_step, memory.peak / 2**20, len(result.frames)))
    print(f"{'option':24s} {'wall s':>8s} {'s/step':>8s} {'peak MiB':>9s} {'frames':>7s}")
    for name, wall, per_step, memory, frames in rows:
        print(f"{name:24s} {wall:8.2f} {per_step:8.3f} {memory:9.1f} {frames:7d}")


if __name__ == "__main__":
    main()
