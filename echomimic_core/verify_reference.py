"""Check our implementation against upstream parity fixtures.

    python -m echomimic_core.verify_reference DIR [--tolerance 1e-5]

Every ``*.safetensors`` fixture in DIR (format: ``tests/data/reference/README.md``) is routed by its
file-name prefix to the ``verify_fixture(path, meta)`` function of the module that implements it.
Each returns ``{check name: relative error}``; the command prints one line per check and exits 1
if any error is above the tolerance (2 if a fixture could not be run at all).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# (file-name prefix, implementing module, meta file used when no "<stem>_meta.json" exists)
FIXTURE_FAMILIES = (
    ("preview_", "echomimic_core.model.transformer", "tiny_meta.json"),
    ("flash_", "echomimic_core.model.transformer", "tiny_meta.json"),
    ("vae_", "echomimic_core.vae", "vae_tiny_meta.json"),
    ("umt5_", "echomimic_core.encoders.text", "encoders_tiny_meta.json"),
    ("clip_vision_", "echomimic_core.encoders.image", "encoders_tiny_meta.json"),
    ("samplers", "echomimic_core.sampling.schedulers", "samplers_meta.json"),
    ("task_masks", "echomimic_core.task_masks", "task_masks_meta.json"),
    ("audio_", "echomimic_core.encoders.audio", "audio_tiny_meta.json"),
)


def relative_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|, computed in float64."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def find_meta(fixture: Path, default_name: str) -> dict:
    for candidate in (fixture.with_name(fixture.stem + "_meta.json"), fixture.with_name(default_name)):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"{fixture.name}: no meta file ({fixture.stem}_meta.json or {default_name}) beside it.")


def family_of(fixture: Path):
    return next((f for f in FIXTURE_FAMILIES if fixture.name.startswith(f[0])), None)


def verify_dir(directory: Path) -> list[tuple[str, str, float | None, str]]:
    """Rows (fixture, check, rel err or None, error message) for every known fixture in a folder."""
    rows = []
    fixtures = [p for p in sorted(directory.glob("*.safetensors")) if family_of(p)]
    if not fixtures:
        raise FileNotFoundError(f"{directory}: no parity fixtures (*.safetensors with a known prefix).")
    for fixture in fixtures:
        _, module_name, meta_name = family_of(fixture)
        try:
            meta = find_meta(fixture, meta_name)
            errors = importlib.import_module(module_name).verify_fixture(fixture, meta)
            rows += [(fixture.name, check, err, "") for check, err in errors.items()]
        except Exception as e:  # report and continue with the other fixtures
            log.debug("fixture %s failed", fixture, exc_info=True)
            rows.append((fixture.name, "-", None, f"{type(e).__name__}: {e}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m echomimic_core.verify_reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = verify_dir(args.directory)
    width = max(len(f"{name} {check}") for name, check, _, _ in rows)
    worst = 0
    for name, check, err, msg in rows:
        label = f"{name} {check}".ljust(width)
        if err is None:
            print(f"{label}  ERROR {msg}")
            worst = max(worst, 2)
        else:
            ok = err <= args.tolerance
            print(f"{label}  rel err {err:.3e}  {'ok' if ok else 'FAIL'}")
            worst = max(worst, 0 if ok else 1)
    return worst


if __name__ == "__main__":
    sys.exit(main())
