"""The tiny demo installation: deterministic files, loadable where users will pick them."""

import json

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core import pipeline
from echomimic_core.demo import VAE_DIM, demo_files, demo_inputs, write_demo_models
from echomimic_core.model_files import load_models
from echomimic_core.settings import GenerationSettings
from echomimic_core.vae import config_from_original


def test_writing_the_demo_files_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = write_demo_models(tmp_path / "a")
    assert torch.equal(torch.rand(3), expected)  # the caller's seeded stream continues untouched
    second = write_demo_models(tmp_path / "b", overwrite=True)
    a, b = load_file(str(first.transformer)), load_file(str(second.transformer))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded: same weights


def test_demo_vae_has_the_released_layout_comfyuis_load_vae_builds(demo_model_files, reference_dir):
    # ComfyUI's Load VAE reads only the width (decoder.head.0.gamma) from a Wan2.1 file and builds the
    # released layout around it (two residual blocks per level, attention in the middle only)
    demo = load_file(str(demo_model_files.vae))
    released = json.loads((reference_dir / "vae_keys.json").read_text())["tensors"]
    assert set(demo) == set(released)
    assert demo["decoder.head.0.gamma"].shape[0] == VAE_DIM
    width = 96  # the released VAE's
    for key, shape in released.items():  # channel axes scale with the width, the rest is equal
        scaled = [n * VAE_DIM // width if n % width == 0 and n >= width else n for n in shape]
        assert list(demo[key].shape) == scaled, key
    config = config_from_original(demo)
    assert (config["num_res_blocks"], config["dim_mult"], config["z_dim"]) == (2, [1, 2, 4, 4], 16)


def test_each_variant_has_its_own_transformer_and_audio_encoder(tmp_path):
    preview = write_demo_models(tmp_path)
    flash = write_demo_models(tmp_path, variant="flash")
    assert (preview.vae, preview.text_encoder, preview.image_encoder) == (
        flash.vae,
        flash.text_encoder,
        flash.image_encoder,
    )
    assert preview.transformer != flash.transformer and preview.audio_encoder != flash.audio_encoder
    assert {f"{tmp_path}/{rel}" for rel in demo_files("flash").values()} == {
        str(p) for p in vars(flash).values() if p is not None
    }
    with pytest.raises(ValueError, match="variant must be one of"):
        demo_files("turbo")


@pytest.mark.slow
def test_flash_demo_generates_through_the_real_loaders(tmp_path):
    models = load_models(write_demo_models(tmp_path, variant="flash"), dtype="float32")
    assert models.variant == "flash" and models.audio_kind == "flash"
    image, audio, sr = demo_inputs(seconds=0.36, size=64)
    settings = GenerationSettings.for_variant("flash", steps=2, color_match=False)
    result = pipeline.generate(models, image, audio, sr, "a person talks", settings)
    assert result.frames.shape == (9, 64, 64, 3) and torch.isfinite(result.frames).all()
