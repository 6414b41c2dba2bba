"""Exact weight assignment shared by the encoder loaders."""

import pytest
import torch
from torch import nn

from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.encoders.keymap import assign_weights


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))


def test_assigns_the_file_tensors_and_zero_fills_optional_ones():
    state = {"0.weight": torch.randn(2, 3), "0.bias": torch.randn(2), "1.weight": torch.randn(2)}
    model = meta_model()
    assign_weights(model, state, "test weights", "hint", optional=("1.bias",))
    assert model[0].weight is not None and torch.equal(model[0].weight, state["0.weight"])
    assert torch.equal(model[1].bias, torch.zeros(2))
    assert not any(p.is_meta for p in model.parameters())


def test_one_error_names_missing_unexpected_and_misshaped_keys_and_the_remedy():
    state = {"0.weight": torch.randn(2, 4), "1.weight": torch.randn(2), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        assign_weights(meta_model(), state, "test weights", "Pick the right file.")
    message = str(info.value)
    for part in (
        "missing 2 ['0.bias', '1.bias']",
        "unexpected 1 ['extra']",
        "0.weight: file (2, 4) vs model (2, 3)",
        "Pick the right file.",
    ):
        assert part in message
