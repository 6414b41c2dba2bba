"""benchmarks/end_to_end.py needs a checkout of upstream's code (never in this repository): without
one, or with sizes the models cannot take, it stops with a usage error before any model is built."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "end_to_end.py"


def load_script():
    spec = importlib.util.spec_from_file_location("end_to_end_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no src/pipeline_wan_fun_inpaint_audio.py there"),
        (["--size", "40"], "--size must be a multiple of 16"),
        (["--frames", "8"], "--frames 4k+1"),
    ],
)
def test_usage_errors_before_any_model(extra, message, tmp_path, monkeypatch, capsys):
    bench = load_script()
    monkeypatch.setattr(bench, "random_weights", lambda *a: pytest.fail("built a model for bad arguments"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--upstream", str(tmp_path), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
