"""Wan2.1 VAE checkpoint layouts: original (``Wan2.1_VAE.pth``) <-> diffusers ``AutoencoderKLWan``.

The original file (and ComfyUI's ``wan_2.1_vae.safetensors``, kijai's ``Wan2_1_VAE_*.safetensors``)
stores the encoder/decoder as flat ``nn.Sequential`` lists; diffusers groups the same modules into
blocks. The mapping is a handful of renames plus one index regrouping for the decoder, whose flat
list holds, per resolution level, ``num_res_blocks + 1`` residual blocks followed by one upsampler
(none after the last level). It agrees key-for-key with diffusers' ``convert_wan_vae_to_diffusers``
(tested on the full-size manifest) and, unlike it, also runs backwards and at any block count.

The architecture config (widths, levels, temporal flags) is read from tensor shapes, so no config
file is needed for single-file checkpoints.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.checkpoints.keytables import KeyTable, nest, rename_key

# Key that only a Wan VAE in the original layout has (ComfyUI detects the Wan2.1 VAE by it too).
ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"

# Inside a residual block: original nn.Sequential index -> diffusers attribute.
# (0: RMS norm, 1: SiLU, 2: conv, 3: RMS norm, 4: SiLU, 5: dropout, 6: conv)
_RESIDUAL: KeyTable = (
    ("residual.0", "norm1"),
    ("residual.2", "conv1"),
    ("residual.3", "norm2"),
    ("residual.6", "conv2"),
    ("shortcut", "conv_shortcut"),
)
# Residual blocks outside the decoder's regrouped up blocks. The middle is [resblock, attention, resblock].
_RESIDUAL_BLOCKS: KeyTable = (
    ("encoder.downsamples.{i}", "encoder.down_blocks.{i}"),
    ("encoder.middle.0", "encoder.mid_block.resnets.0"),
    ("encoder.middle.2", "encoder.mid_block.resnets.1"),
    ("decoder.middle.0", "decoder.mid_block.resnets.0"),
    ("decoder.middle.2", "decoder.mid_block.resnets.1"),
)
# Every original -> diffusers name but the decoder's up blocks (an index regrouping, below).
ORIGINAL_TO_DIFFUSERS: KeyTable = (
    ("conv1", "quant_conv"),
    ("conv2", "post_quant_conv"),
    ("encoder.conv1", "encoder.conv_in"),
    ("decoder.conv1", "decoder.conv_in"),
    ("encoder.head.0", "encoder.norm_out"),
    ("encoder.head.2", "encoder.conv_out"),
    ("decoder.head.0", "decoder.norm_out"),
    ("decoder.head.2", "decoder.conv_out"),
    ("encoder.middle.1", "encoder.mid_block.attentions.0"),
    ("decoder.middle.1", "decoder.mid_block.attentions.0"),
    *_RESIDUAL_BLOCKS,
    *(entry for block in _RESIDUAL_BLOCKS for entry in nest(block, _RESIDUAL)),
)
_UPSAMPLES = re.compile(r"^decoder\.upsamples\.(\d+)\.(.*)$")
_UP_BLOCKS = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$")


def decoder_res_blocks(state: dict[str, torch.Tensor]) -> int:
    """Residual blocks per encoder level (the decoder has one more), read from original keys."""
    first_resample = min(
        (int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.") and ".resample." in k),
        default=None,
    )
    if first_resample is None:
        raise CheckpointError(
            "Wan VAE state dict has no encoder.downsamples.*.resample.* tensors; "
            "expected a Wan2.1 VAE (Wan2.1_VAE.pth / wan_2.1_vae.safetensors)."
        )
    return first_resample


def original_key_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """One original-layout key -> its diffusers ``AutoencoderKLWan`` name."""
    m = _UPSAMPLES.match(key)
    if m:
        index, rest = int(m.group(1)), m.group(2)
        per_level = num_res_blocks + 2  # (num_res_blocks + 1) resnets + 1 upsampler
        level, slot = divmod(index, per_level)
        if slot == per_level - 1:
            return f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
        rest = rename_key(rest, _RESIDUAL) or rest
        return f"decoder.up_blocks.{level}.resnets.{slot}.{rest}"
    new = rename_key(key, ORIGINAL_TO_DIFFUSERS)
    if new is None:
        raise KeyError(f"{key!r} is not a Wan2.1 VAE key in the original layout")
    return new


def diffusers_key_to_original(key: str, num_res_blocks: int = 2) -> str:
    """One diffusers ``AutoencoderKLWan`` key -> its original-layout name."""
    m = _UP_BLOCKS.match(key)
    if m:
        level, resnet, rest = int(m.group(1)), m.group(3), m.group(4)
        per_level = num_res_blocks + 2
        if resnet is None:
            return f"decoder.upsamples.{level * per_level + per_level - 1}.{rest}"
        rest = rename_key(rest, _RESIDUAL, reverse=True) or rest
        return f"decoder.upsamples.{level * per_level + int(resnet)}.{rest}"
    new = rename_key(key, ORIGINAL_TO_DIFFUSERS, reverse=True)
    if new is None:
        raise KeyError(f"{key!r} is not an AutoencoderKLWan key")
    return new


def original_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole original-layout state dict for ``AutoencoderKLWan`` (tensors are not copied)."""
    blocks = decoder_res_blocks(state)
    return {original_key_to_diffusers(k, blocks): v for k, v in state.items()}


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``AutoencoderKLWan`` state dict to the original layout (e.g. to save for ComfyUI)."""
    resnets = {int(m.group(3)) for k in state if (m := _UP_BLOCKS.match(k)) and m.group(3) is not None}
    if not resnets:
        raise CheckpointError(
            "state dict has no decoder.up_blocks.*.resnets.* tensors; expected a diffusers AutoencoderKLWan."
        )
    blocks = max(resnets)  # the decoder has num_res_blocks + 1 resnets per level
    return {diffusers_key_to_original(k, blocks): v for k, v in state.items()}


def config_from_original(state: dict[str, torch.Tensor]) -> dict:
    """``AutoencoderKLWan`` constructor arguments read from an original-layout state dict's shapes."""
    base_dim = state["encoder.conv1.weight"].shape[0]
    levels: dict[int, set[str]] = defaultdict(set)
    for k in state:
        if k.startswith("encoder.downsamples."):
            parts = k.split(".")
            levels[int(parts[2])].add(parts[3])
    if any(kinds & {"norm", "to_qkv", "proj"} for kinds in levels.values()):
        raise CheckpointError(
            "this Wan VAE has attention inside its down blocks (attn_scales); "
            "only the Wan2.1 VAE layout (attention in the middle only) is supported."
        )
    blocks = decoder_res_blocks(state)
    resamples = sorted(i for i, kinds in levels.items() if "resample" in kinds)
    expected = [(level + 1) * (blocks + 1) - 1 for level in range(len(resamples))]
    if resamples != expected:
        raise CheckpointError(
            f"encoder.downsamples: resample layers at {resamples}, expected {expected} "
            f"for {blocks} residual blocks per level; not a Wan2.1 VAE."
        )
    dim_mult = [
        state[f"encoder.downsamples.{level * (blocks + 1)}.residual.6.weight"].shape[0] // base_dim
        for level in range(len(resamples) + 1)
    ]
    config = {
        "base_dim": base_dim,
        "z_dim": state["conv2.weight"].shape[0],
        "dim_mult": dim_mult,
        "num_res_blocks": blocks,
        "attn_scales": [],
        "temperal_downsample": [f"encoder.downsamples.{i}.time_conv.weight" in state for i in resamples],
        "in_channels": state["encoder.conv1.weight"].shape[1],
        "out_channels": state["decoder.head.2.weight"].shape[0],
    }
    decoder_dim = state["decoder.head.2.weight"].shape[1]
    if decoder_dim != base_dim:
        config["decoder_base_dim"] = decoder_dim
    return config
