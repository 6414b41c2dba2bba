"""Load and save the EchoMimicV3 transformer: variant detection, config from shapes, strict load.

    model = load_transformer("echomimicv3-flash-pro.safetensors", dtype=torch.bfloat16,
                             storage_dtype=torch.float8_e4m3fn, device="cuda")

The file alone decides the model: ``preview`` (``audio2token.*``), ``flash``
(``audio_injection.*``) or ``base`` (a plain Wan2.1-Fun-InP image-to-video transformer, whose
audio layers are created zero-initialised as upstream does for new audio layers). Every width
is read from tensor shapes; only the head count (not visible in any shape) comes from the
file's metadata when we wrote it, else from Wan's 128-wide heads.

The model is built on the meta device and takes the file's tensors by assignment, so a 1.3B
model is never in RAM twice; safetensors files are memory-mapped, so tensors already in the
wanted dtype are not even copied.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import VARIANTS, TransformerConfig
from .files import CheckpointError, load_state_dict, read_metadata, read_shapes, save_state_dict
from .keymaps import find_prefix, is_diffusers_layout, to_original_keys
from .quant import FP8_DTYPES, check_supported_quantization, is_scaled_fp8, split_scaled_fp8, to_fp8

log = logging.getLogger(__name__)

# What a checkpoint can be: a released variant, or a base Wan2.1-Fun-InP file without audio layers.
FILE_VARIANTS = (*VARIANTS, "base")
CONFIG_METADATA_KEY = "echomimic_config"
WAN_HEAD_DIM = 128  # every released Wan2.1 model (1.3B: 12 x 128, 14B: 40 x 128)

# Keys a Wan image-to-video transformer must have to be worth a closer look.
_WAN_ANCHORS = ("patch_embedding.weight", "blocks.0.self_attn.q.weight", "head.head.weight")
_AUDIO_PROJECTORS = {"preview": "audio2token.", "flash": "audio_injection."}

# What a wrong file is, told by keys it carries (checked on the raw, un-renamed keys).
_FOREIGN_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "a LoRA / adapter (load it on top of a transformer, not in its place)",
        ("lora_A.", "lora_B.", "lora_down.", "lora_up.", "lora_unet_", ".lora."),
    ),
    ("a Stable Diffusion / SDXL UNet checkpoint", ("input_blocks.", "down_blocks.", "output_blocks.")),
    ("a Flux / MMDiT transformer", ("double_blocks.", "single_blocks.", "single_transformer_blocks.", "joint_blocks.")),
    (
        "the Wan2.1 VAE (load it with the VAE loader)",
        ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma"),
    ),
    ("a VAE", ("first_stage_model.", "decoder.up.", "decoder.up_blocks.", "encoder.down.", "post_quant_conv.")),
    (
        "a T5 / umT5 text encoder (load it with the text-encoder loader)",
        ("encoder.block.", "shared.weight", "token_embedding.weight", "blocks.0.attn.q.weight"),
    ),
    (
        "a CLIP model (load it with the CLIP-vision loader)",
        ("vision_model.", "text_model.", "visual.", "transformer.resblocks."),
    ),
    (
        "a wav2vec2 / Whisper audio encoder",
        ("feature_extractor.conv_layers.", "feature_projection.", "encoder.conv1.", "encoder.embed_positions."),
    ),
)


@dataclass
class CheckpointInfo:
    """What a transformer file is, from its header alone (cheap: no tensor data is read)."""

    path: Path
    variant: str  # "preview" | "flash" | "base"
    config: TransformerConfig  # the model the file loads into
    layout: str  # "original" | "diffusers"
    prefix: str  # wrapper prefix stripped from every key ("" if none)
    scaled_fp8: bool
    dtypes: dict[str, int] = field(default_factory=dict)  # file dtype -> number of tensors
    missing_audio: list[str] = field(default_factory=list)  # grouped, only for variant "base"


# ---------------------------------------------------------------------------------------------
# shapes, grouping, detection


def _shape(value) -> tuple[int, ...]:
    """Shape of a tensor, a shape, or a ``(shape, dtype)`` pair from :func:`read_shapes`."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if len(value) == 2 and isinstance(value[0], (tuple, list)) and not isinstance(value[1], int):
        return tuple(value[0])
    return tuple(value)


