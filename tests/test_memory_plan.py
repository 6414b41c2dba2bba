"""memory_plan: parameter counts, the activation model against shape-only traces of the real code,
the choice under a budget, and the `plan` command."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from echomimic_core import memory_plan as mp
from echomimic_core.config import TransformerConfig
from echomimic_core.model import ops
from echomimic_core.model.transformer import EchoMimicTransformer

PEAK = Path(__file__).resolve().parents[1] / "benchmarks" / "peak_memory.py"


def _live_tensors(device: str):
    spec = importlib.util.spec_from_file_location("peak_memory", PEAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._LiveTensors(device)


@pytest.mark.parametrize("preset", ["preview", "flash", "tiny_preview", "tiny_flash"])
def test_parameter_counts_match_the_model(preset):
    config = TransformerConfig.from_dict({**TransformerConfig.preset(preset).to_dict(), "num_layers": 2})
    with torch.device("meta"):
        model = EchoMimicTransformer(config)
    block, matrices = mp.block_params(config)
    assert block == sum(p.numel() for p in model.blocks[0].parameters())
    assert matrices == sum(p.numel() for p in model.blocks[0].parameters() if p.ndim == 2)
    others = sum(p.numel() for name, m in model.named_children() if name != "blocks" for p in m.parameters())
    assert mp.other_params(config) == others


def test_chunk_size_constant_is_the_models():
    assert mp.CHUNK_ELEMENTS == ops.CHUNK_ELEMENTS


@pytest.mark.parametrize(
    ("variant", "batch", "lat", "dtype"),
    [
        ("preview", 3, (29, 96, 96), torch.bfloat16),  # 113 frames at 768x768
        ("flash", 2, (21, 60, 104), torch.bfloat16),  # 81 frames at 480x832
        ("flash", 1, (9, 48, 48), torch.float32),
    ],
)
def test_forward_activations_follow_the_code(variant, batch, lat, dtype):
    """The formula against a shape-only trace of a real-width forward (meta device: no compute):
    if the model's code changes how much it keeps alive, this fails and the coefficients need a
    new calibration (benchmarks/memory_plan.py --calibrate)."""
    config = TransformerConfig.from_dict({**TransformerConfig.preset(variant).to_dict(), "num_layers": 2})
    with torch.device("meta"):
        model = EchoMimicTransformer(config).to(dtype).eval()
    from echomimic_core.model.conditioning import Conditioning

    frames = 4 * (lat[0] - 1) + 1
    audio = (
        torch.empty(batch, 2 * frames, config.audio_in_dim)
        if variant == "preview"
        else torch.empty(batch, frames, config.audio_window, config.audio_blocks, config.audio_channels)
    )
    cond = Conditioning(
        context=[torch.empty(100 + i, config.text_dim, device="meta") for i in range(batch)],
        clip_fea=torch.empty(batch, 257, config.clip_dim, device="meta"),
        y=torch.empty(batch, 20, *lat, device="meta"),
        audio=audio.to("meta"),
    ).to(dtype=dtype)
    tracker = _live_tensors("meta")
    with torch.no_grad(), tracker:
        model(
            torch.empty(batch, 16, *lat, device="meta", dtype=dtype), torch.full((batch,), 500.0, device="meta"), cond
        )
    tokens = lat[0] * (lat[1] // 2) * (lat[2] // 2)
    predicted = mp.forward_activations(config, batch, tokens, dtype.itemsize)
    assert abs(predicted - tracker.peak) / tracker.peak < 0.05


@pytest.mark.parametrize(("size", "frames", "dtype"), [((96, 160), 9, torch.bfloat16), ((128, 128), 17, torch.float32)])
def test_vae_terms_follow_the_code(size, frames, dtype):
    """The VAE's untiled terms against shape-only traces of WanVAE at the released width: the
    frame-by-frame forward's history and work per pixel, and the chunk's video per frame."""
    from diffusers import AutoencoderKLWan

    from echomimic_core.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(torch.nn.Module.to(AutoencoderKLWan(), dtype))
    height, width = size
    shapes = {True: (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8), False: (1, 3, frames, height, width)}
    for decode, shape in shapes.items():
        tracker = _live_tensors("meta")
        with torch.no_grad(), tracker:
            inputs = torch.empty(shape, device="meta")  # on the device, as the pipeline's are
            vae.decode(inputs) if decode else vae.encode(inputs)
        predicted = mp.vae_bytes(frames, height, width, dtype.itemsize, None, decode)
        assert abs(predicted - tracker.peak) < 0.02 * tracker.peak, (decode, predicted, tracker.peak)


def test_large_budget_keeps_every_default_and_small_ones_trade_in_order():
    w = mp.Workload("preview", 768, 768, 125)
    roomy = mp.plan(w, 80 * mp.GIB)
    assert roomy.chosen.options == mp.Options(chunk=113)
    tight = mp.plan(w, 8 * mp.GIB)
    o = tight.chosen.options
    # the default chunk is kept while anything at that length fits; fp8 only after block swap fails
    assert o.chunk == 113 and not o.fp8 and o.encoders_on_cpu and tight.chosen.required <= 8 * mp.GIB
    assert tight.chosen.peak < roomy.chosen.peak
    # more memory never gives a worse plan: the chunk is at least as long, the estimate at least as high
    assert mp.plan(w, 12 * mp.GIB).chosen.required >= tight.chosen.required


def test_nothing_fits_reports_the_smallest_requirement():
    w = mp.Workload("flash", 768, 768, 125)
    result = mp.plan(w, 1 * mp.GIB)
    assert not result.fits
    assert result.smallest.required > 1 * mp.GIB
    assert result.smallest.required == min(mp.estimate(w, o).required for o in mp.candidates(w))
    assert "nothing fits" in mp.format_plan(result)


def test_fixed_options_are_respected():
    w = mp.Workload("flash", 768, 768, 125)
    result = mp.plan(w, 6 * mp.GIB, fixed={"fp8": False, "block_swap": 0, "chunk": 49})
    assert all(e.options.chunk == 49 and not e.options.fp8 and e.options.block_swap == 0 for e in result.rows)
    with pytest.raises(ValueError, match="unknown plan options"):
        mp.candidates(w, fixed={"chunks": 49})


def test_each_saver_lowers_its_phase():
    w = mp.Workload("preview", 768, 768, 250)
    base = mp.estimate(w, mp.Options(chunk=113))
    assert mp.estimate(w, mp.Options(chunk=49)).denoise < base.denoise
    assert mp.estimate(w, mp.Options(chunk=113, fp8=True)).denoise < base.denoise
    assert mp.estimate(w, mp.Options(chunk=113, block_swap=10)).denoise < base.denoise
    assert mp.estimate(w, mp.Options(chunk=113, batch_guidance=False)).denoise < base.denoise
    assert mp.estimate(w, mp.Options(chunk=113, vae_tile=256)).decode < base.decode
    assert mp.estimate(w, mp.Options(chunk=113, encoders_on_cpu=True)).encode == 0 < base.encode
    assert mp.estimate(w, mp.Options(chunk=113, context_cache=False)).denoise < base.denoise


def test_key_cache_holds_the_compact_prompts_while_a_chunk_denoises():
    """Per prompt (preview: prompt, negative, boosted negative) every block keeps keys and values of
    its tokens plus the one row standing for its padding in float32 (text_len while the prompt is
    unknown, and always in half dtypes),
    per image of its CLIP tokens; the cache is dropped before the VAE runs."""
    w = mp.Workload("preview", 768, 768, 125)
    c, s = w.model, mp.DTYPE_BYTES[w.dtype]

    def phases(workload):
        return mp.estimate(workload, mp.Options(chunk=81)).phases

    image = c.num_layers * 2 * c.clip_tokens * c.dim * s
    assert phases(w)["denoise"]["text/CLIP key cache"] == 3 * c.num_layers * 2 * c.text_len * c.dim * s + image
    # a known prompt length shrinks the cache in float32 only: half dtypes keep the padded layout
    short = dataclasses.replace(w, prompt_tokens=40)
    assert phases(short)["denoise"]["text/CLIP key cache"] == phases(w)["denoise"]["text/CLIP key cache"]
    short = dataclasses.replace(w, prompt_tokens=40, dtype="float32")
    image = c.num_layers * 2 * c.clip_tokens * c.dim * 4
    assert phases(short)["denoise"]["text/CLIP key cache"] == 3 * c.num_layers * 2 * 41 * c.dim * 4 + image
    assert dataclasses.replace(w, prompt_tokens=10_000).text_rows == c.text_len  # truncated to text_len
    assert "text/CLIP key cache" not in phases(w)["decode"]
    with pytest.raises(ValueError, match="prompt_tokens must be >= 0"):
        mp.Workload("preview", 768, 768, 125, prompt_tokens=-1)


def test_plan_command_exit_codes(capsys):
    from echomimic_core.__main__ import main

    assert (
        main(["plan", "--variant", "flash", "--width", "768", "--height", "768", "--seconds", "5", "--vram", "12"]) == 0
    )
    out = capsys.readouterr().out
    assert (
        "<- chosen" in out
        and "chosen: chunks of 81 frames" in out
        and "flags: --partial-video-length 81 --encoders-on-cpu\n" in out
    )
    # 81 + 8 overlap frames streamed, all 125 held: 10 bytes per pixel channel at 768x768
    assert "host memory for the decoded video: 1.47 GiB streamed" in out and "2.06 GiB with every frame" in out
    assert main(["plan", "--variant", "flash", "--seconds", "5", "--vram", "1"]) == 1
    assert "the smallest plan needs" in capsys.readouterr().out
    assert main(["plan", "--variant", "flash", "--seconds", "5", "--vram", "lots"]) == 2
    assert "a number of GB or 'auto'" in capsys.readouterr().err


def test_video_bytes_count_every_copy_of_the_frames():
    # float32 frames + the colour-matched float32 copy + two uint8 conversions: 10 bytes a channel
    assert mp.video_bytes(2, (16, 32)) == 2 * 16 * 32 * 3 * 10


def test_a_video_larger_than_the_ram_is_refused_with_the_figure():
    mp.check_video_fits_in_ram(113, (768, 768), available=16 * mp.GIB)
    with pytest.raises(ValueError, match=r"17 frames at 65536x65536 need about 2,040.0 GiB") as e:
        mp.check_video_fits_in_ram(17, (65536, 65536), available=64 * mp.GIB)
    assert "this machine has 64.0 GiB" in str(e.value) and "--max-frames" in str(e.value)


@pytest.mark.parametrize("variant", ["preview", "flash"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_the_plan_counts_the_passes_and_chunk_the_pipeline_runs(variant, guidance_scale):
    from echomimic_core.pipeline import guidance_for_variant
    from echomimic_core.settings import GenerationSettings

    settings = GenerationSettings.for_variant(variant, guidance_scale=guidance_scale)
    w = mp.workload_for(variant, settings, (256, 256), 200)
    runs = guidance_for_variant(variant, settings).passes_for_step(0, settings.steps)
    assert w.guidance_passes == len(runs) == (1 if guidance_scale == 1.0 else {"preview": 3, "flash": 2}[variant])
    assert w.default_chunk == settings.partial_video_length == {"preview": 113, "flash": 81}[variant]
    assert mp.Workload(variant, 256, 256, 200).guidance_passes == len(
        guidance_for_variant(variant, GenerationSettings.for_variant(variant)).passes_for_step(0, settings.steps)
    )
    assert mp.Workload(variant, 256, 256, 200).uses_step_cache == (settings.teacache_threshold > 0)


@pytest.mark.parametrize("variant", ["preview", "flash"])
def test_the_plan_counts_umt5_in_the_dtype_the_loader_computes_in(demo_model_files, variant):
    from echomimic_core.demo import write_demo_models
    from echomimic_core.model_files import load_models
    from echomimic_core.settings import GenerationSettings

    files = write_demo_models(demo_model_files.transformer.parents[1], variant=variant)  # both are there
    models = load_models(files, dtype="float32")
    norm = models.text_encoder.model.encoder.final_layer_norm.weight  # vectors are kept in the compute dtype
    w = mp.workload_for(variant, GenerationSettings.for_variant(variant), (64, 64), 9)
    # upstream: preview's scripts run umT5 in float32, flash's in bfloat16
    assert norm.dtype.itemsize == w.encoders.text_compute_bytes == {"preview": 4, "flash": 2}[variant]
