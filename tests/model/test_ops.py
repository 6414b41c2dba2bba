import pytest
import torch
import torch.nn.functional as F

from echomimic_core.model.ops import Conv3d, LayerNorm, Linear, RMSNorm


@pytest.mark.parametrize("storage", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_linear_stores_low_precision_and_computes_in_activation_dtype(storage):
    layer = Linear(6, 4)
    layer.weight.data = layer.weight.data.to(storage)
    x = torch.randn(3, 6)
    out = layer(x)
    assert out.dtype == torch.float32 and layer.weight.dtype == storage
    torch.testing.assert_close(out, F.linear(x, layer.weight.float(), layer.bias))


def test_conv3d_casts_weights_to_input_dtype():
    conv = Conv3d(2, 3, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    x = torch.randn(1, 2, 1, 4, 4, dtype=torch.bfloat16)
    assert conv(x).dtype == torch.bfloat16


def test_norms_compute_in_float32_and_return_input_dtype():
    x = torch.randn(2, 5, 8).to(torch.bfloat16)
    ln = LayerNorm(8, eps=1e-6)
    expected = F.layer_norm(x.float(), (8,), eps=1e-6).to(torch.bfloat16)
    assert torch.equal(ln(x), expected)
    rms = RMSNorm(8, eps=1e-6)
    rms.weight.data = torch.linspace(0.5, 2, 8).to(torch.float8_e4m3fn)
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    assert torch.equal(rms(x), normed * rms.weight.to(torch.bfloat16))


def test_linear_applies_registered_scale_weight():
    layer = Linear(6, 4)
    full = layer.weight.data.clone()
    scale = full.abs().max() / 448  # e4m3 max
    layer.weight.data = (full / scale).to(torch.float8_e4m3fn)
    layer.register_buffer("scale_weight", scale.reshape(1))
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight.float() * scale, layer.bias))
    assert (layer(x) - F.linear(x, full, layer.bias)).abs().max() < 0.1 * full.abs().max()