_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def group_keys(keys) -> list[str]:
    """Many keys summarised per module across blocks, e.g.
    ``"60 keys under blocks.*.cross_attn.k_audio (blocks 0-29)"``; biggest groups first."""
    groups: dict[str, list] = defaultdict(lambda: [0, set()])
    for key in keys:
        match = _BLOCK_INDEX.match(key)
        module = key.rsplit(".", 1)[0] if "." in key else key
        if match:
            module = "blocks.*." + module[match.end() :] if module != key[: match.end() - 1] else "blocks.*"
            groups[module][1].add(int(match[1]))
        groups[module][0] += 1
    lines = []
    for module, (count, blocks) in sorted(groups.items(), key=lambda g: (-g[1][0], g[0])):
        where = f" ({_ranges(sorted(blocks))})" if blocks else ""
        lines.append(f"{count} key{'s' if count > 1 else ''} under {module}{where}")
    return lines


def _ranges(indices: list[int]) -> str:
    spans, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return "block " + spans[0] if len(indices) == 1 else "blocks " + ", ".join(spans)


def _summary(lines: list[str], limit: int = 8) -> str:
    shown = "; ".join(lines[:limit])
    return shown + (f"; and {len(lines) - limit} more groups" if len(lines) > limit else "")


def _describe_foreign(raw_keys: Sequence[str]) -> str:
    for what, markers in _FOREIGN_SIGNATURES:
        if any(marker in key for key in raw_keys for marker in markers):
            return what
    sample = ", ".join(sorted(raw_keys)[:4])
    return f"an unrecognised model ({len(raw_keys)} tensors, e.g. {sample})"


def detect_variant(shapes: Mapping[str, object]) -> str:
    """``"preview"``, ``"flash"`` or ``"base"`` for a state dict (or names -> shapes).

    Accepts any wrapper prefix and the diffusers layout. Raises :class:`CheckpointError` naming
    what the file is instead when it is not a Wan image-to-video transformer.
    """
    keys = to_original_keys({k: None for k in shapes})
    missing_anchors = [k for k in _WAN_ANCHORS if k not in keys]
    if missing_anchors:
        raise CheckpointError(
            f"expected an EchoMimicV3 / Wan2.1 transformer (keys like {', '.join(_WAN_ANCHORS)}), "
            f"found {_describe_foreign(list(shapes))}. Pick the transformer file "
            "(e.g. echomimicv3-flash-pro.safetensors or transformer/diffusion_pytorch_model.safetensors)."
        )
    if not any(k.startswith("img_emb.") for k in keys):
        raise CheckpointError(
            "expected a Wan image-to-video transformer (with img_emb.* CLIP-image layers), found a "
            "Wan text-to-video transformer. EchoMimicV3 is built on Wan2.1-Fun-1.3B-InP; use that "
            "or an EchoMimicV3 checkpoint."
        )
    found = [v for v, prefix in _AUDIO_PROJECTORS.items() if any(k.startswith(prefix) for k in keys)]
    if len(found) > 1:
        raise CheckpointError(
            "expected one audio projector, found both audio2token.* (preview) and audio_injection.* "
            "(flash): the file mixes two models. Re-export it from a single checkpoint."
        )
    if found:
        return found[0]
    stray = [k for k in keys if "_audio." in k]
    if stray:
        raise CheckpointError(
            f"found per-block audio layers ({_summary(group_keys(stray), 3)}) but no audio projector "
            "(audio2token.* or audio_injection.*): the file is incomplete. Download it again."
        )
    return "base"


def _count_blocks(keys) -> int:
    indices = {int(m[1]) for k in keys if (m := _BLOCK_INDEX.match(k))}
    return max(indices) + 1 if indices else 0


