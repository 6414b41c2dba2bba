"""Where a video may be written: the output path rules, and the partial files of unfinished writes.

A video is written to ``.NAME.partialPID.EXT`` beside its destination and renamed into place when
complete (``media.write_video``), so the destination never holds half a file. A process killed
mid-write (SIGKILL, power loss) leaves its partial file behind; :func:`clean_stale_partials`
removes those of processes that no longer exist the next time a video is written into the folder.
Resumable runs keep their parts in an ``OUT.mp4.parts/`` folder, which is never touched here.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# extension -> the container written under it (FFmpeg's muxer name); each holds H.264 + AAC
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial(?P<pid>\d+)(?P<suffix>\.[^./]+)$")


class OutputPathError(ValueError):
    """An output path a video cannot (or must not) be written to."""


def container_for(path: str | Path) -> str:
    """The container format written under ``path``'s extension (``.mp4`` -> ``"mp4"``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINERS:
        found = f"{suffix!r}" if suffix else "no extension"
        raise OutputPathError(
            f"{path}: videos are written as {', '.join(CONTAINERS)} (H.264 + AAC), found {found}; "
            f"name the output e.g. {Path(path).stem or 'clip'}.mp4."
        )
    return CONTAINERS[suffix]


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe_writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else why not (a real attempt: permission
    bits say nothing on a read-only mount, under root, or with ACLs)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".echomimic-write-test"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def check_output_path(
    path: str | Path, inputs: Iterable[str | Path | None] = (), announce_replace: bool = True
) -> Path:
    """Check that a video can be written at ``path`` before any work is done; returns the path.

    Refused, with the reason: a folder, a device or named pipe, a path below a file, a folder that
    cannot be written, an extension whose container is not written (see :data:`CONTAINERS`), and
    any of ``inputs`` (writing the video there would destroy it). An existing file is replaced:
    ``announce_replace`` logs that it will be.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name, e.g. {path / 'clip.mp4'}.")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{path}: is not a regular file ({_kind(path)}); give the path of a video file to write.")
    for source in inputs:
        if source is not None and Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise OutputPathError(
                f"{path}: is also an input of this run ({source}); writing the video there would destroy it. "
                "Choose another output name."
            )
    container_for(path)
    parent = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if not parent.is_dir():
        raise OutputPathError(
            f"{path}: {parent} is a file, so no folder can be made there; choose an output path in a folder."
        )
    problem = _probe_writable(parent)
    if problem:
        raise OutputPathError(f"{path}: cannot write in {parent} ({problem}); choose a folder you can write to.")
    if announce_replace and path.exists():
        log.warning("%s exists; it will be replaced when the new video is written", path)
    return path


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file or folder"


def partial_path(path: str | Path, pid: int | None = None) -> Path:
    """Where ``path`` is written before it is complete: ``.NAME.partialPID.EXT`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{os.getpid() if pid is None else pid}{path.suffix or '.mp4'}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:  # not a PID this system can have
        return False
    return True


def clean_stale_partials(folder: str | Path) -> list[Path]:
    """Delete the partial files in ``folder`` left by processes that no longer run; returns them.

    Only plain files named as :func:`partial_path` names them are considered; a partial file of a
    running process (this one included) is kept, it is being written.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _PARTIAL.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink() or _alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
        except OSError as e:
            log.warning("could not remove the stale partial file %s: %s", entry, e)
            continue
        log.info("removed %s, left by an interrupted write (process %s)", entry, match["pid"])
        removed.append(entry)
    return removed
