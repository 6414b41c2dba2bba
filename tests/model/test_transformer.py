import dataclasses
import json

import pytest
import torch

from echomimic_core.config import TransformerConfig
from echomimic_core.model.conditioning import Conditioning
from echomimic_core.model.rope import Riflex
from echomimic_core.model.transformer import EchoMimicTransformer, sinusoidal_embedding, verify_fixture


@pytest.mark.parametrize("name", ["preview_tiny", "flash_tiny"])
def test_parity_with_upstream_fixture(reference_dir, name):
    meta = json.loads((reference_dir / "tiny_meta.json").read_text())
    errors = verify_fixture(reference_dir / f"{name}.safetensors", meta)
    assert errors["output"] < 1e-5


@pytest.mark.parametrize("name", ["preview", "flash"])
def test_released_state_dict_names_and_shapes(reference_dir, name):
    manifest = json.loads((reference_dir / f"{name}_1.3B_keys.json").read_text())
    config = TransformerConfig.preset(name)
    for key, value in manifest["config"].items():
        assert getattr(config, key) == (tuple(value) if key == "patch_size" else value), key
    with torch.device("meta"):
        model = EchoMimicTransformer(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v[0] for k, v in manifest["tensors"].items()}
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


def test_whisper_tiny_preset_takes_384_wide_audio():
    with torch.device("meta"):
        model = EchoMimicTransformer(TransformerConfig.preset("whisper_tiny"))
    assert tuple(model.audio2token.proj.weight.shape) == (1536, 384)
    assert model.config.audio_tokens_per_frame == 2


def test_batched_conditioning_equals_separate_forwards(variant, tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn(variant)
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config, batch=2, text_lens=(5, 7))
    first = Conditioning(
        context=cond.context[:1],
        clip_fea=cond.clip_fea[:1],
        y=cond.y[:1],
        audio=cond.audio[:1],
        face_gate=None,
        audio_scale=1.0,
    )
    second = Conditioning(
        context=cond.context[1:],
        clip_fea=cond.clip_fea[1:],
        y=cond.y[1:],
        audio=cond.audio[1:],
        face_gate=cond.face_gate[1:],
        audio_scale=0.5,
    )
    with torch.no_grad():
        batched = model(x, t, Conditioning.cat([first, second]))
        separate = torch.cat([model(x[:1], t[:1], first), model(x[1:], t[1:], second)])
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)