def infer_config(
    shapes: Mapping[str, object], variant: str | None = None, num_heads: int | None = None, **overrides
) -> TransformerConfig:
    """The :class:`TransformerConfig` a state dict was built from, read from tensor shapes.

    ``variant``: the audio architecture; for a ``base`` file (no audio layers) it defaults to
    ``"preview"`` with the released audio widths. ``num_heads`` is not visible in any shape:
    default ``dim // 128`` (all released Wan models). ``overrides`` set fields not in shapes
    (``text_len``, ``eps``, ...).
    """
    sd = {k: _shape(v) for k, v in to_original_keys(dict(shapes)).items()}
    detected = detect_variant(sd)
    variant = variant if variant not in (None, "base") else (detected if detected != "base" else "preview")
    try:
        dim, in_dim, *patch = sd["patch_embedding.weight"]
        fields = dict(
            model_type="i2v",
            patch_size=tuple(patch),
            in_dim=in_dim,
            dim=dim,
            ffn_dim=sd["blocks.0.ffn.0.weight"][0],
            freq_dim=sd["time_embedding.0.weight"][1],
            text_dim=sd["text_embedding.0.weight"][1],
            out_dim=sd["head.head.weight"][0] // (patch[0] * patch[1] * patch[2]),
            num_layers=_count_blocks(sd),
            qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
            cross_attn_norm="blocks.0.norm3.weight" in sd,
            clip_dim=sd["img_emb.proj.0.weight"][0],
            variant=variant,
        )
        if detected == "preview":
            fields["audio_in_dim"] = sd["audio2token.proj.weight"][1]
        elif detected == "flash":
            fields.update(_flash_widths(sd, dim))
    except KeyError as e:
        raise CheckpointError(
            f"expected tensor {e.args[0]} to read the model size from, but the file "
            "lacks it: it is incomplete or not a Wan transformer."
        ) from e
    if num_heads is None:
        num_heads = max(1, dim // WAN_HEAD_DIM)
        log.info(
            "head count not recorded in the file: assuming %d heads of %d (Wan's head width)",
            num_heads,
            dim // num_heads,
        )
    fields["num_heads"] = num_heads
    fields.update(overrides)
    try:
        return TransformerConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the shapes in the file give an impossible config ({e}).") from e


def _flash_widths(sd: Mapping[str, tuple[int, ...]], dim: int) -> dict:
    """Flash projector widths: proj1 reads window*blocks*channels features, proj1_vf
    (window+3)*blocks*channels; proj3 writes context_tokens*dim."""
    inter, first = sd["audio_injection.proj1.weight"]
    later = sd["audio_injection.proj1_vf.weight"][1]
    per_step = (later - first) // 3  # blocks * channels of one audio frame
    if per_step <= 0 or first % per_step or (later - first) % 3:
        raise CheckpointError(
            f"audio_injection.proj1 / proj1_vf widths {first} / {later} do not "
            "describe a 5-frame window: the flash projector is damaged."
        )
    # blocks and channels only appear as their product; wav2vec2-base gives 768 channels
    channels = next((c for c in (768, 1024, 512, 384, 1280) if per_step % c == 0), per_step)
    return dict(
        audio_window=first // per_step,
        audio_blocks=per_step // channels,
        audio_channels=channels,
        audio_intermediate_dim=inter,
        audio_context_tokens=sd["audio_injection.proj3.weight"][0] // dim,
    )


def _config_from_metadata(metadata: Mapping[str, str]) -> TransformerConfig | None:
    text = metadata.get(CONFIG_METADATA_KEY)
    if not text:
        return None
    try:
        return TransformerConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        log.warning("ignoring an unreadable %s in the file's metadata (%s)", CONFIG_METADATA_KEY, e)
        return None


def _side_config(path: Path) -> dict:
    """num_heads / text_len / eps from the ``config.json`` of a diffusers-style folder (upstream's
    ``transformer/`` folder uses Wan's names, diffusers its own). Files elsewhere (a ComfyUI
    models folder) are not paired with a stray config.json."""
    folder = path if path.is_dir() else path.parent
    if not path.is_dir() and not path.name.startswith("diffusion_pytorch_model"):
        return {}
    file = folder / "config.json"
    if not file.is_file():
        return {}
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s (%s)", file, e)
        return {}
    found = {
        "num_heads": raw.get("num_heads", raw.get("num_attention_heads")),
        "text_len": raw.get("text_len"),
        "eps": raw.get("eps"),
    }
    return {k: v for k, v in found.items() if v is not None}


def inspect_checkpoint(
    path: str | Path, variant: str | None = None, config: TransformerConfig | None = None
) -> CheckpointInfo:
    """Identify a transformer file from its header: variant, config, layout. Reads no weights
    of a safetensors file, so nodes can validate a choice before any heavy work."""
    raw = read_shapes(path)
    return _inspect(Path(path), raw, read_metadata(path), variant, config)


def _inspect(
    path: Path,
    raw: Mapping[str, tuple],
    metadata: Mapping[str, str],
    variant: str | None,
    config: TransformerConfig | None = None,
) -> CheckpointInfo:
    if variant not in (None, *FILE_VARIANTS):
        raise ValueError(f"variant must be one of {FILE_VARIANTS} or None, got {variant!r}.")
    try:  # before the scales are taken for fp8 ones (a broadcast error deep in the load)
        check_supported_quantization(raw, str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    scaled = is_scaled_fp8(raw)
    shapes = {
        k: _shape(v)
        for k, v in raw.items()
        if not (
            scaled
            and (
                k.endswith(("scale_weight", "weight_scale", "scale_input", "input_scale", "comfy_quant", "scaled_fp8"))
            )
        )
    }
    detected = detect_variant(shapes)
    if variant not in (None, "base") and detected not in ("base", variant):
        raise CheckpointError(
            f"{path}: expected a {variant} checkpoint, found a {detected} one "
            f"(it carries {_AUDIO_PROJECTORS[detected]}*). Choose variant "
            f"{detected!r}, or leave it unset to follow the file."
        )
    if variant == "base" and detected != "base":
        variant = None  # asking for "base" only means "accept a file without audio layers"
    original = to_original_keys(shapes)
    wanted = variant or (detected if detected != "base" else "preview")
    if config is not None:
        if config.variant != wanted and not (variant is None and detected == "base"):
            raise CheckpointError(
                f"{path}: the given config is a {config.variant} model but the "
                f"file holds a {detected} one; pass a matching config or none."
            )
        wanted = config.variant
    else:
        config = _config_from_metadata(metadata)
    if config is None or config.variant != wanted:
        known = (
            {"num_heads": config.num_heads, "text_len": config.text_len, "eps": config.eps}
            if config
            else _side_config(path)
        )
        config = infer_config(original, wanted, **known)
    dtypes: dict[str, int] = defaultdict(int)
    for value in raw.values():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], torch.dtype):
            dtypes[str(value[1]).removeprefix("torch.")] += 1
    return CheckpointInfo(
        path=path,
        variant=detected,
        config=config,
        layout="diffusers" if is_diffusers_layout(shapes) else "original",
        prefix=find_prefix(shapes) or "",
        scaled_fp8=scaled,
        dtypes=dict(dtypes),
        missing_audio=group_keys(_audio_keys_of(config)) if detected == "base" else [],
    )


