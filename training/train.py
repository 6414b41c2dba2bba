"""Train EchoMimicV3: SFT with phase-specific modality drop, alternated with DPO.

    accelerate launch --config_file training/accelerate/single_gpu.yaml \\
        -m training.train --config training/configs/sft_dpo.yaml

Resumes from the latest complete checkpoint in ``output_dir`` unless ``--no-resume``, which
refuses a folder holding an earlier run unless ``--overwrite`` (then that run is deleted first).
Ctrl-C or SIGTERM ends the current step, saves a checkpoint and exits (130 / 143); a second one
stops at once.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from pathlib import Path

from echomimic_core.interrupts import Interrupted, StopRequest, exit_code, stop_immediately
from training.config import config_to_dict, load_config
from training.dataset import CachedDataset
from training.launch import make_accelerator
from training.model_init import build_model
from training.trainer import Trainer, complete_checkpoints

log = logging.getLogger(__name__)

# what a run writes into its output_dir (and --overwrite deletes; nothing else there is touched)
RUN_FOLDERS = ("checkpoints", "logs")


def start_fresh(output_dir: str | Path, overwrite: bool) -> None:
    """For ``--no-resume``: refuse an output folder holding an earlier run, whose checkpoints would
    prune the new run's away and be resumed instead of it next time; with ``overwrite``, delete
    that run first (on the main process; the others wait)."""
    from accelerate import PartialState

    out = Path(output_dir)
    held = [out / name for name in RUN_FOLDERS if (out / name).is_dir() and any((out / name).iterdir())]
    if not held:
        return
    if not overwrite:
        found = [p.name for p in complete_checkpoints(out)] or [p.name for p in held]
        raise ValueError(
            f"{out} holds an earlier run ({', '.join(found[-3:])}); --no-resume would mix the new run's "
            "checkpoints with it (and a later run would resume the old one). Resume it (drop --no-resume), "
            "choose another output_dir, or pass --overwrite to delete that run first."
        )
    state = PartialState()
    if state.is_main_process:
        for path in held:
            log.warning("--overwrite: deleting %s", path)
            shutil.rmtree(path)
    state.wait_for_everyone()


def run(config_path: str | Path, resume: bool = True, max_steps: int | None = None, overwrite: bool = False) -> Trainer:
    config = load_config(config_path)
    accelerator = make_accelerator(config)  # a bad launch fails here, before any data or weights load
    if not resume:
        start_fresh(config.output_dir, overwrite)
    sft = CachedDataset(config.data.sft_dir, kind="sft")
    if sft.null_text is None:
        raise FileNotFoundError(
            f"{config.data.sft_dir}: nulls.safetensors (the empty-prompt embedding) is "
            "missing; re-run `python -m training.preprocess` on that folder."
        )
    dpo = CachedDataset(config.data.dpo_dir, kind="dpo") if config.data.dpo_dir else None
    trainer = Trainer(
        config, build_model(config.model, config.seed), sft, sft.null_text, dpo_data=dpo, accelerator=accelerator
    )
    if resume:
        trainer.resume()
    try:
        with StopRequest() as stop:
            trainer.train(max_steps, should_stop=stop)
        if trainer.state.step % config.checkpoint_every:  # the last steps are not saved yet
            trainer.save_checkpoint()
    finally:
        trainer.finish()
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        saved = trainer.checkpoints()
        where = f"saved {saved[-1]}, run the same command again to resume" if saved else "no step to save yet"
        raise Interrupted(stop.signum, f"interrupted ({name}) after step {trainer.state.step}; {where}")
    return trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML or JSON TrainConfig")
    p.add_argument("--no-resume", action="store_true", help="start a new run (refused where one exists)")
    p.add_argument(
        "--overwrite", action="store_true", help="with --no-resume: delete an earlier run in output_dir first"
    )
    p.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.overwrite and not args.no_resume:
        p.error("--overwrite deletes an earlier run; it only goes with --no-resume")
    try:
        with stop_immediately():  # until training proper starts, SIGTERM stops as Ctrl-C does
            if args.print_config:
                import json

                print(json.dumps(config_to_dict(load_config(args.config)), indent=2))
                return 0
            run(args.config, resume=not args.no_resume, max_steps=args.max_steps, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:  # the user's to fix: one line, no traceback
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return exit_code(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
