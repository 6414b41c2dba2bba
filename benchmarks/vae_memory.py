"""Time and peak memory of Wan2.1 VAE encode/decode: ours (frame by frame), diffusers' forward, tiled.

    python benchmarks/vae_memory.py --device cuda --dtype bf16 --frames 81 --height 480 --width 832
    python benchmarks/vae_memory.py --tiles 256:64 192:32        # tile_size:overlap pairs
    nice -n 10 python benchmarks/vae_memory.py --device cpu --dtype fp32 --frames 9 --height 64 --width 64 --tiles 32:8

Rows: ``framewise`` is ``WanVAE``'s untiled path (``vae/framewise.py``), ``diffusers`` the same
weights through ``AutoencoderKLWan``'s own forward (what the untiled path ran before), then each
tiling (diffusers' forward per tile). Weights are random (speed and memory do not depend on their
values; nothing is downloaded); pass ``--weights`` to time a real file instead. Peak memory: the
requested device's allocator peak on CUDA; on the CPU the bytes of live tensors, from a second run
under tensor tracking (which slows every operator, so the timed run goes without), both above the
level at entry (see peak_memory.py). The last column is the largest difference from the
``framewise`` output: for ``diffusers`` their numerical agreement, for a tiling what it costs in
fidelity (with random weights it is pessimistic: real weights are far more local).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory, synchronize  # noqa: E402

from echomimic_core.vae import Tiling, WanVAE, denormalize_latents, load_vae  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_vae(dtype, device) -> WanVAE:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE's full-size config
    return WanVAE(model).to(device, dtype)


def measure(fn, device):
    """``fn()``'s output, seconds and peak MiB."""
    with PeakMemory(device) if device.type == "cuda" else nullcontext() as memory:
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds = time.perf_counter() - start
    if device.type != "cuda":
        with PeakMemory(device) as memory:
            fn()
    return out, seconds, memory.peak / 2**20


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
    tilings = [Tiling(*map(int, t.split(":"))) for t in args.tiles]

    def diffusers_decode(latent):  # what WanVAE.decode ran before: denormalise, forward, float32, clamp
        raw = denormalize_latents(latent, vae.latents_mean, vae.latents_std).to(device, dtype)
        return vae.model.decode(raw).sample.float().clamp_(-1.0, 1.0)

    runs = {
        "framewise": (lambda: vae.encode(video), vae.decode),
        "diffusers": (lambda: vae.model.encode(video.to(dtype)).latent_dist.parameters, diffusers_decode),
    }
    for t in tilings:
        runs[f"{t.tile_size}:{t.overlap}"] = (
            lambda t=t: vae.encode(video, t),
            lambda latent, t=t: vae.decode(latent, t),
        )

    print(f"Wan2.1 VAE, {args.frames}x{args.height}x{args.width}, {args.dtype} on {device}")
    print(f"{'forward':>14} {'encode s':>9} {'enc MiB':>8} {'decode s':>9} {'dec MiB':>8} {'max|dec-framewise|':>19}")
    vae.encode(video[:, :, :1])  # warm-up: kernels, allocator
    latent = ours = None
    for name, (encode, decode) in runs.items():
        encoded, enc_s, enc_mib = measure(encode, device)
        latent = encoded if latent is None else latent  # every row decodes framewise's latents
        decoded, dec_s, dec_mib = measure(lambda: decode(latent), device)
        ours = decoded if ours is None else ours
        diff = float((decoded - ours).abs().max())
        print(f"{name:>14} {enc_s:9.2f} {enc_mib:8.1f} {dec_s:9.2f} {dec_mib:8.1f} {diff:19.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
