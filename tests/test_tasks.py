"""What each task keeps, chunk by chunk."""

import numpy as np
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
