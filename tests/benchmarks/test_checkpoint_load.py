"""benchmarks/checkpoint_load.py: a misspelt --runs dtype is a usage error before any file is written."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoint_load.py"


def load_script():
    spec = importlib.util.spec_from_file_location("checkpoint_load_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("run", ["float32:", "bf16:int8", "fp8:"])
def test_bad_runs_are_refused_before_work(run, monkeypatch, capsys):
    bench = load_script()
    monkeypatch.setattr(bench, "write_random_file", lambda *a: pytest.fail("wrote a file for a bad --runs"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--layers", "1", "--runs", run])
    assert e.value.code == 2
    assert f"--runs {run!r}" in capsys.readouterr().err
