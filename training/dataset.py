"""The preprocessed cache: safetensors shards + ``index.json``, and a resumable sample stream.

Layout of a cache folder (written by ``training.preprocess``)::

    index.json               {"kind": "sft"|"dpo", "items": [{"id", "shard", ...metadata}]}
    shard-00000.safetensors  tensors "<id>/<name>" for every item of that shard
    nulls.safetensors        "text": the empty-prompt embedding (dropped text)

Per SFT item: ``latents`` [16, F, h, w], ``cond.<task>`` [16, F, h, w] (masked-video latents per
task), ``text`` [L, D], ``clip`` [257, C], ``audio`` (the encoder's per-clip features), plus
metadata ``mouth_box`` / ``face_box`` as ``{"top", "bottom", "left", "right"}`` fractions of the frame
when known (read as :class:`echomimic_core.boxes.Box`; caches written before the one-box convention
hold ``[x0, y0, x1, y1]`` lists, read the same way). Caches written before the task rename hold
``cond.mouth``; it is read as ``cond.lipsync``.
Per DPO item: ``chosen.latents`` and ``rejected.latents`` with the shared ``cond.first_frame``,
``text``, ``clip``, ``audio``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from echomimic_core.checkpoints.files import save_state_dict
from training.boxes import read_box

log = logging.getLogger(__name__)

INDEX = "index.json"
NULLS = "nulls.safetensors"
# tensor names of caches written before training took the core's task names
LEGACY_KEYS = {"cond.mouth": "cond.lipsync"}
BOX_KEYS = ("mouth_box", "face_box")


def read_index(folder: str | Path) -> dict:
    path = Path(folder) / INDEX
    if not path.is_file():
        return {"kind": None, "items": []}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path}: not a readable index ({e}); the cache folder is damaged. Delete {INDEX} and the "
            "shards and run `python -m training.preprocess` again."
        ) from None
    items = index.get("items") if isinstance(index, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i and "shard" in i for i in items):
        raise ValueError(
            f'{path}: expected {{"kind": ..., "items": [{{"id", "shard", ...}}]}}; the cache folder is damaged. '
            "Run `python -m training.preprocess` into a new folder."
        )
    return index


def write_index(folder: str | Path, index: dict) -> None:
    """Atomic: a reader (or a killed writer) never sees half an index."""
    path = Path(folder) / INDEX
    tmp = path.with_name(INDEX + ".partial")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(path)


CACHE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def write_shard(
    folder: str | Path, shard_name: str, items: dict[str, dict[str, torch.Tensor]], dtype: str = "bf16"
) -> None:
    """Floating tensors are stored as ``dtype`` (bf16 halves the cache; training reads float32)."""
    store = CACHE_DTYPES[dtype]
    flat = {
        f"{item_id}/{name}": (t.to(store) if t.is_floating_point() else t).detach().cpu().contiguous()
        for item_id, tensors in items.items()
        for name, t in tensors.items()
    }
    save_state_dict(flat, Path(folder) / shard_name)


class CachedDataset(torch.utils.data.Dataset):
    """Items of a preprocessed cache folder, read lazily from their shard."""

    def __init__(self, folder: str | Path, kind: str = "sft"):
        self.folder = Path(folder)
        index = read_index(self.folder)
        if not index["items"]:
            raise FileNotFoundError(
                f"{self.folder}: no preprocessed items ({INDEX} missing or empty). "
                "Run `python -m training.preprocess` first."
            )
        if index.get("kind") != kind:
            raise ValueError(f"{self.folder}: holds {index.get('kind')!r} items, expected {kind!r}.")
        self.items = index["items"]
        _check_shards(self.folder, self.items, "latents" if kind == "sft" else "chosen.latents")
        # latent shape per item (recorded by preprocess): batches are drawn within one shape
        shapes = [item.get("shape") for item in self.items]
        self.buckets = [tuple(s) for s in shapes] if all(shapes) else None
        nulls = self.folder / NULLS
        self.null_text = _read_all(nulls)["text"] if nulls.is_file() else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        meta = self.items[i]
        prefix = meta["id"] + "/"
        with safe_open(str(self.folder / meta["shard"]), framework="pt") as f:
            tensors = {
                LEGACY_KEYS.get(k[len(prefix) :], k[len(prefix) :]): _float32(f.get_tensor(k))
                for k in f.keys()
                if k.startswith(prefix)
            }
        boxes = {key: read_box(meta.get(key), f"{meta['id']}: {key}") for key in BOX_KEYS}
        # the mask channels of every task the item can train, built here (in the DataLoader's
        # workers) rather than in the training step
        from training.tasks import mask_latents

        for key in [k for k in tensors if k.startswith("cond.")]:
            task = key[len("cond.") :]
            tensors[f"mask.{task}"] = mask_latents(task, tensors[key].shape[1:], boxes["mouth_box"])
        return {"id": meta["id"], **boxes, **tensors}


def _open_shard(path: Path):
    """safe_open, or ValueError naming the file (safetensors checks the header covers the file,
    so a truncated shard fails here, not in a data worker mid-training)."""
    from safetensors import SafetensorError

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path}: not a readable shard ({e}); it is truncated or damaged. Remove it and its items from "
            f"{INDEX} (or the whole folder) and run `python -m training.preprocess` again."
        ) from None


def _check_shards(folder: Path, items: list[dict], key: str) -> None:
    """Every shard the index names opens, and holds each of its items' ``key`` tensor."""
    by_shard: dict[str, list[str]] = {}
    for item in items:
        by_shard.setdefault(item["shard"], []).append(item["id"])
    for shard, ids in by_shard.items():
        path = folder / shard
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing, though {INDEX} lists {len(ids)} items in it.")
        with _open_shard(path) as f:
            names = set(f.keys())
        missing = [i for i in ids if f"{i}/{key}" not in names]
        if missing:
            raise ValueError(f"{path}: lacks the items {missing[:5]} that {INDEX} places in it; the cache is damaged.")


