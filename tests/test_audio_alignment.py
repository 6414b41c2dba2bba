from fractions import Fraction

import pytest
import torch

from echomimic_core import audio_alignment as al


@pytest.mark.parametrize(
    "fps, seconds, raw_frames",
    [
        (25, 3.0, 75),
        (30, 3.0, 90),
        (24, 3.0, 72),
        (25, 3.23, 80),
        (30, 2.71, 81),
        (24, 1.99, 47),  # audio that does not divide evenly
    ],
)
def test_frames_for_samples_floor_then_4k_plus_1(fps, seconds, raw_frames):
    samples = round(seconds * al.SAMPLE_RATE)
    assert al.frames_for_samples(samples, fps, round_to_4k1=False) == raw_frames
    expected = (raw_frames - 1) // 4 * 4 + 1
    assert al.frames_for_samples(samples, fps) == expected
    assert (expected - 1) % 4 == 0 and expected <= raw_frames


def test_frames_exact_where_float_duration_would_miss():
    # 4.1 s at 30 fps: 4.1 * 30 = 122.99999999999999 in floating point; exactly 123 frames.
    samples = 4.1 * al.SAMPLE_RATE
    assert int(samples / al.SAMPLE_RATE * 30) == 122
    assert al.frames_for_samples(65600, 30, round_to_4k1=False) == 123


def test_frames_cap_and_degenerate_lengths():
    assert al.frames_for_samples(10 * al.SAMPLE_RATE, 25, max_frames=81) == 81
    assert al.frames_for_samples(10 * al.SAMPLE_RATE, 25, max_frames=83) == 81
    assert al.frames_for_samples(100, 25) == 0  # 6 ms of audio: not one frame


def test_frame_sample_maps_round_trip_and_ntsc():
    for fps in (25, 30, 24, 29.97):
        for k in (0, 1, 7, 100, 1234):
            s = al.frame_to_sample(k, fps)
            assert al.sample_to_frame(s, fps) == k
            assert al.sample_to_frame(al.frame_to_sample(k + 1, fps) - 1, fps) == k
    assert al.as_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert al.frame_to_sample(1, 30) == 534 and al.samples_for_frames(1, 30) == 533
    assert al.samples_for_frames(81, 25) == 51840  # upstream int(81 / 25 * 16000)
    assert al.samples_for_frames(10, 30) == 5333
    with pytest.raises(ValueError):
        al.as_fraction(0)


def test_fit_audio_pads_with_silence_and_trims_tail():
    wav = torch.arange(1, 11, dtype=torch.float32)
    assert torch.equal(al.fit_audio(wav, 4), wav[:4])
    padded = al.fit_audio(wav, 13)
    assert padded.shape == (13,) and torch.equal(padded[:10], wav) and padded[10:].abs().sum() == 0
    assert torch.equal(al.pad_audio_to(wav, 4), wav)  # never trims
    assert al.fit_audio(torch.ones(2, 5), 3).shape == (2, 3)


def test_tokens_exact_pick_at_25_fps():
    feats = torch.randn(1, 50, 6)
    out = al.tokens_for_frames(feats, 20, 25)
    assert out.shape == (1, 40, 6)
    assert torch.equal(out, feats[:, :40])


def test_tokens_interpolate_in_time_at_other_fps():
    # a feature that is its own time stamp (in 50 Hz steps) makes the rule visible
    feats = torch.arange(100, dtype=torch.float32).view(1, 100, 1)
    out = al.tokens_for_frames(feats, 30, 30)[0, :, 0]
    expected = torch.arange(60, dtype=torch.float32) * 50 / 60  # token j at time j / 60 s
    assert torch.allclose(out, expected, atol=1e-5)
    out24 = al.tokens_for_frames(feats, 24, 24)[0, :, 0]
    assert torch.allclose(out24, torch.arange(48, dtype=torch.float32) * 50 / 48, atol=1e-5)


def test_tokens_clamp_past_the_end():
    feats = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    out = al.tokens_for_frames(feats, 4, 25)[0, :, 0]
    assert out.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_interpolate_to_length_align_corners():
    feats = torch.tensor([[[0.0], [10.0]]])
    out = al.interpolate_to_length(feats, 5)
    assert out[0, :, 0].tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]
    same = torch.randn(1, 7, 3)
    assert torch.equal(al.interpolate_to_length(same, 7), same)


def test_flash_windows_hand_computed():
    per_frame = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 2, 3)  # [F, L, D]
    win = al.flash_windows(per_frame)
    assert win.shape == (1, 4, 5, 2, 3)
    centre = win[0, :, :, 0, 0].tolist()
    assert centre == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]
    single = al.flash_windows(torch.ones(1, 2, 3))
    assert single.shape == (1, 1, 5, 2, 3)
    with pytest.raises(ValueError, match="per-frame"):
        al.flash_windows(torch.ones(3, 3))


def test_feature_slice_per_layout_and_zero_tail():
    tokens = torch.arange(20, dtype=torch.float32).view(1, 20, 1)  # 10 frames, preview layout
    part = al.feature_slice(tokens, 3, 4, "preview")
    assert part[0, :, 0].tolist() == list(range(6, 14))
    tail = al.feature_slice(tokens, 8, 4, "whisper")
    assert tail.shape == (1, 8, 1) and tail[0, :4, 0].tolist() == [16, 17, 18, 19]
    assert tail[0, 4:].abs().sum() == 0
    win = torch.randn(1, 10, 5, 2, 3)
    assert torch.equal(al.feature_slice(win, 2, 3, "flash"), win[:, 2:5])
    assert al.frames_in_features(tokens, "preview") == 10 and al.frames_in_features(win, "flash") == 10
    with pytest.raises(ValueError, match="unknown audio kind"):
        al.feature_slice(tokens, 0, 1, "nope")


def test_upstream_frame_count_rounds_duration_to_centiseconds():
    # 3.236 s: FFmpeg reports 3.24 s, so upstream makes int(3.24 * 25) = 81 frames; exact floor is 80
    samples = 51776
    assert al.frames_for_samples(samples, 25, round_to_4k1=False) == 80
    assert al.upstream_frames_for_samples(samples, 25) == 81
    assert al.frames_for_samples(samples, 25) == 77
    # away from a boundary both agree, with or without the flash cap
    for seconds in (2.0, 4.37, 7.91):
        n = int(seconds * al.SAMPLE_RATE)
        assert al.upstream_frames_for_samples(n, 25) == al.frames_for_samples(n, 25)
        assert al.upstream_frames_for_samples(n, 25, max_frames=81) == al.frames_for_samples(n, 25, max_frames=81)
