"""benchmarks/checkpoint_load.py: a misspelt --runs dtype is a usage error before any file is written."""

import pytest


@pytest.mark.parametrize("run", ["float32:", "bf16:int8", "fp8:"])
def test_bad_runs_are_refused_before_work(load_benchmark_fn, run, monkeypatch, capsys):
    bench = load_benchmark_fn("checkpoint_load")
    monkeypatch.setattr(bench, "write_random_file", lambda *a: pytest.fail("wrote a file for a bad --runs"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--layers", "1", "--runs", run])
    assert e.value.code == 2
    assert f"--runs {run!r}" in capsys.readouterr().err
