"""The denoising loop: branches, guidance passes, integration, progress and cancellation."""

import pytest
import torch
from torch import nn

from echomimic_core.model.conditioning import Conditioning
from echomimic_core.sampling.guidance import GuidanceConfig
from echomimic_core.sampling.sampler import Cancelled, StepHooks, denoise, guided_velocity, run_branches
from echomimic_core.sampling.schedulers import make_scheduler

SHAPE = (1, 16, 2, 3, 3)


class ContextModel(nn.Module):
    """Prediction = x * (1 + mean of the text context + mean of the audio); records input dtypes."""

    def __init__(self, storage=torch.float32, compute_dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones((), dtype=storage))
        self.compute_dtype = compute_dtype
        self.seen = []

    def forward(self, x, t, cond, cache=None, cache_branch="all"):
        self.seen.append((x.dtype, x.shape[0], cache_branch))
        text = torch.stack([c.mean() for c in cond.text_list()]).view(-1, 1, 1, 1, 1)
        audio = cond.audio.flatten(1).mean(1).view(-1, 1, 1, 1, 1)
        return (x * (1 + text + audio)).to(x.dtype)


def cond(text: float, audio: float) -> Conditioning:
    return Conditioning(
        context=[torch.full((3, 4), text)],
        clip_fea=torch.zeros(1, 2, 4),
        y=torch.zeros(1, 4, *SHAPE[2:]),
        audio=torch.full((1, 5, 4), audio),
    )


def test_batched_and_sequential_branches_agree_in_the_compute_dtype():
    model = ContextModel(storage=torch.bfloat16, compute_dtype=torch.float32)
    latents = torch.randn(SHAPE)
    conds = [cond(0.1, 0.0), cond(0.2, 0.5)]
    batched = run_branches(model, latents, torch.tensor([500.0]), conds, batched=True, names=["a", "b"])
    single = run_branches(model, latents, torch.tensor([500.0]), conds, batched=False, names=["a", "b"])
    for one, other in zip(batched, single):
        torch.testing.assert_close(one, other)
    torch.testing.assert_close(batched[1], latents * 1.7)
    # weights stored in bf16 must not round the float32 latents the model computes with
    assert [s[0] for s in model.seen] == [torch.float32] * 3
    assert [s[1:] for s in model.seen] == [(2, "a+b"), (1, "a"), (1, "b")]


def test_negative_prompt_boost_scales_the_original_embeddings_without_compounding():
    model = ContextModel()
    branches = {"cond": cond(0.1, 0.5), "drop_audio": cond(0.1, 0.0), "uncond": cond(0.2, 0.0)}
    guidance = GuidanceConfig(
        guidance_scale=2.0,
        audio_guidance_scale=3.0,
        use_dynamic_cfg=False,
        use_dynamic_acfg=False,
        neg_scale=1.5,
        neg_steps=1,
    )
    velocity = guided_velocity(model, branches, guidance, 4)
    x = torch.ones(SHAPE)
    for step, neg in [(0, 0.3), (1, 0.3), (2, 0.2), (3, 0.2)]:
        v = velocity(x, torch.tensor([500.0]), step)
        uncond, drop, full = 1 + neg, 1.1, 1.6
        torch.testing.assert_close(v, x * (uncond + 2.0 * (drop - uncond) + 3.0 * (full - drop)))
    assert branches["uncond"].context[0].mean().item() == pytest.approx(0.2)  # caller's tensors untouched


def test_guided_velocity_runs_the_passes_of_each_step():
    """cfg_skip_ratio 0.5 over 4 steps: three guided passes on steps 0-1, the cond pass alone on 2-3."""
    model = ContextModel()
    branches = {"cond": cond(0.1, 0.5), "drop_audio": cond(0.1, 0.0), "uncond": cond(0.2, 0.0)}
    guidance = GuidanceConfig(cfg_skip_ratio=0.5)
    velocity = guided_velocity(model, branches, guidance, 4, batched=False)
    x = torch.ones(SHAPE)
    for step in range(4):
        v = velocity(x, torch.tensor([500.0]), step)
    torch.testing.assert_close(v, x * 1.6)  # unguided: the cond prediction itself
    assert [s[2] for s in model.seen] == ["uncond", "drop_audio", "cond"] * 2 + ["cond"] * 2
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        guided_velocity(model, branches, guidance, 0)


def test_denoise_reaches_the_target_and_reports_every_step():
    x0 = torch.randn(SHAPE)
    scheduler = make_scheduler("Flow", 4, shift=3.0)
    seen = []

    def velocity(latents, t, step):  # the exact straight-path field towards x0
        return (latents - x0) / (t / 1000.0)

    hooks = StepHooks(on_step=lambda step, total, lat, den: seen.append((step, total, den)))
    out = denoise(velocity, torch.randn(SHAPE), scheduler, hooks=hooks, step_offset=4, total_steps=8)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    assert [(s, n) for s, n, _ in seen] == [(5, 8), (6, 8), (7, 8), (8, 8)]
    for _, _, denoised in seen:
        torch.testing.assert_close(denoised, x0, atol=1e-5, rtol=0)


def test_cancellation_before_a_step_runs():
    calls = []
    hooks = StepHooks(should_stop=lambda: len(calls) >= 2)

    def velocity(latents, t, step):
        calls.append(step)
        return torch.zeros_like(latents)

    with pytest.raises(Cancelled):
        denoise(velocity, torch.randn(SHAPE), make_scheduler("Flow", 5), hooks=hooks)
    assert calls == [0, 1]
