"""The run's ``Accelerator``, built from what ``accelerate launch`` (or torchrun) put in the
environment, and the checks that a launch fits the training config: processes that formed one
group, DeepSpeed settings that agree with ours, FSDP without its own bf16 casting.
"""

from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from training.config import TrainConfig
from training.trackers import resolve_trackers


def fsdp_plugin():
    """The FSDP settings ``accelerate launch`` put in the environment (None without FSDP), with
    FSDP's own mixed precision kept at float32.

    accelerate's default FSDP policy for bf16 stores the parameters in bf16 and casts the root
    forward's inputs to bf16, the timesteps ``t`` included (steps of 4 near t = 1000). Keeping FSDP
    at float32 leaves the bf16 to autocast, as on one GPU and under DDP: float32 master weights,
    exact timesteps, the same numerics in every setup, for twice the all-gather traffic.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(mixed_precision_policy="fp32")


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's Accelerator; refuses a launch whose processes would not form one group."""
    out = Path(config.output_dir)
    acc = Accelerator(
        mixed_precision=config.mixed_precision,
        fsdp_plugin=fsdp_plugin(),
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        log_with=resolve_trackers(config.trackers, out / "logs"),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    check_process_group(acc)
    check_deepspeed_settings(config)
    return acc


def check_deepspeed_settings(config: TrainConfig) -> None:
    """Under DeepSpeed the launch config's gradient accumulation and clipping win over the training
    config's (accelerate reads them from the environment): refuse a run where they differ, since the
    trainer counts micro-batches by the training config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    pairs = (
        (
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
            config.optim.gradient_accumulation_steps,
            "optim.gradient_accumulation_steps",
            "gradient_accumulation_steps",
        ),
        ("ACCELERATE_GRADIENT_CLIPPING", config.optim.max_grad_norm, "optim.max_grad_norm", "gradient_clipping"),
    )
    for env, ours, name, key in pairs:
        theirs = os.environ.get(env, "auto")
        if theirs != "auto" and float(theirs) != float(ours):
            raise ValueError(
                f"the DeepSpeed launch config sets {key}: {theirs} but the training config's {name} is {ours}; "
                f"set deepspeed_config.{key} to {ours} in the accelerate config (or to auto)."
            )


def check_process_group(acc: Accelerator) -> None:
    """Refuse a launch whose processes did not join one group.

    ``accelerate launch --multi_gpu --num_processes 2`` (or a multi-GPU config) on a machine without
    GPUs starts two processes, but without ``ACCELERATE_USE_CPU=true`` accelerate sets each up as a
    single-process run: two independent trainings writing into one output folder.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"launched as {world} processes (WORLD_SIZE={world}) but accelerate set this one up as "
            f"{acc.num_processes} process(es) ({acc.distributed_type.value}): each would train alone into the "
            "same output_dir. Without GPUs, launch with ACCELERATE_USE_CPU=true (or `accelerate launch --cpu`); "
            "with GPUs, check that every process sees one."
        )
