"""Benchmarks measure the device they were asked for: with --device cuda:1 the statistics and the
synchronisation are cuda:1's, not those of the current device (cuda:0 unless set)."""

import re
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# a torch.cuda statistics / synchronisation call without a device argument reads the current device
CURRENT_DEVICE_CALL = re.compile(
    r"torch\.cuda\.(synchronize|reset_peak_memory_stats|max_memory_allocated|memory_allocated|"
    r"max_memory_reserved|memory_reserved|memory_stats|mem_get_info)\(\s*\)"
)


def test_no_benchmark_reads_the_current_cuda_device():
    offenders = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(BENCHMARKS.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if CURRENT_DEVICE_CALL.search(line)
    ]
    assert offenders == [], "use peak_memory.PeakMemory / synchronize with the device instead"


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's statistics and synchronisation, recording which device each call was for."""
    calls = []
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None, _name=name: calls.append((_name, device)) or 0)
    return calls


def test_peak_memory_reads_the_requested_device(load_benchmark_fn, fake_cuda):
    peak_memory = load_benchmark_fn("peak_memory")
    with peak_memory.PeakMemory("cuda:1"):
        pass
    peak_memory.synchronize(torch.device("cuda:1"))
    assert {name for name, _ in fake_cuda} == {
        "synchronize",
        "reset_peak_memory_stats",
        "memory_allocated",
        "max_memory_allocated",
    }
    assert all(torch.device(device) == torch.device("cuda:1") for _, device in fake_cuda)


def test_synchronize_is_a_no_op_off_cuda(load_benchmark_fn, fake_cuda):
    load_benchmark_fn("peak_memory").synchronize(torch.device("cpu"))
    assert fake_cuda == []
