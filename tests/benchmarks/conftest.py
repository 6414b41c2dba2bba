"""The benchmark scripts are not a package: tests load one by file name (``load_benchmark("gpu_suite")``)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a fresh module (its own ``sys.path`` setup runs as in a real run)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in a script look their module up there
    spec.loader.exec_module(module)
    return module


# pytest's importlib mode cannot import conftest as a module: tests get the loader as a fixture
@pytest.fixture
def load_benchmark_fn():
    return load_benchmark
