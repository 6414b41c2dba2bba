"""End-to-end training behaviour on the tiny preview model (CPU, float32)."""

import pytest
import torch

from echomimic_core.checkpoints.files import load_state_dict
from echomimic_core.checkpoints.transformer import load_transformer
from echomimic_core.model.conditioning import Conditioning
from training.dataset import collate
from training.lora import merge_lora
from training.model_init import build_model
from training.trackers import read_metrics
from training.trainer import LORA_FILE, MODEL_FILE


def held_out_loss(trainer) -> float:
    """SFT loss on every item at fixed noise, timesteps, tasks and drops."""
    batch = collate([trainer.sft_data[i] for i in range(len(trainer.sft_data))])
    with torch.no_grad():
        return sum(trainer.sft_loss(batch, torch.Generator().manual_seed(s))[0].item() for s in range(4)) / 4


def test_sft_loss_falls_and_is_logged_per_phase_and_task(tmp_path, sft_cache, make_trainer):
    trainer = make_trainer(tmp_path, sft_cache)
    before = held_out_loss(trainer)
    history = trainer.train(30)
    trainer.finish()
    after = held_out_loss(trainer)
    assert after < 0.85 * before, (before, after)
    assert history[-1]["loss/sft"] < history[0]["loss/sft"]
    rows = read_metrics(tmp_path / "logs" / "train" / "metrics.jsonl")
    assert len(rows) == 30 and rows[-1]["step"] == 30
    keys = set().union(*rows)
    assert {"loss/sft_phase_early", "loss/sft_phase_middle", "loss/sft_phase_late"} <= keys
    assert {"loss/sft_task_first_frame", "loss/sft_task_first_last", "loss/sft_task_lipsync"} <= keys


