"""Seconds per guided denoising step and peak memory per GPU, for each way of sharing a step over ranks.

    torchrun --nproc_per_node 4 benchmarks/parallel.py --height 768 --width 768 --frames 113
    torchrun --nproc_per_node 2 benchmarks/parallel.py --preset tiny_preview --device cpu --frames 33

Runs every layout the process count allows (1 rank alone, cfg, sequence, cfg x sequence) on the
same random weights and inputs: one preview step = 3 guidance branches, batched per rank. Columns:
median seconds per step, speed-up over one rank, peak allocator memory on rank 0 (CUDA), and the max
relative difference of the step's predictions from the one-rank run. Random weights; nothing is
downloaded. On one GPU, two ranks can share it over gloo (``--backend gloo``) to check the path,
not the speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.model.conditioning import Conditioning  # noqa: E402
from echomimic_core.model.transformer import EchoMimicTransformer  # noqa: E402
from echomimic_core.parallel import Parallel, ParallelSpec  # noqa: E402
from echomimic_core.sampling.sampler import run_branches  # noqa: E402
from echomimic_core.vae_frames import VAE_SPATIAL_STRIDE, latent_frames  # noqa: E402

BRANCHES = ("uncond", "drop_audio", "cond")


def layouts(world: int, heads: int) -> list[ParallelSpec]:
    specs = [ParallelSpec(cfg, world // cfg) for cfg in range(1, len(BRANCHES) + 1) if world % cfg == 0]
    return [s for s in specs if heads % s.sequence == 0]


def inputs(config: TransformerConfig, frames: int, height: int, width: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    latent = (1, 16, latent_frames(frames), height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
    cond = Conditioning(
        context=[torch.randn(min(120, config.text_len), config.text_dim, generator=g)],
        clip_fea=torch.randn(1, config.clip_tokens, config.clip_dim, generator=g),
        y=torch.randn(1, config.in_dim - 16, *latent[2:], generator=g),
        audio=torch.randn(1, config.audio_tokens_per_frame * frames, config.audio_in_dim, generator=g),
    ).to(device, dtype)
    return torch.randn(latent, generator=g).to(device), [cond, cond.without_audio(), cond]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--layers", type=int, help="fewer blocks than the preset (quicker, same per-block cost)")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--frames", type=int, default=113)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", help="default: nccl on CUDA, gloo on CPU")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    dist.init_process_group(args.backend or ("nccl" if cuda else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = getattr(torch, args.dtype)
    config = TransformerConfig.preset(args.preset)
    if args.layers:
        config = TransformerConfig.from_dict({**config.to_dict(), "num_layers": args.layers})
    torch.manual_seed(0)  # the same weights on every rank
    with torch.device(device):
        model = EchoMimicTransformer(config).to(dtype).eval()
    latents, conds = inputs(config, args.frames, args.height, args.width, device, dtype)
    t = torch.tensor([500.0], device=device)
    names = list(BRANCHES)

    def timed(run, together: bool):
        """(median seconds of ``--steps`` steps after a warm-up, peak GiB, the step's predictions)."""
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            for _ in range(args.steps + 1):
                if together:
                    dist.barrier()
                started = time.perf_counter()
                out = run(model, latents, t, conds, True, None, names)
                if cuda:
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        return statistics.median(times[1:]), peak, torch.cat(out)

    rows = []
    if rank == 0:  # the reference: one rank alone, the others idle
        rows.append(("1 rank", *timed(run_branches, together=False)))
    dist.barrier()
    for spec in layouts(world, config.num_heads):
        if spec.world_size > 1:
            rows.append((f"cfg {spec.cfg} x sequence {spec.sequence}", *timed(Parallel(spec).run_branches, True)))
    if rank == 0:
        tokens = latents.shape[2] * (args.height // 16) * (args.width // 16)
        print(f"{args.preset}, {config.num_layers} blocks, {tokens} tokens, {args.dtype}, {world} rank(s) on {device}")
        print(f"{'layout':<22} {'s/step':>8} {'speed-up':>9} {'peak GiB':>9} {'max rel diff':>13}")
        base, reference = rows[0][1], rows[0][3]
        for name, seconds, peak, out in rows:
            difference = ((out - reference).abs().max() / reference.abs().max()).item()
            print(f"{name:<22} {seconds:>8.3f} {base / seconds:>8.2f}x {peak:>9.2f} {difference:>13.2e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
