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


def _comfy_quant(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def nvfp4_layers(state: dict) -> dict:
    """ComfyUI 0.8's nvfp4 layout of every block matrix: two 4-bit weights per uint8, an fp8 scale per
    16 weights (``weight_scale``), a float32 per-tensor ``weight_scale_2``, a ``comfy_quant`` JSON."""
    out = {}
    for key, value in state.items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            layer, (rows, cols) = key.removesuffix(".weight"), value.shape
            out[key] = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8)
            out[layer + ".weight_scale"] = torch.ones(rows, cols // 16).to(torch.float8_e4m3fn)
            out[layer + ".weight_scale_2"] = torch.tensor(0.01)
            out[layer + ".comfy_quant"] = _comfy_quant("nvfp4")
        else:
            out[key] = value
    return out


def test_nvfp4_transformer_file_is_refused_by_name_before_loading(tmp_path):
    """Such a file used to fail deep in the load with a raw broadcast error (its block scales taken
    for fp8 ones); now the header check names the format and what to use instead."""
    from echomimic_core.checkpoints.files import CheckpointError, save_state_dict
    from echomimic_core.checkpoints.transformer import inspect_checkpoint, load_transformer
    from echomimic_core.config import TransformerConfig
    from echomimic_core.model.transformer import EchoMimicTransformer

    state = EchoMimicTransformer(TransformerConfig.preset("tiny_preview")).state_dict()
    path = tmp_path / "echomimicv3_nvfp4.safetensors"
    save_state_dict(nvfp4_layers(state), path)
    message = r"is quantised as ComfyUI 'nvfp4', which is not supported .* Use the bf16/fp16 file"
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_transformer(path)


@pytest.mark.parametrize("drop", [[], [".comfy_quant"], [".comfy_quant", ".weight_scale_2"]])
def test_nvfp4_state_is_refused_whichever_marker_it_keeps(drop):
    state = nvfp4_layers({"blocks.0.ffn.0.weight": torch.randn(8, 32)})
    state = {k: v for k, v in state.items() if not k.endswith(tuple(drop))}
    with pytest.raises(ValueError, match="layer 'blocks.0.ffn.0' is quantised as ComfyUI 'nvfp4'|'packed 4-bit'"):
        dequantize_scaled_fp8(state)


def test_unknown_comfy_quant_format_is_named():
    weight = torch.ones(3, 2).to(torch.float8_e4m3fn)
    state = {"l.weight": weight, "l.weight_scale": torch.tensor(1.0), "l.comfy_quant": _comfy_quant("mxfp8")}
    with pytest.raises(ValueError, match="'mxfp8', which is not supported"):
        dequantize_scaled_fp8(state)
