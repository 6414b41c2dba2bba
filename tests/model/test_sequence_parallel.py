"""Sequence parallelism: the frame split, the per-rank audio context, and equality over 2 and 3 ranks."""

import json
from pathlib import Path

import pytest
import torch

from echomimic_core.model.audio_projector import AudioTokens, preview_window_index
from echomimic_core.model.sequence_parallel import frame_split

WORKER = Path(__file__).with_name("sequence_parallel_worker.py")


def test_frame_split_is_contiguous_and_balanced():
    assert frame_split(29, 4) == [8, 7, 7, 7]  # a 113-frame chunk over 4 ranks
    assert frame_split(3, 3) == [1, 1, 1]
    assert sum(frame_split(21, 2)) == 21
    with pytest.raises(ValueError, match="needs at least 4 latent frames, got 3"):
        frame_split(3, 4)


@pytest.mark.parametrize("windowed", [True, False])
def test_audio_context_of_a_frame_range_is_those_frames_windows(windowed):
    frames, per_frame = 5, 3
    if windowed:  # preview: windows gathered from the clip's tokens
        index = preview_window_index(2 * (4 * (frames - 1) + 1), tokens_per_frame=2, expand=4)
        audio = AudioTokens(torch.randn(2, 2 * (4 * (frames - 1) + 1), 6), index, frames)
    else:  # flash: per_frame tokens per latent frame, frame-major
        audio = AudioTokens(torch.randn(2, frames * per_frame, 6), None, frames)
    whole = audio.windows(audio.tokens).unflatten(0, (2, frames))  # [B, T, W, C]
    part = audio.frame_range(1, 4)
    assert part.frames == 3
    assert torch.equal(part.windows(part.tokens).unflatten(0, (2, 3)), whole[:, 1:4])


@pytest.mark.parametrize("ranks", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_split_tokens_equal_one_process(torchrun, tmp_path, ranks):
    """Uneven split (3 frames over 2 ranks) and one frame per rank (3 ranks); preview with and
    without the face gate, with RIFLEx, and flash."""
    out = tmp_path / "errors.json"
    torchrun(ranks, WORKER, out)
    errors = json.loads(out.read_text())
    assert set(errors) == {"preview", "flash", "riflex", "no_gate"}
    assert max(errors.values()) < 1e-5, errors
