"""The command line: the demo writes a playable mp4 whose duration matches the audio."""

import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from echomimic_core import __main__ as cli
from echomimic_core.demo import DEMO_VERSION


@pytest.fixture
def demo_cache(monkeypatch, tmp_path, demo_model_files):
    # reuse the session's demo files instead of writing them under ~/.cache
    cache = tmp_path / "cache"
    shutil.copytree(demo_model_files.transformer.parents[1], cache / f"v{DEMO_VERSION}")
    monkeypatch.setattr(cli, "DEMO_CACHE", cache)


def write_wav(path, seconds, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_demo_writes_mp4_matching_the_audio(demo_cache, tmp_path, capsys):
    wav = tmp_path / "voice.wav"
    write_wav(wav, 0.7)
    out = tmp_path / "out" / "clip.mp4"
    rc = cli.main(
        [
            "generate",
            "--demo",
            "--audio",
            str(wav),
            "--out",
            str(out),
            "--steps",
            "1",
            "--partial-video-length",
            "9",
            "--overlap-video-length",
            "2",
        ]
    )
    assert rc == 0 and out.is_file()
    assert "17 frames" in capsys.readouterr().out  # floor(0.7 s * 25 fps)
    with av.open(str(out)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video))
        assert frames == 17
        assert audio.codec_context.name == "aac"
        audio_seconds = float(audio.duration * audio.time_base)
    assert abs(audio_seconds - 17 / 25) < 0.05
    assert not list(out.parent.glob("*.partial*")) and not list(out.parent.glob(".*tmp*"))


def test_user_errors_are_one_line(demo_cache, tmp_path, capsys):
    rc = cli.main(["generate", "--demo", "--out", str(tmp_path / "x.mp4"), "--width", "64"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "width and height go together" in err and "Traceback" not in err
    with pytest.raises(SystemExit, match="--models"):
        cli.main(["generate", "--audio", "a.wav", "--out", str(tmp_path / "x.mp4")])
    assert not (tmp_path / "x.mp4").exists()


def test_task_choices_are_the_cores_and_help_needs_no_torch():
    from echomimic_core.settings import TASKS

    generate = cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    assert tuple(next(a for a in generate._actions if a.dest == "task").choices) == TASKS
    # the parser reads only torch-free modules, so `--help` answers at once
    code = "import sys; from echomimic_core.__main__ import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_negative_keyframe_index_and_sliding_plan_line(demo_cache, tmp_path, capsys):
    # `--keyframe -1:x.png` as the help shows it: argparse alone takes "-1:x.png" for an option
    from PIL import Image

    wav, last = tmp_path / "voice.wav", tmp_path / "last.png"
    write_wav(wav, 0.5)
    Image.new("RGB", (96, 96), (200, 30, 30)).save(last)
    rc = cli.main(
        [
            "generate",
            "--demo",
            "--audio",
            str(wav),
            "--out",
            str(tmp_path / "kf.mp4"),
            "--steps",
            "1",
            "--task",
            "keyframes",
            "--keyframe",
            "-1:" + str(last),
            "--long-video-mode",
            "sliding",
            "--partial-video-length",
            "9",
            "--overlap-video-length",
            "1",
        ]
    )
    assert rc == 0
    line = capsys.readouterr().out
    assert "12 frames" in line and "sliding windows" in line and "chunk(s)" not in line


@pytest.mark.slow
def test_block_swap_runs_from_the_command_line(demo_cache, tmp_path, capsys):
    # generate() is inference: block swap refuses to run with autograd on, and the CLI calls
    # generate() directly (the sampler node had its own no_grad)
    wav = tmp_path / "voice.wav"
    write_wav(wav, 0.3)
    rc = cli.main(
        [
            "generate",
            "--demo",
            "--audio",
            str(wav),
            "--out",
            str(tmp_path / "bs.mp4"),
            "--steps",
            "1",
            "--block-swap",
            "1",
        ]
    )
    assert rc == 0 and "7 frames" in capsys.readouterr().out


def test_unavailable_attention_backend_is_one_line(demo_cache, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else real(name, *a))
    rc = cli.main(["generate", "--demo", "--attention", "xformers", "--out", str(tmp_path / "x.mp4")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'xformers'" in err and "sdpa" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_killed_cli_run_resumes_where_it_stopped(tmp_path, demo_model_files):
    """SIGKILL mid-run (no cleanup at all), then the same command: it resumes and finishes."""
    import json
    import os
    import signal
    import time

    cache = tmp_path / "xdg"
    shutil.copytree(
        demo_model_files.transformer.parents[1], cache / "echomimic-comfy" / "demo-models" / f"v{DEMO_VERSION}"
    )
    wav = tmp_path / "voice.wav"
    write_wav(wav, 1.6)  # 40 frames: 4 chunks of 13 overlapping by 4
    out, report = tmp_path / "clip.mp4", tmp_path / "drift.json"
    cmd = [sys.executable, "-m", "echomimic_core", "generate", "--demo", "--audio", str(wav), "--out", str(out)]
    cmd += ["--partial-video-length", "13", "--seam-search-frames", "0", "--width", "32", "--height", "32"]
    cmd += ["--steps", "1", "--report", str(report)]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    state = tmp_path / "clip.mp4.parts" / "state.safetensors"
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not state.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()[1].decode()[-2000:]  # still running: kill it mid-run
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not out.exists() and (tmp_path / "clip.mp4.parts" / "chunk_00000.mp4").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at chunk" in done.stderr
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 40
    assert len(json.loads(report.read_text())["chunks"]) == 4  # chunks of both runs in one report
    assert not (tmp_path / "clip.mp4.parts").exists()


def test_vram_budget_plans_the_run_keeping_what_the_user_set(demo_cache, tmp_path, capsys, caplog):
    """--vram-budget: the plan is logged and applied (the user's own chunk length kept); a budget
    nothing fits is a one-line error before any model loads."""
    import logging

    wav = tmp_path / "voice.wav"
    write_wav(wav, 0.3)
    base = ["generate", "--demo", "--audio", str(wav), "--steps", "1", "--partial-video-length", "5"]
    base += ["--overlap-video-length", "2"]
    with caplog.at_level(logging.INFO, logger="echomimic_core"):
        rc = cli.main([*base, "--out", str(tmp_path / "fit.mp4"), "--vram-budget", "64"])
    assert rc == 0 and "7 frames" in capsys.readouterr().out
    assert "memory plan chose: chunks of 5 frames" in caplog.text
    rc = cli.main([*base, "--out", str(tmp_path / "no.mp4"), "--vram-budget", "0.2"])
    err = capsys.readouterr().err
    assert rc == 2 and "nothing fits --vram-budget 0.2 GiB: the smallest plan needs" in err
    assert not (tmp_path / "no.mp4").exists()
