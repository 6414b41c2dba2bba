"""CLIP ViT-H/14 vision tower (Wan's image encoder) on transformers' ``CLIPVisionModel``.

Wan conditions on the tokens after every block but the last (``use_31_block``: 257 x 1280 for
ViT-H at 224 px), with no post-norm and no projection head. We build the HF model with one layer
fewer and read ``last_hidden_state``, which HF returns before ``post_layernorm`` -- the same
tensor, and the last block is never computed or kept in memory.

Checkpoint layouts read by ``ImageEncoder.load``:
  * Wan's open-clip ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (``visual.*``;
    the text tower is ignored; fused ``to_qkv`` split into q/k/v);
  * ComfyUI's ``clip_vision_h.safetensors`` and HF ``CLIPVisionModel(WithProjection)`` files
    (``vision_model.*``, ``visual_projection.weight``).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints.files import CheckpointError, load_state_dict, save_state_dict, strip_prefix
from ..checkpoints.keytables import KeyTable, rename
from .keymap import assign_weights, guess_family

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# width -> heads of the released towers (heads cannot be read from weight shapes)
HEADS_BY_WIDTH = {1280: 16, 1024: 16, 768: 12}

WAN_TO_HF: KeyTable = (
    ("visual.cls_embedding", "vision_model.embeddings.class_embedding"),
    ("visual.pos_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("visual.patch_embedding.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual.pre_norm.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.pre_norm.bias", "vision_model.pre_layrnorm.bias"),
    ("visual.post_norm.weight", "vision_model.post_layernorm.weight"),
    ("visual.post_norm.bias", "vision_model.post_layernorm.bias"),
    ("visual.head", "visual_projection.weight"),
    *(
        (f"visual.transformer.{{i}}.{wan}.{p}", f"vision_model.encoder.layers.{{i}}.{hf}.{p}")
        for wan, hf in (
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("attn.to_q", "self_attn.q_proj"),
            ("attn.to_k", "self_attn.k_proj"),
            ("attn.to_v", "self_attn.v_proj"),
            ("attn.proj", "self_attn.out_proj"),
            ("mlp.0", "mlp.fc1"),
            ("mlp.2", "mlp.fc2"),
        )
        for p in ("weight", "bias")
    ),
)
_QKV = ("to_q", "to_k", "to_v")


# ---------------------------------------------------------------------------------------------
# key conversion: renames from the table plus three small transforms (qkv, shapes, transpose)


def wan_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan / open-clip ``visual.*`` -> HF ``vision_model.*`` (+ ``visual_projection``)."""
    state = {k: v for k, v in state.items() if k.startswith("visual.")}
    split = {}
    for key, value in state.items():
        if ".attn.to_qkv." in key:
            # to_qkv(x).view(b, s, 3, heads, head_dim): q, k, v are consecutive thirds of the rows
            for name, part in zip(_QKV, value.chunk(3, dim=0)):
                split[key.replace("to_qkv", name)] = part
        else:
            split[key] = value
    out = rename(split, WAN_TO_HF, what="open-clip visual tower")
    cls = "vision_model.embeddings.class_embedding"
    pos = "vision_model.embeddings.position_embedding.weight"
    out[cls] = out[cls].reshape(-1)  # [1, 1, D] -> [D]
    out[pos] = out[pos].reshape(-1, out[pos].shape[-1])  # [1, N, D] -> [N, D]
    if "visual_projection.weight" in out:
        out["visual_projection.weight"] = out["visual_projection.weight"].t()  # x @ head = Linear(head.T)
    return out


