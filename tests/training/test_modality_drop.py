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
    assert early[:, IMAGE].all() and early[:, AUDIO].all() and not early[:, TEXT].any()
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
    assert not out.clip_fea[1].any() and not out.y[1].any()
    assert torch.equal(out.clip_fea[0], cond.clip_fea[0]) and torch.equal(out.y[2], cond.y[2])
    assert not out.audio[2].any() and torch.equal(out.audio[:2], cond.audio[:2])


def test_apply_drop_on_padded_text_tensor():
    cond, null = _cond(context_as_list=False), torch.randn(2, 8)
    out = apply_drop(cond, torch.tensor([[False] * 3, [True, False, False], [False] * 3]), null)
    assert torch.equal(out.context[1, :2], null) and not out.context[1, 2:].any()
    assert torch.equal(out.context[0], cond.context[0])
