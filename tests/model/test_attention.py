import importlib.util

import pytest
import torch

from echomimic_core.model import attention as attn_mod
from echomimic_core.model.attention import attention, available_backends, check_backend


def test_sdpa_matches_explicit_softmax_attention():
    q, k, v = torch.randn(2, 7, 3, 8), torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    expected = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)
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


def test_sdpa_always_available():
    assert "sdpa" in available_backends()
    assert set(available_backends()) <= set(attn_mod._BACKENDS)
