"""Tiny encoders, synthetic clips and preprocessed caches shaped for the ``tiny_preview`` model."""

from __future__ import annotations

import pytest
import torch

from echomimic_core.config import TransformerConfig
from training.preprocess import Encoders, preprocess
from training.synthetic import FRAMES, HEIGHT, WIDTH, sft_rows, synthetic_clip, tiny_encoders


@pytest.fixture(scope="session")
def tiny_config() -> TransformerConfig:
    return TransformerConfig.preset("tiny_preview")


@pytest.fixture(scope="session")
def encoders(tiny_config) -> Encoders:
    return tiny_encoders(tiny_config)


@pytest.fixture(scope="session")
def sft_cache(tmp_path_factory, encoders):
    out = tmp_path_factory.mktemp("sft_cache")
    preprocess(
        sft_rows(),
        out,
        encoders,
        frames=FRAMES,
        size=(HEIGHT, WIDTH),
        loader=synthetic_clip,
        shard_size=4,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def dpo_cache(tmp_path_factory, encoders):
    out = tmp_path_factory.mktemp("dpo_cache")
    rows = [
        {"id": f"pair{i}", "chosen": f"good{i}.mp4", "rejected": f"bad{i}.mp4", "caption": "a person talking"}
        for i in range(4)
    ]
    preprocess(
        rows, out, encoders, kind="dpo", frames=FRAMES, size=(HEIGHT, WIDTH), loader=synthetic_clip, progress=False
    )
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; on a shared 2-core machine they only contend."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision included); a real run builds one
    Accelerator per process, tests build many with different settings."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
