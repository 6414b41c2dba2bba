"""Every on-disk layout a transformer checkpoint arrives in reads back to the same tensors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from echomimic_core.checkpoints.files import (
    CheckpointError,
    load_state_dict,
    read_metadata,
    read_shapes,
    save_state_dict,
    weight_files,
)


@pytest.fixture
def state():
    return {
        "a.weight": torch.randn(4, 3),
        "b.bias": torch.arange(5, dtype=torch.float16),
        "c": torch.randn(2, 2).to(torch.bfloat16),
    }


def _assert_same(loaded, state):
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


def test_single_safetensors(tmp_path, state):
    save_file(state, tmp_path / "m.safetensors", metadata={"x": "1"})
    _assert_same(load_state_dict(tmp_path / "m.safetensors"), state)
    assert read_metadata(tmp_path / "m.safetensors") == {"x": "1"}
    assert read_shapes(tmp_path / "m.safetensors")["a.weight"] == ((4, 3), torch.float32)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "module", "model"])
def test_pickles_with_wrappers(tmp_path, state, wrapper):
    obj = state if wrapper is None else {wrapper: state, "epoch": 3}
    torch.save(obj, tmp_path / "m.pth")
    _assert_same(load_state_dict(tmp_path / "m.pth"), state)
    assert read_shapes(tmp_path / "m.pth")["b.bias"] == ((5,), torch.float16)


def test_nested_wrapper(tmp_path, state):
    torch.save({"module": {"state_dict": state}}, tmp_path / "m.pt")
    _assert_same(load_state_dict(tmp_path / "m.pt"), state)


def test_sharded_folder_with_index(tmp_path, state):
    save_file({"a.weight": state["a.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b.bias": state["b.bias"], "c": state["c"]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.bias": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors",
    }
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    _assert_same(load_state_dict(tmp_path), state)
    assert set(read_shapes(tmp_path)) == set(state)


def test_sharded_folder_missing_shard(tmp_path, state):
    save_file({"a.weight": state["a.weight"]}, tmp_path / "s1.safetensors")
    (tmp_path / "x.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a.weight": "s1.safetensors", "b.bias": "s2.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="missing.*s2.safetensors"):
        load_state_dict(tmp_path)


def test_folder_with_one_file(tmp_path, state):
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    assert weight_files(tmp_path) == [tmp_path / "diffusion_pytorch_model.safetensors"]


def test_folder_ambiguous(tmp_path, state):
    save_file(state, tmp_path / "a.safetensors")
    save_file(state, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="expected one weights file"):
        load_state_dict(tmp_path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path, state, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="truncated"):
        read_shapes(path)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(tmp_path / "e.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "cfg": _Opaque()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(tmp_path / "m.pth")


class _Opaque:
    pass


def test_save_is_atomic_and_round_trips(tmp_path, state):
    save_state_dict(state, tmp_path / "out" / "m.safetensors", metadata={"k": "v"})
    _assert_same(load_state_dict(tmp_path / "out" / "m.safetensors"), state)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.safetensors"]


def test_legacy_pickle_without_zip_container(tmp_path, state):
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(tmp_path / "old.pth"), state)
