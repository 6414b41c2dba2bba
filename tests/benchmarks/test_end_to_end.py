"""benchmarks/end_to_end.py needs a checkout of upstream's code (never in this repository): without
one, or with sizes the models cannot take, it stops with a usage error before any model is built."""

import sys

import pytest


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no src/pipeline_wan_fun_inpaint_audio.py there"),
        (["--size", "40"], "--size must be a multiple of 16"),
        (["--frames", "8"], "--frames 4k+1"),
    ],
)
def test_usage_errors_before_any_model(load_benchmark_fn, extra, message, tmp_path, monkeypatch, capsys):
    bench = load_benchmark_fn("end_to_end")
    monkeypatch.setattr(bench, "random_weights", lambda *a: pytest.fail("built a model for bad arguments"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--upstream", str(tmp_path), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_upstream_without_einops_installed_is_one_line_saying_so(load_benchmark_fn, tmp_path, monkeypatch, capsys):
    # upstream's pipeline imports einops, which nothing of ours needs
    bench = load_benchmark_fn("end_to_end")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "pipeline_wan_fun_inpaint_audio.py").write_text("from einops import rearrange\n")
    monkeypatch.setitem(sys.modules, "einops", None)  # as if not installed
    for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(bench, "random_weights", lambda *a: pytest.fail("built a model without upstream's code"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--upstream", str(tmp_path), "--size", "16", "--frames", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().endswith(
        "upstream's pipeline imports 'einops', not installed here; pip install einops"
    )
    assert len(err.strip().splitlines()) == 1
