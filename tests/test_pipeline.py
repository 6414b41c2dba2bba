"""End-to-end generation on the tiny demo models: lengths, tasks, determinism, hooks, errors."""

import dataclasses

import numpy as np
import pytest
import torch

from echomimic_core import pipeline, tasks
from echomimic_core.demo import demo_inputs
from echomimic_core.long_video import Chunk
from echomimic_core.sampling.sampler import Cancelled, StepHooks
from echomimic_core.settings import GenerationSettings

SR = 16000


def quick(**overrides) -> GenerationSettings:
    base = dict(steps=2, partial_video_length=9, overlap_video_length=4, color_match=False)
    return GenerationSettings.for_variant("preview", **{**base, **overrides})


@pytest.fixture(scope="module")
def inputs():
    image, audio, sr = demo_inputs(seconds=0.52, size=64)
    return image, audio, sr


def test_length_follows_audio_and_audio_is_trimmed(demo_models, inputs):
    image, audio, sr = inputs
    steps = []
    hooks = StepHooks(on_step=lambda step, total, lat, den: steps.append((step, total)))
    result = pipeline.generate(demo_models, image, audio, sr, "a person talks", quick(), hooks=hooks)
    assert result.frames.shape == (13, 64, 64, 3)  # floor(0.52 s * 25 fps)
    assert result.frames.min() >= 0 and result.frames.max() <= 1
    assert result.audio.shape == (1, int(13 / 25 * sr))  # trimmed to the video
    assert result.info["chunks"] == 2
    # progress counts chunks x steps, continuously
    assert [s for s, _ in steps] == [1, 2, 3, 4] and {t for _, t in steps} == {4}


def test_same_seed_same_video_other_seed_other_video(demo_models, inputs):
    image, audio, sr = inputs
    a = pipeline.generate(demo_models, image, audio, sr, "x", quick(seed=1)).frames
    b = pipeline.generate(demo_models, image, audio, sr, "x", quick(seed=1)).frames
    c = pipeline.generate(demo_models, image, audio, sr, "x", quick(seed=2)).frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_and_sequential_guidance_agree(demo_models, inputs):
    image, audio, sr = inputs
    a = pipeline.generate(demo_models, image, audio, sr, "x", quick(batch_guidance=True)).frames
    b = pipeline.generate(demo_models, image, audio, sr, "x", quick(batch_guidance=False)).frames
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_sliding_long_video_mode(demo_models, inputs):
    image, audio, sr = inputs
    result = pipeline.generate(demo_models, image, audio, sr, "x", quick(long_video_mode="sliding"))
    assert result.frames.shape == (13, 64, 64, 3)


def test_riflex_does_not_outlive_its_generation(demo_models, inputs):
    image, audio, sr = inputs
    short = dict(max_frames=5)  # one small chunk is enough to see RoPE change
    plain = pipeline.generate(demo_models, image, audio, sr, "x", quick(**short)).frames
    riflex = pipeline.generate(demo_models, image, audio, sr, "x", quick(riflex_k=1, **short)).frames
    after = pipeline.generate(demo_models, image, audio, sr, "x", quick(**short)).frames
    assert not torch.equal(plain, riflex)
    assert torch.equal(plain, after)  # the cached transformer is back to plain RoPE


@pytest.mark.parametrize("kind", ["first_last", "keyframes", "lipsync", "continue"])
def test_every_task_runs(demo_models, inputs, kind):
    image, audio, sr = inputs
    other = torch.rand(64, 64, 3)
    source = torch.rand(20, 64, 64, 3)
    task = {
        "first_last": pipeline.Task("first_last", end_image=other),
        "keyframes": pipeline.Task("keyframes", keyframes={0: torch.from_numpy(image / 255.0), -1: other}),
        "lipsync": pipeline.Task("lipsync", source_video=source, mouth_box=(30, 50, 16, 48)),
        "continue": pipeline.Task("continue", source_video=source, continue_frames=4),
    }[kind]
    result = pipeline.generate(
        demo_models, None if kind in ("lipsync", "continue") else image, audio, sr, "x", quick(), task=task
    )
    assert result.frames.shape == (13, 64, 64, 3)


