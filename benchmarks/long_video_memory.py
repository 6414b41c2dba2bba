"""Peak memory of a long-video generation against the audio's duration: it should stay flat.

    python benchmarks/long_video_memory.py                       # 10 s, 1 min, 5 min of audio
    python benchmarks/long_video_memory.py --seconds 10 60 --compare
    python benchmarks/long_video_memory.py --size 16 --fps 5      # a loaded 2-core CPU: ~35 min

Each duration runs in a fresh process on the tiny random demo models (``python -m echomimic_core
demo-models``: 2-layer transformer of width 64, 2-layer wav2vec2 of width 64, a small Wan VAE) at a
fixed 32x32 size, one denoising step, chunks of 33 frames overlapping by 4, and writes the mp4 with
``streaming.generate_to_file``, the CLI's path (windowed audio encoding, frames streamed chunk by
chunk). A sampler thread reads the process's resident memory every 20 ms; the table shows the peak
during generation, the resident memory just before it (models loaded), and the growth between the
two. ``--compare`` adds upstream's way for contrast: the whole clip through the audio encoder at
once and every frame kept in memory (``pipeline.generate`` with ``audio_context_seconds=0``, then
``media.write_video``).

``--fps`` lowers the frame rate to make long durations affordable on a CPU: the audio is as long
(waveform, audio windows and seam energy as for 25 fps), there are fewer frames and chunks (5 min at
5 fps: 1500 frames in over 50 chunks), and anything that piled up per chunk would still show.

What grows with duration on the streaming path, by design: the waveform itself (16 kHz mono float32,
3.8 MB a minute, kept once for the encoder and once for the muxer) and the per-frame speech energy
used to place seams (a float per frame). Everything else is one chunk's worth.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAT_TOLERANCE = 0.15  # the peaks of all durations within 15 % of the smallest


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakSampler:
    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def child(seconds: float, mode: str, size: int, fps: float, out_dir: Path) -> dict:
    import torch

    from echomimic_core import media, pipeline, streaming
    from echomimic_core.demo import DEMO_VERSION, demo_face_box, demo_inputs, write_demo_models
    from echomimic_core.model_files import load_models
    from echomimic_core.settings import GenerationSettings

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "echomimic-comfy" / "demo-models"
    models = load_models(write_demo_models(cache / f"v{DEMO_VERSION}"), dtype="float32", device="cpu")
    image, audio, sr = demo_inputs(seconds=seconds, size=size)
    settings = GenerationSettings.for_variant(
        "preview", steps=1, fps=fps, partial_video_length=33, overlap_video_length=4, face_box=demo_face_box(size)
    )
    out = out_dir / f"{mode}_{seconds:g}s.mp4"
    before = rss_mb()
    started = time.perf_counter()
    with PeakSampler() as sampler, torch.no_grad():
        if mode == "streaming":
            result = streaming.generate_to_file(models, image, audio, sr, "a person talks", out, settings)
            frames, chunks = result.frames, result.info["chunks"]
        else:
            whole = dataclasses.replace(settings, audio_context_seconds=0.0)
            result = pipeline.generate(models, image, audio, sr, "a person talks", whole)
            media.write_video(out, result.frames, result.fps, result.audio, result.sample_rate)
            frames, chunks = len(result.frames), result.info["chunks"]
    return {
        "seconds": seconds,
        "mode": mode,
        "frames": frames,
        "chunks": chunks,
        "before_mb": before,
        "peak_mb": sampler.peak,
        "wall_s": time.perf_counter() - started,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 300])
    parser.add_argument("--size", type=int, default=32, help="square frame side in pixels (multiple of 16)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (lower: fewer frames, same audio)")
    parser.add_argument("--compare", action="store_true", help="also run the in-memory whole-clip path")
    parser.add_argument("--child", nargs=2, metavar=("SECONDS", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(float(args.child[0]), args.child[1], args.size, args.fps, args.out)))
        return 0

    rows = []
    modes = ["streaming"] + (["in-memory"] if args.compare else [])
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for seconds in args.seconds:
                cmd = [sys.executable, __file__, "--child", str(seconds), mode, "--size", str(args.size)]
                cmd += ["--fps", str(args.fps), "--out", tmp]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(
        f"\ntiny demo models, {args.size}x{args.size}, {args.fps:g} fps, 1 step, chunks of 33 frames (overlap 4), CPU\n"
    )
    print("| path | audio | frames | chunks | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['seconds']:g} s | {r['frames']} | {r['chunks']} | {r['before_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['peak_mb'] - r['before_mb']:.0f} | {r['wall_s']:.1f} |"
        )
    streamed = [r["peak_mb"] for r in rows if r["mode"] == "streaming"]
    spread = max(streamed) / min(streamed) - 1
    verdict = "flat" if spread <= FLAT_TOLERANCE else "NOT flat"
    print(f"\nstreaming peak RSS spread: {spread * 100:.1f} % ({verdict}: tolerance {FLAT_TOLERANCE * 100:.0f} %)")
    return 0 if spread <= FLAT_TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
