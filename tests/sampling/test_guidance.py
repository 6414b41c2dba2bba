import math

import pytest
import torch

from echomimic_core.sampling.guidance import GuidanceConfig, dynamic_scale


def outputs():
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(1, 4, 2, 3, 3, generator=g) for k in ("uncond", "drop_audio", "cond")}


def test_three_way_combination_by_hand():
    cfg = GuidanceConfig(guidance_scale=4.0, audio_guidance_scale=2.5, use_dynamic_cfg=False, use_dynamic_acfg=False)
    o = outputs()
    expected = o["uncond"] + 4.0 * (o["drop_audio"] - o["uncond"]) + 2.5 * (o["cond"] - o["drop_audio"])
    torch.testing.assert_close(cfg.combine(o, 0, 10), expected)
    assert cfg.passes_for_step(0, 10) == ("uncond", "drop_audio", "cond")


def test_flash_audio_only_combination():
    # what infer_flash.py runs: audio-only CFG, gs only switches CFG on
    cfg = GuidanceConfig(
        mode="audio_only", guidance_scale=6.0, audio_guidance_scale=3.0, use_dynamic_cfg=False, use_dynamic_acfg=False
    )
    o = outputs()
    assert cfg.passes_for_step(3, 8) == ("cond", "drop_audio")
    torch.testing.assert_close(cfg.combine(o, 3, 8), o["drop_audio"] + 3.0 * (o["cond"] - o["drop_audio"]))


def test_dynamic_schedule_values():
    assert dynamic_scale(4.0, 0, 25) == pytest.approx(4.0)  # cos(pi) -> full scale at step 0
    # hand evaluation of upstream's formula at step 20 of 25
    x = (5 / 25) ** 5
    assert dynamic_scale(4.0, 20, 25) == pytest.approx(2 + 2 * (1 - math.cos(math.pi * x)) / 2)
    values = [dynamic_scale(2.9, i, 25) for i in range(25)]
    assert all(a >= b for a, b in zip(values, values[1:])) and values[-1] > 2.9 / 2
    cfg = GuidanceConfig(guidance_scale=4.0, audio_guidance_scale=2.9)
    assert cfg.scales_for_step(20, 25) == (dynamic_scale(4.0, 20, 25), dynamic_scale(2.9, 20, 25))


def test_neg_scale_is_not_compounding_by_default():
    cfg = GuidanceConfig(neg_scale=1.5, neg_steps=2)
    assert [cfg.negative_factor(i) for i in range(5)] == [1.5, 1.5, 1.5, 1.0, 1.0]
    upstream = GuidanceConfig(neg_scale=1.5, neg_steps=2, compound_neg_scale=True)
    assert [upstream.negative_factor(i) for i in range(5)] == [1.5, 1.5**2, 1.5**3, 1.5**3, 1.5**3]


def test_cfg_off_when_scale_at_most_one_and_skip_ratio():
    o = outputs()
    off = GuidanceConfig(guidance_scale=1.0)
    assert off.passes_for_step(0, 10) == ("cond",)
    assert torch.equal(off.combine({"cond": o["cond"]}, 0, 10), o["cond"])
    skip = GuidanceConfig(cfg_skip_ratio=0.2)
    assert [len(skip.passes_for_step(i, 10)) for i in range(10)] == [3] * 8 + [1] * 2
    with pytest.raises(KeyError, match="missing"):
        GuidanceConfig().combine({"cond": o["cond"]}, 0, 10)
    with pytest.raises(ValueError, match="mode"):
        GuidanceConfig(mode="four_way")
