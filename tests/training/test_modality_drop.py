import pytest
import torch

from echomimic_core.model.conditioning import Conditioning
from training.config import DropConfig
from training.modality_drop import AUDIO, IMAGE, TEXT, apply_drop, drop_plan

NO_CFG = DropConfig(cfg_text=0.0, cfg_audio=0.0, cfg_all=0.0)


def test_plan_per_phase():
    g = torch.Generator().manual_seed(0)
    phases = torch.tensor([0, 1, 2] * 200)
    plan = drop_plan(phases, g, NO_CFG)
    early, middle, late = plan[phases == 0], plan[phases == 1], plan[phases == 2]
    assert early[:, AUDIO].all() and not early[:, TEXT].any()
    assert abs(early[:, IMAGE].float().mean() - NO_CFG.early_image_prob) < 0.1
    assert not middle.any()
    counts = late.sum(1)
    assert set(counts.tolist()) == {1, 2}
    assert late.any(0).all()  # every modality gets dropped sometimes in the late phase
    assert set(
        drop_plan(phases, g, DropConfig(late_two_prob=0.0, cfg_text=0, cfg_audio=0, cfg_all=0))[phases == 2]
        .sum(1)
        .tolist()
    ) == {1}


def test_classifier_free_dropout_rates():
    g = torch.Generator().manual_seed(1)
    phases = torch.ones(4000, dtype=torch.long)  # middle: nothing dropped by the phase rule
    plan = drop_plan(phases, g, DropConfig(cfg_text=0.2, cfg_audio=0.1, cfg_all=0.0))
    assert abs(plan[:, TEXT].float().mean() - 0.2) < 0.03
    assert abs(plan[:, AUDIO].float().mean() - 0.1) < 0.03
    assert not plan[:, IMAGE].any()


def test_image_kept_branches_occur_in_every_phase():
    """Inference feeds the CLIP image at every step: each phase must train with it kept too."""
    g = torch.Generator().manual_seed(2)
    phases = torch.tensor([0, 1, 2] * 300)
    for cfg in (NO_CFG, DropConfig()):
        plan = drop_plan(phases, g, cfg)
        for phase in range(3):
            kept = ~plan[phases == phase, IMAGE]
            assert kept.float().mean() > 0.25, (phase, kept.float().mean())
    always = drop_plan(phases, g, DropConfig(early_image_prob=1.0, cfg_text=0, cfg_audio=0, cfg_all=0))
    assert always[phases == 0, IMAGE].all()  # the old early phase stays available


def _cond(b=3, context_as_list=True):
    text = [torch.randn(5 + i, 8) for i in range(b)]
    return Conditioning(
        context=text if context_as_list else torch.randn(b, 7, 8),
        clip_fea=torch.randn(b, 257, 4),
        y=torch.randn(b, 20, 3, 4, 6),
        audio=torch.randn(b, 18, 4),
    )


def test_apply_drop_replaces_only_the_marked_rows():
    cond, null = _cond(), torch.randn(2, 8)
    dropped = torch.tensor([[True, False, False], [False, True, False], [False, False, True]])
    out = apply_drop(cond, dropped, null)
    assert torch.equal(out.context[0], null) and torch.equal(out.context[1], cond.context[1])
    assert not out.clip_fea[1].any() and torch.equal(out.clip_fea[0], cond.clip_fea[0])
    assert not out.audio[2].any() and torch.equal(out.audio[:2], cond.audio[:2])
    assert out.y is cond.y  # the reference frame and task mask are never dropped


def test_y_is_never_zeroed_unless_asked():
    cond, null = _cond(), torch.randn(2, 8)
    everything = torch.ones(3, 3, dtype=torch.bool)
    assert torch.equal(apply_drop(cond, everything, null).y, cond.y)
    legacy = apply_drop(cond, everything, null, image_drop="clip_and_y")
    assert not legacy.y.any() and not legacy.clip_fea.any()
    with pytest.raises(ValueError, match="image_drop must be one of"):
        apply_drop(cond, everything, null, image_drop="y")


def test_apply_drop_on_padded_text_tensor():
    cond, null = _cond(context_as_list=False), torch.randn(2, 8)
    out = apply_drop(cond, torch.tensor([[False] * 3, [True, False, False], [False] * 3]), null)
    assert torch.equal(out.context[1, :2], null) and not out.context[1, 2:].any()
    assert torch.equal(out.context[0], cond.context[0])
