import numpy as np
import pytest
import torch

from echomimic_core.sampling.teacache import WAN21_1_3B_COEFFICIENTS, TeaCache

STEPS = 12


def t_mods():
    # a time modulation that changes slowly then fast, like Wan's e0 along a shifted schedule
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 6, 16, generator=g)
    ts = torch.linspace(1.0, 0.0, STEPS) ** 1.5
    return [base * (1 + 0.6 * t) for t in ts]


def blocks(x, t_mod, branch):
    shift = 1.0 if branch == "cond" else -2.0
    return torch.tanh(x * 1.3 + t_mod.mean() + shift)


def toy_forward(x, t_mod, branch, cache):
    if cache is not None:
        out = cache.before_blocks(branch, t_mod, x)
        if out is not None:
            return out
    y = blocks(x, t_mod, branch)
    if cache is not None:
        cache.after_blocks(branch, x, y)
    return y


def upstream_skips(mods, threshold, skip_start):
    """Upstream's decision rule, one model call per step (the preview pipeline)."""
    skips, acc, prev = [], 0.0, None
    for i, m in enumerate(mods):
        if i < skip_start:
            acc = 0.0
        else:
            rel = ((m - prev).abs().mean() / prev.abs().mean()).item()
            acc += np.poly1d(WAN21_1_3B_COEFFICIENTS)(rel)
            if acc < threshold:
                skips.append(i)
            else:
                acc = 0.0
        prev = m
    return skips


def run(cache, branches=("cond",), mods=None):
    mods = mods or t_mods()
    x = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    outs = []
    if cache is not None:
        cache.reset()
    for i, m in enumerate(mods):
        if cache is not None:
            cache.start_step(i, len(mods))
        outs.append({b: toy_forward(x + i, m, b, cache) for b in branches})
    return outs


def test_threshold_zero_never_skips_and_is_exact():
    cache = TeaCache(threshold=0.0, num_skip_start_steps=0)
    ref = run(None, ("cond", "uncond"))
    got = run(cache, ("cond", "uncond"))
    assert cache.skipped_steps == [] and not cache._residuals
    for a, b in zip(ref, got):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.3])
def test_skip_decisions_match_upstream_rule(threshold):
    cache = TeaCache(threshold=threshold, num_skip_start_steps=2)
    run(cache)
    expected = upstream_skips(t_mods(), threshold, 2)
    assert cache.skipped_steps == expected
    assert 0 < len(expected) < STEPS - 2, "the toy schedule should skip some steps and run others"


def test_skipped_steps_reuse_each_branch_residual():
    cache = TeaCache(threshold=0.3, num_skip_start_steps=2)
    outs = run(cache, ("cond", "uncond"))
    skipped = cache.skipped_steps
    assert skipped and skipped[0] >= 2
    # decision is per step, not per call: both branches skip together
    first = skipped[0]
    last_computed = max(i for i in range(first) if i not in skipped)
    mods = t_mods()
    x0 = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    for branch in ("cond", "uncond"):
        x_prev = x0 + last_computed
        residual = blocks(x_prev, mods[last_computed], branch) - x_prev
        torch.testing.assert_close(outs[first][branch], x0 + first + residual)
    assert not torch.allclose(outs[first]["cond"], outs[first]["uncond"])


def test_scoped_windows_keep_their_own_residuals_and_share_the_step_decision():
    """Sliding long-video windows: same branch name, different latents; each skipped window gets
    its own residual back, and all windows of a step skip together."""
    cache = TeaCache(threshold=0.3, num_skip_start_steps=2)
    mods = t_mods()
    x0 = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    windows = {"w0": x0, "w1": x0 * -3 + 1}
    outs = []
    cache.reset()
    for i, m in enumerate(mods):
        cache.start_step(i, len(mods))
        outs.append({w: toy_forward(x + i, m, "cond", cache.scoped(w)) for w, x in windows.items()})
    assert cache.skipped_steps == upstream_skips(mods, 0.3, 2)  # one decision per step, not per window
    first = cache.skipped_steps[0]
    last_computed = max(i for i in range(first) if i not in cache.skipped_steps)
    for w, x in windows.items():
        residual = blocks(x + last_computed, mods[last_computed], "cond") - (x + last_computed)
        torch.testing.assert_close(outs[first][w], x + first + residual)
    assert not torch.allclose(outs[first]["w0"] - x0, outs[first]["w1"] - windows["w1"])


