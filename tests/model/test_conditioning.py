import torch

from echomimic_core.model.conditioning import Conditioning


def _cond(batch, text_len, scale=1.0, mask=True):
    return Conditioning(
        context=torch.randn(batch, text_len, 4),
        clip_fea=torch.randn(batch, 3, 2),
        y=torch.randn(batch, 20, 1, 2, 2),
        audio=torch.randn(batch, 2, 5),
        face_gate=torch.ones(batch, 1) * 0 if mask else None,
        audio_scale=scale,
    )


def test_cat_concatenates_and_fills_missing_gates_with_ones():
    a, b = _cond(1, 3, scale=0.5), _cond(2, 5, scale=1.0, mask=False)
    both = Conditioning.cat([a, b])
    assert both.batch_size == 3
    assert [u.shape[0] for u in both.context] == [3, 5, 5]
    assert both.face_gate.tolist() == [[0.0], [1.0], [1.0]]
    assert both.audio_scale.tolist() == [0.5, 1.0, 1.0]
    assert torch.equal(both.audio[1:], b.audio)


def test_cat_keeps_a_shared_float_scale():
    both = Conditioning.cat([_cond(1, 3, 0.8, mask=False), _cond(1, 3, 0.8, mask=False)])
    assert both.audio_scale == 0.8 and both.face_gate is None


def test_to_casts_features_and_without_audio_zeroes_audio_only():
    c = _cond(1, 3)
    half = c.to(dtype=torch.bfloat16)
    assert half.y.dtype == half.context.dtype == half.audio.dtype == torch.bfloat16
    silent = c.without_audio()
    assert silent.audio.abs().sum() == 0 and silent.audio.shape == c.audio.shape
    assert torch.equal(silent.y, c.y) and c.audio.abs().sum() > 0
