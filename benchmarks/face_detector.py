"""Real-photo check of the face detector (a manual step: the repository ships no photos).

    python benchmarks/face_detector.py PHOTO_OR_FOLDER ... [--out boxes/]
    python benchmarks/face_detector.py --wheel-samples   # portraits shipped inside installed wheels

For every image and every installed detector (``echomimic_core.face_detection``): the faces kept
(box y1, y2, x1, x2; confidence; plausibility), the candidates rejected as implausible, and the time.
``--out`` writes each image with the kept boxes in green, the rejected in red, for a look by eye.
Run it on the official demo portraits (``datasets/echomimicv3_demos/imgs`` of the upstream
repository) or your own references before a long generation or a ``training.prepare`` run.

``--wheel-samples`` uses public-domain portraits that packages carry, when installed: matplotlib's
``sample_data/grace_hopper.jpg`` and scikit-image's ``astronaut.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from echomimic_core import face_detection as fd

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def wheel_samples() -> list[Path]:
    found = []
    for package, relative in (
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        ("skimage", "data/astronaut.png"),
    ):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / relative
            if path.is_file():
                found.append(path)
    return found


def images_in(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument("--wheel-samples", action="store_true", help="add the portraits installed packages carry")
    p.add_argument("--out", type=Path, default=None, help="folder for images with the boxes drawn")
    args = p.parse_args(argv)
    paths = images_in(args.images) + (wheel_samples() if args.wheel_samples else [])
    if not paths:
        p.error("no images: give files or folders, or --wheel-samples (needs matplotlib or scikit-image)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'image':32} {'detector':8} {'ms':>6}  kept (box y1,y2,x1,x2 | conf | plaus) / rejected")
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for name in fd.available_detectors():
            start = time.perf_counter()
            every = fd.detect_faces(rgb, name, min_plausibility=0.0)
            ms = (time.perf_counter() - start) * 1000
            kept = [f for f in every if f.plausibility >= fd.MIN_PLAUSIBILITY]
            rejected = [f for f in every if f.plausibility < fd.MIN_PLAUSIBILITY]
            text = "; ".join(
                f"{tuple(round(v) for v in f.box)} | {f.confidence:.2f} | {f.plausibility:.2f}" for f in kept
            )
            text += f" / {len(rejected)} rejected" if rejected else ""
            print(f"{path.name[:32]:32} {name:8} {ms:6.0f}  {text or 'no face'}")
            if args.out:
                img = Image.fromarray(rgb)
                draw = ImageDraw.Draw(img)
                for face in every:
                    y1, y2, x1, x2 = face.box
                    colour = (0, 220, 0) if face in kept else (230, 0, 0)
                    draw.rectangle([x1, y1, x2, y2], outline=colour, width=3)
                img.save(args.out / f"{path.stem}_{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
