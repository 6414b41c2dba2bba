import itertools

import pytest

from training.dataset import CachedDataset, StreamSampler
from training.preprocess import preprocess
from training.synthetic import FRAMES, sft_rows, synthetic_clip


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_a_reshuffled_epoch_after_epoch_and_resumes_anywhere():
    stream = _take(StreamSampler(5, seed=3), 15)
    assert all(sorted(stream[i : i + 5]) == list(range(5)) for i in (0, 5, 10))
    assert stream[:5] != stream[5:10]
    assert _take(StreamSampler(5, seed=3, start=7), 8) == stream[7:]


def test_buckets_keep_every_batch_in_one_shape():
    buckets = ["a"] * 5 + ["b"] * 4 + ["c"]  # "c" never fills a batch of 2
    sampler = StreamSampler(10, seed=0, batch_size=2, buckets=buckets)
    assert sampler.epoch_length == 8
    stream = _take(sampler, 40)
    for k in range(0, 40, 2):
        assert buckets[stream[k]] == buckets[stream[k + 1]] != "c"
    assert _take(StreamSampler(10, seed=0, start=6, batch_size=2, buckets=buckets), 10) == stream[6:16]
    with pytest.raises(ValueError, match="full batch"):
        StreamSampler(3, seed=0, batch_size=4, buckets=["a", "a", "b"])


def test_a_cache_with_two_resolutions_trains_in_shape_batches(tmp_path, encoders):
    rows = sft_rows(6)
    kw = dict(frames=FRAMES, loader=synthetic_clip, progress=False)
    preprocess(rows[:3], tmp_path, encoders, size=(32, 48), **kw)
    preprocess(rows[3:], tmp_path, encoders, size=(48, 32), **kw)
    data = CachedDataset(tmp_path)
    assert sorted(set(data.buckets)) == [(16, 3, 4, 6), (16, 3, 6, 4)]

    from training.config import config_from_dict
    from training.model_init import build_model
    from training.trainer import Trainer

    cfg = config_from_dict(
        {
            "output_dir": str(tmp_path / "run"),
            "mixed_precision": "no",
            "model": {"preset": "tiny_preview", "gradient_checkpointing": False},
            "data": {"batch_size": 2, "num_workers": 0},
            "dpo": {"every_n_steps": 0},
            "optim": {"warmup_steps": 0},
        }
    )
    history = Trainer(cfg, build_model(cfg.model), data, data.null_text).train(4)
    assert len(history) == 4
