"""Read a state dict from whatever layout a checkpoint arrives in.

Supported: a single ``.safetensors`` file, a ``.pth``/``.pt``/``.bin``/``.ckpt`` pickle (read with
``weights_only=True``, unwrapping a ``state_dict``/``module``/``model`` entry), and a folder holding
one weights file or a sharded set described by ``*.safetensors.index.json`` /
``pytorch_model.bin.index.json`` (diffusers / Hugging Face style).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "module", "model", "ema")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the slot it was given to."""


def _read_safetensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise _truncated_safetensors(path, e) from e


def _truncated_safetensors(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path}: not a readable safetensors file ({error}). The file is probably truncated "
        "(an interrupted download); download it again."
    )


def _read_pickle(path: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # files from torch < 1.6 (no zip container) cannot be memory-mapped: read them whole
            obj = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({e}). "
            "Either the file is truncated or it contains code rather than plain tensors; "
            "use the .safetensors release of this model."
        ) from e
    for _ in range(3):  # nested wrappers, e.g. {"module": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors.")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: contains no tensors.")
    return tensors


def _shard_files(folder: Path) -> list[Path] | None:
    for index in sorted(folder.glob("*.index.json")):
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        shards = sorted({folder / name for name in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise CheckpointError(
                f"{folder}: the index {index.name} lists shards that are missing: {missing}. "
                "Download every shard into the same folder."
            )
        return shards
    return None


def weight_files(path: str | Path) -> list[Path]:
    """The weight file(s) a path stands for: itself, or the (sharded) weights inside a folder."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder.")
    if path.is_file():
        return [path]
    shards = _shard_files(path)
    if shards:
        return shards
    candidates = [
        p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
    ]
    preferred = [p for p in candidates if p.suffix in SAFETENSORS_SUFFIXES] or candidates
    if len(preferred) != 1:
        found = [p.name for p in candidates] or "no weight files"
        raise CheckpointError(
            f"{path}: expected one weights file (.safetensors/.pth) or a sharded set with an "
            f"*.index.json, found {found}. Point at the file itself."
        )
    return preferred


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor, without reading the tensors of a safetensors file.

    Cheap enough to validate a 3 GB checkpoint before anything heavy happens (pickles are
    memory-mapped, so only their index is read).
    """
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for file in weight_files(path):
        _check_not_empty(file)
        if file.suffix not in SAFETENSORS_SUFFIXES:
            shapes.update({k: (tuple(v.shape), v.dtype) for k, v in _read_pickle(file, "cpu").items()})
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    shapes[name] = (tuple(sl.get_shape()), _SAFETENSORS_DTYPES.get(sl.get_dtype()))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise _truncated_safetensors(file, e) from e
    return shapes


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header ({} for pickles and sharded folders)."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(path)
    if len(files) != 1 or files[0].suffix not in SAFETENSORS_SUFFIXES:
        return {}
    _check_not_empty(files[0])
    try:
        with safe_open(str(files[0]), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError) as e:
        raise _truncated_safetensors(files[0], e) from e


def _check_not_empty(file: Path) -> None:
    if file.stat().st_size == 0:
        raise CheckpointError(f"{file}: the file is empty (an interrupted download?). Download it again.")


def load_state_dict(
    path: str | Path, device: str = "cpu", strip_prefixes: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, with the first matching prefix in ``strip_prefixes`` removed.

    Pickles are memory-mapped and safetensors are read lazily by the OS, so a large file is not
    copied into RAM before the model assigns its tensors.
    """
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        _check_not_empty(file)
        read = _read_safetensors if file.suffix in SAFETENSORS_SUFFIXES else _read_pickle
        state.update(read(file, device))
    return strip_prefix(state, strip_prefixes)


def strip_prefix(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove the first prefix that every key carries (e.g. ``model.diffusion_model.``)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write safetensors atomically: a temp file renamed into place, so an interrupt leaves nothing."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
