import json

import numpy as np
import pytest
import torch
from PIL import Image

from echomimic_core.boxes import box_region
from echomimic_core.task_masks import (
    conditioning_y,
    generate_everything_inputs,
    keyframe_inputs,
    mask_latents,
    masked_pixels,
    pick_sample_size,
    region_inputs,
    start_frames_inputs,
    verify_fixture,
)

SIZE = (32, 48)


def image(seed):
    return np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_fixture_matches_upstream(reference_dir):
    path = reference_dir / "task_masks.safetensors"
    errors = verify_fixture(path, json.loads((reference_dir / "task_masks_meta.json").read_text()))
    assert len(errors) == 12
    assert max(errors.values()) < 1e-5, errors


def test_pick_sample_size():
    assert pick_sample_size(1080, 1920, (768, 768)) == (576, 1024)  # area-preserving, aspect kept
    assert pick_sample_size(1080, 1920, 768 * 768) == (576, 1024)
    assert pick_sample_size(500, 333, (768, 768)) == (496, 320)  # smaller: never upscaled
    h, w = pick_sample_size(3000, 2000, (512, 512))
    assert h % 16 == 0 and w % 16 == 0 and h * w <= 512 * 512
    with pytest.raises(ValueError, match="16"):
        pick_sample_size(10, 100)


def test_first_frame_task():
    inputs = start_frames_inputs([image(0)], 9, SIZE)
    assert inputs.input_video.shape == (1, 3, 9, *SIZE) and inputs.input_video_mask.shape == (1, 1, 9, *SIZE)
    expected = torch.from_numpy(np.array(Image.fromarray(image(0)).resize(SIZE[::-1], Image.Resampling.LANCZOS)))
    torch.testing.assert_close(inputs.input_video[0, :, 0], expected.permute(2, 0, 1) / 255)
    assert (inputs.input_video_mask[:, :, 0] == 0).all() and (inputs.input_video_mask[:, :, 1:] == 255).all()
    pixels = masked_pixels(inputs)
    torch.testing.assert_close(pixels[:, :, 0], inputs.input_video[:, :, 0] * 2 - 1)
    assert (pixels[:, :, 1:] == 0).all()
    assert inputs.reference_image.size == SIZE[::-1]


def test_first_last_and_multi_start_keep_the_right_frames():
    fl = start_frames_inputs([image(0)], 9, SIZE, end=[image(1)])
    kept = (fl.input_video_mask[0, 0, :, 0, 0] == 0).tolist()
    assert kept == [True] + [False] * 7 + [True]
    ms = start_frames_inputs([image(0), image(1), image(2)], 9, SIZE)
    assert (ms.input_video_mask[0, 0, :, 0, 0] == 0).tolist() == [True] * 3 + [False] * 6
    assert not torch.equal(ms.input_video[:, :, 1], ms.input_video[:, :, 0])
    # generated frames handed back as a float batch [N, 3, H, W] in [0, 1], as long videos do
    frames = ms.input_video[0, :, :3].permute(1, 0, 2, 3)
    again = start_frames_inputs(frames, 9, SIZE)
    assert torch.equal(again.input_video_mask, ms.input_video_mask)
    assert (again.input_video[:, :, :3] - ms.input_video[:, :, :3]).abs().max() <= 1 / 255 + 1e-6


def test_keyframes_at_any_index():
    inputs = keyframe_inputs({0: image(0), 4: image(1), -1: image(2)}, 9, SIZE)
    assert (inputs.input_video_mask[0, 0, :, 0, 0] == 0).tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        keyframe_inputs({9: image(0)}, 9, SIZE)


def test_mask_latents_fold_first_frame_four_times():
    inputs = start_frames_inputs([image(0)], 9, SIZE)
    m = mask_latents(inputs.input_video_mask)
    assert m.shape == (1, 4, 3, SIZE[0] // 8, SIZE[1] // 8)
    assert (m[:, :, 0] == 1).all()  # latent frame 0 = pixel frame 0 four times, kept
    assert (m[:, :, 1:] == 0).all()
    # first + last: the last latent frame's 4th channel is pixel frame 8
    m = mask_latents(start_frames_inputs([image(0)], 9, SIZE, end=[image(1)]).input_video_mask)
    assert (m[:, 3, 2] == 1).all() and (m[:, :3, 2] == 0).all() and (m[:, :, 1] == 0).all()


def test_mouth_region_task():
    video = torch.rand(1, 3, 5, *SIZE)
    region = box_region([8, 16, 16, 32], 5, SIZE)  # top, bottom, left, right
    inputs = region_inputs(video, region)
    pixels = masked_pixels(inputs)
    assert (pixels[:, :, :, 8:16, 16:32] == 0).all()
    outside = torch.ones(SIZE, dtype=torch.bool)
    outside[8:16, 16:32] = False
    torch.testing.assert_close(pixels[..., outside], (video * 2 - 1)[..., outside])
    m = mask_latents(inputs.input_video_mask)
    assert m.shape == (1, 4, 2, 4, 6)
    assert (m[..., 1:2, 2:4] == 0).all() and (m[..., 3, 0] == 1).all()
    with pytest.raises(ValueError, match="sample size"):
        region_inputs(video, torch.zeros(5, 8, 8))


def test_conditioning_y_with_encoder_and_with_nothing_kept():
    inputs = start_frames_inputs([image(0)], 9, SIZE)
    seen = {}

    def encode(pixels):
        seen["pixels"] = pixels
        return torch.randn(1, 16, 3, SIZE[0] // 8, SIZE[1] // 8)

    y = conditioning_y(inputs, encode)
    assert y.shape == (1, 20, 3, 4, 6)
    torch.testing.assert_close(seen["pixels"], masked_pixels(inputs))
    torch.testing.assert_close(y[:, :4], mask_latents(inputs.input_video_mask))
    empty = conditioning_y(generate_everything_inputs(9, SIZE), encode=lambda _: pytest.fail("encoded"))
    assert empty.shape == (1, 20, 3, 4, 6) and (empty == 0).all()
    with pytest.raises(ValueError, match="encode"):
        conditioning_y(inputs)
    with pytest.raises(ValueError, match="4k"):
        mask_latents(torch.zeros(1, 1, 8, *SIZE))
