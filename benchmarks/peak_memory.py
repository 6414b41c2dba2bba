"""Peak memory of a block of code, the same way on a GPU and on this CPU-only machine.

``PeakMemory(device)`` is a context manager; after the block, ``.peak`` is the highest number of
bytes above the level at entry, measured as:

* CUDA: the caching allocator's ``max_memory_allocated`` of *that* device (``cuda:1`` reads
  ``cuda:1``'s statistics, not the current device's).
* CPU, ``mode="tensors"`` (default): the bytes of tensor storages created inside the block and
  alive at the same time, tracked by a ``TorchDispatchMode`` that sees every tensor an operator
  returns and a weak reference that sees it freed. This is what ``max_memory_allocated`` counts
  on a GPU (live tensor bytes), without the allocator's rounding and without scratch memory a
  kernel allocates internally; it does not depend on the C allocator, other threads or Python
  objects, so it is exact and repeatable.
* CPU, ``mode="rss"``: the process's resident set, sampled every millisecond, with glibc told to
  serve large allocations by mmap so freed tensors leave RSS (otherwise the heap keeps them and
  RSS never falls). Includes everything (kernel scratch, allocator slack), so it is noisier.

Benchmark scripts import this file from their own folder (``benchmarks/`` is on ``sys.path`` when a
script there runs).
"""

from __future__ import annotations

import ctypes
import threading
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MODES = ("tensors", "rss")


def return_freed_memory_to_os() -> None:
    """glibc keeps freed heap memory for reuse, which hides a peak from RSS. Serving every
    allocation above 64 KiB with its own mmap makes RSS follow live tensor memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed, so glibc stops raising it)
    libc.malloc_trim(0)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _LiveTensors(TorchDispatchMode):
    """Counts the storages operators return on ``device_type``, until each one is freed."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # an output that shares an input's storage (a view, an in-place result, a weight's
        # transpose) allocated nothing; only storages no input had are new
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in inputs or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            # the storage object is kept alive by every tensor that uses it: it dies with the last one
            weakref.finalize(storage, self._free, key)
        return out


class PeakMemory:
    """Peak bytes above the level at entry (see the module docstring for what is counted)."""

    def __init__(self, device, mode: str = "tensors"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.device, self.mode, self.peak = torch.device(device), mode, 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - self._base)
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.mode == "tensors":
            self._tracker = _LiveTensors(self.device.type)
            self._tracker.__enter__()
        else:
            self._base, self._stop = rss_bytes(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.mode == "tensors":
            self._tracker.__exit__(*exc)
            self.peak = self._tracker.peak
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes() - self._base)


def synchronize(device) -> None:
    """Wait for ``device``'s queued kernels (a timer stopped before them measures only the launch);
    a no-op off CUDA, where every operator has finished when it returns."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
