"""Runs the frontend extension's node:test suite (web/tests/) and syntax-checks the entry file."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_test_suite_passes():
    result = subprocess.run([NODE, "--test", str(WEB / "tests")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_every_web_module_parses():
    # ComfyUI loads every *.js under web/ as an extension, so none may be broken.
    for path in sorted(WEB.rglob("*.js")):
        result = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_no_test_file_is_served_as_an_extension():
    # Test files import node:test, which a browser cannot load; they must not match ComfyUI's *.js glob.
    assert not list((WEB / "tests").rglob("*.js"))


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_js_plan_matches_python_on_a_sweep():
    """web/lib/video_plan.js and nodes/video_plan.py (the core's rules) agree beyond the table, line included."""
    from nodes.video_plan import plan_line, plan_video

    inputs = [(d / 100, fps, partial, overlap, None, (0, 12, 40)[d % 3]) for d in range(10, 4000, 37)
              for fps in (25, 30, 24, 29.97, 30000 / 1001, 12.5) for partial, overlap in ((113, 8), (81, 12), (49, 0))]
    script = ("import {planVideo, formatPlan} from " + json.dumps((WEB / "lib" / "video_plan.js").as_uri()) + ";"
              "const inputs = JSON.parse(process.argv[1]);"
              "console.log(JSON.stringify(inputs.map(a => { const p = planVideo(...a); return [p.frames, p.chunks, p.mostChunks, formatPlan(p)]; })));")
    result = subprocess.run([NODE, "--input-type=module", "-e", script, json.dumps(inputs)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    js = json.loads(result.stdout)
    for args, (frames, chunks, most, line) in zip(inputs, js, strict=True):
        plan = plan_video(*args)
        assert (frames, chunks, most) == (plan.frames, [list(c) for c in plan.chunks], plan.most_chunks), args
        assert line == plan_line(plan.frames, args[1], plan.latent_frames, len(plan.chunks), plan.most_chunks), args
    assert any("–" in line for *_, line in js)  # the sweep reaches ranges
