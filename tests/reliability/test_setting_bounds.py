"""Settings at and beyond their bounds: NaN and infinity never slip through a comparison, the largest
seed works everywhere a seed is used (issue 10)."""

import math

import pytest
import torch

from echomimic_core.pipeline import redo_seed
from nodes.common import out_of_range

UINT64_MAX = 2**64 - 1


def test_redo_seeds_stay_in_torchs_seed_range():
    assert redo_seed(43, 0) == 43 + 1_000_003  # unchanged for ordinary seeds: earlier runs repeat
    for seed in (0, UINT64_MAX - 5, UINT64_MAX):
        for index in (0, 7):
            value = redo_seed(seed, index)
            assert 0 <= value <= UINT64_MAX
            torch.Generator("cpu").manual_seed(value)  # "Overflow when unpacking long long" before


class Widgets:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scale": ("FLOAT", {"min": 0.0, "max": 30.0}), "free": ("FLOAT", {})}}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, 30.5])
def test_widget_range_check_refuses_nan_and_infinity(value):
    # ComfyUI's own check (`value < min`) lets NaN through; the nodes' repeat of it must not
    problem = out_of_range(Widgets, {"scale": value})
    assert (
        problem is not None
        and problem.startswith(f"scale={value!r} is ")
        and problem.endswith("change the widget's value.")
    )


def test_widget_range_check_accepts_the_range():
    assert out_of_range(Widgets, {"scale": 0.0}) is None and out_of_range(Widgets, {"scale": 30.0}) is None
    assert out_of_range(Widgets, {"free": 1e9}) is None  # no bounds declared: nothing to check