def test_audio_changes_output_and_gate_silences_it(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("preview")
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    with torch.no_grad():
        base = model(x, t, cond)
        assert (model(x, t, cond.without_audio()) - base).abs().max() > 1e-3
        closed = Conditioning(**{**cond.__dict__, "face_gate": torch.zeros_like(cond.face_gate)})
        silent = Conditioning(**{**cond.__dict__, "audio_scale": 0.0})
        torch.testing.assert_close(model(x, t, closed), model(x, t, silent))


def test_gradient_checkpointing_gives_same_grads(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("flash")
    x, t, cond = random_inputs_fn(config)
    model = random_model_fn(config)
    runs = []  # a pre-hook: the recompute stops early, before a forward hook would fire
    model.blocks[0].register_forward_pre_hook(lambda *a: runs.append(1))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = checkpointing
        model(x, t, cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert len(runs) == 3  # once without checkpointing; forward + recompute in backward with it
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_block_swap_same_output_and_blocks_return_to_offload(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("preview", num_layers=3)
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    with torch.no_grad():
        expected = model(x, t, cond)
        moved = []
        model.blocks[0].register_forward_pre_hook(lambda m, a: moved.append(m.ffn[0].weight.device))
        model.enable_block_swap(2, "cpu")
        assert model._swap.swapped == {0, 1}
        hosts = [p.data_ptr() for p in model.blocks[0].parameters()]
        torch.testing.assert_close(model(x, t, cond), expected, rtol=0, atol=0)
        assert moved == [torch.device("cpu")]
        # after its turn a swapped block points at its host copies again
        assert [p.data_ptr() for p in model.blocks[0].parameters()] == hosts
        assert model._swap.loaded == set()
    with pytest.raises(RuntimeError, match="block swap is for inference"):
        model(x, t, cond)
    model.disable_block_swap()
    assert model._swap is None
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, cond), expected, rtol=0, atol=0)


class _RecordingCache:
    """Minimal TeaCache-shaped hook: compute once, then reuse the stored residual."""

    def __init__(self):
        self.residual, self.calls, self.t_mod_shapes = {}, [], []

    def before_blocks(self, branch, t_mod, x):
        self.calls.append(("before", branch))
        self.t_mod_shapes.append(tuple(t_mod.shape))
        return x + self.residual[branch] if branch in self.residual else None

    def after_blocks(self, branch, x_in, x_out):
        self.calls.append(("after", branch))
        self.residual[branch] = x_out - x_in


def test_cache_hook_skips_blocks_and_reuses_residual(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("flash")
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    cache, block_runs = _RecordingCache(), []
    model.blocks[0].register_forward_hook(lambda *a: block_runs.append(1))
    with torch.no_grad():
        full = model(x, t, cond, cache=cache, cache_branch="cond")
        reused = model(x, t, cond, cache=cache, cache_branch="cond")
    assert len(block_runs) == 1
    assert cache.calls == [("before", "cond"), ("after", "cond"), ("before", "cond")]
    assert cache.t_mod_shapes[0] == (2, 6, config.dim)
    torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)


def test_weights_stored_in_fp8_compute_in_activation_dtype(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("preview")
    model = random_model_fn(config)
    reference = random_model_fn(config)
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            if p.ndim == 2:  # Linear weights stored as fp8, reference holds the same values in fp32
                p.data = p.data.to(torch.float8_e4m3fn)
                q.copy_(p.data.float())
            else:
                q.copy_(p)
        x, t, cond = random_inputs_fn(config)
        out = model(x, t, cond)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(x, t, cond), rtol=0, atol=0)


def test_bf16_compute_dtype_close_to_fp32(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("flash")
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    with torch.no_grad():
        ref = model(x, t, cond)
        model.compute_dtype = torch.bfloat16
        out = model(x, t, cond)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() / ref.abs().max() < 0.05


def test_time_embedding_stays_float32_under_bf16_autocast(tiny_config_fn, random_model_fn):
    """Training runs the model under bf16 autocast; the time MLPs must still compute in float32 (as Wan)."""
    model = random_model_fn(tiny_config_fn("preview", freq_dim=256, dim=64))
    t = torch.tensor([999.0, 731.5, 20.25])
    with torch.no_grad():
        ref_e, ref_e0 = model.time_embed(t, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            e, e0 = model.time_embed(t, torch.float32)
            # what the autocast rounding would give: the bf16 time MLP is visibly off
            bf16 = model.time_projection(model.time_embedding(sinusoidal_embedding(256, t).float()))
    assert e.dtype == e0.dtype == torch.float32
    torch.testing.assert_close(e, ref_e, rtol=0, atol=0)
    torch.testing.assert_close(e0, ref_e0, rtol=0, atol=0)
    assert ((bf16.float() - ref_e0.flatten(1)).norm() / ref_e0.norm()).item() > 1e-3


def test_riflex_is_a_per_call_input_and_leaves_the_model_unchanged(tiny_config_fn, random_model_fn, random_inputs_fn):
    """ComfyUI caches the model across runs: a RIFLEx call must leave nothing behind in it."""
    config = tiny_config_fn("preview")
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    with_riflex = dataclasses.replace(cond, riflex=Riflex(k=1, L_test=3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    freqs = [f.clone() for f in model.rope.freqs]

    def fresh():
        m = EchoMimicTransformer(config).eval()
        m.load_state_dict(state)
        return m

    with torch.no_grad():
        riflex_out = model(x, t, with_riflex)
        plain_out = model(x, t, cond)
        assert torch.equal(riflex_out, fresh()(x, t, with_riflex))
        assert torch.equal(plain_out, fresh()(x, t, cond))
        assert (riflex_out - plain_out).abs().max() > 1e-4  # RIFLEx does reach the attention
        # batched guidance passes carry the one RIFLEx of the call
        batched = model(torch.cat([x, x]), torch.cat([t, t]), Conditioning.cat([with_riflex, with_riflex]))
        torch.testing.assert_close(batched[: len(x)], riflex_out, rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert all(torch.equal(f, g) for f, g in zip(freqs, model.rope.freqs))
    with pytest.raises(ValueError, match="different RIFLEx settings"):
        Conditioning.cat([cond, with_riflex])


def test_audio_length_must_match_latent_frames(tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("preview")
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    short = cond.with_audio(cond.audio[:, :10])  # 5 video frames = 2 latent frames, latents have 3
    with pytest.raises(ValueError, match="audio covers 2 latent frames but the latents have 3"):
        model(x, t, short)


def test_unknown_attention_backend_is_refused(tiny_config_fn):
    with pytest.raises(ValueError, match="unknown attention backend"):
        EchoMimicTransformer(tiny_config_fn("preview"), attention_backend="fast")


def test_model_built_on_meta_device_runs_after_materialising(tiny_config_fn, random_inputs_fn):
    """The checkpoint loader builds on the meta device; RoPE tables must not end up there."""
    config = tiny_config_fn("preview")
    with torch.device("meta"):
        model = EchoMimicTransformer(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        x, t, cond = random_inputs_fn(config)
        assert torch.isfinite(model(x, t, cond)).all()


def test_time_embedding_never_asks_the_accelerator_for_float64():
    """Apple's MPS has no float64: the sinusoid's float64 angles are computed on the CPU. Shown here
    with the meta device standing in for the accelerator (every op's output dtype and device is
    recorded), and the values are Wan's float64 formula rounded once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class NoFloat64OffCpu(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.device.type != "cpu":
                raise AssertionError(f"{func} made a float64 tensor on {out.device}")
            return out

    with NoFloat64OffCpu():
        on_meta = sinusoidal_embedding(256, torch.tensor([999.0, 1.0], device="meta"))
    assert on_meta.shape == (2, 256) and on_meta.dtype == torch.float32
    t = torch.tensor([999.0, 517.25, 0.0])
    angles = t.double()[:, None] * torch.pow(10000, -torch.arange(128, dtype=torch.float64) / 128)
    expected = torch.cat([angles.cos(), angles.sin()], dim=1).float()
    assert torch.equal(sinusoidal_embedding(256, t), expected)


def test_parking_leaves_swapped_blocks_on_the_host_and_drops_the_rope_tables(
    tiny_config_fn, random_model_fn, random_inputs_fn, monkeypatch
):
    """place -> run -> park -> place: the swapped blocks' host copies are reused, never uploaded
    for good (ComfyUI parks the model after every run); the RoPE tables go with the rest."""
    from echomimic_core.model import transformer as transformer_module

    model = random_model_fn(tiny_config_fn("preview", num_layers=3))
    x, t, cond = random_inputs_fn(model.config)
    with torch.no_grad():
        reference = model(x, t, cond)
    monkeypatch.setattr(transformer_module._BlockSwap, "restore", lambda self: pytest.fail("uploaded for good"))
    model.place("cpu", "cpu", block_swap=2)
    host = [p.data_ptr() for p in model.blocks[0].parameters()]
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), reference)
    assert model.rope._cache
    model.park("cpu")
    assert model.block_swap == 2 and not model.rope._cache
    model.place("cpu", "cpu", block_swap=2)  # the same swap again: only the resident part moves
    assert [p.data_ptr() for p in model.blocks[0].parameters()] == host
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), reference)
    model.place("cpu", "cpu", block_swap=0)  # swap off: the blocks stay where they are, now ordinary
    assert model.block_swap == 0 and [p.data_ptr() for p in model.blocks[0].parameters()] == host


def test_float16_overflow_is_an_error_not_nan_frames(tiny_config_fn, random_model_fn, random_inputs_fn):
    """fp16 compute has no headroom (65504) and nothing clamps the residual stream: an overflow
    stops with an error naming the fix instead of handing NaN latents to the sampler."""
    model = random_model_fn(tiny_config_fn("flash")).to(torch.float16)
    model.compute_dtype = torch.float16
    x, t, cond = random_inputs_fn(model.config)
    with torch.no_grad():
        assert torch.isfinite(model(x, t, cond)).all()  # ordinary values run
        model.blocks[0].ffn[2].weight.mul_(3e4)  # a stream far beyond float16's range
        with pytest.raises(FloatingPointError, match="overflowed in float16.*bfloat16"):
            model(x, t, cond)


@pytest.mark.slow
def test_compiled_blocks_equal_eager(tiny_config_fn, random_model_fn, random_inputs_fn):
    """torch.compile of the blocks (inductor, CPU): the output equals eager mode's to float32
    rounding (fused kernels), with and without the context cache; names in the state dict stay."""
    from echomimic_core.model.context_cache import ContextCache

    model = random_model_fn(tiny_config_fn("preview", num_layers=1))
    x, t, cond = random_inputs_fn(model.config)
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = model(x, t, cond)
        model.compile_blocks()
        compiled = model(x, t, cond)
        cached = model(x, t, cond, context_cache=ContextCache())
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, eager, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
