"""The transformer a run starts from: an EchoMimicV3 checkpoint, a Wan2.1-Fun-InP checkpoint, or
a preset with random weights (tests).

Audio layers that do not come from the file are initialised as upstream's constructor does:
``cross_attn.k_audio`` / ``v_audio`` weights zero (the audio path adds nothing at step 0), the
audio projector with PyTorch's default init. The node pack's loader creates a base file's missing
audio tensors all at zero, which is right for inference but would leave training with no gradient
into the audio path (zero projector output times zero ``v_audio``), so the projector is re-drawn.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from echomimic_core.checkpoints.files import read_shapes
from echomimic_core.checkpoints.transformer import detect_variant, load_transformer
from echomimic_core.config import TransformerConfig
from echomimic_core.model.transformer import EchoMimicTransformer
from training.config import ModelConfig

log = logging.getLogger(__name__)


def zero_audio_attention(model: EchoMimicTransformer) -> None:
    """Upstream ``nn.init.zeros_`` of every block's ``k_audio`` / ``v_audio`` (and their biases)."""
    for block in model.blocks:
        for layer in (block.cross_attn.k_audio, block.cross_attn.v_audio):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def reset_audio_projector(model: EchoMimicTransformer, seed: int = 0) -> None:
    """Default (PyTorch) init of the audio projector, drawn from a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.audio_projector.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


AUDIO_FIELDS = (
    "variant",
    "audio_in_dim",
    "audio_tokens_per_frame",
    "audio_window_expand",
    "audio_window",
    "audio_blocks",
    "audio_channels",
    "audio_intermediate_dim",
    "audio_context_tokens",
)


def _with_preset_audio(model: EchoMimicTransformer, preset: TransformerConfig) -> EchoMimicTransformer:
    """A base file says nothing about the audio path; the loader gives it the released widths.
    When the preset wants others (e.g. Whisper-Tiny's 384-wide features), rebuild with the preset's
    audio fields and keep every Wan weight."""
    wanted = {f: getattr(preset, f) for f in AUDIO_FIELDS}
    if all(getattr(model.config, f) == v for f, v in wanted.items()):
        return model
    fresh = EchoMimicTransformer(dataclasses.replace(model.config, **wanted))
    wan = {k: v for k, v in model.state_dict().items() if not (k.startswith(model.audio_key + ".") or "_audio." in k)}
    missing, unexpected = fresh.load_state_dict(wan, strict=False)
    if unexpected or any(not (k.startswith(fresh.audio_key + ".") or "_audio." in k) for k in missing):
        raise RuntimeError(
            f"rebuilding with the preset's audio path lost Wan weights: missing "
            f"{missing[:4]}, unexpected {unexpected[:4]}."
        )
    return fresh


def build_model(cfg: ModelConfig, seed: int = 0) -> EchoMimicTransformer:
    """A float32 model in train mode with every parameter trainable."""
    if cfg.checkpoint is None:
        config = TransformerConfig.preset(cfg.preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = EchoMimicTransformer(config)
        zero_audio_attention(model)
        log.info("built a randomly initialised %r transformer (no checkpoint given)", cfg.preset)
    else:
        variant = detect_variant(read_shapes(cfg.checkpoint))
        wanted = TransformerConfig.preset(cfg.preset).variant
        model = load_transformer(cfg.checkpoint, dtype=torch.float32, variant=wanted if variant == "base" else None)
        model.compute_dtype = None  # accelerate's autocast decides the compute dtype
        if variant != "base" and variant != wanted:
            log.warning(
                "%s is a %s checkpoint; model.preset %r (%s) is ignored for it.",
                cfg.checkpoint,
                variant,
                cfg.preset,
                wanted,
            )
        if variant == "base":
            model = _with_preset_audio(model, TransformerConfig.preset(cfg.preset))
            reset_audio_projector(model, seed)
            zero_audio_attention(model)
            log.info(
                "initialised the %s audio layers of base checkpoint %s as upstream",
                model.config.variant,
                cfg.checkpoint,
            )
    model.requires_grad_(True)
    # flash's q_audio is kept for strict loading but never used by the forward: a trainable
    # parameter without gradient makes DDP fail ("parameters that were not used")
    for name, param in model.named_parameters():
        if ".cross_attn.q_audio." in name:
            param.requires_grad_(False)
    return model.train()
