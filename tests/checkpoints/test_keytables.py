"""The one table-driven renaming every checkpoint converter uses."""

import pytest

from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.checkpoints.keytables import nest, rename, rename_key

TABLE = (
    ("down.{i}", "blocks.{i}"),
    *nest(("down.{i}", "blocks.{i}"), (("residual.0", "norm1"), ("residual.2", "conv1"))),
    ("attn.norm_k", "attn.k_norm"),
    ("attn.norm_k_img", "attn.added_k_norm"),
    ("head", "proj_out"),
)


def test_longest_module_prefix_wins_and_the_rest_of_the_key_is_kept():
    assert rename_key("down.12.residual.2.bias", TABLE) == "blocks.12.conv1.bias"
    assert rename_key("down.3.resample.1.weight", TABLE) == "blocks.3.resample.1.weight"
    assert rename_key("head", TABLE) == "proj_out"


def test_a_prefix_ends_at_a_dot_not_inside_a_name():
    assert rename_key("attn.norm_k_img.weight", TABLE) == "attn.added_k_norm.weight"
    assert rename_key("attn.norm_k.weight", TABLE) == "attn.k_norm.weight"
    assert rename_key("header.weight", TABLE) is None
    assert rename_key("down.x.weight", TABLE) is None


def test_reverse_round_trips():
    keys = ["down.0.residual.0.gamma", "down.7.time_conv.weight", "attn.norm_k_img.weight", "head.bias"]
    there = rename({k: k for k in keys}, TABLE)
    assert rename(there, TABLE, reverse=True) == {k: k for k in keys}


def test_unknown_keys_are_one_error_naming_them():
    with pytest.raises(CheckpointError, match=r"my encoder: 1 tensor name.*'tail\.weight'"):
        rename({"head.weight": 0, "tail.weight": 1}, TABLE, what="my encoder")


def test_a_table_that_is_not_one_to_one_is_refused():
    with pytest.raises(ValueError, match="one-to-one"):
        rename_key("a.weight", (("a", "x"), ("b", "x")), reverse=True)
