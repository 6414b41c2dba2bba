"""ComfyUI's own validation rules for links and widget values (its ``execution.validate_inputs``).

One implementation for both places that need them: the offline workflow checker
(``workflows.validate``) and the nodes whose ``VALIDATE_INPUTS`` makes ComfyUI skip a check it would
otherwise run (``nodes/common.py``). Torch-free, so ``workflows.validate`` runs without torch.
"""

from __future__ import annotations

from typing import Any

# Types that accept any link: the wildcard and V3's "match the other end" type.
WILDCARDS = frozenset({"*", "COMFY_MATCHTYPE_V3"})


def types_match(received: Any, expected: Any) -> bool:
    """Whether an output of type ``received`` may feed an input of type ``expected``: equal types, a
    wildcard on either side, or comma-separated unions sharing a type; a list (a combo's options)
    counts as ``COMBO``."""
    received = "COMBO" if isinstance(received, list) else received
    expected = "COMBO" if isinstance(expected, list) else expected
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(WILDCARDS & (got | want)) or bool(got & want)


def range_problem(name: str, value: Any, options: dict) -> str | None:
    """Why a number lies outside its widget's ``min`` / ``max`` options, or None.

    Stricter than ComfyUI in one case: NaN fails every comparison, so ComfyUI's ``value < min`` lets
    it through; here a bounded widget refuses it.
    """
    low, high = options.get("min"), options.get("max")
    if value != value and (low is not None or high is not None):
        return f"{name}={value!r} is not a number; expected one in [{low}, {high}]"
    if low is not None and value < low:
        return f"{name}={value!r} is below its minimum {low}"
    if high is not None and value > high:
        return f"{name}={value!r} is above its maximum {high}"
    return None
