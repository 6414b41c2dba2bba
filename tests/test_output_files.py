"""Output path rules and the cleanup of partial files that killed writers left behind."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from echomimic_core import output_files as of
from echomimic_core.media import write_video


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def frames(n=3):
    return np.zeros((n, 32, 32, 3), np.uint8)


def test_folder_device_pipe_and_path_under_a_file_are_refused(tmp_path):
    with pytest.raises(of.OutputPathError, match="is a folder"):
        of.check_output_path(tmp_path)
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(of.OutputPathError, match=r"notes\.txt is a file, so no folder can be made"):
        of.check_output_path(afile / "sub" / "clip.mp4")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(of.OutputPathError, match="a named pipe"):
        of.check_output_path(fifo)
    with pytest.raises(of.OutputPathError, match="a device"):
        of.check_output_path("/dev/null")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (unwritable even for root)")
def test_unwritable_folder_is_refused():
    with pytest.raises(of.OutputPathError, match="cannot write in /proc"):
        of.check_output_path("/proc/echomimic-test/clip.mp4")


def test_extension_must_be_a_container_we_write(tmp_path):
    for name in ("clip.gif", "clip.webm", "clip"):
        with pytest.raises(of.OutputPathError, match=r"\.mp4, \.m4v, \.mov, \.mkv") as e:
            of.check_output_path(tmp_path / name)
        assert "clip.mp4" in str(e.value)
    assert of.check_output_path(tmp_path / "CLIP.MKV") == tmp_path / "CLIP.MKV"


def test_an_input_is_never_the_output(tmp_path):
    image = tmp_path / "face.mp4"
    image.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(of.OutputPathError, match="also an input of this run"):
        of.check_output_path(tmp_path / "sub" / ".." / "face.mp4", inputs=[None, image])
    assert image.read_bytes() == b"x"


def test_replacing_is_announced(tmp_path, caplog):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old")
    with caplog.at_level(logging.WARNING, logger="echomimic_core.output_files"):
        of.check_output_path(out)
    assert "exists; it will be replaced" in caplog.text


def test_write_video_writes_the_container_its_extension_names(tmp_path):
    import av

    for name, fmt in (("a.mov", "mov"), ("a.mkv", "matroska"), ("a.mp4", "mp4")):
        write_video(tmp_path / name, frames(), 25)
        with av.open(str(tmp_path / name)) as c:
            assert fmt in c.format.name.split(",")
    with pytest.raises(of.OutputPathError, match="found '.gif'"):
        write_video(tmp_path / "a.gif", frames(), 25)
    assert not (tmp_path / "a.gif").exists()


def test_stale_partials_of_dead_processes_are_cleaned_on_the_next_write(tmp_path):
    stale = of.partial_path(tmp_path / "clip.v2.mp4", pid=dead_pid())
    live = of.partial_path(tmp_path / "other.mp4", pid=os.getppid())  # a running process
    unrelated = tmp_path / ".notes.partial.txt"
    parts = tmp_path / "long.mp4.parts"  # resumable runs' parts are not partial files
    parts.mkdir()
    (parts / "part-0001.mp4").write_bytes(b"p")
    for f in (stale, live, unrelated):
        f.write_bytes(b"half")
    assert stale.name.startswith(".clip.v2.partial") and stale.suffix == ".mp4"
    write_video(tmp_path / "new.mp4", frames(), 25)
    assert not stale.exists()
    assert live.exists() and unrelated.exists() and (parts / "part-0001.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([live.name, unrelated.name])
