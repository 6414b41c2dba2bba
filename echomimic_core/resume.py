"""Resumable long runs: finished chunks kept beside the output until the mp4 is complete.

A chunked generation writing ``OUT.mp4`` keeps, in ``OUT.mp4.parts/``:

* ``run.json``: the run's fingerprint (a hash of everything that shapes the frames: settings,
  prompt, reference, audio, task, model weights, chunk plan, and the drift meter when redo uses
  it: ``streaming.run_inputs_for``), the settings in readable form and
  the number of chunks;
* ``chunk_00000.mp4`` ...: each finished chunk's final frames (video only, see
  ``media.write_video_part``);
* ``state.safetensors``: what the next chunk needs and cannot recompute: the frames it blends
  over, the noise generator's state, the colour-match reference, and the drift report so far.

Running the same generation again finds the parts, checks the fingerprint and resumes at the first
chunk that is not finished (``resuming at chunk K of N``); a different fingerprint means different
settings or inputs, and the old parts are discarded. The folder is removed once the mp4 is
written. Every file is written to a temporary name and renamed, so a run killed at any moment
leaves either the old state or the new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when what a chunk holds changes, so old parts are not reused
RUN_FILE = "run.json"
STATE_FILE = "state.safetensors"


def parts_dir(out: str | Path) -> Path:
    """``OUT.mp4`` -> ``OUT.mp4.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


# ---------------------------------------------------------------------------------------------
# fingerprints


def tensor_digest(value: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (None -> "none")."""
    if value is None:
        return "none"
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value if value.dtype == torch.uint8 else value.float()).numpy()
    array = np.ascontiguousarray(value)
    h = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def module_digest(module: Any, samples: int = 64) -> str:
    """A cheap fingerprint of a model's weights: every tensor's name, shape, dtype and its first and
    last ``samples`` values. Any other checkpoint, a LoRA merge or a precision change alters it;
    hashing every byte of a 1.3B model would take longer than a chunk."""
    if module is None:
        return "none"
    inner = getattr(module, "model", module)  # encoder wrappers keep the torch module in .model
    if not isinstance(inner, torch.nn.Module):
        return type(module).__name__
    h = hashlib.sha256()
    for name, tensor in inner.state_dict().items():
        if tensor.is_meta:
            continue
        flat = tensor.detach().reshape(-1)
        picked = torch.cat([flat[:samples], flat[-samples:]]).cpu()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(picked.float().numpy().tobytes() if picked.dtype != torch.uint8 else picked.numpy().tobytes())
    return h.hexdigest()


def fingerprint(parts: dict[str, Any]) -> str:
    """sha256 of a JSON-able description of a run (keys sorted)."""
    text = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the parts folder


@dataclass
class ResumePoint:
    """Where a run continues: the next chunk to render and the state chunk ``next_chunk - 1`` left."""

    next_chunk: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. held frames, generator state
    values: dict[str, Any] = field(default_factory=dict)  # JSON-able: counters, report entries


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PartStore:
    """The ``OUT.mp4.parts/`` folder of one run (see the module docstring)."""

    def __init__(self, out: str | Path, run_key: str, num_chunks: int, description: dict[str, Any] | None = None):
        self.out = Path(out)
        self.folder = parts_dir(self.out)
        self.run_key, self.num_chunks = run_key, num_chunks
        self.description = description or {}

    def part_path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:05d}.mp4"

    # -- opening -------------------------------------------------------------------------------

    def open(self, resume: bool = True) -> ResumePoint:
        """Start afresh or pick up where a killed run of the same generation stopped."""
        point = self._load() if resume else None
        if point is None:
            self.discard()
            self.folder.mkdir(parents=True, exist_ok=True)
            run = {"version": FORMAT_VERSION, "run": self.run_key, "chunks": self.num_chunks, **self.description}
            _write_atomic(self.folder / RUN_FILE, json.dumps(run, indent=1, default=str).encode())
            return ResumePoint()
        # parts past the saved state were written by a run killed before it saved that chunk's state
        for stale in self.folder.glob("chunk_*.mp4"):
            if int(stale.stem.split("_")[1]) >= point.next_chunk:
                stale.unlink()
        log.info("resuming at chunk %d of %d (%s)", point.next_chunk + 1, self.num_chunks, self.folder)
        return point

    def peek(self, resume: bool = True) -> ResumePoint:
        """What :meth:`open` would resume from, without changing the folder (for the other ranks of
        a parallel run, while rank 0 opens it)."""
        return (self._load() if resume else None) or ResumePoint()

    def _load(self) -> ResumePoint | None:
        run_file = self.folder / RUN_FILE
        if not run_file.is_file():
            return None
        try:
            run = json.loads(run_file.read_text())
        except (OSError, ValueError):
            log.warning("%s is unreadable; starting afresh", run_file)
            return None
        if run.get("run") != self.run_key or run.get("version") != FORMAT_VERSION:
            log.info(
                "%s holds chunks of another generation (%s differ); starting afresh",
                self.folder,
                ", ".join(differences(run, self.description)) or "format version",
            )
            return None
        point = self._load_state()
        if point is None:
            return None
        missing = [i for i in range(point.next_chunk) if not self.part_path(i).is_file()]
        if missing:
            log.warning("%s misses chunk(s) %s; starting afresh", self.folder, missing[:5])
            return None
        return point

    def _load_state(self) -> ResumePoint | None:
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                values = json.loads(f.metadata()["values"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any damage to the file means: recompute
            log.warning("%s is unreadable (%s); starting afresh", path, e)
            return None
        return ResumePoint(int(values.pop("next_chunk")), tensors, values)

    # -- recording -----------------------------------------------------------------------------

    def save_chunk(self, index: int, write_part, point: ResumePoint) -> None:
        """Record chunk ``index`` as finished: ``write_part(path)`` writes its frames (or nothing,
        for a chunk that adds no output frame), then the state that resumes after it."""
        write_part(self.part_path(index))
        from safetensors.torch import save

        values = {**point.values, "next_chunk": point.next_chunk}
        tensors = {k: v.detach().cpu().contiguous() for k, v in point.tensors.items() if v is not None}
        _write_atomic(self.folder / STATE_FILE, save(tensors, metadata={"values": json.dumps(values, default=str)}))

    def parts(self) -> list[Path]:
        """The finished chunks' video files, in order (chunks that added no frame have none)."""
        return [p for p in (self.part_path(i) for i in range(self.num_chunks)) if p.is_file()]

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the entries that differ between two run descriptions, one level of nesting
    spelled out (``settings.seed``), so the log says what changed."""
    names = []
    for key in sorted(set(old) | set(new)):
        if key in ("run", "version", "chunks"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            names.append(key)
    return names


def settings_summary(settings) -> dict[str, Any]:
    """The settings as a flat JSON-able dict (recorded in run.json to name what changed)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}
