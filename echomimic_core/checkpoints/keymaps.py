"""Key layouts a Wan / EchoMimicV3 transformer file arrives in, mapped onto the original names.

Our state-dict names are the released checkpoints' (original Wan) names. Two things differ in
files users have:

* wrapper prefixes: ``model.diffusion_model.`` (ComfyUI full checkpoints), ``diffusion_model.``,
  ``model.``, ``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``transformer.``;
* the diffusers layout of ``WanTransformer3DModel`` (``condition_embedder.*``, ``attn1.to_q``,
  ``scale_shift_table``, norm2/norm3 swapped). Tensor shapes are identical in both layouts, so
  the conversion is a pure renaming: the table below, applied per module path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TypeVar

from .keytables import KeyTable, nest, rename_key

log = logging.getLogger(__name__)

T = TypeVar("T")

# Any chain of these wrapper names can precede the transformer's own keys.
_PREFIX_RE = re.compile(r"^(?:(?:model|diffusion_model|module|_orig_mod|transformer|dit|net)\.)*")
# One key every Wan transformer carries under the same name in both layouts.
ANCHOR_KEY = "patch_embedding.weight"

# Module paths outside the blocks: original -> diffusers.
_TOP_LEVEL: KeyTable = (
    ("patch_embedding", "patch_embedding"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)

# Module paths inside one attention layer: original -> diffusers.
_ATTENTION: KeyTable = (
    ("q", "to_q"),
    ("k", "to_k"),
    ("v", "to_v"),
    ("o", "to_out.0"),
    ("norm_q", "norm_q"),
    ("norm_k", "norm_k"),
    ("k_img", "add_k_proj"),
    ("v_img", "add_v_proj"),
    ("norm_k_img", "norm_added_k"),
    # EchoMimicV3's audio layers have no diffusers counterpart; converters keep their names.
    ("q_audio", "q_audio"),
    ("k_audio", "k_audio"),
    ("v_audio", "v_audio"),
    ("norm_k_audio", "norm_k_audio"),
)
# Module paths inside one block. Original norm3 (the affine cross-attention norm) is diffusers'
# norm2 and vice versa.
_BLOCK: KeyTable = (
    *nest(("self_attn", "attn1"), _ATTENTION),
    *nest(("cross_attn", "attn2"), _ATTENTION),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm1", "norm1"),
    ("norm2", "norm3"),
    ("norm3", "norm2"),
    ("modulation", "scale_shift_table"),
)
ORIGINAL_TO_DIFFUSERS: KeyTable = (*_TOP_LEVEL, *nest(("blocks.{i}", "blocks.{i}"), _BLOCK))

DIFFUSERS_MARKERS = ("condition_embedder.", ".attn1.", ".attn2.", "proj_out.")


def original_to_diffusers(key: str) -> str:
    """``blocks.0.cross_attn.k_img.weight`` -> ``blocks.0.attn2.add_k_proj.weight``; unknown keys pass."""
    return rename_key(key, ORIGINAL_TO_DIFFUSERS) or key


def diffusers_to_original(key: str) -> str:
    """``blocks.0.attn2.add_k_proj.weight`` -> ``blocks.0.cross_attn.k_img.weight``; unknown keys pass."""
    return rename_key(key, ORIGINAL_TO_DIFFUSERS, reverse=True) or key


def is_diffusers_layout(keys) -> bool:
    return any(marker in key or key.startswith(marker) for key in keys for marker in DIFFUSERS_MARKERS)


def find_prefix(keys) -> str | None:
    """The wrapper prefix in front of the transformer keys ('' if none), None if no anchor key."""
    for key in keys:
        if key.endswith(ANCHOR_KEY):
            prefix = key[: -len(ANCHOR_KEY)]
            if _PREFIX_RE.fullmatch(prefix):
                return prefix
    return None


def to_original_keys(state: Mapping[str, T]) -> dict[str, T]:
    """Strip wrapper prefixes and convert a diffusers layout, keeping the values untouched.

    Works on any mapping (tensors, shapes), so a file can be checked from its header alone.
    Keys outside the transformer (a full ComfyUI checkpoint's VAE and text encoder) are dropped.
    """
    prefix = find_prefix(state)
    if prefix:
        dropped = sum(not k.startswith(prefix) for k in state)
        if dropped:
            log.info("ignoring %d tensors outside the transformer (not under %r)", dropped, prefix)
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        state = dict(state)
    if is_diffusers_layout(state):
        log.info("converting diffusers-layout transformer keys to the original Wan names")
        state = {diffusers_to_original(k): v for k, v in state.items()}
    return state
