from pathlib import Path

import pytest
import yaml

from training.config import load_config
from training.train import run
from training.trainer import MODEL_FILE

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    for path in sorted((REPO / "training" / "configs").glob("*.yaml")):
        load_config(path)
    for path in sorted((REPO / "training" / "accelerate").glob("*.yaml")):
        from accelerate.commands.config.config_args import load_config_from_file

        assert load_config_from_file(str(path)).mixed_precision == "bf16"


def test_train_from_a_yaml_config_and_resume(tmp_path, sft_cache):
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "mixed_precision": "no",
        "checkpoint_every": 2,
        "model": {"preset": "tiny_preview", "gradient_checkpointing": False},
        "data": {"sft_dir": str(sft_cache), "num_workers": 0},
        "dpo": {"every_n_steps": 0},
        "optim": {"max_steps": 3, "warmup_steps": 0},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trainer = run(path)
    assert trainer.state.step == 3
    assert [p.name for p in trainer.checkpoints()] == ["checkpoint-2", "checkpoint-3"]
    assert (trainer.checkpoints()[-1] / MODEL_FILE).is_file()
    assert run(path, max_steps=4).state.step == 4  # picks up at step 3


def test_processes_that_form_no_group_are_refused(monkeypatch):
    """A process of a 2-process launch that accelerate set up alone (what happens on a CPU-only
    machine without ACCELERATE_USE_CPU=true) must not train."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from training.launch import check_process_group

    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=true"):
        check_process_group(alone)
    check_process_group(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_process_group(alone)


@pytest.mark.slow
def test_cpu_launch_without_use_cpu_fails_before_training(tmp_path, sft_cache):
    """The real launcher: two processes, no GPU, no ACCELERATE_USE_CPU -> both refuse, nothing written."""
    import os
    import subprocess
    import sys

    cfg = {
        "output_dir": str(tmp_path / "run"),
        "mixed_precision": "no",
        "model": {"preset": "tiny_preview"},
        "data": {"sft_dir": str(sft_cache), "num_workers": 0},
        "dpo": {"every_n_steps": 0},
        "optim": {"max_steps": 2},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no"]
    command += ["-m", "training.train", "--config", str(tmp_path / "cfg.yaml")]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "ACCELERATE_USE_CPU=true" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
