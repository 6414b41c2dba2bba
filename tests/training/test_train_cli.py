from pathlib import Path

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
