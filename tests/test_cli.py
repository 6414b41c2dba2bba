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


def test_plan_flags_parse_with_generate_and_fix_the_plans_choice():
    """Every memory saver the plan can choose has a `generate` flag: the `flags:` line `plan` prints
    parses with generate's parser and, under --vram-budget, fixes exactly the plan's options."""
    import dataclasses
    import shlex

    from echomimic_core import memory_plan as mp

    every_saver = mp.Options(
        chunk=49,
        fp8=True,
        block_swap=4,
        batch_guidance=False,
        vae_tile=256,
        encoders_on_cpu=True,
        context_cache=False,
        teacache_offload=True,
    )
    assert {f.name for f in dataclasses.fields(mp.Options)} == set(dataclasses.asdict(every_saver))
    flags = shlex.split(" ".join(cli._plan_flags(every_saver)))
    args = cli.build_parser().parse_args(["generate", "--out", "x.mp4", *flags])
    assert cli._hand_set_plan_options(args, cli._settings_from(args, "flash")) == dataclasses.asdict(every_saver)
    load, encoder_device = cli._hand_set_placement(args)
    assert load == {"storage_dtype": "float8_e4m3fn", "block_swap": 4, "encoders_on_cpu": True}
    assert encoder_device == "cpu"

    # the defaults print nothing but the chunk length; generate's defaults are the plan's then
    defaults = mp.Options(chunk=81)
    assert cli._plan_flags(defaults) == ["--partial-video-length 81"]
    args = cli.build_parser().parse_args(["generate", "--out", "x.mp4", "--partial-video-length", "81"])
    settings = cli._settings_from(args, "flash")
    assert cli._hand_set_plan_options(args, settings) == {"chunk": 81}
    assert cli._hand_set_placement(args) == ({"storage_dtype": None, "block_swap": 0}, None)
    assert (settings.batch_guidance, settings.context_cache, settings.teacache_offload, settings.vae_tile_size) == (
        defaults.batch_guidance,
        defaults.context_cache,
        defaults.teacache_offload,
        defaults.vae_tile,
    )


def test_encoders_on_cpu_by_hand_and_under_a_budget(demo_cache, tmp_path, capsys, caplog, monkeypatch):
    """--encoders-on-cpu: the encoders load for the CPU (float32) and run there; under --vram-budget
    the plan keeps it (and --no-encoders-on-cpu keeps them on the device)."""
    import logging

    from echomimic_core import model_files, streaming

    seen = {}
    load_models = model_files.load_models

    def recording_load(files, **kwargs):
        seen["load"] = kwargs
        return load_models(files, **kwargs)

    def stop(*args, **kwargs):
        seen["encoder_device"] = kwargs["encoder_device"]
        raise ValueError("stopped before rendering")

    monkeypatch.setattr(model_files, "load_models", recording_load)
    monkeypatch.setattr(streaming, "generate_to_file", stop)
    wav = tmp_path / "voice.wav"
    write_wav(wav, 0.3)
    base = ["generate", "--demo", "--audio", str(wav), "--out", str(tmp_path / "x.mp4"), "--steps", "1"]
    base += ["--partial-video-length", "5", "--overlap-video-length", "2"]

    assert cli.main([*base, "--encoders-on-cpu"]) == 2
    assert seen["load"]["encoders_on_cpu"] is True and seen["encoder_device"] == "cpu"
    assert cli.main(base) == 2
    assert "encoders_on_cpu" not in seen["load"] and seen["encoder_device"] is None

    with caplog.at_level(logging.INFO, logger="echomimic_core"):
        assert cli.main([*base, "--vram-budget", "64", "--encoders-on-cpu"]) == 2
    assert "memory plan chose: chunks of 5 frames, encoders on the CPU" in caplog.text
    assert seen["load"]["encoders_on_cpu"] is True and seen["encoder_device"] == "cpu"
    # 8 GB fits only with the encoders on the CPU (umT5 alone is 11 GB): kept on the device by hand,
    # nothing fits, and the smallest plan named keeps them there
    seen.clear()
    assert cli.main([*base, "--vram-budget", "8"]) == 2
    assert seen["encoder_device"] == "cpu"
    capsys.readouterr()
    assert cli.main([*base, "--vram-budget", "8", "--no-encoders-on-cpu"]) == 2
    err = capsys.readouterr().err
    assert "nothing fits --vram-budget 8.0 GiB" in err and "encoders on the CPU" not in err
