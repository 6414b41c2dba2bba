"""Train EchoMimicV3: SFT with phase-specific modality drop, alternated with DPO.

    accelerate launch --config_file training/accelerate/single_gpu.yaml \\
        -m training.train --config training/configs/sft_dpo.yaml

Resumes from the latest complete checkpoint in ``output_dir`` unless ``--no-resume``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.config import config_to_dict, load_config
from training.dataset import CachedDataset
from training.model_init import build_model
from training.trainer import Trainer

log = logging.getLogger(__name__)


def run(config_path: str | Path, resume: bool = True, max_steps: int | None = None) -> Trainer:
    config = load_config(config_path)
    sft = CachedDataset(config.data.sft_dir, kind="sft")
    if sft.null_text is None:
        raise FileNotFoundError(
            f"{config.data.sft_dir}: nulls.safetensors (the empty-prompt embedding) is "
            "missing; re-run `python -m training.preprocess` on that folder."
        )
    dpo = CachedDataset(config.data.dpo_dir, kind="dpo") if config.data.dpo_dir else None
    trainer = Trainer(config, build_model(config.model, config.seed), sft, sft.null_text, dpo_data=dpo)
    if resume:
        trainer.resume()
    try:
        trainer.train(max_steps)
        if trainer.state.step % config.checkpoint_every:  # the last steps are not saved yet
            trainer.save_checkpoint()
    finally:
        trainer.finish()
    return trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML or JSON TrainConfig")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    p.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.print_config:
        import json

        print(json.dumps(config_to_dict(load_config(args.config)), indent=2))
        return 0
    run(args.config, resume=not args.no_resume, max_steps=args.max_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
