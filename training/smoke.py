"""Check a training setup end to end without any weights: synthetic clips, tiny encoders, the tiny
preview transformer, SFT alternated with DPO, checkpoints and resume.

    accelerate launch --config_file training/accelerate/multi_gpu_ddp.yaml -m training.smoke \\
        --out /tmp/echomimic_smoke --steps 6

Run it twice with a larger ``--steps`` to see a resume. Prints one JSON line (main process):
the losses of the steps run, the counters and the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from echomimic_core.config import TransformerConfig
from training.config import config_from_dict
from training.dataset import CachedDataset
from training.launch import make_accelerator
from training.model_init import build_model
from training.preprocess import preprocess
from training.synthetic import FRAMES, HEIGHT, WIDTH, sft_rows, synthetic_clip, tiny_encoders
from training.trainer import Trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = config_from_dict(
        {
            "output_dir": str(args.out / "run"),
            "mixed_precision": args.mixed_precision,
            "checkpoint_every": 3,
            "log_every": 1,
            "model": {"preset": "tiny_preview"},
            "data": {"batch_size": 3, "num_workers": 0},
            "dpo": {"every_n_steps": 2},
            "optim": {"lr": 1e-3, "warmup_steps": 0, "max_steps": args.steps},
        }
    )
    acc = make_accelerator(config)
    if acc.is_main_process:
        encoders = tiny_encoders(TransformerConfig.preset("tiny_preview"))
        kw = dict(frames=FRAMES, size=(HEIGHT, WIDTH), loader=synthetic_clip, progress=False)
        preprocess(sft_rows(), args.out / "sft", encoders, **kw)
        pairs = [
            {"id": f"pair{i}", "chosen": f"good{i}.mp4", "rejected": f"bad{i}.mp4", "caption": "a person talking"}
            for i in range(4)
        ]
        preprocess(pairs, args.out / "dpo", encoders, kind="dpo", **kw)
    acc.wait_for_everyone()
    sft = CachedDataset(args.out / "sft")
    trainer = Trainer(
        config,
        build_model(config.model, config.seed),
        sft,
        sft.null_text,
        dpo_data=CachedDataset(args.out / "dpo", kind="dpo"),
        accelerator=acc,
    )
    resumed = trainer.resume()
    history = trainer.train(args.steps)
    trainer.finish()
    if acc.is_main_process:
        print(
            json.dumps(
                {
                    "resumed": resumed,
                    "processes": acc.num_processes,
                    "losses": [h.get("loss/sft", h.get("loss/dpo")) for h in history],
                    "state": trainer.state.state_dict(),
                    "checkpoints": [c.name for c in trainer.checkpoints()],
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
