"""NaN weights and NaN latents stop the run with the likely cause instead of writing a black video
(issue 10)."""

import pytest
import torch

from echomimic_core import __main__ as cli
from echomimic_core.checkpoints.files import CheckpointError, load_state_dict, save_state_dict
from echomimic_core.checkpoints.transformer import is_finite, load_transformer
from echomimic_core.sampling.sampler import NonFiniteError, denoise


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_is_finite_finds_one_bad_value_in_any_dtype(dtype, bad):
    weight = torch.randn(64, 33).to(dtype)
    assert is_finite(weight)
    weight.view(-1)[1000] = torch.tensor(bad).to(dtype)
    # float8_e4m3fn has no infinity: casting one gives NaN, which must still be found
    assert not is_finite(weight)
    assert is_finite(torch.zeros(0)) and is_finite(torch.arange(5))


def test_transformer_file_with_nan_weights_is_refused_naming_them(demo_model_files, tmp_path):
    state = dict(load_state_dict(demo_model_files.transformer))
    key = next(k for k in state if k.endswith("self_attn.q.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    damaged = tmp_path / "damaged.safetensors"
    from safetensors import safe_open

    with safe_open(str(demo_model_files.transformer), "pt") as f:
        metadata = f.metadata()
    save_state_dict(state, damaged, metadata=metadata)
    with pytest.raises(
        CheckpointError, match=r"damaged.safetensors: 1 of \d+ weight tensors hold NaN or infinite"
    ) as e:
        load_transformer(damaged, dtype=torch.float32)
    assert "self_attn.q" in str(e.value) and "download it again" in str(e.value)


def test_nan_latents_stop_at_the_first_bad_step():
    class Scheduler:
        timesteps = torch.tensor([900.0, 600.0, 300.0])

        def step(self, v, t, latents):
            return latents - 0.3 * v

    calls = []

    def velocity(latents, t, step):
        calls.append(step)
        return torch.full_like(latents, float("nan")) if step == 1 else torch.zeros_like(latents)

    with pytest.raises(NonFiniteError, match=r"denoising step 2/3 produced NaN or infinite latents") as e:
        denoise(velocity, torch.randn(1, 16, 2, 4, 4), Scheduler())
    assert calls == [0, 1] and "weights that are NaN" in str(e.value) and "float16 overflow" in str(e.value)


def test_cli_with_weights_turning_nan_writes_nothing(demo_cache, tmp_path, capsys, monkeypatch, wav):
    # a model that loads fine but yields NaN (e.g. a NaN LoRA merged in): stopped at step 1, no file
    from echomimic_core import model_files

    real = model_files.load_models

    def poisoned(*args, **kwargs):
        models = real(*args, **kwargs)
        models.transformer.head.head.weight.data.fill_(float("nan"))
        return models

    monkeypatch.setattr(model_files, "load_models", poisoned)
    out = tmp_path / "clip.mp4"
    rc = cli.main(
        ["generate", "--demo", "--audio", str(wav(tmp_path / "v.wav", 0.3)), "--steps", "2", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "denoising step 1/2 produced NaN or infinite latents" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".clip.partial*"))


def _tiny_lora(model, b_value=None):
    w = model.blocks[0].self_attn.q.weight
    a, b = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    if b_value is not None:
        b[0, 0] = b_value
    return {
        "diffusion_model.blocks.0.self_attn.q.lora_A.weight": a,
        "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b,
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lora_with_non_finite_values_or_strength_is_refused_before_merging(tmp_path, bad):
    from echomimic_core.checkpoints.lora import apply_lora, merge_lora, with_lora
    from echomimic_core.config import TransformerConfig
    from echomimic_core.model.transformer import EchoMimicTransformer

    model = EchoMimicTransformer(TransformerConfig.preset("tiny_preview"))
    before = model.blocks[0].self_attn.q.weight.detach().clone()
    path = tmp_path / "diverged.safetensors"
    save_state_dict(_tiny_lora(model, bad), path)
    with pytest.raises(CheckpointError, match=r"diverged.safetensors: 1 of 1 LoRA modules hold NaN or infinite") as e:
        apply_lora(model, path)
    assert "blocks.0.self_attn.q" in str(e.value) and "earlier checkpoint" in str(e.value)
    with pytest.raises(CheckpointError, match="1 of 1 LoRA modules hold NaN or infinite"):
        with_lora(model, _tiny_lora(model, bad))
    for merge in (
        lambda s: merge_lora(dict(model.named_parameters()), _tiny_lora(model), s),
        lambda s: with_lora(model, _tiny_lora(model), s),
    ):
        with pytest.raises(ValueError, match=rf"LoRA strength must be a finite number, got {bad}"):
            merge(bad)
    assert torch.equal(model.blocks[0].self_attn.q.weight.detach(), before)


def test_cli_lora_strength_nan_is_refused_before_loading(demo_cache, model_loads, tmp_path, capsys):
    rc = cli.main(
        ["generate", "--demo", "--lora", f"{tmp_path / 'style.safetensors'}:nan", "--out", str(tmp_path / "o.mp4")]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "style.safetensors:nan" in err and "must be a finite number, got 'nan'" in err
    assert "Traceback" not in err and not model_loads


def test_cli_with_a_vae_decoding_nan_writes_nothing(demo_cache, tmp_path, capsys, monkeypatch, wav):
    # finite latents, a decoder that yields NaN (damaged file / fp16 overflow): no black video
    from echomimic_core import model_files

    real = model_files.load_models

    def poisoned(*args, **kwargs):
        models = real(*args, **kwargs)
        models.vae.model.decoder.conv_out.bias.data.fill_(float("nan"))
        return models

    monkeypatch.setattr(model_files, "load_models", poisoned)
    out = tmp_path / "clip.mp4"
    rc = cli.main(
        ["generate", "--demo", "--audio", str(wav(tmp_path / "v.wav", 0.3)), "--steps", "1", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "the VAE decoded NaN or infinite pixels from finite latents" in err and "Traceback" not in err
    assert "download it again" in err and not out.exists() and not list(tmp_path.glob(".clip.partial*"))
