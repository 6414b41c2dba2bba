"""Sampler node: variant defaults, native-type adapters, and the node chain == pipeline.generate."""

import json
import math

import pytest
import torch

from echomimic_core import pipeline
from echomimic_core.demo import demo_inputs
from echomimic_core.settings import GenerationSettings
from echomimic_core.verify_reference import relative_error
from nodes import adapters
from nodes import comfy_services as cs
from nodes.audio import EchoMimicAudioEncode
from nodes.encoders import EchoMimicCLIPVisionEncode, EchoMimicTextEncode
from nodes.sampler import EchoMimicSampler, RunProgress, resolve_settings
from nodes.task import EchoMimicTask

QUICK = dict(steps=2, partial_video_length=9, overlap_video_length=4, color_match=False, width=64, height=64)


def _widgets(**overrides):
    """The sampler's widget values as ComfyUI sends them (defaults), plus overrides."""
    inputs = EchoMimicSampler.INPUT_TYPES()
    values = {
        name: spec[1]["default"]
        for section in ("required", "optional")
        for name, spec in inputs[section].items()
        if len(spec) > 1 and "default" in spec[1]
    }
    return {**values, **overrides}


def test_auto_widgets_resolve_to_each_variants_upstream_defaults():
    for variant in ("preview", "flash"):
        assert resolve_settings(variant, _widgets()) == GenerationSettings.for_variant(variant)
    flash = resolve_settings("flash", _widgets())
    assert (flash.sampler, flash.steps, flash.teacache_threshold) == ("Flow_Unipc", 8, 0.1)
    # a value the user sets wins over the variant's default; 0 means "off"/"from the image"
    mine = resolve_settings(
        "flash", _widgets(steps=12, guidance_scale=4.5, use_dynamic_cfg="on", width=0, vae_tile_size=256), fps=30.0
    )
    assert (mine.steps, mine.guidance_scale, mine.use_dynamic_cfg, mine.width, mine.fps) == (12, 4.5, True, None, 30.0)
    assert mine.vae_tile_size == 256 and mine.sampler == "Flow_Unipc"


def test_validate_inputs_without_tensors():
    assert EchoMimicSampler.VALIDATE_INPUTS() is True
    assert "width and height go together" in EchoMimicSampler.VALIDATE_INPUTS(width=512)
    assert "multiples of 16" in EchoMimicSampler.VALIDATE_INPUTS(width=500, height=512)
    assert "overlap_video_length" in EchoMimicSampler.VALIDATE_INPUTS(partial_video_length=9, overlap_video_length=9)
    assert "at least 5" in EchoMimicSampler.VALIDATE_INPUTS(partial_video_length=3)
    # ComfyUI skips min/max for inputs VALIDATE_INPUTS names, so the node checks them itself
    assert "vae_tile_overlap=-8 is below its minimum 0" in EchoMimicSampler.VALIDATE_INPUTS(
        vae_tile_size=64, vae_tile_overlap=-8
    )
    # auto chunks: 90 overlapping frames fit preview's 113-frame chunks, so the model decides at run time
    assert EchoMimicSampler.VALIDATE_INPUTS(overlap_video_length=90) is True
    assert "overlap_video_length" in EchoMimicSampler.VALIDATE_INPUTS(overlap_video_length=120)


def test_text_embedding_drops_comfyui_zero_padding():
    tokens = torch.randn(7, 32)
    padded = torch.zeros(1, 512, 32)
    padded[0, :7] = tokens
    assert torch.equal(adapters.text_embedding([[padded, {"pooled_output": None}]]), tokens)
    assert torch.equal(adapters.text_embedding([[tokens[None], {}]]), tokens)
    with pytest.raises(ValueError, match="all zeros"):
        adapters.text_embedding([[torch.zeros(1, 512, 32), {}]])
    with pytest.raises(ValueError, match="CLIP Text Encode"):
        adapters.text_embedding("a prompt")


def test_comfyui_audio_encoder_output_is_refused_with_the_node_to_use():
    output = {
        "encoded_audio": torch.zeros(1, 50, 768),
        "encoded_audio_all_layers": [torch.zeros(1, 50, 768)],
        "audio_samples": 16000,
    }
    with pytest.raises(ValueError, match="EchoMimicV3 Audio Encode"):
        adapters.audio_features(output)


