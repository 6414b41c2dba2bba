"""plan_video: the shared case table (also run by web/tests) and upstream's chunk loop replayed."""
import json
from pathlib import Path

import pytest

from nodes.video_plan import plan_video

CASES = json.loads((Path(__file__).resolve().parents[2] / "web" / "tests" / "video_plan_cases.json").read_text())


def _upstream_output_frames(video_length: int, partial: int, overlap: int) -> int:
    """infer_preview.py's while-loop, replayed on frame lists (length is all that matters)."""
    rnd = lambda n: int((n - 1) // 4 * 4) + 1 if video_length != 1 else 1  # noqa: E731
    partial = rnd(partial)
    init, last, video = 0, partial, None
    while init < video_length:
        if last >= video_length:
            partial = rnd(video_length - init)
        sample = list(range(partial))
        video = sample if init == 0 else video + sample[overlap:]
        if last >= video_length:
            break
        init += partial - overlap
        last = init + partial
    return len(video[:video_length])


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: f"{c['duration_s']}s-{c['fps']}fps-{c['partial']}-{c['overlap']}")
def test_table(case):
    plan = plan_video(case["duration_s"], case["fps"], case["partial"], case["overlap"], case.get("max_frames"))
    expect = case["expect"]
    assert plan.frames == expect["frames"] and plan.latent_frames == expect["latent_frames"]
    assert plan.partial == expect["partial"] and plan.output_frames == expect["output_frames"]
    assert [list(c) for c in plan.chunks] == expect["chunks"]
    assert plan.seconds == pytest.approx(plan.output_frames / case["fps"])


@pytest.mark.parametrize("case", CASES["errors"], ids=lambda c: c["match"])
def test_errors(case):
    with pytest.raises(ValueError, match=case["match"]):
        plan_video(case["duration_s"], case["fps"], case["partial"], case["overlap"])


@pytest.mark.parametrize("partial,overlap", [(113, 8), (81, 8), (49, 4), (65, 16), (33, 12)])
def test_matches_upstream_loop(partial, overlap):
    for raw in range(1, 700, 7):
        plan = plan_video(raw / 25, 25, partial, overlap)
        assert plan.frames % 4 == 1 and plan.frames <= raw
        assert plan.output_frames == _upstream_output_frames(plan.frames, partial, overlap), raw
        starts = [s for s, _ in plan.chunks]
        assert starts == sorted(starts) and all(n % 4 == 1 for _, n in plan.chunks)
