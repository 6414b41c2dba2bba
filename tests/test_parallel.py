"""Generation shared over processes: layouts, branch assignment, and videos equal to one process's
(torchrun on gloo, the tiny demo models)."""

import json
import shutil
from pathlib import Path

import pytest

from echomimic_core import __main__ as cli
from echomimic_core.demo import DEMO_VERSION
from echomimic_core.parallel import ParallelSpec, branch_owners

WORKER = Path(__file__).with_name("parallel_generate_worker.py")
ONE_PIXEL_LEVEL = 1 / 255


@pytest.mark.parametrize(
    "text,world,branches,expected",
    [
        ("cfg", 2, 3, (2, 1)),
        ("cfg", 3, 3, (3, 1)),
        ("sequence", 4, 3, (1, 4)),
        ("cfg,sequence", 4, 3, (2, 2)),  # preview's 3 branches do not divide 4: 2 x 2
        ("cfg,sequence", 6, 3, (3, 2)),
        ("sequence, cfg", 8, 2, (2, 4)),  # flash: 2 branches
        ("cfg=1,sequence", 2, 3, (1, 2)),
        ("cfg,sequence=3", 6, 3, (2, 3)),
    ],
)
def test_layouts(text, world, branches, expected):
    spec = ParallelSpec.parse(text, world, branches)
    assert (spec.cfg, spec.sequence) == expected


@pytest.mark.parametrize(
    "text,world,branches,message",
    [
        ("cfg", 4, 3, "4 cfg ranks, but a step of this model runs 3 guidance branch(es)"),
        ("cfg", 2, 1, "runs 1 guidance branch(es)"),  # guidance off
        ("cfg=2", 4, 3, "makes 2 x 1 = 2 ranks, but 4 processes were launched"),
        ("tensor", 2, 3, "expected a comma-separated list of cfg/sequence"),
        ("cfg,cfg", 2, 3, "each at most once"),
        ("cfg=two", 2, 3, "'two' is not a number of ranks"),
        ("sequence=0", 2, 3, "must be at least 1"),
    ],
)
def test_layout_errors_say_what_to_do(text, world, branches, message):
    with pytest.raises(ValueError) as e:
        ParallelSpec.parse(text, world, branches)
    assert message in str(e.value)


def test_branches_are_shared_out_contiguously():
    assert branch_owners(3, 2) == [0, 0, 1]  # rank 0 batches uncond + drop_audio
    assert branch_owners(3, 3) == [0, 1, 2]
    assert branch_owners(2, 2) == [0, 1]  # flash
    assert branch_owners(1, 2) == [0]  # a step past cfg_skip_ratio: rank 1 waits


def test_parallel_outside_a_launcher_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    rc = cli.main(["generate", "--demo", "--parallel", "cfg", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "torchrun --nproc_per_node 2 -m echomimic_core generate" in err
    assert not (tmp_path / "x.mp4").exists()


def _differences(torchrun, tmp_path, models_dir, ranks, *layouts):
    out = tmp_path / "differences.json"
    torchrun(ranks, WORKER, models_dir, out, *layouts)
    return json.loads(out.read_text())


def test_two_ranks_split_guidance_or_tokens_and_match_one_process(torchrun, tmp_path, demo_model_files):
    # cfg over 2 ranks: rank 0 batches uncond + drop_audio, rank 1 runs cond
    differences = _differences(torchrun, tmp_path, demo_model_files.transformer.parents[1], 2, "cfg", "sequence")
    assert set(differences) == {"cfg", "sequence"}
    assert max(differences.values()) <= ONE_PIXEL_LEVEL, differences


@pytest.mark.slow
def test_three_ranks_one_branch_each(torchrun, tmp_path, demo_model_files):
    differences = _differences(torchrun, tmp_path, demo_model_files.transformer.parents[1], 3, "cfg")
    assert differences["cfg"] <= ONE_PIXEL_LEVEL, differences


@pytest.mark.slow
def test_guidance_and_sequence_split_combine(torchrun, tmp_path, demo_model_files):
    differences = _differences(torchrun, tmp_path, demo_model_files.transformer.parents[1], 4, "cfg,sequence")
    assert differences["cfg,sequence"] <= ONE_PIXEL_LEVEL, differences


@pytest.mark.slow
def test_command_line_under_torchrun_writes_the_single_process_video(torchrun, tmp_path, demo_model_files):
    """Rank 0 alone writes, and with one forward per branch on both sides (no batching) the mp4 is
    the single process's byte for byte."""
    cache = tmp_path / "cache"
    shutil.copytree(
        demo_model_files.transformer.parents[1], cache / "echomimic-comfy" / "demo-models" / f"v{DEMO_VERSION}"
    )
    args = ["--demo", "--device", "cpu", "--no-batch-guidance", "--max-frames", "17", "--partial-video-length", "13"]
    single, shared = tmp_path / "single" / "video.mp4", tmp_path / "shared" / "video.mp4"
    env = {"XDG_CACHE_HOME": str(cache)}
    torchrun(1, "-m", "echomimic_core", "generate", *args, "--out", single, env=env)
    done = torchrun(2, "-m", "echomimic_core", "generate", *args, "--out", shared, "--parallel", "cfg", env=env)
    assert done.stdout.count("wrote ") == 1
    assert [p.name for p in shared.parent.iterdir()] == ["video.mp4"]
    assert shared.read_bytes() == single.read_bytes()
