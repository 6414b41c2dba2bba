"""What the issue-10 tests share: the demo model cache, a loader spy, small media files."""

import shutil

import av
import numpy as np
import pytest

from echomimic_core import __main__ as cli
from echomimic_core.demo import DEMO_VERSION


@pytest.fixture
def demo_cache(monkeypatch, tmp_path, demo_model_files):
    """The session's demo files as the CLI's --demo cache (nothing written under ~/.cache)."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_model_files.transformer.parents[1], cache / f"v{DEMO_VERSION}")
    monkeypatch.setattr(cli, "DEMO_CACHE", cache)


@pytest.fixture
def model_loads(monkeypatch):
    """Spy on the one function that loads the models: a list of the calls it got. Tests of errors
    that must come first assert it stays empty; the spy fails the run if it is ever reached."""
    from echomimic_core import model_files

    calls = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError("models were loaded before the error was found")

    monkeypatch.setattr(model_files, "load_models", spy)
    return calls


@pytest.fixture
def wav():
    """``wav(path, seconds=0.5, rate=16000, samples=None)`` writes a float32 mono wav and returns its path."""
    return write_wav


def write_wav(path, seconds=0.5, rate=16000, samples=None):
    """A float32 mono wav (a 220 Hz tone unless ``samples`` are given)."""
    if samples is None:
        t = np.arange(int(seconds * rate)) / rate
        samples = 0.3 * np.sin(2 * np.pi * 220 * t)
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_f32le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
