"""plan_video: the shared case table (also run by web/tests) and the invariants users rely on."""

import json
from pathlib import Path

import pytest

from nodes.video_plan import plan_line, plan_video

CASES = json.loads((Path(__file__).resolve().parents[2] / "web" / "tests" / "video_plan_cases.json").read_text())


@pytest.mark.parametrize(
    "case", CASES["cases"], ids=lambda c: f"{c['duration_s']}s-{c['fps']}fps-{c['partial']}-{c['overlap']}"
)
def test_table(case):
    plan = plan_video(
        case["duration_s"],
        case["fps"],
        case["partial"],
        case["overlap"],
        case.get("max_frames"),
        case.get("seam_search", 0),
    )
    expect = case["expect"]
    assert plan.most_chunks == expect.get("most_chunks", len(expect["chunks"]))
    assert (plan.frames, plan.latent_frames, plan.partial) == (
        expect["frames"],
        expect["latent_frames"],
        expect["partial"],
    )
    assert [list(c) for c in plan.chunks] == expect["chunks"]
    assert plan.seconds == pytest.approx(plan.frames / case["fps"])
    line = plan_line(plan.frames, case["fps"], plan.latent_frames, len(plan.chunks), plan.most_chunks)
    assert line == expect["line"]  # web/tests/video_plan.test.mjs holds formatPlan to the same text


@pytest.mark.parametrize("case", CASES["errors"], ids=lambda c: c["match"])
def test_errors(case):
    with pytest.raises(ValueError, match=case["match"].replace("[", r"\[")):
        plan_video(case["duration_s"], case["fps"], case["partial"], case["overlap"])


@pytest.mark.parametrize("partial,overlap", [(113, 8), (81, 8), (49, 4), (65, 16), (33, 12)])
def test_chunks_cover_the_clip(partial, overlap):
    for raw in range(1, 700, 7):
        plan = plan_video(raw / 25, 25, partial, overlap)
        assert plan.frames == raw  # the whole audio, as pipeline.output_frame_count
        start, length, _ = plan.chunks[-1]
        assert plan.frames <= start + length < plan.frames + 4  # the whole clip, at most 3 trimmed
        for (s0, n0, _), (s1, _, shared) in zip(plan.chunks, plan.chunks[1:]):
            assert s0 + n0 - s1 == shared == overlap  # consecutive chunks share `overlap` frames
        assert all(n % 4 == 1 for _, n, _ in plan.chunks)


def test_plan_line_in_sliding_mode_has_no_chunk_count():
    assert plan_line(125, 25, 32, None) == "125 frames · 5.00 s · 32 latent · sliding windows"
    assert plan_line(125, 25, 32, None, 3) == "125 frames · 5.00 s · 32 latent · sliding windows"
    assert plan_line(75, 25, 20, 1) == "75 frames · 3.00 s · 20 latent · 1 chunk"


def test_plan_line_gives_the_range_seam_search_may_render():
    # the demo clip: 2 chunks at fixed seams, up to 3 when the seams move into pauses; the run's line
    # (the sampler's real plan) has one count
    plan = plan_video(2.4, 25, 33, 4, seam_search_frames=12)
    assert (len(plan.chunks), plan.most_chunks) == (2, 3)
    assert plan_line(60, 25, 16, 2, plan.most_chunks) == "60 frames · 2.40 s · 16 latent · 2–3 chunks"
    assert plan_line(60, 25, 16, 3) == "60 frames · 2.40 s · 16 latent · 3 chunks"
    assert plan_video(2.4, 25, 33, 4).most_chunks == 2  # no search: the fixed seams
