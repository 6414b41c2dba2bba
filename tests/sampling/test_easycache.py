"""EasyCache: exact when off, the transformation-rate rule when on, skipped forwards counted,
and, on the demo models, fewer block runs for a close video."""

import dataclasses

import pytest
import torch

from echomimic_core.sampling.easycache import EasyCache

STEPS = 10


def inputs():
    """Block inputs that drift slowly, as latents do late in sampling."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 8, 4, generator=g)
    return [base + 0.02 * i * torch.randn(1, 8, 4, generator=g) for i in range(STEPS)]


def blocks(x, branch):
    return torch.tanh(x * 1.3 + (1.0 if branch == "cond" else -2.0))


def run(cache, xs, branches=("cond",)):
    outs = []
    if cache is not None:
        cache.reset()
    for step, x in enumerate(xs):
        if cache is not None:
            cache.start_step(step, len(xs))
        for branch in branches:
            out = cache.before_blocks(branch, None, x) if cache is not None else None
            if out is None:
                out = blocks(x, branch)
                if cache is not None:
                    cache.after_blocks(branch, x, out)
            outs.append(out)
    return outs


def test_threshold_zero_never_skips_keeps_nothing_and_is_exact():
    cache = EasyCache(0.0)
    xs = inputs()
    assert all(torch.equal(a, b) for a, b in zip(run(cache, xs), run(None, xs)))
    assert cache.skipped_steps == [] and cache.skipped_forwards == 0 and not cache._residuals


def test_the_transformation_rate_rule():
    """Step by step against the rule written out: k from the last two computed steps, the predicted
    change k * mean|x_t - x_t-1| / mean|y| accumulated until it reaches the threshold."""
    xs, threshold, start = inputs(), 0.05, 2
    expected, acc, k, last_x, computed = [], 0.0, None, None, []
    for step, x in enumerate(xs):
        calc = True
        if step >= start and k is not None and last_x is not None:
            acc += k * (x - last_x).abs().mean().item() / blocks(computed[-1], "cond").abs().mean().item()
            calc = acc >= threshold
        if calc:
            acc = 0.0
            if computed:
                before = computed[-1]
                k = (blocks(x, "cond") - blocks(before, "cond")).abs().mean().item() / (x - before).abs().mean().item()
            computed.append(x)
        else:
            expected.append(step)
        last_x = x
    cache = EasyCache(threshold, num_skip_start_steps=start)
    run(cache, xs)
    assert cache.skipped_steps == expected and expected  # the rule skips some steps here
    assert cache.skipped_forwards == len(expected)


def test_branches_follow_the_first_and_keep_their_own_residuals():
    cache = EasyCache(0.05)
    xs = inputs()
    outs = run(cache, xs, branches=("uncond", "cond"))
    assert cache._lead == "uncond" and cache.skipped_steps
    assert cache.skipped_forwards == 2 * len(cache.skipped_steps)  # both branches skip together
    step = cache.skipped_steps[0]
    last_run = max(s for s in range(step) if s not in cache.skipped_steps)
    for i, branch in enumerate(("uncond", "cond")):
        residual = blocks(xs[last_run], branch) - xs[last_run]
        torch.testing.assert_close(outs[2 * step + i], xs[step] + residual)


def test_offload_gives_the_same_results():
    xs = inputs()
    on_device, offloaded = EasyCache(0.05), EasyCache(0.05, offload=True)
    assert all(torch.equal(a, b) for a, b in zip(run(on_device, xs), run(offloaded, xs)))
    assert offloaded.skipped_steps == on_device.skipped_steps
    assert all(t.device.type == "cpu" for t in offloaded._residuals.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        EasyCache(-0.1)
    with pytest.raises(ValueError, match="num_skip_start_steps must be >= 0"):
        EasyCache(0.1, num_skip_start_steps=-1)


def test_with_the_demo_model_fewer_block_runs_and_a_close_video(demo_models):
    """The pipeline with EasyCache: exact at threshold 0, and a threshold that skips runs the
    blocks fewer times while the frames stay close to the uncached ones."""
    from echomimic_core import pipeline
    from echomimic_core.demo import demo_inputs
    from echomimic_core.settings import GenerationSettings

    image, audio, sr = demo_inputs(seconds=0.36, size=64)
    base = GenerationSettings.for_variant(
        "flash", steps=8, partial_video_length=9, overlap_video_length=4, color_match=False, teacache_threshold=0.0
    )
    runs = []
    handle = demo_models.transformer.blocks[0].register_forward_hook(lambda *a: runs.append(1))
    try:
        plain = pipeline.generate(demo_models, image, audio, sr, "x", base).frames
        full = len(runs)
        exact = pipeline.generate(
            demo_models, image, audio, sr, "x", dataclasses.replace(base, easycache_threshold=0.0)
        )
        runs.clear()
        cached = pipeline.generate(
            demo_models, image, audio, sr, "x", dataclasses.replace(base, easycache_threshold=0.3)
        ).frames
    finally:
        handle.remove()
    assert torch.equal(exact.frames, plain)
    assert len(runs) < full
    assert (cached - plain).abs().mean() < 0.05
