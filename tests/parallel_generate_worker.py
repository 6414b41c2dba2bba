"""Under torchrun (gloo): generate on the tiny demo models with the transformer's forwards shared
over the ranks, once per ``--parallel`` layout given, against one process's video. Rank 0 runs the
single-process generation too and writes {layout: max pixel difference (0..1 scale)} to argv[2].

argv: models_dir out.json layout [layout ...], each layout as the CLI takes it ("cfg", "cfg,sequence").
"""

import json
import sys

import torch
import torch.distributed as dist

from echomimic_core import pipeline
from echomimic_core.demo import demo_face_box, demo_inputs
from echomimic_core.model_files import find_model_files, load_models
from echomimic_core.parallel import Parallel, ParallelSpec
from echomimic_core.settings import GenerationSettings

# two chunks of 4 steps, TeaCache skipping some of them: every path a long preview run takes. No
# colour matching: its lookup table is a step function of the frames, so float rounding (batched
# vs one-by-one guidance passes differ by ~1e-5 already in one process) could move a step.
SETTINGS = dict(
    steps=4,
    partial_video_length=13,
    overlap_video_length=4,
    teacache_threshold=0.05,
    teacache_skip_start_steps=1,
    face_box=demo_face_box(),
    color_match=False,
)


def generate(models, parallel=None) -> torch.Tensor:
    image, audio, sr = demo_inputs(seconds=0.8)
    settings = GenerationSettings.for_variant(models.variant, **SETTINGS)
    return pipeline.generate(models, image, audio, sr, "a person talks", settings, parallel=parallel).frames


def main(models_dir: str, out_path: str, *layouts: str) -> None:
    dist.init_process_group("gloo")
    models = load_models(find_model_files(models_dir), dtype="float32")
    single = generate(models) if dist.get_rank() == 0 else None
    differences = {}
    for layout in layouts:
        spec = ParallelSpec.parse(layout, dist.get_world_size(), branches=3)
        frames = generate(models, Parallel(spec))
        if single is not None:
            differences[layout] = (frames - single).abs().max().item()
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(differences, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
