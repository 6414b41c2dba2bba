"""Scaled-fp8 files de-quantise to the weights they encode; fp8 casts saturate, never NaN."""

import json

import pytest
import torch

from echomimic_core.checkpoints.quant import dequantize_scaled_fp8, is_scaled_fp8, quantize_scaled_fp8, to_fp8


def _state():
    return {
        "blocks.0.q.weight": torch.randn(16, 8) * 3,
        "blocks.0.q.bias": torch.randn(16),
        "norm.weight": torch.ones(8),
    }


def test_round_trip_is_close_and_drops_bookkeeping():
    state = _state()
    q = quantize_scaled_fp8(state)
    assert is_scaled_fp8(q) and not is_scaled_fp8(state)
    assert q["blocks.0.q.weight"].dtype == torch.float8_e4m3fn
    out = dequantize_scaled_fp8(q, dtype=torch.float32)
    assert set(out) == set(state)
    w = state["blocks.0.q.weight"]
    err = (out["blocks.0.q.weight"] - w).abs().max() / w.abs().max()
    assert err < 0.07  # e4m3 has a 3-bit mantissa: 2^-4 relative step
    assert torch.equal(out["blocks.0.q.bias"], state["blocks.0.q.bias"])


def test_dequant_is_exact_weight_times_scale():
    weight = torch.tensor([[1.0, -2.0], [0.5, 448.0]]).to(torch.float8_e4m3fn)
    state = {
        "l.weight": weight,
        "l.scale_weight": torch.tensor(0.25),
        "l.scale_input": torch.tensor(1.0),
        "model.diffusion_model.scaled_fp8": torch.empty(2, dtype=torch.float8_e4m3fn),
    }
    out = dequantize_scaled_fp8(state, dtype=torch.float32)
    assert list(out) == ["l.weight"]
    assert torch.equal(out["l.weight"], torch.tensor([[0.25, -0.5], [0.125, 112.0]]))


def test_comfy_08_layout_per_channel_scale():
    weight = torch.ones(3, 2).to(torch.float8_e4m3fn)
    meta = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    out = dequantize_scaled_fp8(
        {"l.weight": weight, "l.weight_scale": torch.tensor([1.0, 2.0, 4.0]), "l.comfy_quant": meta},
        dtype=torch.bfloat16,
    )
    assert out["l.weight"].dtype == torch.bfloat16
    assert out["l.weight"][:, 0].tolist() == [1.0, 2.0, 4.0]


def test_scale_without_weight_is_an_error():
    with pytest.raises(ValueError, match="no matching l.weight"):
        dequantize_scaled_fp8({"l.scale_weight": torch.tensor(1.0)})


def test_to_fp8_saturates():
    out = to_fp8(torch.tensor([1000.0, -1e6, 1.0])).float()
    assert not out.isnan().any()
    assert out.tolist() == [448.0, -448.0, 1.0]
