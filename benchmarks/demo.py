"""Where the tiny demo's time goes: loading, encoders, VAE encode/decode, denoising, colour match.

    python benchmarks/demo.py [--variant preview|flash] [--threads 2] [--runs 3]

Runs the demo generation (the demo models, image and 2.4 s of speech; the CLI demo's and the
demo workflows' settings: 4 steps in 33-frame chunks for preview (three, seams in the pauses), flash's auto 8 steps) and
prints each phase's wall and CPU seconds, best of ``--runs``. CPU seconds are what a quiet machine
would take per thread; wall seconds on a busy machine are not the demo's cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_core.demo import demo_face_box, demo_inputs, write_demo_models  # noqa: E402
from echomimic_core.model_files import load_models  # noqa: E402
from echomimic_core.pipeline import generate  # noqa: E402
from echomimic_core.settings import GenerationSettings  # noqa: E402


class Clock:
    """Wall and CPU seconds spent inside named phases (nested phases count in their parent too)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


class TimedVAE:
    """The models' VAE with its encode/decode calls timed (everything else passes through)."""

    def __init__(self, vae, clock: Clock):
        self._vae, self._clock = vae, clock

    def __getattr__(self, name):
        return getattr(self._vae, name)

    def to(self, *args, **kwargs):
        self._vae.to(*args, **kwargs)
        return self

    def encode(self, *args, **kwargs):
        with self._clock.phase("VAE encode"):
            return self._vae.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        with self._clock.phase("VAE decode"):
            return self._vae.decode(*args, **kwargs)


def run(variant: str, folder: Path) -> Clock:
    clock = Clock()
    with clock.phase("load models"):
        models = load_models(write_demo_models(folder, variant=variant), dtype="float32")
    models.vae = TimedVAE(models.vae, clock)
    image, audio, sr = demo_inputs()
    demo = {"steps": 4, "partial_video_length": 33, "overlap_video_length": 4} if variant == "preview" else {}
    settings = GenerationSettings.for_variant(variant, face_box=demo_face_box(), **demo)
    with clock.phase("generate (all below)"):
        result = generate(models, image, audio, sr, "a person is talking to the camera", settings)
    assert len(result.frames) == 60
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("preview", "flash"), default="preview")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="echomimic-demo-bench-"))
    clocks = [run(args.variant, folder) for _ in range(args.runs)]
    phases = list(clocks[0].wall)
    print(f"demo {args.variant}, {args.threads} thread(s), best of {args.runs}")
    print(f"{'phase':24s} {'wall s':>8s} {'cpu s':>8s}")
    for phase in phases:
        wall = min(c.wall[phase] for c in clocks)
        cpu = min(c.cpu[phase] for c in clocks)
        print(f"{phase:24s} {wall:8.2f} {cpu:8.2f}")
    best = min(clocks, key=lambda c: c.wall["generate (all below)"])
    rest = best.wall["generate (all below)"] - best.wall.get("VAE encode", 0) - best.wall.get("VAE decode", 0)
    print(f"{'encoders + denoising':24s} {rest:8.2f} {'':>8s}")


if __name__ == "__main__":
    main()
