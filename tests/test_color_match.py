import cv2
import numpy as np
import pytest
import torch

from echomimic_core import media
from echomimic_core.color_match import color_transfer, match_to_first_frame
from echomimic_core.streaming import ColourMatcher


def lab_stats(frame):
    mean, std = cv2.meanStdDev(cv2.cvtColor(frame, cv2.COLOR_RGB2LAB))
    return mean.ravel(), std.ravel()


def video():
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, (1, 24, 32, 3)).astype(np.float64)
    smooth = cv2.GaussianBlur(base[0], (5, 5), 0)[None]
    tints = np.array([[0, 0, 0], [25, -10, 5], [-20, 15, 30], [10, 10, -25]])[:, None, None, :]
    gains = np.array([1.0, 1.2, 0.8, 1.1])[:, None, None, None]
    return np.clip((smooth - 128) * gains + 128 + tints, 0, 255).astype(np.uint8)


def test_frame_stats_match_frame_zero():
    frames = video()
    out = match_to_first_frame(frames)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert np.array_equal(out[0], frames[0])
    ref_mean, ref_std = lab_stats(frames[0])
    before = max(np.abs(lab_stats(f)[0] - ref_mean).max() for f in frames[1:])
    for frame in out[1:]:
        mean, std = lab_stats(frame)
        # LAB<->RGB round trips in 8 bits cost a little; the tinted input was off by far more
        np.testing.assert_allclose(mean, ref_mean, atol=1.5)
        np.testing.assert_allclose(std, ref_std, atol=1.5)
    assert before > 5


def test_exact_upstream_formula_on_one_frame():
    frames = video()
    src = cv2.cvtColor(frames[1], cv2.COLOR_RGB2LAB).astype(np.float64)
    ref = cv2.cvtColor(frames[0], cv2.COLOR_RGB2LAB).astype(np.float64)
    s_mean, s_std = np.round(src.reshape(-1, 3).mean(0), 2), np.round(src.reshape(-1, 3).std(0), 2)
    r_mean, r_std = np.round(ref.reshape(-1, 3).mean(0), 2), np.round(ref.reshape(-1, 3).std(0), 2)
    lab = np.clip((src - s_mean) * (r_std / s_std) + r_mean, 0, 255)
    expected = cv2.cvtColor(np.round(lab).astype(np.uint8), cv2.COLOR_LAB2RGB)
    got = color_transfer(frames[1], frames[0])
    # np.round vs OpenCV's rounding of exact .5 ties may differ by one level on a few pixels
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_float_frames_round_as_the_unmatched_video_does():
    # 0.7 of a level above each value: truncation (upstream) would give the level below
    frames = (torch.tensor(video(), dtype=torch.float32) + 0.7) / 255
    matched = match_to_first_frame(frames)
    unmatched = media.to_uint8_frames(frames)
    assert np.array_equal(matched[0], unmatched[0])
    assert np.array_equal(unmatched, video().astype(np.uint8) + 1)
    assert np.array_equal(ColourMatcher(True)(frames), matched)
    assert np.array_equal(ColourMatcher(False)(frames), unmatched)


def test_flat_frame_is_safe_and_bad_shapes_are_refused():
    flat = np.full((2, 8, 8, 3), 90, np.uint8)
    flat[0] = video()[0, :8, :8]
    out = match_to_first_frame(flat)
    assert np.isfinite(out).all() and out.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8 RGB"):
        color_transfer(np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.uint8))
