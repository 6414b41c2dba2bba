"""benchmarks/gpu_suite.py at toy size on the CPU: every variant x mode row runs the real path (file,
loader, render) with what its mode says, and bad arguments stop it before any model is built."""

import pytest
import torch


@pytest.mark.slow  # ~25 s of CPU: 6 toy generations
def test_toy_suite_runs_every_row_as_its_mode_says(load_benchmark_fn, monkeypatch, capsys):
    bench = load_benchmark_fn("gpu_suite")
    loads, swaps = [], []
    real_load = bench.load_transformer

    def spy_load(path, **kwargs):
        loads.append(kwargs)
        model = real_load(path, **kwargs)
        real_swap = model.enable_block_swap
        model.enable_block_swap = lambda n, device: (swaps.append((n, str(device))), real_swap(n, device))[1]
        return model

    monkeypatch.setattr(bench, "load_transformer", spy_load)
    argv = ["--toy", "--device", "cpu", "--dtype", "float32", "--steps", "2", "--seconds", "0.36", "--sizes", "32x48"]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "9 frames" in lines[0] and "float32 compute" in lines[0]
    rows = [line.split() for line in lines[2:]]
    modes = ["bf16", "fp8", "block-swap"]  # no other attention backend runs on a CPU
    assert [r[:4] for r in rows] == [[v, "32x48", m, "sdpa"] for v in ("flash", "preview") for m in modes]
    for row in rows:
        s_step, total, peak, steps, frames = map(float, row[4:])
        assert steps == 2 and frames == 9  # one chunk of 9 frames, the steps asked for
        assert 0 < s_step < total and peak > 0
    # what each row loaded: fp8 storage only for fp8; block swap streams half of the toy's 2 blocks
    assert [kw["storage_dtype"] for kw in loads] == [None, torch.float8_e4m3fn, None] * 2
    assert [kw["device"] for kw in loads] == [torch.device("cpu"), torch.device("cpu"), "cpu"] * 2
    assert swaps == [(1, "cpu")] * 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "50x64"], "multiples of 16"),
        (["--sizes", "480by832"], "HEIGHTxWIDTH"),
        (["--partial-video-length", "9"], "overlap_video_length must be in"),
        (["--seconds", "0.01"], "less than one frame"),
    ],
)
def test_bad_arguments_stop_before_models_are_built(load_benchmark_fn, argv, message, monkeypatch, capsys):
    bench = load_benchmark_fn("gpu_suite")
    monkeypatch.setattr(bench, "write_random_file", lambda *a: pytest.fail("built a model for bad arguments"))
    with pytest.raises(SystemExit) as e:
        bench.main(["--toy", "--device", "cpu", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_device_missing_is_a_usage_error(load_benchmark_fn, monkeypatch, capsys):
    bench = load_benchmark_fn("gpu_suite")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda:1"])
    assert "CUDA is not available here" in capsys.readouterr().err
