"""End-to-end generation on the tiny demo models: lengths, tasks, determinism, hooks, errors.

Tests about the denoising and conditioning run with a stand-in VAE (``fast_models``); the real
tiny VAE, which dominates run time, takes part where its output or its progress matters."""

import dataclasses
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from echomimic_core import pipeline, task_masks, tasks
from echomimic_core.demo import demo_inputs
from echomimic_core.long_video import Chunk
from echomimic_core.model.context_cache import ContextCache
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


class StandInVAE:
    """The VAE's shapes with readable latents, for tests about the pipeline rather than the VAE (the
    real one dominates their run time): encode averages 8x8 pixels, keeps the first frame and
    averages each following group of 4, and repeats the RGB channels to 16; decode upsamples back."""

    def to(self, device):
        return self

    def encode(self, pixels, tiling=None, progress=None):
        """[1, 3, F, H, W] in [-1, 1] -> [1, 16, 1 + (F - 1) / 4, H / 8, W / 8]"""
        first, rest = pixels[:, :, :1], pixels[:, :, 1:]
        b, c, f, h, w = rest.shape
        grouped = torch.cat([first, rest.reshape(b, c, f // 4, 4, h, w).mean(3)], dim=2)
        latents = F.avg_pool3d(grouped, (1, 8, 8))
        return torch.cat([latents] * 5 + [latents[:, :1]], dim=1)

    def decode(self, latents, tiling=None, progress=None):
        """[1, 16, F_lat, h, w] -> [1, 3, 1 + 4 (F_lat - 1), 8 h, 8 w]"""
        rgb = latents[:, :3].clamp(-1, 1)
        frames = torch.cat([rgb[:, :, :1], rgb[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
        return F.interpolate(frames, scale_factor=(1, 8, 8), mode="nearest")


@pytest.fixture(scope="module")
def fast_models(demo_models):
    return dataclasses.replace(demo_models, vae=StandInVAE())


class ModelSpy:
    """Records every transformer call: latents in, timestep, conditioning and prediction out."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs, output):
        x, t, cond = args[:3]
        self.calls.append(dict(x=x.clone(), t=t.clone(), y=cond.y.clone(), out=output.clone()))


@pytest.fixture
def spy(demo_models):
    recorder = ModelSpy(demo_models.transformer)
    yield recorder
    recorder.handle.remove()


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


def test_same_seed_same_video_other_seed_other_video(fast_models, inputs):
    image, audio, sr = inputs
    a = pipeline.generate(fast_models, image, audio, sr, "x", quick(seed=1)).frames
    b = pipeline.generate(fast_models, image, audio, sr, "x", quick(seed=1)).frames
    c = pipeline.generate(fast_models, image, audio, sr, "x", quick(seed=2)).frames
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_and_sequential_guidance_agree(fast_models, inputs):
    image, audio, sr = inputs
    a = pipeline.generate(fast_models, image, audio, sr, "x", quick(batch_guidance=True)).frames
    b = pipeline.generate(fast_models, image, audio, sr, "x", quick(batch_guidance=False)).frames
    torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_sliding_mode_blends_overlapping_windows(fast_models, spy):
    """25 frames = 7 latent frames in windows of 5 overlapping by 3: [0, 5) and [2, 7). Each step's
    velocity is window 0's prediction, then a linear hand-over across frames 2-4, then window 1's."""
    image, audio, sr = demo_inputs(seconds=1.0, size=64)
    settings = quick(long_video_mode="sliding", partial_video_length=17, overlap_video_length=3, guidance_scale=1.0)
    denoised = []
    hooks = StepHooks(on_step=lambda step, total, lat, den: denoised.append(den))
    sliding = pipeline.generate(fast_models, image, audio, sr, "x", settings, hooks=hooks)
    assert sliding.frames.shape == (25, 64, 64, 3)
    assert len(spy.calls) == 2 * settings.steps  # CFG off: one call per window per step
    first, second = spy.calls[:2]
    assert first["x"].shape[2] == second["x"].shape[2] == 5
    torch.testing.assert_close(second["x"][:, :, :3], first["x"][:, :, 2:], rtol=0, atol=0)  # one sequence
    latents = torch.cat([first["x"], second["x"][:, :, 3:]], dim=2)
    velocity = (latents - denoised[0]) / (first["t"] / 1000).view(1, 1, 1, 1, 1)
    a, b = first["out"], second["out"]
    expected = torch.cat([a[:, :, :3], 0.5 * a[:, :, 3:4] + 0.5 * b[:, :, 1:2], b[:, :, 2:]], dim=2)
    torch.testing.assert_close(velocity, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a[:, :, 3], b[:, :, 1], atol=1e-3)  # the blend mixes two different predictions
    chunks = pipeline.generate(
        fast_models, image, audio, sr, "x", dataclasses.replace(settings, long_video_mode="chunks")
    )
    assert not torch.allclose(chunks.frames, sliding.frames, atol=1e-3)


@pytest.mark.parametrize("mode", ["chunks", "sliding"])
def test_text_and_clip_keys_computed_once_give_the_same_video(demo_models, inputs, mode, monkeypatch):
    """The context cache: exactly the frames of recomputing the keys every forward, with each
    block's text/CLIP projection run once per distinct prompt and chunk instead of per forward,
    and no cached key alive while the VAE decodes (one cache per chunk's denoising), nor the
    chunk's task video and masks."""
    image, audio, sr = inputs
    calls, decodes = [], []
    decode = pipeline.Denoiser.decode

    def checked_decode(self, latents, chunk):
        gc.collect()
        held = [
            o
            for o in gc.get_objects()
            if (isinstance(o, ContextCache) and o.entries()) or isinstance(o, task_masks.TaskInputs)
        ]
        decodes.append(len(held))
        return decode(self, latents, chunk)

    monkeypatch.setattr(pipeline.Denoiser, "decode", checked_decode)
    handle = demo_models.transformer.blocks[0].cross_attn.k.register_forward_hook(lambda *a: calls.append(1))
    try:
        # 4 steps: the negative prompt boosted on steps 0-2, plain on step 3
        settings = quick(long_video_mode=mode, steps=4)
        cached = pipeline.generate(demo_models, image, audio, sr, "x", settings).frames
        once, chunks = len(calls), len(decodes)
        plain = pipeline.generate(
            demo_models, image, audio, sr, "x", dataclasses.replace(settings, context_cache=False)
        )
    finally:
        handle.remove()
    assert torch.equal(cached, plain.frames)
    assert chunks == (2 if mode == "chunks" else 1) and decodes == [0] * len(decodes)
    # preview: prompt, negative, boosted negative -> 3 projections per chunk, against 2-3 per
    # forward (distinct prompts of the batch) x steps x chunks/windows without the cache
    assert once == 3 * chunks and len(calls) - once > 2 * once


def test_sliding_mode_uses_teacache_in_every_window(fast_models, demo_models):
    """Flash defaults to TeaCache: sliding mode must skip steps too, with each window's own residuals."""
    image, audio, sr = demo_inputs(seconds=1.0, size=64)
    base = quick(long_video_mode="sliding", partial_video_length=17, overlap_video_length=3, steps=4)
    runs = []
    handle = demo_models.transformer.blocks[0].register_forward_hook(lambda *a: runs.append(1))
    try:

        def frames(**teacache):
            runs.clear()
            return pipeline.generate(fast_models, image, audio, sr, "x", dataclasses.replace(base, **teacache)).frames

        uncached = frames(teacache_threshold=0.0)
        assert len(runs) == 2 * 4  # two windows, four steps, guidance batched
        # the highest threshold the settings allow, which every step here stays under; with all four
        # steps before skipping starts, residuals are kept per window, every step computed, exact
        assert torch.equal(frames(teacache_threshold=1.0, teacache_skip_start_steps=4), uncached)
        skipping = frames(teacache_threshold=1.0, teacache_skip_start_steps=1)
        assert len(runs) == 2 * 1  # steps 1-3 reuse each window's residual of step 0
        assert torch.isfinite(skipping).all() and not torch.equal(skipping, uncached)
    finally:
        handle.remove()


def test_riflex_does_not_outlive_its_generation(fast_models, inputs):
    image, audio, sr = inputs
    short = dict(max_frames=5)  # one small chunk is enough to see RoPE change
    plain = pipeline.generate(fast_models, image, audio, sr, "x", quick(**short)).frames
    riflex = pipeline.generate(fast_models, image, audio, sr, "x", quick(riflex_k=1, **short)).frames
    after = pipeline.generate(fast_models, image, audio, sr, "x", quick(**short)).frames
    assert not torch.equal(plain, riflex)
    assert torch.equal(plain, after)  # the cached transformer is back to plain RoPE


def kept_frames(inputs: task_masks.TaskInputs) -> list[int]:
    """Pixel frames of a chunk whose every pixel is kept."""
    keep = (inputs.input_video_mask[0, 0] == task_masks.KEEP).flatten(1).all(1)
    return [i for i, k in enumerate(keep.tolist()) if k]


@pytest.mark.parametrize("kind", ["first_frame", "first_last", "keyframes", "lipsync", "continue"])
def test_every_task_conditions_the_model_on_its_kept_frames(fast_models, inputs, spy, monkeypatch, kind):
    """13 frames in chunks [0, 9) and [5, 14) (4 shared): what each chunk keeps, and that the model
    is conditioned on exactly that (mask channels and encoded kept pixels of ``y``) in its first
    two chunks."""
    image, audio, sr = inputs
    reference = torch.from_numpy(image / 255.0).float()
    g = torch.Generator().manual_seed(5)
    other, last = torch.rand(64, 64, 3, generator=g), torch.rand(64, 64, 3, generator=g)
    source = torch.rand(20, 64, 64, 3, generator=g)
    task = {
        "first_frame": pipeline.Task(),
        "first_last": pipeline.Task("first_last", end_image=last),
        "keyframes": pipeline.Task("keyframes", keyframes={0: reference, 6: other, -1: last}),
        "lipsync": pipeline.Task("lipsync", source_video=source, mouth_box=(30, 50, 16, 48)),
        "continue": pipeline.Task("continue", source_video=source, continue_frames=4),
    }[kind]
    seen = []
    real = task_masks.conditioning_y
    monkeypatch.setattr(task_masks, "conditioning_y", lambda inp, **kw: seen.append(inp) or real(inp, **kw))
    result = pipeline.generate(
        fast_models, None if kind in ("lipsync", "continue") else image, audio, sr, "x", quick(), task=task
    )
    assert result.frames.shape == (13, 64, 64, 3)
    assert len(seen) == (3 if kind == "continue" else 2)  # continue also generates its 4 lead frames

    def frame(inputs, i):
        return inputs.input_video[0, :, i].permute(1, 2, 0)

    def close(a, b):  # task images pass through uint8
        torch.testing.assert_close(a, b, atol=1 / 255, rtol=0)

    first, second = seen[:2]
    if kind == "lipsync":
        box = torch.zeros(64, 64, dtype=torch.bool)
        box[30:50, 16:48] = True
        for inputs, lo in ((first, 0), (second, 5)):
            mask = inputs.input_video_mask[0, 0]
            assert (mask[:, box] == task_masks.GENERATE).all() and (mask[:, ~box] == task_masks.KEEP).all()
            close(inputs.input_video[0].permute(1, 2, 3, 0), source[lo : lo + 9])
    elif kind == "continue":  # the source's last 4 frames lead; the output starts after them
        assert kept_frames(first) == [0, 1, 2, 3]
        for i in range(4):
            close(frame(first, i), source[16 + i])
    else:
        close(frame(first, 0), reference)
        tail = {"first_frame": [], "first_last": [7], "keyframes": [7]}[kind]  # frame 12 is local frame 7
        assert kept_frames(first) == ([0, 6] if kind == "keyframes" else [0])
        assert kept_frames(second) == [0, 1, 2, 3, *tail]  # the previous chunk's last 4 frames lead
        if kind == "keyframes":
            close(frame(first, 6), other)
        if tail:
            close(frame(second, 7), last)  # first_last's and keyframes' last frame is conditioned
    # the model saw exactly these kept frames: each chunk's first call carries that chunk's y
    vae = StandInVAE()
    for inputs, call in zip(seen, (spy.calls[0], spy.calls[quick().steps])):
        y = call["y"][:1]
        torch.testing.assert_close(y[:, :4], task_masks.mask_latents(inputs.input_video_mask), rtol=0, atol=0)
        torch.testing.assert_close(y[:, 4:], vae.encode(task_masks.masked_pixels(inputs)), rtol=0, atol=1e-6)


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


def test_cancellation_stops_between_steps(fast_models, inputs):
    image, audio, sr = inputs
    seen = []
    hooks = StepHooks(on_step=lambda *a: seen.append(a[0]), should_stop=lambda: len(seen) >= 1)
    with pytest.raises(Cancelled):
        pipeline.generate(fast_models, image, audio, sr, "x", quick(), hooks=hooks)
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
    with pytest.raises(ValueError, match="keyframe index 40 lies outside the 13-frame video"):
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


def test_a_transformer_waiting_on_the_host_is_placed_after_the_encoders_and_parked(demo_models, inputs, monkeypatch):
    """What --vram-budget relies on: the encoders have the device to themselves, then the
    transformer comes (with its recorded block swap) for the render and leaves after it."""
    image, audio, sr = inputs
    events = []
    model, encoder = demo_models.transformer, demo_models.text_encoder
    monkeypatch.setattr(pipeline, "_same_device", lambda a, b: False)  # as if it sat on the host
    monkeypatch.setattr(model, "echomimic_block_swap", 1, raising=False)
    monkeypatch.setattr(model, "place", lambda device, offload, swap: events.append(("place", swap)))
    monkeypatch.setattr(model, "park", lambda offload: events.append(("park",)))
    real_encode = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda *a, **k: events.append(("encode",)) or real_encode(*a, **k))
    pipeline.generate(demo_models, image, audio, sr, "x", quick(steps=1), device="cpu")
    assert events == [("encode",), ("place", 1), ("park",)]
