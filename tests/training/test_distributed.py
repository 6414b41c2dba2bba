"""Two-process data parallel (gloo on the CPU) through torchrun, as accelerate launch runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _smoke(out, steps):
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "training.smoke",
        "--out",
        str(out),
        "--steps",
        str(steps),
    ]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_ddp_shards_data_and_resumes_exactly(tmp_path):
    full = _smoke(tmp_path / "a", 6)
    assert full["processes"] == 2
    assert full["state"] == {"step": 6, "sft_samples": 18, "dpo_samples": 6}  # 3 steps x 3 x 2 ranks
    first = _smoke(tmp_path / "b", 4)
    assert first["checkpoints"] == ["checkpoint-3"]
    resumed = _smoke(tmp_path / "b", 6)  # steps 4 done after checkpoint 3 are redone identically
    assert resumed["resumed"] and resumed["losses"] == full["losses"][3:]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_runs_sft_dpo_and_checkpoints_on_cpu(tmp_path, stage):
    """The shipped ZeRO configs through `accelerate launch` on one CPU process (DeepSpeed's CPU
    accelerator), when deepspeed is installed: sharded states, DPO reference, loader-format save."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional: pip install deepspeed")
    config = (Path(REPO) / "training" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text()
    (tmp_path / "ds.yaml").write_text(config.replace("num_processes: 8", "num_processes: 1"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "ds.yaml")]
    command += ["-m", "training.smoke", "--out", str(tmp_path / "run"), "--steps", "3"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["state"] == {"step": 3, "sft_samples": 6, "dpo_samples": 1}
    assert (tmp_path / "run" / "run" / "checkpoints" / "checkpoint-3" / "transformer.safetensors").is_file()
