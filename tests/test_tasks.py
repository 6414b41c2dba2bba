"""What each task keeps, chunk by chunk."""

import numpy as np
import pytest
import torch

from echomimic_core import tasks
from echomimic_core.long_video import Chunk


def test_per_frame_mouth_mask_follows_the_chunk_into_the_source_video():
    frames, size = 13, (32, 32)
    source = torch.rand(frames, *size, 3)
    mask = torch.zeros(frames, *size)
    for f in range(frames):  # a one-row region that moves down one row per frame
        mask[f, f] = 1
    task = tasks.Task("lipsync", source_video=source, mouth_mask=mask)
    ref = np.zeros((*size, 3), np.uint8)
    # second chunk: frames 5..12 of the source, then one padded frame past its end
    inputs = tasks.chunk_task_inputs(task, ref, Chunk(5, 9, 4), None, frames, size, source)
    generated = inputs.input_video_mask[0, 0] > 0  # [F, H, W]
    rows = [int(generated[f].any(dim=1).nonzero()[0]) for f in range(9)]
    assert rows == [5, 6, 7, 8, 9, 10, 11, 12, 12]
    assert int(generated.sum()) == 9 * size[1]


def test_to_uint8_image_accepts_half_precision_tensors():
    from echomimic_core.tasks import to_uint8_image

    image = torch.full((4, 4, 3), 0.5, dtype=torch.bfloat16)
    out = to_uint8_image(image)
    assert out.dtype == np.uint8 and (out == 128).all()


def tinted(frame: torch.Tensor, color) -> torch.Tensor:
    return 0.5 * frame + 0.5 * torch.tensor(color)


def test_preview_shows_what_each_task_keeps():
    g = torch.Generator().manual_seed(0)
    reference, end, other = (torch.rand(32, 48, 3, generator=g) for _ in range(3))
    # first_last: the reference with the face box tinted, then the end frame
    preview = tasks.preview_frames(tasks.Task("first_last", end_image=end), reference, face_box=(4, 20, 8, 24))
    assert preview.shape == (2, 32, 48, 3) and torch.equal(preview[1], end)
    face = torch.zeros(32, 48, dtype=torch.bool)
    face[4:20, 8:24] = True
    torch.testing.assert_close(preview[0][face], tinted(reference, tasks.FACE_TINT)[face])
    assert torch.equal(preview[0][~face], reference[~face])
    # keyframes in frame order, the ones counted from the end last; an image of another size is left out
    keyframes = {-1: end, 10: other, 0: reference, 5: torch.rand(16, 16, 3)}
    preview = tasks.preview_frames(tasks.Task("keyframes", keyframes=keyframes))
    assert torch.equal(preview, torch.stack([reference, other, end]))
    # lipsync: the source's first frame, the mouth region tinted red
    video = torch.rand(4, 32, 48, 3, generator=g)
    preview = tasks.preview_frames(tasks.Task("lipsync", source_video=video, mouth_box=(16, 32, 8, 40)))
    mouth = torch.zeros(32, 48, dtype=torch.bool)
    mouth[16:32, 8:40] = True
    torch.testing.assert_close(preview[0][mouth], tinted(video[0], tasks.MOUTH_TINT)[mouth])
    assert preview.shape == (1, 32, 48, 3) and torch.equal(preview[0][~mouth], video[0][~mouth])
    # continue: the kept source frames; a face mask tints the first of them
    mask = torch.zeros(32, 48)
    mask[:8] = 1
    preview = tasks.preview_frames(tasks.Task("continue", source_video=video, continue_frames=2), face_mask=mask)
    assert torch.equal(preview[1], video[3]) and torch.equal(preview[0][8:], video[2][8:])
    torch.testing.assert_close(preview[0][:8], tinted(video[2], tasks.FACE_TINT)[:8])
    # nothing to show (first_frame without its image): one black image, still a valid IMAGE batch
    assert torch.equal(tasks.preview_frames(tasks.Task()), torch.zeros(1, 64, 64, 3))


def test_keyframe_positions_name_indices_as_given():
    Task = tasks.Task
    task = Task("keyframes", keyframes={0: None, -500: None, 3: None})
    with pytest.raises(ValueError, match="keyframe index -500 lies outside the 12-frame video; use 0..11, or -12..-1"):
        task.keyframe_positions(12)
    with pytest.raises(ValueError, match="keyframe indices 11 and -1 both name frame 11"):
        Task("keyframes", keyframes={11: None, -1: None}).keyframe_positions(12)
    assert Task("keyframes", keyframes={0: None, -1: None}).keyframe_positions(12) == {0: 0, -1: 11}


def test_mouth_box_must_lie_inside_the_source_video():
    Task = tasks.Task
    video = torch.zeros(5, 48, 64, 3)
    for box in ((30, 20, 0, 64), (0, 48, 60, 100), (-1, 10, 0, 10)):
        with pytest.raises(ValueError, match=r"mouth box \(in source video pixels\) .* 48x64"):
            Task("lipsync", source_video=video, mouth_box=box).validate()
    Task("lipsync", source_video=video, mouth_box=(24, 48, 16, 48)).validate()
