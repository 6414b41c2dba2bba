"""Shared fixtures: where the upstream reference data lives, and deterministic torch."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("ECHOMIMIC_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference data not found at {REFERENCE_DIR}: CI lays ../shared beside the clone; "
                    "set ECHOMIMIC_REFERENCE to its reference/ folder.")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def demo_model_files(tmp_path_factory):
    """The tiny demo installation (every model file, ComfyUI layout), written once per session."""
    from echomimic_core.demo import write_demo_models
    return write_demo_models(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="session")
def demo_models(demo_model_files):
    from echomimic_core.model_files import load_models
    return load_models(demo_model_files, dtype="float32")
