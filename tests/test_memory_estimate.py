"""The first memory estimate: the decoded video of the requested size and length."""

import pytest

from echomimic_core.memory_estimate import GIB, check_fits, frames_bytes


def test_estimate_counts_every_copy_of_the_frames():
    # float32 frames + the colour-matched float32 copy + two uint8 conversions: 10 bytes a channel
    assert frames_bytes(2, (16, 32)) == 2 * 16 * 32 * 3 * 10


def test_refused_with_the_figure_when_it_cannot_fit():
    check_fits(113, (768, 768), available=16 * GIB)
    with pytest.raises(ValueError, match=r"17 frames at 65536x65536 need about 2,040.0 GiB") as e:
        check_fits(17, (65536, 65536), available=64 * GIB)
    assert "this machine has 64.0 GiB" in str(e.value) and "--max-frames" in str(e.value)
