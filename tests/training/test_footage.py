"""Raw footage reading: a window of frames by time, and a window past the end refused by kind."""

import pytest
import torch

from echomimic_core import media
from training.footage import WindowPastEnd, read_window


def test_a_window_is_read_by_time_and_one_past_the_end_is_refused(tmp_path):
    ramp = torch.arange(10, dtype=torch.float32) / 9  # frame i has brightness i/9, at 25 fps
    media.write_video(tmp_path / "v.mp4", ramp.view(10, 1, 1, 1).expand(10, 16, 16, 3).clone(), fps=25.0)
    window = read_window(tmp_path / "v.mp4", 0.12, 4, 25.0)  # frames 3..6
    assert window.shape == (4, 16, 16, 3)
    assert torch.allclose(torch.from_numpy(window).float().mean((1, 2, 3)) / 255, ramp[3:7], atol=0.03)
    with pytest.raises(WindowPastEnd, match="ends before 0.56 s") as error:
        read_window(tmp_path / "v.mp4", 0.2, 9, 25.0)
    assert isinstance(error.value, media.MediaError)  # callers that only know MediaError still catch it