def test_chunk_masks_keep_the_right_frames():
    ref = np.zeros((64, 64, 3), np.uint8)
    task = pipeline.Task("first_last", end_image=torch.ones(64, 64, 3))
    # second chunk of a 13-frame video: frames 5..13; start frames 0-3 kept, the end frame (12) kept
    start = torch.full((4, 64, 64, 3), 0.5)
    inputs = tasks.chunk_task_inputs(task, ref, Chunk(5, 9, 4), start, 13, (64, 64), None)
    keep = (inputs.input_video_mask[0, 0, :, 0, 0] == 0).tolist()
    assert keep == [True] * 4 + [False] * 3 + [True, False]
    assert torch.allclose(inputs.input_video[0, :, 7], torch.ones(3, 64, 64))
    # lip-sync keeps everything but the mouth box, in every frame
    lipsync = pipeline.Task("lipsync", source_video=torch.rand(9, 64, 64, 3), mouth_box=(40, 56, 16, 48))
    inputs = tasks.chunk_task_inputs(lipsync, ref, Chunk(0, 9, 0), None, 9, (64, 64), lipsync.source_video)
    mask = inputs.input_video_mask[0, 0]
    assert (mask[:, 40:56, 16:48] == 255).all() and mask.sum() == 255 * 9 * 16 * 32


def test_cancellation_stops_between_steps(demo_models, inputs):
    image, audio, sr = inputs
    seen = []
    hooks = StepHooks(on_step=lambda *a: seen.append(a[0]), should_stop=lambda: len(seen) >= 1)
    with pytest.raises(Cancelled):
        pipeline.generate(demo_models, image, audio, sr, "x", quick(), hooks=hooks)
    assert seen == [1]


def test_bad_inputs_are_clear_errors(demo_models, inputs):
    image, audio, sr = inputs
    with pytest.raises(ValueError, match="shorter than one video frame"):
        pipeline.generate(demo_models, image, audio[:, :100], sr, "x", quick())
    with pytest.raises(ValueError, match="at least 16 pixels"):
        pipeline.generate(demo_models, image[:8, :8], audio, sr, "x", quick())
    with pytest.raises(ValueError, match=r"overlap_video_length must be in \[1"):
        pipeline.generate(demo_models, image, audio, sr, "x", quick(overlap_video_length=0))
    with pytest.raises(ValueError, match="width and height go together"):
        pipeline.generate(demo_models, image, audio, sr, "x", quick(width=64))
    with pytest.raises(ValueError, match="needs end_image"):
        pipeline.generate(demo_models, image, audio, sr, "x", quick(), task=pipeline.Task("first_last"))
    with pytest.raises(ValueError, match="mouth_mask is"):
        task = pipeline.Task("lipsync", source_video=torch.rand(20, 64, 64, 3), mouth_mask=torch.ones(32, 32))
        pipeline.generate(demo_models, None, audio, sr, "x", quick(), task=task)
    with pytest.raises(ValueError, match="keyframe indices"):
        task = pipeline.Task("keyframes", keyframes={40: torch.rand(64, 64, 3)})
        pipeline.generate(demo_models, image, audio, sr, "x", quick(), task=task)


def test_cancellation_reaches_into_the_vae(demo_models, inputs):
    """A stop requested after the last step of a chunk interrupts that chunk's decode itself."""
    image, audio, sr = inputs

    class CountingVAE:
        def __init__(self, vae):
            self.vae, self.decodes = vae, 0

        def __getattr__(self, name):
            return getattr(self.vae, name)

        def decode(self, *args, **kwargs):
            out = self.vae.decode(*args, **kwargs)
            self.decodes += 1
            return out

    vae = CountingVAE(demo_models.vae)
    models = dataclasses.replace(demo_models, vae=vae)
    seen = []
    hooks = StepHooks(on_step=lambda *a: seen.append(a[0]), should_stop=lambda: len(seen) >= 2)
    with pytest.raises(Cancelled):
        pipeline.generate(models, image, audio, sr, "x", quick(), hooks=hooks)
    assert seen == [1, 2] and vae.decodes == 0
