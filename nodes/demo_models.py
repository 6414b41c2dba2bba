"""Write the tiny random demo models into ComfyUI's model folders, and a demo face + speech clip.

    python -m nodes.demo_models [MODELS_DIR] [--input-dir INPUT_DIR] [--overwrite]

MODELS_DIR is ComfyUI's ``models`` folder; INPUT_DIR its ``input`` folder. Run from the pack's folder
inside ``ComfyUI/custom_nodes/`` and both default to that ComfyUI's. Then open the template
``echomimic_demo_tiny`` (preview) or ``echomimic_demo_flash_tiny`` (flash): they run on these files
on a CPU. The weights are random (seeded), so the video is noise, but every step of the real path runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import wave
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_IMAGE = "echomimic_demo_face.png"
DEMO_AUDIO = "echomimic_demo_speech.wav"


def comfyui_root() -> Path | None:
    """The ComfyUI folder this pack is installed in (``ComfyUI/custom_nodes/<pack>``), or None.

    A pack folder symlinked into ``custom_nodes`` (a common developer install) is only seen as
    installed through the shell's logical working directory: ``python -m`` builds ``__file__`` from
    the physical one, where the symlink is already resolved away.
    """
    pack = Path(__file__).resolve().parents[1]
    candidates = [Path(os.path.abspath(__file__)).parents[1], pack]
    pwd = os.environ.get("PWD")
    if pwd and os.path.isabs(pwd):
        # The pack folder itself or a folder inside it, reached through the symlink.
        for folder in (Path(pwd), *Path(pwd).parents):
            if folder.resolve() == pack:
                candidates.insert(0, folder)
                break
    for folder in candidates:
        root = folder.parent.parent
        if folder.parent.name == "custom_nodes" and (root / "models").is_dir():
            return root
    return None


def write_demo_inputs(input_dir: str | Path, seconds: float = 2.4) -> tuple[Path, Path]:
    """The demo reference image (PNG) and speech-like clip (16-bit WAV, 16 kHz) in ``input_dir``."""
    import numpy as np
    from PIL import Image

    from echomimic_core.demo import demo_inputs

    folder = Path(input_dir)
    folder.mkdir(parents=True, exist_ok=True)
    image, audio, rate = demo_inputs(seconds=seconds)
    image_path, audio_path = folder / DEMO_IMAGE, folder / DEMO_AUDIO
    Image.fromarray(image).save(image_path)
    samples = (np.clip(audio[0].numpy(), -1.0, 1.0) * 32767).round().astype("<i2")
    with wave.open(str(audio_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return image_path, audio_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.demo_models", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "models_dir", nargs="?", help="ComfyUI's models folder (default: the ComfyUI this pack is installed in)"
    )
    parser.add_argument(
        "--input-dir", help="ComfyUI's input folder for the demo image and audio (default: beside models_dir)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = comfyui_root()
    if args.models_dir is None and root is None:
        parser.error(
            "give ComfyUI's models folder: this pack is not inside ComfyUI/custom_nodes/, so it "
            "cannot be found on its own."
        )
    models = Path(args.models_dir) if args.models_dir else root / "models"
    inputs = Path(args.input_dir) if args.input_dir else models.parent / "input"

    from echomimic_core.config import VARIANTS
    from echomimic_core.demo import write_demo_models

    write_demo_models(models, overwrite=args.overwrite)
    written = {path for v in VARIANTS for path in vars(write_demo_models(models, variant=v)).values() if path}
    for path in (*sorted(written), *write_demo_inputs(inputs)):
        print(f"  {path}")
    print(
        "Open the template echomimic_demo_tiny.json (preview) or echomimic_demo_flash_tiny.json (flash) "
        "in ComfyUI (Templates, or drag it from workflows/) and run it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
