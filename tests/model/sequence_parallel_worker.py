"""Under torchrun (gloo): the tiny transformers with their tokens split over the ranks, against one
process's forward on the same inputs. Rank 0 writes {case: relative max error} to argv[1]."""

import dataclasses
import json
import sys

import torch
import torch.distributed as dist
from conftest import random_inputs, random_model, tiny_config

from echomimic_core.model.rope import Riflex
from echomimic_core.model.sequence_parallel import SequenceShard


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    shard = SequenceShard()
    errors = {}
    for variant in ("preview", "flash"):
        torch.manual_seed(0)  # the same weights and inputs on every rank
        config = tiny_config(variant, dim=48, num_heads=6)  # 6 heads: 2 or 3 ranks
        model = random_model(config)
        x, t, cond = random_inputs(config)  # 3 latent frames: 2 ranks split them 2 + 1
        with torch.no_grad():
            ref = model(x, t, cond)
            errors[variant] = relative_error(model(x, t, cond, sequence=shard), ref)
            if variant == "preview":  # RIFLEx changes the frame frequencies: each rank's rows follow
                riflex = dataclasses.replace(cond, riflex=Riflex(2, L_test=3))
                errors["riflex"] = relative_error(model(x, t, riflex, sequence=shard), model(x, t, riflex))
                # no face gate: every token of a frame attends to the audio
                plain = dataclasses.replace(cond, face_gate=None)
                errors["no_gate"] = relative_error(model(x, t, plain, sequence=shard), model(x, t, plain))
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(errors, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
