"""Output nodes: mp4 with synced audio in the output folder; colour match to the first frame."""

import torch

from echomimic_core.media import load_video
from nodes import output


def test_save_video_writes_mp4_with_audio_trimmed_to_the_frames(folders):
    frames = torch.rand(9, 32, 48, 3)
    audio = {"waveform": 0.1 * torch.randn(1, 2, 16000), "sample_rate": 16000}  # 1 s for a 0.36 s clip
    result = output.EchoMimicSaveVideo().save(frames, 25.0, "echo/test", 23, audio)
    item = result["ui"]["images"][0]
    assert item == {"filename": "test_00001_.mp4", "subfolder": "echo", "type": "output"}
    assert result["ui"]["animated"] == (True,)
    video = load_video(result["result"][0])
    assert video.frames.shape[0] == 9
    assert abs(video.audio.shape[-1] / video.sample_rate - 9 / 25) < 0.05
    second = output.EchoMimicSaveVideo().save(frames, 25.0, "echo/test", 23)
    assert second["ui"]["images"][0]["filename"] == "test_00002_.mp4"


def test_color_match_pulls_frames_to_the_first():
    base = torch.rand(1, 16, 16, 3) * 0.5 + 0.25
    frames = torch.cat([base, (base * 0.5).clamp(0, 1)])
    (matched,) = output.EchoMimicColorMatch().match(frames)
    assert (matched[0] * 255 - base[0] * 255).abs().max() <= 1.0  # frame 0 is the reference: unchanged
    assert abs(matched[1].mean() - base.mean()) < abs(frames[1].mean() - base.mean()) / 4


def test_color_match_takes_half_precision_frames():
    # an upstream node may hand over bf16 frames; numpy has no bf16, so the node must not call .numpy() on them
    base = torch.rand(1, 16, 16, 3) * 0.5 + 0.25
    frames = torch.cat([base, (base * 0.5).clamp(0, 1)])
    (expected,) = output.EchoMimicColorMatch().match(frames.bfloat16().float())
    (matched,) = output.EchoMimicColorMatch().match(frames.bfloat16())
    assert matched.dtype == torch.float32 and torch.equal(matched, expected)
