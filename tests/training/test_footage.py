"""Raw footage reading: a window of frames by time, and a window past the end refused by kind."""

import av
import numpy as np
import pytest
import torch

from echomimic_core import media
from training.footage import WindowPastEnd, iter_frames, read_window


def test_a_window_is_read_by_time_and_one_past_the_end_is_refused(tmp_path):
    ramp = torch.arange(10, dtype=torch.float32) / 9  # frame i has brightness i/9, at 25 fps
    media.write_video(tmp_path / "v.mp4", ramp.view(10, 1, 1, 1).expand(10, 16, 16, 3).clone(), fps=25.0)
    window = read_window(tmp_path / "v.mp4", 0.12, 4, 25.0)  # frames 3..6
    assert window.shape == (4, 16, 16, 3)
    assert torch.allclose(torch.from_numpy(window).float().mean((1, 2, 3)) / 255, ramp[3:7], atol=0.03)
    with pytest.raises(WindowPastEnd, match="ends before 0.56 s") as error:
        read_window(tmp_path / "v.mp4", 0.2, 9, 25.0)
    assert isinstance(error.value, media.MediaError)  # callers that only know MediaError still catch it


@pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="this av cannot write a display rotation"
)
def test_footage_turns_phone_videos_upright_as_inference_does(tmp_path):
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[:8, :8] = 255  # marker in the stored top-left corner
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    shown = (media.load_video(path, with_audio=False).frames[0].numpy() * 255).round()
    window = read_window(path, 0.0, 1, 25.0)[0]
    assert window.shape == (48, 32, 3) and np.abs(window - shown).max() <= 1
    _, small, full = next(iter_frames(path, max_side=24))  # scaled, then turned: 24 tall, 16 wide
    assert small.shape == (24, 16, 3) and full == (48, 32)
    assert small[-3:, :3].mean() > 200 and small[:3, :3].mean() < 30  # the marker bottom-left, as shown
