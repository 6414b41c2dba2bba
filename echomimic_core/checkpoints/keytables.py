"""Key-name tables between checkpoint layouts: the one renaming mechanism every converter uses.

A table is a tuple of ``(name_a, name_b)`` pairs of module paths (or whole keys); ``{i}`` in a
name stands for a block index. A key is renamed by the entry naming its longest module prefix
(``blocks.{i}.attn.q`` renames ``blocks.3.attn.q.weight``), so one entry covers a module's
weight and bias and a nested entry (``encoder.downsamples.{i}.residual.0``) wins over its parent
(``encoder.downsamples.{i}``). ``reverse=True`` maps layout b -> a. Only names change here:
value transforms (qkv split, transposes, index regrouping) live next to each table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import TypeVar

from .files import CheckpointError

KeyTable = tuple[tuple[str, str], ...]
T = TypeVar("T")


def nest(outer: tuple[str, str], table: KeyTable) -> KeyTable:
    """``table``'s entries under the module paths ``outer`` (a, b), e.g. a residual block's insides."""
    return tuple((f"{outer[0]}.{a}", f"{outer[1]}.{b}") for a, b in table)


@cache
def _compiled(table: KeyTable, reverse: bool) -> tuple[tuple[re.Pattern, str], ...]:
    sources = [b if reverse else a for a, b in table]
    if len(set(sources)) != len(sources):
        raise ValueError("key tables must be one-to-one; a name appears twice")
    rules = []
    for a, b in table:
        src, dst = (b, a) if reverse else (a, b)
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        # a module prefix ends at a dot or the end of the key, never inside a name (norm_k vs norm_k_img)
        rules.append((re.compile(pattern + r"(?=\.|\Z)"), dst, src.count(".")))
    # Deepest module path first, so the first match is the longest prefix.
    rules.sort(key=lambda rule: -rule[2])
    return tuple((pattern, dst) for pattern, dst, _ in rules)


def rename_key(key: str, table: KeyTable, reverse: bool = False) -> str | None:
    """The key's name in the other layout, or None when no entry covers it."""
    for pattern, dst in _compiled(table, reverse):
        m = pattern.match(key)
        if m:
            return dst.format(**m.groupdict()) + key[m.end() :]
    return None


def rename(state: Mapping[str, T], table: KeyTable, reverse: bool = False, what: str = "checkpoint") -> dict[str, T]:
    """Rename every key; a key the table does not cover is an error naming the first few."""
    out, unknown = {}, []
    for key, value in state.items():
        new = rename_key(key, table, reverse)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(
            f"{what}: {len(unknown)} tensor name(s) this converter does not know, e.g. {unknown[:5]}. "
            "The file is a different architecture or a layout not supported yet; "
            "check that it is the right file for this slot."
        )
    return out