def _audio_keys_of(config: TransformerConfig) -> list[str]:
    return [k for k in _expected_shapes(config) if _is_audio_key(k)]


def _is_audio_key(key: str) -> bool:
    return key.startswith(tuple(_AUDIO_PROJECTORS.values())) or "_audio." in key


# ---------------------------------------------------------------------------------------------
# building and loading


def _build_on_meta(config: TransformerConfig, attention_backend: str):
    """The model with every parameter on the meta device (no memory). accelerate's context
    moves only parameters, so buffers and derived tables (RoPE frequencies) stay real."""
    from accelerate import init_empty_weights

    from ..model.transformer import EchoMimicTransformer

    with init_empty_weights(include_buffers=False):
        return EchoMimicTransformer(config, attention_backend=attention_backend)


def _expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _build_on_meta(config, "sdpa").state_dict().items()}


def check_state_dict(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, object], what: str = "the checkpoint"
) -> None:
    """Raise one grouped :class:`CheckpointError` for missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(_shape(found[k])) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        # whole blocks absent (a cut-off file) read better as one line than per-module groups
        present = {int(m[1]) for k in found if (m := _BLOCK_INDEX.match(k))}
        gone = sorted({int(m[1]) for k in missing if (m := _BLOCK_INDEX.match(k))} - present)
        in_gone = {k for k in missing if (m := _BLOCK_INDEX.match(k)) and int(m[1]) in gone}
        lines = [f"{len(in_gone)} keys of {_ranges(gone)} entirely"] if gone else []
        lines += group_keys([k for k in missing if k not in in_gone])
        parts.append(f"missing {len(missing)} keys: {_summary(lines)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_summary(group_keys(unexpected))}")
    if wrong:
        examples = ", ".join(f"{k} {tuple(_shape(found[k]))} vs {tuple(expected[k])}" for k in wrong[:3])
        parts.append(f"{len(wrong)} tensors of the wrong shape (file vs model), e.g. {examples}")
    hint = (
        "a truncated or partial download (download it again)"
        if missing and not (unexpected or wrong)
        else "a different model size or architecture"
    )
    raise CheckpointError(
        f"{what} does not match the model it describes: " + ". ".join(parts) + f". This looks like {hint}."
    )


def _new_audio_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A missing audio layer as upstream creates it: norms at identity (weight 1, bias 0),
    projections zero, so the audio path adds nothing until trained."""
    module = key.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    if "norm" in module and key.endswith(".weight"):
        return torch.ones(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def _storage_dtype_for(
    key: str, tensor: torch.Tensor, dtype: torch.dtype, storage_dtype: torch.dtype | None
) -> torch.dtype:
    """fp8 is used for the big matrices inside the blocks only (what fp8 releases do): norms,
    biases, modulation, embeddings and the head stay in the compute dtype."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if storage_dtype is None:
        return dtype
    if storage_dtype in FP8_DTYPES:
        big_matrix = key.startswith("blocks.") and key.endswith(".weight") and tensor.ndim == 2
        return storage_dtype if big_matrix else dtype
    return storage_dtype


def load_transformer(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    storage_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    attention_backend: str = "sdpa",
    variant: str | None = None,
    config: TransformerConfig | None = None,
):
    """Load an EchoMimicV3 (or base Wan2.1-Fun-InP) transformer file into an
    :class:`~echomimic_core.model.transformer.EchoMimicTransformer` in eval mode.

    path: ``.safetensors``, ``.pth``/``.pt``, or a (sharded) diffusers folder; any wrapper prefix,
        original or diffusers names, ComfyUI scaled-fp8 files.
    dtype: compute dtype. storage_dtype: how parameters are kept (default ``dtype``); fp8 types
        apply to the large block matrices only, layers cast them on the fly. From a scaled-fp8
        file those matrices keep the file's fp8 values with a ``scale_weight`` buffer each.
    variant: ``None`` = from the file; ``"preview"``/``"flash"`` insists on that architecture
        (and picks the audio path given to a ``base`` file).
    config: use this config instead of the file's metadata / shapes (for files of unusual
        models whose head count or text length differ from Wan's); still checked strictly.
    """
    path = Path(path)
    info = _inspect(path, read_shapes(path), read_metadata(path), variant, config)
    config = info.config
    raw = load_state_dict(path)  # memory-mapped: no tensor data is read yet
    scales: dict[str, torch.Tensor] = {}
    if info.scaled_fp8:
        # fp8 storage keeps the file's own fp8 block matrices and their scales (re-quantising the
        # de-quantised weights without a scale would lose the small weights to fp8's subnormals);
        # every other scaled weight is de-quantised to the compute dtype
        original = {raw_key: key for key, raw_key in to_original_keys({k: k for k in raw}).items()}
        kept = {
            k[: -len(".weight")]
            for k, key in original.items()
            if storage_dtype in FP8_DTYPES
            and k.endswith(".weight")
            and _storage_dtype_for(key, raw[k], dtype, storage_dtype) in FP8_DTYPES
        }
        raw, raw_scales = split_scaled_fp8(raw, dtype=dtype, keep=kept.__contains__)
        scales = {original[layer + ".weight"][: -len(".weight")]: s for layer, s in raw_scales.items()}
    state = to_original_keys(raw)
    del raw

    model = _build_on_meta(config, attention_backend)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if info.variant == "base":
        added = [k for k in expected if _is_audio_key(k) and k not in state]
        log.warning(
            "%s is a base Wan2.1-Fun-InP transformer without audio layers; created %d audio "
            "tensors at zero (%s). It animates nothing from audio until fine-tuned.",
            path.name,
            len(added),
            _summary(group_keys(added), 4),
        )
        state.update({k: _new_audio_tensor(k, expected[k], dtype) for k in added})
    check_state_dict(expected, state, what=str(path))

    non_finite = []
    for key in list(state):  # one tensor at a time, so the file copy is released as we go
        tensor = state[key]
        if not is_finite(tensor):
            non_finite.append(key)
        target = _storage_dtype_for(key, tensor, dtype, storage_dtype)
        if target in FP8_DTYPES and tensor.dtype != target:
            tensor = tensor.to(device)
            # fp8 -> other fp8 (a kept scaled weight): clamp is not defined on fp8 tensors
            tensor = to_fp8(tensor.float() if tensor.dtype in FP8_DTYPES else tensor, target)
        state[key] = tensor.to(device=device, dtype=target)
    if non_finite:
        raise CheckpointError(
            f"{path}: {len(non_finite)} of {len(state)} weight tensors hold NaN or infinite values "
            f"({_summary(group_keys(non_finite), 4)}); every video from it would be black. The file is "
            "damaged or was saved from a diverged training run: download it again or use an earlier checkpoint."
        )
    model.load_state_dict(state, strict=True, assign=True)
    for layer, scale in scales.items():
        model.get_submodule(layer).register_buffer("scale_weight", scale.to(device))
    _move_buffers(model, device)
    model.compute_dtype = dtype
    model.requires_grad_(False)
    if dtype == torch.float16:
        log.warning(
            "float16 compute: the residual stream stays in float16 (largest value 65504) and is not clamped; "
            "EchoMimicV3 was trained and released in bfloat16 and upstream never runs float16, and the "
            "activation ranges of the released weights were not measured here. Prefer bfloat16 (or float32 "
            "on GPUs without bfloat16, e.g. V100/T4); a forward that overflows stops with an error."
        )
    log.info(
        "loaded %s transformer from %s (%d layers, dim %d, storage %s, compute %s)",
        info.variant,
        path.name,
        config.num_layers,
        config.dim,
        storage_dtype or dtype,
        dtype,
    )
    return model.eval()


# float8 bit patterns that are NaN (e4m3fn has no infinity): exponent and mantissa all ones, either sign
_FP8_NOT_FINITE = {torch.float8_e4m3fn: (0x7F, 0x7F), torch.float8_e5m2: (0x7C, 0x7C)}


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a weight is finite, in one reduction over it: NaN propagates through
    min/max and an infinity is the min or max. (About a fifth of the time of copying the tensor on a
    CPU, where torch.isfinite(t).all() takes five copies' time; nothing next to reading it from disk.)"""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if tensor.dtype in _FP8_NOT_FINITE:
        mask, pattern = _FP8_NOT_FINITE[tensor.dtype]
        return not bool(((tensor.view(torch.uint8) & mask) == pattern).any())
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _move_buffers(model: torch.nn.Module, device) -> None:
    """Buffers are not in the file (they are built in __init__, on the CPU): follow the weights."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta:
                raise RuntimeError(f"buffer {name} of {type(module).__name__} was left on the meta device.")
            module._buffers[name] = buffer.to(device)


def save_transformer(
    model,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write the model's state dict as safetensors (original key names) with its config in the
    metadata, so the file loads on its own. ``dtype`` casts floating tensors on the way out
    (e.g. fp32 training weights saved as bf16); by default each keeps its stored dtype, fp8
    included. ``state_dict`` writes other weights of this model instead of its own (training's
    gathered FSDP shards, its EMA average). The file appears atomically (written aside, then renamed)."""
    meta = {
        CONFIG_METADATA_KEY: json.dumps(model.config.to_dict()),
        "format": "pt",
        "echomimic_variant": model.config.variant,
        **(metadata or {}),
    }
    state = {
        k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).cpu()
        for k, v in (model.state_dict() if state_dict is None else state_dict).items()
    }
    save_state_dict(state, path, metadata=meta)