def hf_to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``vision_model.*`` -> Wan ``visual.*`` (inverse of ``wan_to_hf``)."""
    state = {
        k: v
        for k, v in state.items()
        if k.startswith(("vision_model.", "visual_projection.")) and not k.endswith("position_ids")
    }
    out = rename(state, WAN_TO_HF, reverse=True, what="CLIP vision model (Hugging Face names)")
    for key in [k for k in out if ".attn.to_q." in k]:
        parts = [out.pop(key.replace("to_q", name)) for name in _QKV]
        out[key.replace("to_q", "to_qkv")] = torch.cat(parts, dim=0)
    out["visual.cls_embedding"] = out["visual.cls_embedding"].reshape(1, 1, -1)
    out["visual.pos_embedding"] = out["visual.pos_embedding"].unsqueeze(0)
    if "visual.head" in out:
        out["visual.head"] = out["visual.head"].t()
    return out


def detect_layout(keys) -> str:
    """``"wan"`` or ``"hf"``; anything else is the wrong file for the image-encoder slot."""
    keys = set(keys)
    if "visual.transformer.0.attn.to_qkv.weight" in keys:
        return "wan"
    if "vision_model.encoder.layers.0.layer_norm1.weight" in keys:
        return "hf"
    raise CheckpointError(
        f"expected a CLIP ViT-H vision encoder (ComfyUI's clip_vision_h.safetensors or Wan's "
        f"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), but this file looks like "
        f"{guess_family(keys)}. Select the CLIP vision file for this input."
    )


def config_from_hf_state(state: dict[str, torch.Tensor], num_heads: int | None = None, num_layers: int | None = None):
    """The ``CLIPVisionConfig`` the weights imply; ``num_layers`` overrides the depth built."""
    from transformers import CLIPVisionConfig

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(f"CLIP position table has {positions} rows; expected 1 + a square grid.")
    if num_heads is None:
        if width not in HEADS_BY_WIDTH:
            raise CheckpointError(
                f"CLIP tower of width {width}: the head count cannot be read from the weights; "
                f"pass num_heads (known widths: {sorted(HEADS_BY_WIDTH)})."
            )
        num_heads = HEADS_BY_WIDTH[width]
    depth = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth if num_layers is None else num_layers,
        num_attention_heads=num_heads,
        num_channels=patch.shape[1],
        image_size=grid * patch_size,
        patch_size=patch_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def tower(model):
    """The module holding ``embeddings`` / ``encoder`` in either transformers generation."""
    return getattr(model, "vision_model", model)


def build_model(state_hf: dict[str, torch.Tensor], dtype: torch.dtype, device, num_heads: int | None = None):
    """``CLIPVisionModel`` with every block but the last, built on meta and given the tensors."""
    from transformers import CLIPVisionModel

    full = config_from_hf_state(state_hf, num_heads)
    if full.num_hidden_layers < 2:
        raise CheckpointError("CLIP tower with a single block: Wan uses the output before the last block.")
    config = config_from_hf_state(state_hf, num_heads, num_layers=full.num_hidden_layers - 1)
    with torch.device("meta"):
        model = CLIPVisionModel(config)
    dropped = f"vision_model.encoder.layers.{config.num_hidden_layers}."
    # transformers 5 puts the tower at the top of CLIPVisionModel, 4.x under ``vision_model.``
    own = "vision_model." if hasattr(model, "vision_model") else ""
    weights = {
        own + k[len("vision_model.") :]: v.to(device=device, dtype=dtype)
        for k, v in state_hf.items()
        if k.startswith("vision_model.") and not k.startswith(dropped) and not k.endswith("position_ids")
    }
    assign_weights(
        model, weights, "CLIP vision weights", "The file is incomplete or not a CLIP vision tower (clip_vision_h)."
    )
    embeddings = tower(model).embeddings
    # a non-persistent buffer: not in the file, so it is still on meta after assign
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand(1, -1)
    return model.eval().requires_grad_(False)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """HF-layout vision weights from any supported file."""
    raw = strip_prefix(load_state_dict(path), ("clip_vision.", "model.", "module."))
    return (
        wan_to_hf(raw)
        if detect_layout(raw) == "wan"
        else {k: v for k, v in raw.items() if k.startswith(("vision_model.", "visual_projection."))}
    )


# ---------------------------------------------------------------------------------------------
# the encoder


def clip_preprocess(
    images: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype, device
) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> normalised [B, 3, S, S], as upstream: the WHOLE image
    bicubic-resized to S x S (no crop, no antialias) in the model dtype, then [-1, 1] -> [0, 1] and
    CLIP mean/std ([1, 3, 1, 1] each). Shared by every CLIP tower we run (ours and ComfyUI's)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}.")
    x = images.to(device=device, dtype=dtype)
    x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    return (x - mean.to(x)) / std.to(x)


class ImageEncoder:
    """Images in [-1, 1] -> CLIP tokens ``[B, 1 + grid^2, width]`` (257 x 1280 for ViT-H/14)."""

    def __init__(self, model, mean=CLIP_MEAN, std=CLIP_STD):
        self.model = model
        self.image_size = model.config.image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return tower(self.model).embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return tower(self.model).embeddings.patch_embedding.weight.device

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @classmethod
    def load(
        cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, device="cpu", num_heads: int | None = None
    ) -> ImageEncoder:
        return cls(build_model(read_checkpoint(path), dtype, device, num_heads))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> normalised [B, 3, S, S] (see :func:`clip_preprocess`)."""
        return clip_preprocess(images, self.image_size, self.mean, self.std, self.dtype, self.device)

    @torch.no_grad()
    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised [B, 3, S, S] -> tokens after all blocks but the last [B, tokens, width]."""
        return self.model(pixel_values=pixels).last_hidden_state

    def to(self, device) -> ImageEncoder:
        """Move the weights (e.g. offload to the CPU between uses)."""
        self.model.to(device)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 257, 1280] for ViT-H (Wan's ``clip_fea``)."""
        return self.forward_pixels(self.preprocess(images))


# ---------------------------------------------------------------------------------------------
# parity fixture


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """clip_vision_* fixtures: Wan weights through each supported route vs the upstream tokens."""
    from safetensors.torch import load_file

    from ..verify_reference import relative_error

    data = load_file(str(path))
    wan = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    heads = meta["clip_vision_tiny_config"]["num_heads"]
    video, ref = data["input.image"], data["output"]
    images = video[:, :, 0]  # [B, 3, 1, H, W] -> [B, 3, H, W]: upstream feeds one frame
    hf = wan_to_hf(wan)
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        routes = (
            ("wan->hf", None, hf),
            ("wan->hf->wan->hf", None, wan_to_hf(hf_to_wan(hf))),
            ("comfy_file->load", "clip_vision_h.safetensors", hf),
            ("wan_file->load", "open_clip.safetensors", wan),
        )
        for name, file, weights in routes:
            if file is None:
                encoder = ImageEncoder(build_model(weights, torch.float32, "cpu", heads))
            else:
                save_state_dict(weights, Path(tmp) / file)
                encoder = ImageEncoder.load(Path(tmp) / file, torch.float32, num_heads=heads)
            errors[name] = relative_error(encoder.encode(images), ref)
    return errors
