import pytest
import torch

from echomimic_core.config import TransformerConfig
from echomimic_core.model.audio_projector import (
    AudioTokens,
    FlashAudioProjector,
    PreviewAudioProjector,
    preview_window_index,
    preview_window_ranges,
)


def test_preview_windows_for_81_frames_at_2_tokens_per_frame():
    ranges = preview_window_ranges(162, tokens_per_frame=2, expand=4)
    assert len(ranges) == 21
    # upstream: [-7, 1], [1, 9], ..., [153, 161], each widened by 4
    assert ranges[:2] == [(-11, 5), (-3, 13)]
    assert ranges[-1] == (149, 165)
    assert {e - s + 1 for s, e in ranges} == {17}


def test_preview_windows_with_fractional_token_rate():
    # 173 tokens for 86 frames: 2.0116 tokens per frame, centres rounded down as upstream
    ranges = preview_window_ranges(173, tokens_per_frame=2, expand=0)
    assert len(ranges) == 22
    assert ranges[1] == (1, 9) and ranges[-1] == (161, 169)


def test_gathered_window_attention_equals_right_padded_window():
    """Upstream slices the in-range part and appends zeros; we gather in place. Same attention."""
    n = 18
    tokens = torch.randn(1, n, 6)
    index = preview_window_index(n, 2, 4)
    width = index.shape[1]
    gathered = AudioTokens(tokens, index, index.shape[0]).windows(tokens)  # [T, W, C]
    q = torch.randn(index.shape[0], 5, 6)
    for frame, (s, e) in enumerate(preview_window_ranges(n, 2, 4)):
        valid = tokens[0, max(s, 0) : min(e, n - 1) + 1]
        upstream = torch.cat([valid, valid.new_zeros(width - valid.shape[0], 6)])
        expected = torch.softmax(q[frame] @ upstream.T, -1) @ upstream
        ours = torch.softmax(q[frame] @ gathered[frame].T, -1) @ gathered[frame]
        torch.testing.assert_close(ours, expected)


def test_preview_projector_rejects_wrong_feature_width():
    proj = PreviewAudioProjector(TransformerConfig.preset("tiny_preview"))
    with pytest.raises(ValueError, match=r"\[B, tokens, 32\]"):
        proj(torch.randn(1, 18, 384))


def test_flash_fold_picks_window_positions_per_latent_frame():
    config = TransformerConfig.preset("tiny_flash")  # window 5, 3 blocks, 16 channels
    proj = FlashAudioProjector(config)
    frames = 9
    # value = 10 * video frame + window position, constant over blocks and channels
    code = (10 * torch.arange(frames)[:, None] + torch.arange(5)[None]).float()
    audio = code[None, :, :, None, None].expand(2, frames, 5, 3, 16)
    first, later = proj.fold_frames(audio)
    assert first.shape == (2, 1, 5 * 48) and later.shape == (2, 2, 8 * 48)
    picked = later.view(2, 2, 8, 48)[0, :, :, 0]
    assert picked[0].tolist() == [10, 11, 12, 22, 32, 42, 43, 44]
    assert picked[1].tolist() == [50, 51, 52, 62, 72, 82, 83, 84]
    assert first.view(2, 5, 48)[0, :, 0].tolist() == [0, 1, 2, 3, 4]


def test_flash_projector_output_tokens_per_latent_frame():
    config = TransformerConfig.preset("tiny_flash")
    out = FlashAudioProjector(config)(torch.randn(2, 9, 5, 3, 16))
    assert out.frames == 3 and out.tokens.shape == (2, 3 * config.audio_context_tokens, config.dim)
    assert out.windows(out.tokens).shape == (6, config.audio_context_tokens, config.dim)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        FlashAudioProjector(config)(torch.randn(2, 8, 5, 3, 16))
