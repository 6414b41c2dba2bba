"""The frame-by-frame VAE forward: diffusers' numbers, its progress reports, and less memory."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.vae import framewise, from_state_dict

PEAK = Path(__file__).resolve().parents[2] / "benchmarks" / "peak_memory.py"


@pytest.fixture(scope="module")
def tiny(reference_dir):
    data = load_file(str(reference_dir / "vae_tiny.safetensors"))
    return from_state_dict({k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")})


def _video(batch, frames, height, width, seed=0):
    return torch.rand(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _diffusers(model, video):
    """diffusers' own forward: posterior parameters and the decoded posterior mean."""
    with torch.no_grad():
        params = model.encode(video).latent_dist.parameters
        return params, model.decode(params[:, : model.config.z_dim]).sample


def _assert_matches_diffusers(model, video, atol):
    params, decoded = _diffusers(model, video)
    torch.testing.assert_close(framewise.encode(model, video), params, rtol=0, atol=atol)
    ours = framewise.decode(model, params[:, : model.config.z_dim])
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, decoded.float(), rtol=0, atol=atol)


@pytest.mark.parametrize(
    "batch, frames, height, width",
    [(1, 1, 16, 24), (2, 5, 40, 56), (1, 9, 32, 48), (1, 13, 8, 16)],
)
def test_equals_diffusers_forward(tiny, batch, frames, height, width):
    # 1 frame: no temporal resample runs; 5: one chunk after the first; 9, 13: the caches carry on
    _assert_matches_diffusers(tiny.model, _video(batch, frames, height, width), atol=1e-5)


def test_attention_in_query_slices_is_the_same(tiny, monkeypatch):
    # 20 latent pixels per frame, 7 queries per slice: three slices, the last one short
    monkeypatch.setattr(framewise, "ATTENTION_SCORES", 7 * 20)
    _assert_matches_diffusers(tiny.model, _video(1, 5, 32, 40), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("frames", [1, 9])
def test_equals_diffusers_forward_at_full_width(frames):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = AutoencoderKLWan().eval()  # the released Wan2.1 VAE's config, random weights
    _assert_matches_diffusers(model, _video(1, frames, 40, 56), atol=1e-5)


def test_bfloat16_is_as_close_to_float32_as_diffusers(tiny):
    video = _video(1, 5, 32, 48)
    params, decoded = _diffusers(tiny.model, video)
    model = torch.nn.Module.to(copy.deepcopy(tiny.model), torch.bfloat16)
    theirs = _diffusers(model, video.bfloat16())
    latents = framewise.encode(model, video.bfloat16())
    ours_decoded = framewise.decode(model, params[:, :16].bfloat16())
    for ours, their, exact in ((latents, theirs[0], params), (ours_decoded, theirs[1], decoded)):
        ours_error = (ours.float() - exact).abs().max()
        their_error = (their.float() - exact).abs().max()
        assert 0 < ours_error < 1.5 * their_error + 1e-2, (ours_error, their_error)


def test_wan_vae_reports_each_latent_frame_and_can_cancel(tiny):
    video = _video(2, 9, 16, 24)
    calls = []
    latents = tiny.encode(video, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]  # 2 samples x (1 + 2 chunks of 4 frames)
    calls.clear()
    tiny.decode(latents, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(done, total):
        calls.append(done)
        if done == 2:
            raise Cancelled

    for run in (
        lambda: tiny.encode(video, progress=cancel_at_two),
        lambda: tiny.decode(latents, progress=cancel_at_two),
    ):
        calls.clear()
        with pytest.raises(Cancelled):
            run()
        assert calls == [1, 2]
    torch.testing.assert_close(tiny.decode(latents[:1]), tiny.decode(latents)[:1], rtol=0, atol=0)


def test_only_the_wan21_layout_is_run_frame_by_frame(tiny):
    from diffusers import AutoencoderKLWan

    assert framewise.supports(tiny.model)
    with torch.device("meta"):
        wan22 = AutoencoderKLWan(base_dim=8, z_dim=4, is_residual=True, temperal_downsample=[False, True, True])
    assert not framewise.supports(wan22)


def _peak(fn) -> int:
    spec = importlib.util.spec_from_file_location("peak_memory", PEAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tracker = module._LiveTensors("meta")
    with torch.no_grad(), tracker:
        fn()
    return tracker.peak


def test_full_size_peak_is_about_half_of_diffusers():
    """Live-tensor peaks of shape-only runs (meta device) of the released config at 64x64, 9 frames:
    diffusers 55.5 MiB to encode and 77.0 to decode, frame by frame 27.0 and 43.6."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        model = AutoencoderKLWan().eval()
        video = torch.empty(1, 3, 9, 64, 64)
        latents = torch.empty(1, 16, 3, 8, 8)
    assert _peak(lambda: framewise.encode(model, video)) < 0.5 * _peak(lambda: model.encode(video))
    assert _peak(lambda: framewise.decode(model, latents)) < 0.6 * _peak(lambda: model.decode(latents))
