"""Training: config, cache and manifest problems are one-line errors naming the place; a new run
never mixes with an old one; Ctrl-C / SIGTERM save a checkpoint (issue 10)."""

import json
import os
import shutil
import signal

import pytest
import yaml

from training import train
from training.config import load_config
from training.dataset import CachedDataset, read_index
from training.preprocess import preprocess, read_manifest
from training.trainer import STATE_FILE, Trainer, complete_checkpoints


def main_error(capsys, *argv):
    rc = train.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip()


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lrr: 1.0e-4\n", "optim: unknown keys ['lrr'] ('lrr': did you mean 'lr'?)"),
        ("optim:\n\tlr: 1\n", "line 2, column 1: found character '\\t' that cannot start any token (YAML indents"),
        ("- seed: 1\n- seed: 2\n", "config: expected a mapping of keys, found list"),
        ("optim:\n  lr: fast\n", "optim.lr: expected a number, found 'fast' (str)"),
        ("seed: 1.5\n", "seed: expected a whole number, found 1.5"),
        ("optim:\n  betas: [0.9]\n", "optim.betas: expected a list of 2 values"),
    ],
)
def test_config_problems_are_one_line_naming_key_and_type(tmp_path, capsys, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    rc, err = main_error(capsys, "--config", str(path), "--print-config")
    assert rc == 2 and err.startswith(f"error: {path}: ") and message in err and len(err.splitlines()) == 1


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-4 as text; JSON and YAML 1.2 read it as the number it is
    path = tmp_path / "cfg.yaml"
    path.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(path).optim.lr == pytest.approx(1e-4)


def test_missing_config_is_one_line(tmp_path, capsys):
    rc, err = main_error(capsys, "--config", str(tmp_path / "nope.yaml"))
    assert rc == 2 and "nope.yaml: no such config file" in err


def damaged_copy(sft_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(sft_cache, cache)
    return cache


def test_truncated_or_garbage_shard_names_the_file(sft_cache, tmp_path):
    cache = damaged_copy(sft_cache, tmp_path)
    shard = cache / read_index(cache)["items"][0]["shard"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{shard.name}: not a readable shard .*truncated or damaged"):
        CachedDataset(cache)
    shard.write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match=f"{shard.name}: not a readable shard"):
        CachedDataset(cache)


def test_garbage_index_names_the_file(sft_cache, tmp_path):
    cache = damaged_copy(sft_cache, tmp_path)
    (cache / "index.json").write_text('{"kind": "sft", "items": [')
    with pytest.raises(ValueError, match="index.json: not a readable index"):
        CachedDataset(cache)
    (cache / "index.json").write_text('{"kind": "sft", "items": [{"id": "x"}]}')
    with pytest.raises(ValueError, match=r"index.json: expected .*the cache folder is damaged"):
        CachedDataset(cache)


def test_bad_manifest_line_and_duplicate_ids_name_the_line(tmp_path):
    path = tmp_path / "clips.jsonl"
    path.write_text('{"id": "a", "video": "a.mp4"}\n\n{"id": "b", "video": b.mp4}\n')
    with pytest.raises(ValueError, match=r"clips.jsonl:3: not a JSON object"):
        read_manifest(path)
    path.write_text('{"id": "a", "video": "a.mp4"}\n["b"]\n')
    with pytest.raises(ValueError, match=r"clips.jsonl:2: every row is a JSON object with an \"id\""):
        read_manifest(path)
    path.write_text('{"id": "a", "video": "a.mp4"}\n{"id": "b", "video": "b.mp4"}\n{"id": "a", "video": "c.mp4"}\n')
    with pytest.raises(ValueError, match=r"clips.jsonl:3: id 'a' is already used on line 1"):
        read_manifest(path)


def test_preprocess_refuses_duplicate_ids_before_encoding(tmp_path, encoders):
    calls = []

    def loader(*args):
        calls.append(args)
        raise AssertionError("a clip was decoded before the ids were checked")

    rows = [{"id": "a", "video": "a.mp4"}, {"id": "a", "video": "b.mp4"}]
    with pytest.raises(ValueError, match="id 'a' appears twice"):
        preprocess(rows, tmp_path / "out", encoders, frames=5, loader=loader, progress=False)
    assert not calls and not (tmp_path / "out" / "index.json").exists()


def test_things_beside_checkpoints_are_not_checkpoints(tmp_path):
    for name in ("checkpoint-2", "checkpoint-10", "checkpoint-5.bak", "checkpoint-7.partial", "checkpoint-x"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / STATE_FILE).write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-3").mkdir()  # never completed: no state file
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def tiny_run_config(tmp_path, sft_cache, max_steps=3):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "mixed_precision": "no",
        "checkpoint_every": 100,
        "model": {"preset": "tiny_preview", "gradient_checkpointing": False},
        "data": {"sft_dir": str(sft_cache), "num_workers": 0},
        "dpo": {"every_n_steps": 0},
        "optim": {"max_steps": max_steps, "warmup_steps": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_no_resume_into_an_earlier_run_is_refused_unless_overwrite(tmp_path, sft_cache, capsys, monkeypatch):
    path = tiny_run_config(tmp_path, sft_cache)
    old = tmp_path / "run" / "checkpoints" / "checkpoint-9000"
    old.mkdir(parents=True)
    (old / STATE_FILE).write_text(json.dumps({"step": 9000, "sft_samples": 0, "dpo_samples": 0}))
    monkeypatch.setattr(train, "build_model", lambda *a: pytest.fail("the model was built before the check"))
    rc, err = main_error(capsys, "--config", str(path), "--no-resume")
    assert rc == 2 and "holds an earlier run (checkpoint-9000)" in err and "--overwrite" in err
    assert old.is_dir()
    with pytest.raises(SystemExit) as e:  # a usage error, as argparse reports them
        train.main(["--config", str(path), "--overwrite"])
    assert e.value.code == 2 and "only goes with --no-resume" in capsys.readouterr().err

    monkeypatch.undo()
    assert train.main(["--config", str(path), "--no-resume", "--overwrite", "--max-steps", "1"]) == 0
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-1"]  # the old run is gone


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_training_saves_a_checkpoint_and_resumes(tmp_path, sft_cache, capsys, monkeypatch, signum):
    path = tiny_run_config(tmp_path, sft_cache, max_steps=5)
    real = Trainer.sft_loss
    sent = []

    def loss_then_signal(self, *args, **kwargs):
        if not sent:  # mid-step, as a user would: the step still finishes
            os.kill(os.getpid(), signum)
            sent.append(signum)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "sft_loss", loss_then_signal)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc = train.main(["--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 128 + signum and "Traceback" not in err
    assert f"interrupted ({signal.Signals(signum).name}) after step 1; saved" in err and "checkpoint-1" in err
    assert [p.name for p in complete_checkpoints(tmp_path / "run")] == ["checkpoint-1"]
    # the handlers it found are back (not default_int_handler: a background job starts with SIGINT ignored)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before

    monkeypatch.undo()
    assert train.run(path, max_steps=2).state.step == 2  # resumed from step 1
