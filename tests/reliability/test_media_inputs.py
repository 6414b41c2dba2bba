"""Media inputs that used to give silent garbage or misleading messages (issue 10)."""

import os

import numpy as np
import pytest
import torch

from echomimic_core import media


def test_nan_wav_is_refused_naming_the_file(tmp_path, wav):
    samples = np.sin(np.linspace(0, 100, 16000))
    samples[100:110] = np.nan
    path = wav(tmp_path / "broken voice.wav", samples=samples)
    with pytest.raises(media.MediaError, match=r"broken voice\.wav: 10 of 16000 audio samples are NaN or infinite"):
        media.load_audio(path)


def test_non_finite_waveform_tensor_is_refused():
    wav = torch.zeros(1, 1, 1600)
    wav[..., 5] = float("inf")
    with pytest.raises(media.MediaError, match="NaN or infinite"):
        media.prepare_audio(wav, 16000)


def test_device_and_named_pipe_are_not_called_folders(tmp_path):
    fifo = tmp_path / "voice.wav"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        for load in (media.load_audio, media.load_image, media.load_video):
            with pytest.raises(media.MediaError, match="is not a regular file") as e:
                load(path)
            assert "folder" not in str(e.value)
    with pytest.raises(media.MediaError, match="is a folder"):
        media.load_audio(tmp_path)


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 0.0, -25.0])
def test_video_with_unusable_fps_is_refused_before_writing(tmp_path, fps):
    # the Save Video node's fps (or a linked FLOAT) can carry NaN from an API prompt
    with pytest.raises(ValueError, match=rf"fps must be .*positive.*got {fps}"):
        media.write_video(tmp_path / "clip.mp4", torch.zeros(3, 16, 16, 3), fps)
    assert not list(tmp_path.iterdir())
