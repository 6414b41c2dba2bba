"""One generation over several processes (``torchrun``): guidance branches and/or tokens split over ranks.

Two splits, which combine (N = cfg x sequence ranks):

* ``cfg``: the guidance branches of a step (preview: uncond, drop_audio, cond; flash: cond,
  drop_audio) run on different ranks, the branches a rank holds batched in one forward; every rank
  receives every branch's output and combines them (the combination is a few element-wise ops, and
  every rank needs the guided velocity for its next step anyway).
* ``sequence``: each forward's tokens are split over ranks by latent frames, self-attention through
  all-to-alls over the heads (``model.sequence_parallel``).

Rank r holds cfg slot ``r // sequence`` and sequence slot ``r % sequence``: the ranks that split one
forward are neighbours (one node, the fastest links for the all-to-alls). Every rank runs the same
pipeline on the same inputs (same seed, same noise); only the transformer's forwards are shared out,
and since every rank receives the same outputs, the latents stay identical on all of them. The
guidance and sampling code is the single-process one: this module only swaps the function that runs
a step's branches (``sampling.sampler.run_branches``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .model.sequence_parallel import SequenceShard
from .sampling import sampler

log = logging.getLogger(__name__)

PARALLEL_MODES = ("cfg", "sequence")


def branch_owners(branches: int, ranks: int) -> list[int]:
    """The cfg slot running each of ``branches`` branches: contiguous runs, the first slots one more.

    3 branches on 2 ranks: [0, 0, 1] (rank 0 batches uncond + drop_audio); a step without CFG
    (1 branch) runs on slot 0 while the others wait."""
    per = [branches // ranks + (r < branches % ranks) for r in range(ranks)]
    return [slot for slot, n in enumerate(per) for _ in range(n)]


@dataclass(frozen=True)
class ParallelSpec:
    """How many ranks split the guidance branches (cfg) and each forward's tokens (sequence)."""

    cfg: int = 1
    sequence: int = 1

    @property
    def world_size(self) -> int:
        return self.cfg * self.sequence

    @classmethod
    def parse(cls, text: str, world_size: int, branches: int) -> ParallelSpec:
        """``cfg``, ``sequence`` or ``cfg,sequence``, each optionally with its rank count (``cfg=2``).

        world_size: the processes launched; branches: the most guidance branches a step of this
        model runs (preview 3, flash 2, 1 without CFG). Unnumbered modes share out the processes:
        ``cfg,sequence`` gives cfg the largest count <= branches that divides the world size.
        """
        modes: dict[str, int | None] = {}
        for item in (part.strip() for part in text.split(",")):
            name, sep, count = item.partition("=")
            if name not in PARALLEL_MODES or name in modes:
                raise ValueError(
                    f"--parallel {text!r}: expected a comma-separated list of {'/'.join(PARALLEL_MODES)}, "
                    f"each at most once and optionally with a rank count (e.g. cfg,sequence or cfg=2,sequence=2)."
                )
            try:
                modes[name] = int(count) if sep else None
            except ValueError:
                raise ValueError(f"--parallel {text!r}: {count!r} is not a number of ranks.") from None
            if modes[name] is not None and modes[name] < 1:
                raise ValueError(f"--parallel {text!r}: the rank count of {name} must be at least 1.")
        # a mode not asked for has 1 rank; None = asked for without a count
        cfg, sequence = modes.get("cfg", 1), modes.get("sequence", 1)
        if cfg is None and sequence is None:
            cfg = max(d for d in range(1, min(branches, world_size) + 1) if world_size % d == 0)
        if cfg is None:
            cfg = max(1, world_size // sequence)
        if sequence is None:
            sequence = max(1, world_size // cfg)
        spec = cls(cfg, sequence)
        if spec.world_size != world_size:
            raise ValueError(
                f"--parallel {text!r} makes {spec.cfg} x {spec.sequence} = {spec.world_size} ranks, but "
                f"{world_size} processes were launched; launch cfg x sequence processes "
                f"(torchrun --nproc_per_node {spec.world_size}) or change the counts."
            )
        if spec.cfg > branches:
            raise ValueError(
                f"--parallel {text!r}: {spec.cfg} cfg ranks, but a step of this model runs {branches} guidance "
                f"branch(es); use at most {branches} cfg ranks (give the other processes to 'sequence')."
            )
        return spec


class Parallel:
    """This process's place in a parallel generation; its ``run_branches`` replaces the sampler's.

    Needs an initialised default process group of ``spec.world_size`` ranks. Every rank must build
    its ``Parallel`` (group creation is collective).
    """

    def __init__(self, spec: ParallelSpec):
        world = dist.get_world_size()
        if spec.world_size != world:
            raise ValueError(f"{spec} needs {spec.world_size} ranks, the process group has {world}.")
        self.spec = spec
        self.rank = dist.get_rank()
        self.cfg_slot, self.sequence_slot = divmod(self.rank, spec.sequence)
        self.cfg_group = self.sequence_group = None
        self.cfg_ranks = [self.rank]
        # every rank creates every group, in the same order (new_group is collective)
        if spec.sequence > 1:
            for slot in range(spec.cfg):
                group = dist.new_group([slot * spec.sequence + s for s in range(spec.sequence)])
                if slot == self.cfg_slot:
                    self.sequence_group = group
        if spec.cfg > 1:
            for s in range(spec.sequence):
                ranks = [slot * spec.sequence + s for slot in range(spec.cfg)]
                group = dist.new_group(ranks)
                if s == self.sequence_slot:
                    self.cfg_group, self.cfg_ranks = group, ranks
        self.sequence = SequenceShard(self.sequence_group) if spec.sequence > 1 else None

    def check_model(self, num_heads: int) -> None:
        if self.sequence is not None:
            self.sequence.check_heads(num_heads)

    def run_branches(
        self,
        model,
        latents: torch.Tensor,
        t: torch.Tensor,
        conds: list,
        batched: bool,
        cache=None,
        names: list[str] | None = None,
        *,
        context_cache=None,
    ) -> list[torch.Tensor]:
        """``sampler.run_branches`` over the ranks: this rank runs its cfg slot's branches (sharing
        each forward's tokens with its sequence group), then every rank receives every output."""
        names = names or [str(i) for i in range(len(conds))]
        owners = branch_owners(len(conds), self.spec.cfg)
        mine = [i for i, slot in enumerate(owners) if slot == self.cfg_slot]
        local = []
        if mine:
            local = sampler.run_branches(
                model,
                latents,
                t,
                [conds[i] for i in mine],
                batched,
                cache,
                [names[i] for i in mine],
                sequence=self.sequence,
                context_cache=context_cache,
            )
        if self.cfg_group is None:
            return local
        outputs = []
        for i, slot in enumerate(owners):
            if slot == self.cfg_slot:
                out = local[mine.index(i)].contiguous()
            else:  # a prediction has the latents' shape; the sampler keeps them in float32
                out = torch.empty(latents.shape, dtype=torch.float32, device=latents.device)
            dist.broadcast(out, src=self.cfg_ranks[slot], group=self.cfg_group)
            outputs.append(out)
        return outputs


def launch_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) set by torchrun / accelerate launch, or None outside them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def init_process_group(device: str | None) -> torch.device:
    """Join the launcher's process group; returns this rank's device (``cuda:LOCAL_RANK`` on GPUs).

    NCCL between GPUs, gloo on CPUs. ``device`` "cuda" (or None with CUDA present) means this
    rank's own GPU; an explicit "cuda:K" is kept (a launcher that sets CUDA_VISIBLE_DEVICES per rank).
    """
    env = launch_environment()
    if env is None:
        raise ValueError(
            "--parallel needs one process per rank: launch with torchrun, e.g. "
            "torchrun --nproc_per_node 2 -m echomimic_core generate ... --parallel cfg "
            "(or accelerate launch --num_processes 2 -m echomimic_core generate ...)."
        )
    _, _, local_rank = env
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev
