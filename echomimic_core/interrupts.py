"""Ctrl-C and SIGTERM for the command lines: one way to stop, whichever signal asked.

``python -m echomimic_core generate`` stops at once (the partial output file is removed on the way
out); training finishes its step and saves a checkpoint first (:class:`StopRequest`). Both exit
with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM) after a one-line message.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message or f"interrupted ({signal.Signals(signum).name})")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def exit_code(error: KeyboardInterrupt) -> int:
    """130 for a plain Ctrl-C, 128 + N for :class:`Interrupted` by signal N."""
    return error.exit_code if isinstance(error, Interrupted) else 128 + int(signal.SIGINT)


def _installable() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_immediately():
    """SIGTERM raises :class:`Interrupted` where the program is, as Ctrl-C raises KeyboardInterrupt,
    so ``finally`` blocks (partial files) run on either. Outside the main thread: no change."""
    if not _installable():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequest:
    """SIGINT/SIGTERM ask to stop at the next safe point instead of raising where the program is;
    a second signal stops at once (:class:`Interrupted`). ``with StopRequest() as stop: ...
    if stop.signum: ...``."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, "interrupted again: stopping without saving")
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if _installable():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