class Recorder(torch.nn.Module):
    """Wraps the model and keeps the Conditioning that actually reaches it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, t, cond):
        self.seen.append((t.detach().clone(), cond))
        return self.model(x, t, cond)


def test_phase_drop_reaches_the_model(tmp_path, sft_cache, make_trainer):
    trainer = make_trainer(tmp_path, sft_cache, drop={"cfg_text": 0.0, "cfg_audio": 0.0, "cfg_all": 0.0})
    recorder = Recorder(trainer.model)
    trainer.model = recorder
    batch = collate([trainer.sft_data[i] for i in range(3)])
    null = trainer.null_text
    late_counts, early_images = set(), set()
    for seed in range(12):
        _, _, phases, _ = trainer.sft_loss(batch, torch.Generator().manual_seed(seed))
        t, cond = recorder.seen[-1]
        assert cond.face_gate is not None and cond.face_gate[1].all()  # item 0 has a face box, 1 none
        assert 0 < cond.face_gate[0].sum() < cond.face_gate.shape[1]
        for b, phase in enumerate(phases.tolist()):
            text_dropped = torch.equal(cond.context[b], null)
            image_dropped = not cond.clip_fea[b].any()
            audio_dropped = not cond.audio[b].any()
            # the reference frame and task mask reach the model in every phase, dropped image or not
            assert cond.y[b, :4].any() and cond.y[b, 4:].any()
            if phase == 0:
                assert t[b] > 666 and (text_dropped, audio_dropped) == (False, True)
                early_images.add(image_dropped)
            elif phase == 1:
                assert 333 < t[b] <= 666 and not (text_dropped or image_dropped or audio_dropped)
                assert torch.equal(cond.audio[b], batch["audio"][b])
            else:
                assert t[b] <= 333
                late_counts.add(text_dropped + image_dropped + audio_dropped)
    assert late_counts == {1, 2}
    assert early_images == {True, False}  # the early phase trains with and without the CLIP image


def test_dpo_raises_the_implicit_reward_margin(tmp_path, sft_cache, dpo_cache, make_trainer):
    trainer = make_trainer(
        tmp_path,
        sft_cache,
        dpo_cache,
        dpo={"every_n_steps": 1, "beta": 2000.0, "reference_dtype": "fp32"},  # exact reference: margin 0 at start
        optim={"lr": 2e-4, "warmup_steps": 0, "max_steps": 100},
    )
    batch = collate([trainer.dpo_data[i] for i in range(len(trainer.dpo_data))])

    def margin():
        with torch.no_grad():
            return trainer.dpo_loss(batch, torch.Generator().manual_seed(123))[1].mean().item()

    assert abs(margin()) < 1e-6  # policy == reference at the start
    history = trainer.train(8)
    assert all("loss/dpo" in h for h in history)
    assert margin() > 1e-4
    assert history[-1]["loss/dpo"] < history[0]["loss/dpo"]


def _losses(history):
    return [h.get("loss/sft", h.get("loss/dpo")) for h in history]


def test_kill_and_resume_repeats_the_uninterrupted_run(tmp_path, sft_cache, dpo_cache, make_trainer):
    over = dict(
        checkpoint_every=3,
        dpo={"every_n_steps": 2, "beta": 500.0},
        model={"preset": "tiny_preview", "gradient_checkpointing": True},
    )
    full = _losses(make_trainer(tmp_path / "a", sft_cache, dpo_cache, **over).train(6))

    class Killed(Exception):
        pass

    def kill_at_5(step, logs):
        if step == 5:
            raise Killed

    first = make_trainer(tmp_path / "b", sft_cache, dpo_cache, **over)
    with pytest.raises(Killed):
        first.train(6, on_step_end=kill_at_5)
    assert [p.name for p in first.checkpoints()] == ["checkpoint-3"]
    resumed = make_trainer(tmp_path / "b", sft_cache, dpo_cache, **over)
    assert resumed.resume() and resumed.state.step == 3
    again = _losses(resumed.train(6))
    assert again == full[3:]


def test_checkpoint_loads_in_the_node_loader(tmp_path, sft_cache, make_trainer):
    trainer = make_trainer(tmp_path, sft_cache)
    trainer.train(2)
    folder = trainer.save_checkpoint()
    loaded = load_transformer(folder / MODEL_FILE, dtype=torch.float32)
    ours = trainer.acc.unwrap_model(trainer.model)
    assert loaded.config == ours.config
    theirs = loaded.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


def test_lora_trains_adapters_only_and_merges_into_the_base(tmp_path, sft_cache, make_trainer):
    pytest.importorskip("peft", reason="LoRA training needs peft (requirements-train.txt)")
    trainer = make_trainer(tmp_path, sft_cache, lora={"enabled": True, "rank": 4, "alpha": 8.0})
    model = trainer.acc.unwrap_model(trainer.model)
    base = {k.replace(".base_layer", ""): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer.train(3)
    folder = trainer.save_checkpoint()
    assert not (folder / MODEL_FILE).exists()
    lora = load_state_dict(folder / LORA_FILE)
    assert lora and all(k.startswith("diffusion_model.") for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    now = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], now[k]) for k in base)  # the base stayed frozen

    plain = build_model(trainer.config.model, trainer.config.seed).eval()
    plain.load_state_dict(merge_lora(base, lora))
    batch = collate([trainer.sft_data[i] for i in range(2)])
    x = torch.randn_like(batch["latents"])
    y = torch.cat([torch.zeros_like(batch["latents"][:, :4]), batch["cond.first_frame"]], 1)
    cond = Conditioning(context=batch["text"], clip_fea=batch["clip"], audio=batch["audio"], y=y)
    t = torch.tensor([500.0, 900.0])
    with torch.no_grad():
        assert torch.allclose(plain(x, t, cond), model.eval()(x, t, cond), atol=1e-5)


def test_base_wan_checkpoint_gets_upstream_audio_init(tmp_path, tiny_config):
    from echomimic_core.checkpoints.files import save_state_dict
    from training.config import ModelConfig

    donor = build_model(ModelConfig(preset="tiny_preview"), seed=3)
    base = {k: v for k, v in donor.state_dict().items() if "audio" not in k}
    save_state_dict(base, tmp_path / "wan_fun_inp.safetensors")
    path = tmp_path / "wan_fun_inp.safetensors"
    model = build_model(ModelConfig(preset="tiny_preview", checkpoint=str(path)))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())
    assert not sd["blocks.0.cross_attn.k_audio.weight"].any()
    assert not sd["blocks.0.cross_attn.v_audio.weight"].any()
    assert sd["audio2token.proj.weight"].abs().sum() > 0  # a live projector: gradients reach v_audio
    assert all(p.requires_grad for p in model.parameters())


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path, sft_cache, dpo_cache, make_trainer):
    trainer = make_trainer(
        tmp_path,
        sft_cache,
        dpo_cache,
        mixed_precision="bf16",
        model={"preset": "tiny_preview", "gradient_checkpointing": True},
        dpo={"every_n_steps": 2},
    )
    before = {k: v.clone() for k, v in trainer.acc.unwrap_model(trainer.model).state_dict().items()}
    history = trainer.train(2)
    assert all(torch.isfinite(torch.tensor(_losses(history))))
    after = trainer.acc.unwrap_model(trainer.model).state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_every_step_is_stratified_over_phases_with_batch_one(tmp_path, sft_cache, make_trainer):
    from training.flow_matching import phase_of

    trainer = make_trainer(
        tmp_path,
        sft_cache,
        data={"batch_size": 1, "num_workers": 0},
        optim={"gradient_accumulation_steps": 3, "warmup_steps": 0, "max_steps": 100},
    )
    recorder = Recorder(trainer.model)
    trainer.model = recorder
    trainer.train(3)
    phases = [int(phase_of(t, trainer.config.flow.phase_boundaries)) for t, _ in recorder.seen]
    assert len(phases) == 9
    assert all(sorted(phases[i : i + 3]) == [0, 1, 2] for i in range(0, 9, 3))


def test_flash_variant_trains_sft_and_dpo(tmp_path, make_trainer):
    from echomimic_core.config import TransformerConfig
    from training.preprocess import preprocess
    from training.synthetic import FRAMES, HEIGHT, WIDTH, sft_rows, synthetic_clip, tiny_encoders

    encoders = tiny_encoders(TransformerConfig.preset("tiny_flash"))
    kw = dict(frames=FRAMES, size=(HEIGHT, WIDTH), loader=synthetic_clip, progress=False)
    preprocess(sft_rows(3), tmp_path / "sft", encoders, **kw)
    preprocess([{"id": "p", "chosen": "a.mp4", "rejected": "b.mp4"}], tmp_path / "dpo", encoders, kind="dpo", **kw)
    trainer = make_trainer(
        tmp_path / "run",
        tmp_path / "sft",
        tmp_path / "dpo",
        model={"preset": "tiny_flash", "gradient_checkpointing": False},
        dpo={"every_n_steps": 2, "batch_size": 1},
    )
    model = trainer.acc.unwrap_model(trainer.model)
    assert not model.blocks[0].cross_attn.q_audio.weight.requires_grad  # unused by the forward
    recorder = Recorder(trainer.model)
    trainer.model = recorder
    history = trainer.train(2)
    assert "loss/sft" in history[0] and "loss/dpo" in history[1]
    assert all(cond.face_gate is None for _, cond in recorder.seen)  # flash has no face gate
    assert model.blocks[0].cross_attn.v_audio.weight.abs().sum() > 0  # audio path learns from zero


def test_base_checkpoint_takes_the_presets_audio_widths(tmp_path):
    from echomimic_core.checkpoints.files import save_state_dict
    from training.config import ModelConfig

    donor = build_model(ModelConfig(preset="tiny_preview"), seed=3)
    base = {k: v for k, v in donor.state_dict().items() if "audio" not in k}
    save_state_dict(base, tmp_path / "wan_fun_inp.safetensors")
    path = str(tmp_path / "wan_fun_inp.safetensors")
    model = build_model(ModelConfig(preset="tiny_flash", checkpoint=path))
    assert model.config.variant == "flash" and model.config.audio_channels == 16
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())
    assert not sd["blocks.1.cross_attn.v_audio.weight"].any()
    assert not sd["blocks.1.cross_attn.v_audio.bias"].any()


def test_dpo_schedule_alternates_and_phases_in():
    from training.trainer import is_dpo_step

    plain = [s for s in range(12) if is_dpo_step(s, 4)]
    assert plain == [3, 7, 11]  # unchanged: the step closing each block of 4
    phased = [s for s in range(400) if is_dpo_step(s, 4, start_step=100, ramp_steps=200)]
    assert phased[0] > 100 and not [s for s in phased if s < 100]
    gaps = [b - a for a, b in zip(phased, phased[1:])]
    assert gaps[0] > 8 and gaps[-1] == 4  # sparse at first, then one in every 4
    assert sum(gaps[:5]) > sum(gaps[5:10]) > sum(gaps[10:15])  # ever more often
    # share over the ramp: half of what the full rate would give
    assert len([s for s in phased if s < 300]) == pytest.approx(200 / 4 / 2, abs=1)
