"""A first memory estimate of a generation, checked before any model loads.

Only what the requested size and length alone decide: the decoded video held in host memory. A
request that cannot fit (65536 x 65536, or hours at 4K) is refused with the figure instead of a
MemoryError after minutes of loading. Model weights and activations are not counted here.
"""

from __future__ import annotations

import os

# bytes per pixel channel held at the peak: the float32 frames render returns, the float32 copy
# colour matching makes, and the uint8 frames it and the video writer convert through
BYTES_PER_CHANNEL = 4 + 4 + 1 + 1
GIB = 1024**3


def frames_bytes(num_frames: int, sample_size: tuple[int, int]) -> int:
    """Host bytes the decoded video of ``num_frames`` frames at (height, width) needs at its peak."""
    height, width = sample_size
    return num_frames * height * width * 3 * BYTES_PER_CHANNEL


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(num_frames: int, sample_size: tuple[int, int], available: int | None = None) -> None:
    """ValueError with the estimate when the video alone needs more than the machine's RAM."""
    available = physical_memory() if available is None else available
    needed = frames_bytes(num_frames, sample_size)
    if available is not None and needed > available:
        height, width = sample_size
        raise ValueError(
            f"{num_frames} frames at {width}x{height} need about {needed / GIB:,.1f} GiB of memory for the "
            f"decoded video alone; this machine has {available / GIB:,.1f} GiB. Lower the size "
            "(--width/--height or sample_area) or the length (--max-frames, a shorter audio clip)."
        )