def test_offload_keeps_residuals_on_cpu_and_same_results():
    a, b = (
        TeaCache(threshold=0.3, num_skip_start_steps=2),
        TeaCache(threshold=0.3, num_skip_start_steps=2, offload=True),
    )
    for x, y in zip(run(a), run(b)):
        torch.testing.assert_close(x["cond"], y["cond"])
    assert all(r.device.type == "cpu" for r in b._residuals.values())


def test_reset_and_implicit_steps_without_sampler():
    cache = TeaCache(threshold=0.3, num_skip_start_steps=2)
    run(cache)
    first = list(cache.skipped_steps)
    run(cache)
    assert cache.skipped_steps == first  # reset() makes runs independent
    implicit = TeaCache(threshold=0.3, num_skip_start_steps=2)
    x = torch.zeros(1, 5, 16)
    for m in t_mods():
        toy_forward(x, m, "cond", implicit)  # no start_step: each repeated call is a step
    assert implicit.skipped_steps == first


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        TeaCache(threshold=-0.1)
    with pytest.raises(ValueError, match="num_skip_start_steps"):
        TeaCache(num_skip_start_steps=-1)


def _tiny_model_and_inputs():
    from echomimic_core.config import TransformerConfig
    from echomimic_core.model.conditioning import Conditioning
    from echomimic_core.model.transformer import EchoMimicTransformer

    cfg = TransformerConfig.preset("tiny_flash").to_dict()
    cfg.update(dim=32, ffn_dim=48, num_heads=2, freq_dim=16, text_len=8, text_dim=12, clip_dim=10, clip_tokens=5)
    config = TransformerConfig.from_dict(cfg)
    model = EchoMimicTransformer(config).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    f, h, w = 2, 4, 4
    cond = Conditioning(
        context=[torch.randn(5, config.text_dim, generator=g)],
        clip_fea=torch.randn(1, config.clip_tokens, config.clip_dim, generator=g),
        y=torch.randn(1, config.in_dim - 16, f, h, w, generator=g),
        audio=torch.randn(
            1, 4 * (f - 1) + 1, config.audio_window, config.audio_blocks, config.audio_channels, generator=g
        ),
    )
    return model, cond, torch.randn(1, 16, f, h, w, generator=g)


def test_with_the_transformer_threshold_zero_is_exact_and_skipping_saves_block_runs():
    from echomimic_core.sampling.schedulers import make_scheduler

    model, cond, noise = _tiny_model_and_inputs()
    block_runs = []
    model.blocks[0].register_forward_hook(lambda *a: block_runs.append(1))

    def sample(cache):
        sch = make_scheduler("Flow_Unipc", 10, 5.0, "flash")
        if cache is not None:
            cache.reset()
        x = noise.clone()
        with torch.no_grad():
            for i, t in enumerate(sch.timesteps):
                if cache is not None:
                    cache.start_step(i, len(sch.timesteps))
                v = model(x, t.float().reshape(1), cond, cache=cache, cache_branch="cond")
                x = sch.step(v, t, x)
        return x

    plain = sample(None)
    assert torch.equal(sample(TeaCache(threshold=0.0, num_skip_start_steps=0)), plain)
    block_runs.clear()
    cache = TeaCache(threshold=0.5, num_skip_start_steps=3)
    cached = sample(cache)
    assert cache.skipped_steps and len(block_runs) == 10 - len(cache.skipped_steps)
    assert torch.isfinite(cached).all()