def test_comfy_vae_adapter_matches_the_core_vae(demo_models, comfy_vae):
    wan = demo_models.vae
    adapter = adapters.video_vae(comfy_vae(wan))
    assert isinstance(adapter, adapters.ComfyVideoVAE) and adapters.video_vae(wan) is wan
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    reports = []
    latents = adapter.encode(video, progress=lambda done, total: reports.append(("encode", done, total)))
    assert relative_error(latents, wan.encode(video)) < 1e-5
    decoded = adapter.decode(latents, progress=lambda done, total: reports.append(("decode", done, total)))
    assert relative_error(decoded, wan.decode(latents)) < 1e-5
    # ComfyUI's VAE reports per encoder chunk (1 + 4 frames) and per latent frame, as ours does
    assert reports == [("encode", 1, 2), ("encode", 2, 2), ("decode", 1, 2), ("decode", 2, 2)]
    with pytest.raises(ValueError, match="Wan2.1"):
        adapters.video_vae(type("Wan22", (), {"latent_channels": 48, "decode_tiled": None})())


def test_run_progress_is_one_bar_over_vae_passes_and_steps():
    seen = []
    progress = RunProgress(lambda value, total, latents=None: seen.append((value, total)), chunks=2, steps=3)
    u = RunProgress.UNITS
    progress.vae("encode", 0, 1, 2)
    progress.vae("encode", 0, 2, 2)
    progress.step(1, 6)
    progress.step(3, 6)
    progress.vae("decode", 0, 1, 4)
    progress.vae("encode", 1, 2, 2)
    progress.step(4, 6)  # the first step of the second chunk
    progress.vae("decode", 1, 4, 4)
    assert seen == [
        (u // 2, 10 * u),
        (u, 10 * u),
        (2 * u, 10 * u),
        (4 * u, 10 * u),
        (round(4.25 * u), 10 * u),
        (6 * u, 10 * u),
        (7 * u, 10 * u),
        (10 * u, 10 * u),
    ]


def test_audio_embeds_refuses_comfyuis_audio_encoder_output_at_link_time():
    # one declared type: the frontend will not draw the link, and ComfyUI's validation names the
    # mismatch before any node runs (the adapter's run-time refusal stays for other senders)
    assert EchoMimicSampler.INPUT_TYPES()["required"]["audio_embeds"][0] == "ECHOMIMIC_AUDIO_EMBEDS"
    assert "Audio Encoder Encode" in EchoMimicSampler.INPUT_TYPES()["required"]["audio_embeds"][1]["tooltip"]


@pytest.fixture(scope="module")
def chain(demo_models):
    """Embeddings through the pack's encoder nodes, and the inputs that made them."""
    image, audio, sr = demo_inputs(seconds=0.52, size=64)
    image_t = torch.from_numpy(image.copy()).float()[None] / 255
    audio_in = {"waveform": audio[None].repeat(1, 2, 1), "sample_rate": sr}
    positive, negative = EchoMimicTextEncode().encode(
        demo_models.text_encoder, "a person talks", GenerationSettings().negative_prompt
    )
    (clip,) = EchoMimicCLIPVisionEncode().encode(demo_models.image_encoder, image_t)
    embeds, frames = EchoMimicAudioEncode().encode(demo_models.audio_encoder, audio_in, 25.0, 0)
    return dict(
        image=image,
        image_t=image_t,
        audio=audio,
        sr=sr,
        audio_in=audio_in,
        positive=positive,
        negative=negative,
        clip=clip,
        embeds=embeds,
        frames=frames,
    )


@pytest.mark.slow
def test_sampler_node_reproduces_pipeline_generate(demo_models, chain, folders, monkeypatch):
    steps = []
    real_progress = cs.Progress

    class Recording(real_progress):
        def update_absolute(self, value, total=None, preview=None, latents=None):
            steps.append((value, total, None if latents is None else tuple(latents.shape)))
            super().update_absolute(value, total, preview, latents)

    monkeypatch.setattr(cs, "Progress", Recording)

    out = EchoMimicSampler().sample(
        demo_models.transformer,
        demo_models.vae,
        chain["positive"],
        chain["clip"],
        chain["embeds"],
        negative=chain["negative"],
        image=chain["image_t"],
        **_widgets(**QUICK),
    )
    frames, audio, fps, video, report, plot = out["result"]
    settings = GenerationSettings.for_variant("preview", **QUICK)
    expected = pipeline.generate(demo_models, chain["image"], chain["audio"], chain["sr"], "a person talks", settings)
    assert frames.shape == expected.frames.shape == (13, 64, 64, 3)  # floor(0.52 s * 25 fps)
    assert relative_error(frames, expected.frames) < 1e-3
    assert fps == 25.0 and audio["sample_rate"] == chain["sr"]
    assert audio["waveform"].shape == (1, 2, int(13 / 25 * chain["sr"]))  # stereo kept, trimmed to the video
    # one bar over 2 chunks x (VAE encode, 2 steps, VAE decode), moving during the VAE passes too
    values, total = [s[0] for s in steps], steps[-1][1]
    assert values == sorted(values) and values[-1] == total == 2 * 4 * RunProgress.UNITS
    previews = [s for s in steps if s[2] is not None]
    assert len(previews) == 4 and previews[-1][2][1] == 16  # latent previews get [B, 16, T, h, w]
    assert len(steps) > 12  # the VAE reported its passes: more updates than the 4 steps + 4 phases
    # the frontend's line from the real plan: the chunk count survives the run
    assert out["ui"]["echomimic_plan"][0].startswith("13 frames · 0.52 s · 4 latent · 2 chunks · 64x64")
    # the same frames as ComfyUI's VIDEO, and a drift report with one entry per chunk
    assert torch.equal(video.get_components()["images"], frames) and video.get_dimensions() == (64, 64)
    assert [c["index"] for c in json.loads(report)["chunks"]] == [0, 1]
    assert plot.ndim == 4 and plot.shape[-1] == 3


def test_sampler_streams_long_videos_to_a_file_that_save_video_takes(demo_models, chain, folders, tmp_path):
    from nodes.comfy_services import FileVideo

    node = EchoMimicSampler()
    args = (demo_models.transformer, demo_models.vae, chain["positive"], chain["clip"], chain["embeds"])
    kwargs = dict(negative=chain["negative"], image=chain["image_t"], clip_vision=demo_models.image_encoder)
    widgets = _widgets(**QUICK, output="video_file", filename_prefix="echomimic/long")
    out = node.sample(*args, **kwargs, **widgets)
    frames, audio, fps, video, report, plot = out["result"]
    assert isinstance(video, FileVideo) and video.path.is_file() and video.path.parent.name == "echomimic"
    assert frames.shape == (1, 64, 64, 3)  # the first frame only: the video is on disk
    assert video.get_components()["images"].shape == (13, 64, 64, 3)
    entries = json.loads(report)["chunks"]
    assert len(entries) == 2 and all(-1 <= e["identity"] <= 1 for e in entries)
    assert out["ui"]["images"][0]["filename"] == video.path.name
    video.save_to(tmp_path / "saved.mp4")  # what Save Video does with it
    assert (tmp_path / "saved.mp4").stat().st_size == video.path.stat().st_size
    # the same run queued again writes the same file name (a killed run's parts would be resumed)
    again = node.sample(*args, **kwargs, **widgets)
    assert again["result"][3].path == video.path


ONE_CHUNK = {**QUICK, "steps": 1, "partial_video_length": 13}


@pytest.fixture(scope="module")
def one_chunk(demo_models, chain):
    """Frames of a one-chunk, one-step run with the pack's own VAE and encoders (the baseline)."""
    out = EchoMimicSampler().sample(
        demo_models.transformer,
        demo_models.vae,
        chain["positive"],
        chain["clip"],
        chain["embeds"],
        negative=chain["negative"],
        image=chain["image_t"],
        **_widgets(**ONE_CHUNK),
    )
    return out["result"][0]


@pytest.mark.slow
def test_sampler_with_comfyui_native_vae_and_padded_conditioning(demo_models, chain, one_chunk, folders, comfy_vae):
    padded = [[torch.cat([chain["positive"][0][0], torch.zeros(1, 500, chain["positive"][0][0].shape[-1])], 1), {}]]
    fake = comfy_vae(demo_models.vae)
    native = EchoMimicSampler().sample(
        demo_models.transformer,
        fake,
        padded,
        chain["clip"],
        chain["embeds"],
        negative=chain["negative"],
        image=chain["image_t"],
        **_widgets(**ONE_CHUNK),
    )
    assert "encode" in fake.calls and "decode" in fake.calls
    assert relative_error(native["result"][0], one_chunk) < 1e-3


def test_sampler_task_and_errors(demo_models, chain, folders):
    source = torch.rand(9, 96, 96, 3)
    spec, _ = EchoMimicTask().build("lipsync", source_video=source, mouth_box="48, 80, 24, 72")
    frames, audio, *_ = EchoMimicSampler().sample(
        demo_models.transformer,
        demo_models.vae,
        chain["positive"],
        chain["clip"],
        chain["embeds"],
        negative=chain["negative"],
        task=spec,
        **_widgets(**{**QUICK, "steps": 1}),
    )["result"]
    assert frames.shape == (9, 64, 64, 3)  # lip-sync stops with the 9-frame source video
    assert audio["waveform"].shape[-1] == int(9 / 25 * chain["sr"])

    sampler = EchoMimicSampler()
    with pytest.raises(ValueError, match="negative prompt"):
        sampler.sample(
            demo_models.transformer,
            demo_models.vae,
            chain["positive"],
            chain["clip"],
            chain["embeds"],
            image=chain["image_t"],
            **_widgets(**QUICK),
        )
    short = dict(chain["embeds"], num_frames=chain["embeds"]["num_frames"] + 8)
    with pytest.raises(ValueError, match="cover 13 frames"):
        sampler.sample(
            demo_models.transformer,
            demo_models.vae,
            chain["positive"],
            chain["clip"],
            short,
            negative=chain["negative"],
            image=chain["image_t"],
            **_widgets(**QUICK),
        )
    flash_like = dict(chain["embeds"], kind="flash")
    with pytest.raises(ValueError, match="'flash' features but the model is preview"):
        sampler.sample(
            demo_models.transformer,
            demo_models.vae,
            chain["positive"],
            chain["clip"],
            flash_like,
            negative=chain["negative"],
            image=chain["image_t"],
            **_widgets(**QUICK),
        )


def test_cancel_stops_the_sampler_between_steps(demo_models, chain, folders, monkeypatch):
    class Interrupted(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 1:
            raise Interrupted

    monkeypatch.setattr(cs, "check_interrupted", check)
    with pytest.raises(Interrupted):
        EchoMimicSampler().sample(
            demo_models.transformer,
            demo_models.vae,
            chain["positive"],
            chain["clip"],
            chain["embeds"],
            negative=chain["negative"],
            image=chain["image_t"],
            **_widgets(**QUICK),
        )
    assert next(demo_models.transformer.parameters()).device == torch.device("cpu")


def test_memory_manager_loads_ours_for_the_planned_peak_and_parks_swapped_blocks_in_place(
    demo_models, chain, one_chunk, folders, monkeypatch
):
    """Inside ComfyUI the transformer is one of its loaded models: loaded through load_models_gpu
    with the plan's working memory (not weights x 1.25), left loaded after the run, and parked when
    ComfyUI needs the room, without uploading the swapped blocks (their host copies stay put)."""
    import sys
    import types

    from echomimic_core.model import transformer as transformer_module
    from nodes.sampler import fit_memory

    model = demo_models.transformer
    requested = []

    def load_models_gpu(models, memory_required=0):
        requested.append(memory_required)
        for m in models:  # what LoadedModel.model_load does: load as much as fits
            m.partially_load(m.load_device, 1e30)

    mm = types.ModuleType("comfy.model_management")
    mm.load_models_gpu = load_models_gpu
    mm.get_torch_device = mm.unet_offload_device = mm.intermediate_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: None
    mm.throw_exception_if_processing_interrupted = lambda: None
    monkeypatch.setitem(sys.modules, "comfy.model_management", mm)
    monkeypatch.setattr(
        transformer_module._BlockSwap, "restore", lambda self: pytest.fail("the swapped blocks were uploaded")
    )
    monkeypatch.setattr(model, "echomimic_block_swap", 1, raising=False)
    try:
        swapped = EchoMimicSampler().sample(
            model,
            demo_models.vae,
            chain["positive"],
            chain["clip"],
            chain["embeds"],
            negative=chain["negative"],
            image=chain["image_t"],
            **_widgets(**ONE_CHUNK),
        )
        assert torch.equal(swapped["result"][0], one_chunk)
        settings = resolve_settings("preview", _widgets(**ONE_CHUNK))
        plan = pipeline.plan_generation(chain["image_t"][0], 13, settings, pipeline.Task())
        _, swap, working, _ = fit_memory(model, demo_models.vae, settings, plan, "cpu", -1, _widgets(**ONE_CHUNK))
        assert swap == 1 and requested == [working] and working > 0
        patcher = model.echomimic_patcher
        assert patcher.loaded and patcher.loaded_size() == patcher.model_size()  # stays loaded for the next run
        host = [t.data_ptr() for t in model.blocks[0].parameters()]
        assert patcher.partially_unload(torch.device("cpu"), 1) == patcher.model_size()  # ComfyUI needs the room
        assert not patcher.loaded and model.block_swap == 1
        assert host == [t.data_ptr() for t in model.blocks[0].parameters()]  # the same host copies
    finally:
        model.place("cpu", "cpu", 0)
        del model.echomimic_patcher


def test_vram_budget_chooses_settings_and_keeps_what_the_user_set(demo_models, chain, caplog):
    from nodes.sampler import fit_memory

    model = demo_models.transformer
    widgets = _widgets(**QUICK)  # partial_video_length 9 set by hand
    settings = resolve_settings("preview", widgets)
    plan = pipeline.plan_generation(chain["image_t"][0], 13, settings, pipeline.Task())
    off = fit_memory(model, demo_models.vae, settings, plan, "cpu", -1.0, widgets)
    assert off[0] == settings and off[3] == ""  # -1: the settings as given
    roomy = fit_memory(model, demo_models.vae, settings, plan, "cpu", 80.0, widgets)
    assert roomy[0] == settings and roomy[1] == 0 and roomy[3] == "chunks of 9 frames"
    tight = fit_memory(model, demo_models.vae, settings, plan, "cpu", 0.5, widgets)
    assert "nothing fits 0.5 GiB" in caplog.text  # then the smallest plan runs, with a warning
    # at this size the VAE decode holds the peak and no saver lowers it (the key cache is dropped
    # before the decode): the smallest plan is the roomy one, now run under the warning
    assert tight[0] == roomy[0] and tight[3] == roomy[3] and tight[2] == roomy[2]


def test_face_gate_from_the_task_box_or_a_face_mask_node(demo_models, chain, folders):
    from echomimic_core.face_region import face_gate_from_box
    from nodes.masks import EchoMimicFaceMask

    image = chain["image_t"][0]
    plan = pipeline.plan_generation(image, 13, GenerationSettings(width=64, height=64), pipeline.Task())
    context = chain["positive"][0][0][0]

    def encode(spec):
        models = pipeline.Models(demo_models.transformer, demo_models.vae)
        return pipeline.encoded_from_embeddings(
            models,
            plan,
            context,
            context,
            chain["clip"].penultimate_hidden_states,
            chain["embeds"]["features"],
            "preview",
            spec.face_box,
            spec.face_mask,
        )

    box = (8.0, 40.0, 16.0, 48.0)
    expected = face_gate_from_box(box, (64, 64), (64, 64))
    assert 0 < expected.sum() < expected.numel()
    spec, _ = EchoMimicTask().build("first_frame", face_box="8, 40, 16, 48")
    assert torch.equal(encode(spec).face_gate, expected)
    # the Face Mask node's MASK output (a painted or typed box) gives the same gate
    mask = EchoMimicFaceMask().run(chain["image_t"], box="8, 40, 16, 48")["result"][0]
    spec, _ = EchoMimicTask().build("first_frame", face_mask=mask)
    assert torch.equal(encode(spec).face_gate, expected)


@pytest.mark.slow
def test_reference_node_makes_the_chain_match_upstreams_clip_input(demo_models, chain, folders):
    from nodes.reference import EchoMimicReferenceImage

    big = torch.nn.functional.interpolate(chain["image_t"].permute(0, 3, 1, 2), size=(96, 80), mode="bilinear")
    big = big.permute(0, 2, 3, 1).clamp(0, 1)  # a 96x80 photo, generated at sample_area 64*64 -> 64x48
    resized, width, height = EchoMimicReferenceImage().resize(big, 0, 0, 64 * 64)
    assert (width, height) == (48, 64) and resized.shape == (1, 64, 48, 3)
    assert "go together" in EchoMimicReferenceImage.VALIDATE_INPUTS(width=64)
    assert "width=8192 is above its maximum 4096" in EchoMimicReferenceImage.VALIDATE_INPUTS(width=8192, height=64)
    # a half-precision IMAGE (numpy has no bf16) gives the float32 one's result
    half = EchoMimicReferenceImage().resize(big.bfloat16(), 0, 0, 64 * 64)[0]
    assert torch.equal(half, EchoMimicReferenceImage().resize(big.bfloat16().float(), 0, 0, 64 * 64)[0])
    (clip,) = EchoMimicCLIPVisionEncode().encode(demo_models.image_encoder, resized)
    widgets = _widgets(**{**ONE_CHUNK, "width": 0, "height": 0, "sample_area": 64 * 64})
    frames = EchoMimicSampler().sample(
        demo_models.transformer,
        demo_models.vae,
        chain["positive"],
        clip,
        chain["embeds"],
        negative=chain["negative"],
        image=resized,
        **widgets,
    )["result"][0]
    settings = GenerationSettings.for_variant(
        "preview", **{**ONE_CHUNK, "width": None, "height": None, "sample_area": 64 * 64}
    )
    image = (big[0] * 255).round().byte().numpy()
    expected = pipeline.generate(demo_models, image, chain["audio"], chain["sr"], "a person talks", settings)
    assert frames.shape == expected.frames.shape == (13, 64, 48, 3)
    assert relative_error(frames, expected.frames) < 1e-3


def test_video_file_runs_with_redo_are_keyed_on_the_tasks_face_box(demo_models, chain, folders, monkeypatch):
    # the file name carries the run key: the same name means a killed run's parts are resumed
    from echomimic_core.face_region import face_gate_from_box

    keys = []

    def output_file(prefix, run_key, extension):
        keys.append(run_key)
        raise InterruptedError("the key is all this test needs")

    monkeypatch.setattr(cs, "run_output_file", output_file)
    args = (demo_models.transformer, demo_models.vae, chain["positive"], chain["clip"], chain["embeds"])

    def key(box, **overrides):
        spec, _ = EchoMimicTask().build("first_frame", face_box=box)
        widgets = _widgets(**{**QUICK, "output": "video_file", **overrides})
        with pytest.raises(InterruptedError):
            EchoMimicSampler().sample(*args, negative=chain["negative"], image=chain["image_t"], task=spec, **widgets)
        return keys[-1]

    # one pixel moves the box the drift meter measures, not the face gate the model sees
    assert torch.equal(
        face_gate_from_box((8, 40, 16, 48), (64, 64), (64, 64)), face_gate_from_box((9, 40, 16, 48), (64, 64), (64, 64))
    )
    assert key("8, 40, 16, 48", redo_sharpness_ratio=0.5) != key("9, 40, 16, 48", redo_sharpness_ratio=0.5)
    assert key("8, 40, 16, 48") == key("9, 40, 16, 48")  # without redo the box only changes the report


class _Model:
    class config:  # noqa: N801  (what the sampler reads of a loaded model before any work)
        variant = "preview"


@pytest.mark.parametrize(
    "name, value",
    [
        ("guidance_scale", math.nan),
        ("guidance_scale", math.inf),
        ("audio_guidance_scale", math.nan),
        ("audio_guidance_scale", math.inf),
        ("audio_scale", math.nan),
        ("shift", math.nan),
        ("cfg_skip_ratio", math.nan),
        ("steps", 201),
        ("seed", 2**64),
    ],
)
def test_sampler_node_refuses_nan_and_out_of_bounds_widgets_before_any_work(monkeypatch, name, value):
    # an API prompt carries any JSON number (Python's json reads NaN and Infinity), and ComfyUI's
    # own min/max check lets NaN through: the node must refuse it before encoding or denoising
    from echomimic_core import streaming

    def heavy(*args, **kwargs):
        raise AssertionError("the sampler started working before refusing the settings")

    for module, function in (
        (pipeline, "encoded_from_embeddings"),
        (pipeline, "render"),
        (streaming, "stream_to_file"),
    ):
        monkeypatch.setattr(module, function, heavy)
    embeds = {
        "features": torch.zeros(1, 12, 5, 768),
        "kind": "wav2vec2",
        "num_frames": 12,
        "fps": 25.0,
        "audio": {"waveform": torch.zeros(1, 1, 8000), "sample_rate": 16000},
    }
    with pytest.raises(ValueError, match=rf"{name}.*got {value}"):
        EchoMimicSampler().sample(_Model(), None, None, None, embeds, **_widgets(**{name: value}))
