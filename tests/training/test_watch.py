"""Watching a run: grad norm, DPO implicit accuracy, throughput, EMA, validation videos."""

import torch

from echomimic_core.checkpoints.transformer import load_transformer
from training.trackers import read_metrics
from training.trainer import EMA_FILE, MODEL_EMA_FILE, MODEL_FILE


def test_metrics_of_every_step(tmp_path, sft_cache, dpo_cache, make_trainer):
    trainer = make_trainer(tmp_path, sft_cache, dpo_cache, dpo={"every_n_steps": 2, "beta": 2000.0})
    history = trainer.train(4)
    sft, dpo = history[0], history[1]
    assert sft["grad_norm"] > 0 and sft["perf/step_seconds"] > 0
    assert sft["perf/samples_per_second"] == 3 / sft["perf/step_seconds"]
    assert 0.0 <= dpo["dpo/implicit_accuracy"] <= 1.0 and "dpo/reward_margin" in dpo
    assert history[3]["dpo/implicit_accuracy"] == 1.0  # after one DPO step the chosen clip fits better
    rows = read_metrics(tmp_path / "logs" / "train" / "metrics.jsonl")
    assert {"grad_norm", "perf/samples_per_second", "dpo/implicit_accuracy"} <= set().union(*rows)


def test_bf16_reference_halves_the_copy_and_matches_at_the_start(tmp_path, sft_cache, dpo_cache, make_trainer):
    trainer = make_trainer(tmp_path, sft_cache, dpo_cache, dpo={"every_n_steps": 1})
    assert next(trainer.ref_model.parameters()).dtype == torch.bfloat16
    exact = make_trainer(tmp_path / "b", sft_cache, dpo_cache, dpo={"every_n_steps": 1, "reference_dtype": "fp32"})
    assert next(exact.ref_model.parameters()).dtype == torch.float32
    from training.dataset import collate

    batch = collate([trainer.dpo_data[i] for i in range(2)])
    margin = trainer.dpo_loss(batch, torch.Generator().manual_seed(0))[1]
    assert margin.abs().max() < 1e-3  # policy == reference up to bf16 rounding
    assert exact.dpo_loss(batch, torch.Generator().manual_seed(0))[1].abs().max() < 1e-6


def test_ema_is_saved_loadable_and_resumed(tmp_path, sft_cache, make_trainer):
    over = {"ema": {"enabled": True, "decay": 0.5}, "checkpoint_every": 2}
    trainer = make_trainer(tmp_path, sft_cache, **over)
    start = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    trainer.train(2)
    folder = trainer.checkpoints()[-1]
    model = trainer.acc.unwrap_model(trainer.model)
    ema = load_transformer(folder / MODEL_EMA_FILE, dtype=torch.float32).state_dict()
    now = model.state_dict()
    name = "blocks.0.self_attn.q.weight"
    assert not torch.equal(ema[name], now[name]) and not torch.equal(ema[name], start[name])
    assert (folder / MODEL_FILE).is_file() and (folder / EMA_FILE).is_file()
    resumed = make_trainer(tmp_path, sft_cache, **over)
    assert resumed.resume()
    assert torch.equal(resumed.ema.shadow[name], trainer.ema.shadow[name])


def test_validation_writes_videos_and_loss(tmp_path, sft_cache, demo_model_files, make_trainer):
    from echomimic_core import media

    trainer = make_trainer(
        tmp_path,
        sft_cache,
        validation={"every_n_steps": 2, "cache_dir": str(sft_cache), "vae": str(demo_model_files.vae), "steps": 2},
    )
    trainer.train(2)
    videos = sorted((tmp_path / "validation" / "step-2").glob("*.mp4"))
    assert [v.stem for v in videos] == ["clip0", "clip1"]
    frames = media.load_video(videos[0], with_audio=False).frames
    assert frames.shape[0] == 9 and frames.std() > 0
    rows = read_metrics(tmp_path / "logs" / "train" / "metrics.jsonl")
    assert any("val/loss" in r for r in rows)


def test_validation_without_a_vae_saves_the_latents(tmp_path, sft_cache, make_trainer):
    trainer = make_trainer(
        tmp_path, sft_cache, validation={"every_n_steps": 2, "cache_dir": str(sft_cache), "steps": 2}
    )
    written = trainer.validate()
    assert sorted(written) == ["clip0", "clip1"]
    latents = torch.load(written["clip0"], weights_only=True)
    assert latents.shape == (1, *trainer.validator.items[0]["latents"].shape) and torch.isfinite(latents).all()
