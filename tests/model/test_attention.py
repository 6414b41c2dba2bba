import importlib.util

import pytest
import torch

from echomimic_core.model.attention import attention, available_backends, check_backend

PACKAGES = ("flash_attn", "sageattention", "xformers")  # the CUDA-only kernels' packages


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v per head, written out: [B, L, H, D] in and out."""
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)


def test_sdpa_matches_explicit_softmax_attention():
    q, k, v = torch.randn(2, 7, 3, 8), torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    expected = naive_attention(q, k, v)
    out = attention(q, k, v, "sdpa")
    assert out.shape == (2, 7, 3, 8)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_missing_backend_package_gives_actionable_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(RuntimeError, match="needs the Python package 'flash_attn'.*Install it"):
        check_backend("flash_attn")
    assert "flash_attn" not in available_backends()


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match="known: .*sdpa"):
        attention(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), "magic")


def test_backends_offered_follow_packages_and_cuda(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in PACKAGES else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert available_backends() == ["sdpa"]  # every kernel package "installed", but no CUDA
    with pytest.raises(RuntimeError, match="'sageattention' runs on CUDA only .* use 'sdpa'"):
        check_backend("sageattention")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_backends() == ["sdpa", "flash_attn", "sageattention", "xformers"]
    check_backend("xformers")  # installed and CUDA present: accepted


@pytest.mark.parametrize("backend", ["flash_attn", "sageattention", "xformers"])
def test_cuda_kernels_fall_back_to_exact_attention_on_cpu_tensors(backend):
    """CPU offload or tests hand CPU tensors to a model set to a CUDA kernel: exact attention, same numbers."""
    q, k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 9, 2, 8), torch.randn(1, 9, 2, 8)
    torch.testing.assert_close(attention(q, k, v, backend), naive_attention(q, k, v), rtol=1e-5, atol=1e-6)
