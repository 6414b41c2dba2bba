"""The command line finds argument and path problems before any model loads, and says which (issue 10).

Every test here runs ``generate --demo`` with one bad input: exit status 2, one line naming the
problem, no traceback, the model loader never called, nothing written.
"""

import os
import signal
import time

import pytest
from PIL import Image

from echomimic_core import __main__ as cli


def run(capsys, *args):
    rc = cli.main(["generate", "--demo", "--steps", "1", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_output_over_an_input_is_refused_and_the_input_kept(demo_cache, model_loads, tmp_path, capsys, wav):
    audio = wav(tmp_path / "voice.wav")
    before = audio.read_bytes()
    rc, err = run(capsys, "--audio", audio, "--out", audio)
    assert rc == 2 and "also an input of this run" in err and "voice.wav" in err
    assert audio.read_bytes() == before and not model_loads


@pytest.mark.parametrize(
    "out, message",
    [
        ("clip.gif", "found '.gif'"),
        ("folder", "is a folder"),
        ("afile.txt/clip.mp4", "is a file, so no folder can be made"),
    ],
)
def test_unusable_output_paths_are_refused_first(demo_cache, model_loads, tmp_path, capsys, out, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    rc, err = run(capsys, "--out", tmp_path / out)
    assert rc == 2 and message in err and not model_loads
    assert not (tmp_path / "clip.gif").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (unwritable even for root)")
def test_unwritable_output_folder_is_refused_first(demo_cache, model_loads, capsys):
    rc, err = run(capsys, "--out", "/proc/echomimic/clip.mp4")
    assert rc == 2 and "cannot write in /proc" in err and not model_loads


def test_nan_audio_is_refused_naming_the_file(demo_cache, model_loads, tmp_path, capsys, wav):
    import numpy as np

    samples = np.zeros(8000, np.float32)
    samples[10] = np.nan
    rc, err = run(capsys, "--audio", wav(tmp_path / "nan.wav", samples=samples), "--out", tmp_path / "o.mp4")
    assert rc == 2 and "nan.wav" in err and "NaN or infinite" in err and not model_loads


def test_keyframe_index_is_reported_as_given(demo_cache, model_loads, tmp_path, capsys, wav):
    key = tmp_path / "key.png"
    Image.new("RGB", (96, 96)).save(key)
    audio = wav(tmp_path / "v.wav", seconds=0.5)
    rc, err = run(
        capsys, "--audio", audio, "--task", "keyframes", "--keyframe", f"-500:{key}", "--out", tmp_path / "o.mp4"
    )
    assert rc == 2 and "keyframe index -500 lies outside the 12-frame video" in err and not model_loads
    rc, err = run(
        capsys, "--audio", audio, "--task", "keyframes", "--keyframe", f"x:{key}", "--out", tmp_path / "o.mp4"
    )
    assert rc == 2 and "expected INDEX:IMAGE" in err and not model_loads


def test_face_and_mouth_boxes_outside_the_picture_are_refused_first(demo_cache, model_loads, tmp_path, capsys, wav):
    import av
    import numpy as np

    audio = wav(tmp_path / "v.wav")
    rc, err = run(capsys, "--face-box", 10, 200, 10, 50, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "face box" in err and "bottom=200" in err and "96x96" in err and not model_loads

    video = tmp_path / "src.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    common = ("--audio", audio, "--task", "lipsync", "--source-video", video, "--out", tmp_path / "o.mp4")
    for box, shown in (((30, 20, 0, 64), "top=30, bottom=20"), ((0, 48, 60, 100), "right=100")):
        rc, err = run(capsys, *common, "--mouth-box", *box)
        assert rc == 2 and "mouth box" in err and shown in err and "48x64" in err and not model_loads


def test_huge_size_is_refused_with_a_memory_estimate(demo_cache, model_loads, tmp_path, capsys, monkeypatch):
    from echomimic_core import memory_plan

    # beyond the settings' bounds the parser refuses it; within them, the estimate against this machine
    with pytest.raises(SystemExit) as refused:
        run(capsys, "--width", 65536, "--height", 65536, "--out", tmp_path / "o.mp4")
    assert refused.value.code == 2 and "--width: must be in [32, 4096], got 65536" in capsys.readouterr().err
    monkeypatch.setattr(memory_plan, "physical_memory", lambda: memory_plan.GIB)
    rc, err = run(capsys, "--width", 4096, "--height", 4096, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "4096x4096" in err and "GiB of memory" in err and "this machine has 1.0 GiB" in err
    assert not model_loads


def test_block_swap_beyond_the_blocks_is_refused_first(demo_cache, model_loads, tmp_path, capsys):
    rc, err = run(capsys, "--block-swap", 99, "--out", tmp_path / "o.mp4")
    assert rc == 2 and "block swap 99" in err and "blocks" in err and not model_loads


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "generate_command", interrupted)
    rc = cli.main(["generate", "--demo", "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().startswith("interrupted") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_stops_like_ctrl_c(monkeypatch, tmp_path, capsys):
    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts the sleep
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(cli, "generate_command", terminated)
    rc = cli.main(["generate", "--demo", "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert rc == 143 and "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run
