"""Time and peak memory of Wan2.1 VAE encode/decode, untiled vs tiled, at full size.

    python benchmarks/vae_memory.py --device cuda --dtype bf16 --frames 81 --height 480 --width 832
    python benchmarks/vae_memory.py --tiles 256:64 192:32        # tile_size:overlap pairs

Weights are random (speed and memory do not depend on their values; nothing is downloaded); pass
``--weights`` to time a real file instead. Peak memory: the requested device's allocator peak on
CUDA, resident-memory growth on the CPU, both above the level at entry (see peak_memory.py). The last column is
the largest difference from the untiled output, to show what a tiling costs in fidelity (with
random weights it is pessimistic: real weights are far more local).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory, synchronize  # noqa: E402

from echomimic_core.vae import Tiling, WanVAE, load_vae  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_vae(dtype, device) -> WanVAE:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE's full-size config
    return WanVAE(model).to(device, dtype)


def measure(fn, device):
    with PeakMemory(device, mode="rss") as memory:  # RSS on the CPU: tensor tracking would slow the run
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    return out, seconds, memory.peak / 2**30


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--tiles", nargs="*", default=["256:64"], help="tile_size:overlap in pixels")
    parser.add_argument("--weights", type=Path, help="a real Wan2.1 VAE file instead of random weights")
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    vae = load_vae(args.weights, dtype, device) if args.weights else random_vae(dtype, device)
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=device) * 2 - 1
    tilings = [None] + [Tiling(*map(int, t.split(":"))) for t in args.tiles]

    print(f"Wan2.1 VAE, {args.frames}x{args.height}x{args.width}, {args.dtype} on {device}")
    print(f"{'tiling':>14} {'encode s':>9} {'enc GiB':>8} {'decode s':>9} {'dec GiB':>8} {'max|dec-untiled|':>17}")
    reference = None
    latent = vae.encode(video[:, :, :1])  # warm-up: kernels, allocator
    for tiling in tilings:
        latent, enc_s, enc_gib = measure(lambda: vae.encode(video, tiling), device)
        decoded, dec_s, dec_gib = measure(lambda: vae.decode(latent, tiling), device)
        if reference is None:
            reference, diff = decoded, 0.0
        else:
            diff = float((decoded - reference).abs().max())
        name = "none" if tiling is None else f"{tiling.tile_size}:{tiling.overlap}"
        print(f"{name:>14} {enc_s:9.2f} {enc_gib:8.2f} {dec_s:9.2f} {dec_gib:8.2f} {diff:17.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
