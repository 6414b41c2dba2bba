"""How far windowed audio features are from the whole-clip pass, at the real encoders' size.

    python benchmarks/audio_windows.py                          # 60 s, preview + flash, contexts 2..20 s
    python benchmarks/audio_windows.py --seconds 120 --contexts 5 10 --device cuda

wav2vec2-base's configuration (12 layers, width 768, 12 heads, the CNN's whole-clip GroupNorm;
both wav2vec2-base-960h and chinese-wav2vec2-base have it) with *random* weights: nothing is
downloaded. Each context is gathered the way chunks ask for features (preview: 113-frame chunks,
flash: 81, overlapping by 8) and compared with ``features_for_video`` on the whole clip:

* ``rel L2``: ||windowed - whole|| / ||whole|| over every feature;
* ``worst frame``: the largest per-frame relative error;
* ``cos``: the smallest per-frame cosine similarity.

Read the numbers as a pessimistic bound: random attention spreads evenly over every token, so
distant audio weighs in as much as near audio; trained wav2vec2 attends mostly within a few
hundred milliseconds. The columns ``whole peak`` / ``window peak`` are the process's resident
memory growth while encoding (CPU) or CUDA's peak allocation.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from long_video_memory import PeakSampler, rss_mb  # noqa: E402

from echomimic_core.audio_windows import WindowedAudioFeatures  # noqa: E402
from echomimic_core.config import AUDIO_TOKENS_PER_FRAME  # noqa: E402
from echomimic_core.encoders.audio import AudioEncoder  # noqa: E402

CHUNKS = {"preview": (113, 8), "flash": (81, 8)}


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Voiced syllables (a 140 Hz buzz through two formants) with pauses, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    syllables = (torch.sin(2 * math.pi * 3.7 * t) > -0.2).float() * (torch.sin(2 * math.pi * 0.31 * t) > -0.7).float()
    voice = torch.sign(torch.sin(2 * math.pi * 140 * t)) * (0.6 + 0.4 * torch.sin(2 * math.pi * 700 * t))
    return (0.3 * voice * syllables + 0.01 * torch.randn(t.shape, generator=g)).float()


def gather(source, num_frames: int, length: int, overlap: int) -> torch.Tensor:
    per = 1 if source.kind == "flash" else AUDIO_TOKENS_PER_FRAME
    parts, start = [], 0
    while start < num_frames:
        keep = length - overlap if start + length < num_frames else length
        parts.append(source.features(start, length)[:, : per * keep])
        start += length - overlap
    return torch.cat(parts, 1)[:, : per * num_frames]


def per_frame(x: torch.Tensor, kind: str) -> torch.Tensor:
    """[frames, features] for comparing frame by frame."""
    if kind == "flash":
        return x[0].reshape(x.shape[1], -1)
    return x[0].reshape(-1, AUDIO_TOKENS_PER_FRAME * x.shape[-1])


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_mb()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = sampler.peak - before
    return out, time.perf_counter() - start, peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--contexts", type=float, nargs="+", default=[2.0, 5.0, 10.0, 20.0])
    parser.add_argument("--kinds", nargs="+", default=["preview", "flash"], choices=list(CHUNKS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fps", type=float, default=25.0)
    args = parser.parse_args(argv)
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Wav2Vec2Model(Wav2Vec2Config(mask_time_prob=0.0)).eval().to(device)  # wav2vec2-base's shape
    wav = speech_like(args.seconds)
    frames = int(args.seconds * args.fps)
    print(f"\nwav2vec2-base config, random weights, {args.seconds:g} s of audio, {frames} frames, {args.device}\n")
    print("| path | context | rel L2 | worst frame | min cos | time (s) | peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for kind in args.kinds:
            encoder = AudioEncoder(model, kind, loudness_norm=False)
            whole, seconds, peak = measure(lambda: encoder.features_for_video(wav, frames, args.fps).cpu(), device)
            print(f"| {kind} whole clip | - | 0 | 0 | 1 | {seconds:.1f} | {peak:.0f} |")
            reference = per_frame(whole, kind)
            length, overlap = CHUNKS[kind]
            for context in args.contexts:

                def windowed(context=context):
                    source = WindowedAudioFeatures(encoder, wav, frames, args.fps, context)
                    return gather(source, frames, length, overlap)

                out, seconds, peak = measure(windowed, device)
                got = per_frame(out, kind)
                diff = got - reference
                rel = float(diff.norm() / reference.norm())
                worst = float((diff.norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)).max())
                cos = float(torch.nn.functional.cosine_similarity(got, reference, dim=1).min())
                print(
                    f"| {kind} windows | {context:g} s | {rel:.4f} | {worst:.4f} | {cos:.4f} | {seconds:.1f} | {peak:.0f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