def _float32(t: torch.Tensor) -> torch.Tensor:
    """bf16 caches train in float32 (master weights, losses); integer tensors stay as they are."""
    return t.float() if t.is_floating_point() else t


def _read_all(path: Path) -> dict[str, torch.Tensor]:
    with _open_shard(path) as f:
        return {k: _float32(f.get_tensor(k)) for k in f.keys()}


def collate(samples: list[dict]) -> dict:
    """Stack same-shaped tensors; text stays a list (prompts differ in length)."""
    out: dict = {
        "id": [s["id"] for s in samples],
        "mouth_box": [s["mouth_box"] for s in samples],
        "face_box": [s["face_box"] for s in samples],
        "text": [s["text"] for s in samples],
    }
    for key in samples[0]:
        if key in out or key.startswith(("cond.", "mask.")):
            continue
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) != 1:
            raise ValueError(
                f"batch items differ in {key!r} shape {sorted(shapes)}: preprocess every "
                "clip to one resolution and frame count (or use batch_size 1)."
            )
        out[key] = torch.stack([s[key] for s in samples])
    # Tasks whose latents a sample lacks (e.g. no mouth box) get zeros so the batch stacks;
    # task sampling never picks them for that sample.
    task_keys = sorted({k for s in samples for k in s if k.startswith(("cond.", "mask."))})
    for key in task_keys:
        if key not in out:
            ref = next(s[key] for s in samples if key in s)
            out[key] = torch.stack([s.get(key, torch.zeros_like(ref)) for s in samples])
    return out


class StreamSampler(torch.utils.data.Sampler):
    """An endless stream of indices: epoch e is a permutation seeded by (seed, e).

    Sample k of the stream depends only on (seed, k), so a resumed run starts at ``start`` (the
    number of samples already consumed) and sees exactly what the uninterrupted run would have.

    With ``buckets`` (one hashable key per item, e.g. its latent shape) every run of
    ``batch_size`` consecutive indices shares a key, so batches stack even when the cache mixes
    resolutions or lengths: each epoch shuffles within buckets, cuts full batches (a bucket's
    remainder waits for another epoch) and shuffles the batches.
    """

    def __init__(self, length: int, seed: int, start: int = 0, batch_size: int = 1, buckets: list | None = None):
        self.length, self.seed, self.start = length, seed, start
        self.batch_size, self.buckets = batch_size, buckets
        self.epoch_length = len(self._epoch(0))
        if self.epoch_length == 0:
            raise ValueError(
                f"no shape bucket holds a full batch of {batch_size} items; lower the "
                "batch size or preprocess more clips at one resolution and length."
            )

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.buckets is None or len(set(self.buckets)) == 1:
            return torch.randperm(self.length, generator=g).tolist()
        batches = []
        for key in sorted(set(self.buckets), key=repr):
            members = [i for i, b in enumerate(self.buckets) if b == key]
            members = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
            batches += [
                members[k : k + self.batch_size] for k in range(0, len(members) - self.batch_size + 1, self.batch_size)
            ]
        return [i for j in torch.randperm(len(batches), generator=g).tolist() for i in batches[j]]

    def __iter__(self):
        position = self.start
        while True:
            epoch, offset = divmod(position, self.epoch_length)
            for index in self._epoch(epoch)[offset:]:
                yield index
                position += 1

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs an int
        return 2**62
