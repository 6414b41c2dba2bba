"""The inference path (in-place residual stream, token-sliced float32 norms/rotations, split FFN,
text/CLIP keys from the context cache) computes the same bits as the autograd path, and its live
activations at the real width stay near five [B, L, C] buffers (traced on the meta device)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from echomimic_core.config import TransformerConfig
from echomimic_core.model import blocks, ops
from echomimic_core.model.context_cache import ContextCache
from echomimic_core.model.transformer import EchoMimicTransformer

PEAK = Path(__file__).resolve().parents[2] / "benchmarks" / "peak_memory.py"


def _peak_memory():
    spec = importlib.util.spec_from_file_location("peak_memory", PEAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_path_equals_autograd_path(
    variant, dtype, monkeypatch, tiny_config_fn, random_model_fn, random_inputs_fn
):
    model = random_model_fn(tiny_config_fn(variant)).to(dtype).requires_grad_(False)
    x, t, cond = random_inputs_fn(model.config, batch=2)
    x, cond = x.to(dtype), cond.to(dtype=dtype)
    with torch.enable_grad():  # grad mode on (weights frozen): the out-of-place path
        reference = model(x, t, cond)
    # the inference-only paths at this tiny size: float32 work in slices of 3 tokens
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 3 * model.config.dim)
    x_before = x.clone()
    with torch.no_grad():
        lean = model(x, t, cond)
        cached = model(x, t, cond, context_cache=ContextCache())
        # the FFN split changes each GEMM's row count, which may round differently (bf16): close only
        monkeypatch.setattr(blocks, "FFN_SPLIT_MIN_TOKENS", 1)
        split = model(x, t, cond)
    assert torch.equal(x, x_before)  # the caller's latents are not the stream updated in place
    assert torch.equal(lean, reference)
    assert torch.equal(cached, reference)
    if dtype == torch.float32:  # in bf16 a one-ulp change of a GEMM row grows over the blocks
        torch.testing.assert_close(split, reference, rtol=1e-6, atol=1e-6)


def test_context_cache_shares_prompts_across_branches_and_steps(tiny_config_fn, random_model_fn, random_inputs_fn):
    """cond / drop_audio share the prompt (one entry), a scaled negative is its own entry, and the
    keys of every block are computed once however many forwards follow."""
    from echomimic_core.model.conditioning import Conditioning

    model = random_model_fn(tiny_config_fn("preview"))
    x, t, cond = random_inputs_fn(model.config, batch=1)
    negative = Conditioning(**{**cond.__dict__, "context": [cond.context[0] * 0.5]})
    boosted = Conditioning(**{**cond.__dict__, "context": [cond.context[0] * 0.5 * 1.5]})
    batch = Conditioning.cat([negative, cond.without_audio(), cond])
    cache = ContextCache()
    projections = []
    model.blocks[0].cross_attn.k.register_forward_hook(lambda m, a, out: projections.append(a[0].shape[0]))
    steps = (Conditioning.cat([boosted, cond.without_audio(), cond]), batch, batch)
    with torch.no_grad():
        expected = [model(x.expand(3, -1, -1, -1, -1), t.expand(3), b) for b in steps]
        uncached = len(projections)
        got = [model(x.expand(3, -1, -1, -1, -1), t.expand(3), b, context_cache=cache) for b in steps]
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    # without a cache each forward projects its 2 distinct prompts (one sample at a time); with
    # one the three distinct prompts are projected once each over all three forwards
    assert uncached == 6 and len(projections) - uncached == 3 and set(projections) == {1}
    assert cache.misses == 3 + 1  # three prompts, one image
    assert cache.entries() == 4 and cache.nbytes() > 0


def test_inference_activations_at_real_width_stay_near_five_buffers():
    """A 1536-wide block at 113 frames of 768x768 (66,816 tokens), traced on the meta device: the
    live tensors of one forward peak at ~5.2 x [B, L, C] (11.2 before the lean path)."""
    config = TransformerConfig.from_dict({**TransformerConfig.preset("preview").to_dict(), "num_layers": 2})
    with torch.device("meta"):
        model = EchoMimicTransformer(config).to(torch.bfloat16).eval()
    lat = (29, 96, 96)
    from echomimic_core.model.conditioning import Conditioning

    cond = Conditioning(
        context=[torch.empty(120, config.text_dim, device="meta")],
        clip_fea=torch.empty(1, 257, config.clip_dim, device="meta"),
        y=torch.empty(1, 20, *lat, device="meta"),
        audio=torch.empty(1, 2 * 113, config.audio_in_dim, device="meta"),
        face_gate=torch.empty(1, 48 * 48, device="meta"),
    ).to(dtype=torch.bfloat16)
    x = torch.empty(1, 16, *lat, device="meta", dtype=torch.bfloat16)
    tracker = _peak_memory()._LiveTensors("meta")
    with torch.no_grad(), tracker:
        model(x, torch.tensor([500.0], device="meta"), cond)
    unit = 29 * 48 * 48 * config.dim * 2
    assert 4.5 * unit < tracker.peak < 5.6 * unit
