"""Tiny encoders, synthetic clips and preprocessed caches shaped for the ``tiny_preview`` model."""

from __future__ import annotations

import pytest
import torch

from echomimic_core.config import TransformerConfig
from training.config import config_from_dict
from training.dataset import CachedDataset
from training.model_init import build_model
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


def _make_trainer(out, sft_cache, dpo_cache=None, **over):
    """A Trainer of the tiny preview model on the given caches (float32, no DPO, lr 1e-3, logs
    every step); each keyword replaces a config key, or is merged into a section given as a dict."""
    from training.trainer import Trainer

    raw = {
        "output_dir": str(out),
        "mixed_precision": "no",
        "log_every": 1,
        "checkpoint_every": 1000,
        "model": {"preset": "tiny_preview", "gradient_checkpointing": False},
        "data": {"batch_size": 3, "num_workers": 0},
        "dpo": {"every_n_steps": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "max_steps": 100},
    }
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = config_from_dict(raw)
    sft = CachedDataset(sft_cache)
    dpo = CachedDataset(dpo_cache, kind="dpo") if dpo_cache else None
    return Trainer(cfg, build_model(cfg.model, cfg.seed), sft, sft.null_text, dpo_data=dpo)


@pytest.fixture
def make_trainer():
    """``make_trainer(out, sft_cache, dpo_cache=None, **config_overrides)`` (see ``_make_trainer``)."""
    return _make_trainer


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
