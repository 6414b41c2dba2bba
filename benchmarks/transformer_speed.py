"""Time and peak memory of one transformer forward, optionally against upstream EchoMimicV3.

    python benchmarks/transformer_speed.py --preset preview --frames 17 --height 320 --width 320 \
        --layers 4 --dtype float32 --device cpu --repeats 2 [--upstream /tmp/upstream]

``--upstream PATH`` is a local checkout of antgroup/echomimic_v3 (its ``src/`` package; never
committed here). Its transformer is built from the same config, given the same weights (shared
storage, no second copy) and run on the same input in this process; the table then shows both
rows (runs interleaved; minimum wall and process-CPU time, as other load only adds), the ratios
and the max relative difference of the outputs. Upstream needs ``einops``
(flash) and imports diffusers. Peak memory is the rise over the pre-forward level: CUDA allocator
peak on GPU, resident-set size sampled every millisecond on CPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory, return_freed_memory_to_os, synchronize  # noqa: E402

from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.model.conditioning import Conditioning  # noqa: E402
from echomimic_core.model.transformer import EchoMimicTransformer  # noqa: E402
from echomimic_core.vae_frames import VAE_SPATIAL_STRIDE, latent_frames, pixel_frames  # noqa: E402


def make_inputs(config: TransformerConfig, frames: int, height: int, width: int, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = (latent_frames(frames), height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
    video_frames = pixel_frames(lat[0])
    if config.variant == "preview":
        audio = torch.randn(1, config.audio_tokens_per_frame * video_frames, config.audio_in_dim, generator=g)
    else:
        audio = torch.randn(
            1, video_frames, config.audio_window, config.audio_blocks, config.audio_channels, generator=g
        )
    tokens_per_frame = (lat[1] // config.patch_size[1]) * (lat[2] // config.patch_size[2])
    cond = Conditioning(
        context=[torch.randn(120, config.text_dim, generator=g)],
        clip_fea=torch.randn(1, config.clip_tokens, config.clip_dim, generator=g),
        y=torch.randn(1, config.in_dim - 16, *lat, generator=g),
        audio=audio,
        # upstream flash has no face gate: give it none so both compute the same
        face_gate=(
            (torch.rand(1, tokens_per_frame, generator=g) > 0.5).float() if config.variant == "preview" else None
        ),
        audio_scale=1.0,
    )
    x = torch.randn(1, 16, *lat, generator=g)
    return x.to(device, dtype), torch.tensor([700.0], device=device), cond.to(device, dtype)


def upstream_transformer(path: Path, config: TransformerConfig, state_dict: dict) -> torch.nn.Module:
    """Upstream's transformer module of ``config``, holding ``state_dict``'s tensors (shared storage)."""
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    if importlib.util.find_spec("einops") is None and config.variant == "preview":
        # preview imports einops but never calls it
        sys.modules["einops"] = types.SimpleNamespace(rearrange=None)
    name = "src.wan_transformer3d_audio_2512" if config.variant == "flash" else "src.wan_transformer3d_audio"
    module = importlib.import_module(name)
    c = config
    model = module.WanTransformerAudioMask3DModel(
        model_type="i2v",
        patch_size=c.patch_size,
        text_len=c.text_len,
        in_dim=c.in_dim,
        dim=c.dim,
        ffn_dim=c.ffn_dim,
        freq_dim=c.freq_dim,
        text_dim=c.text_dim,
        out_dim=c.out_dim,
        num_heads=c.num_heads,
        num_layers=c.num_layers,
        qk_norm=c.qk_norm,
        cross_attn_norm=c.cross_attn_norm,
        eps=c.eps,
    )
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def load_upstream(path: Path, config: TransformerConfig, state_dict: dict, device, dtype):
    """Upstream's transformer with our weights (shared storage) and a call adapter."""
    model = upstream_transformer(path, config, state_dict).to(device)
    c = config

    def run(x, t, cond):
        latent_t = x.shape[2]
        seq_len = latent_t * (x.shape[3] // c.patch_size[1]) * (x.shape[4] // c.patch_size[2])
        if c.variant == "flash":
            context = (cond.context, cond.audio, latent_t, cond.face_gate)
        else:
            context = (cond.context, cond.audio, latent_t, cond.face_gate, cond.audio_scale)
        return model(x=x, t=t, context=context, seq_len=seq_len, clip_fea=cond.clip_fea, y=cond.y)

    return run


def measure(fns: dict, device, repeats: int) -> dict:
    """Run each model ``repeats`` times, interleaved so that load from other processes hits all
    of them alike. Returns name -> (min wall s, min process CPU s, peak bytes, last output)."""
    results = {name: ([], [], [], None) for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()  # warm-up (allocator, kernels, RoPE tables)
        for _ in range(repeats):
            for name, fn in fns.items():
                walls, cpus, peaks, _ = results[name]
                with PeakMemory(device, mode="rss") as mem:  # RSS: tensor tracking would slow the run
                    wall, cpu = time.perf_counter(), time.process_time()
                    out = fn()
                    synchronize(device)
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                peaks.append(mem.peak)
                results[name] = (walls, cpus, peaks, out)
                del out
    return {name: (min(w), min(c), max(p), o) for name, (w, c, p, o) in results.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="preview")
    p.add_argument("--frames", type=int, default=17, help="video frames (latent frames = (n-1)/4 + 1)")
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--layers", type=int, default=None, help="override num_layers (time scales linearly)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--upstream", type=Path, default=None, help="local upstream checkout (contains src/)")
    args = p.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu":
        return_freed_memory_to_os()
    config = TransformerConfig.preset(args.preset)
    if args.layers:
        config = TransformerConfig.from_dict({**config.to_dict(), "num_layers": args.layers})
    torch.manual_seed(0)
    with torch.device("meta"):
        ours = EchoMimicTransformer(config, attention_backend=args.attention)
    ours = ours.to_empty(device=device)
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0, 0.02)
    ours = ours.to(dtype).eval()
    x, t, cond = make_inputs(config, args.frames, args.height, args.width, device, dtype)
    tokens = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)

    fns = {"ours": lambda: ours(x, t, cond)}
    if args.upstream is not None:
        upstream = load_upstream(args.upstream, config, ours.state_dict(), device, dtype)
        fns["upstream"] = lambda: upstream(x, t, cond)
    rows = measure(fns, device, args.repeats)

    print(
        f"preset={args.preset} layers={config.num_layers} tokens={tokens} latents={tuple(x.shape)} "
        f"dtype={args.dtype} device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"{'model':<10} {'wall s (min)':>13} {'CPU s (min)':>12} {'peak MiB':>10}")
    for name, (wall, cpu, peak, _) in rows.items():
        print(f"{name:<10} {wall:>13.3f} {cpu:>12.3f} {peak / 2**20:>10.1f}")
    if "upstream" in rows:
        (w0, c0, m0, o0), (w1, c1, m1, o1) = rows["ours"], rows["upstream"]
        err = float((o0.double() - o1.double()).abs().max() / o1.double().abs().max())
        print(f"{'ratio':<10} {w0 / w1:>13.3f} {c0 / c1:>12.3f} {m0 / max(m1, 1):>10.3f}   (ours / upstream)")
        print(f"max relative output difference: {err:.2e}")


if __name__ == "__main__":
    main()
