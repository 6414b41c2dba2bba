"""Loader nodes: the EchoMimicV3 transformer and the pack's own VAE / text / image / audio encoders.

Each loader lists files from a ComfyUI model folder (``comfy_services``), loads with the core's
loader (any released layout, fp8 files included) and parks the weights on ComfyUI's offload
device; the sampler moves what it needs to the compute device.
"""
from __future__ import annotations

import logging

import torch

from . import comfy_services as services
from .common import CATEGORY, PRECISIONS

log = logging.getLogger(__name__)

STORAGE = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _file_choice(folder: str, tooltip: str):
    return (services.list_models(folder), {"tooltip": tooltip})


def _missing_file(folder: str, name: str):
    """VALIDATE_INPUTS answer: True, or why ``name`` cannot be used (before anything loads)."""
    try:
        services.model_path(name, folder)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    return True


# The transformer may sit in the pack's own folder or in ComfyUI's diffusion_models (the demo's place).
TRANSFORMER_FOLDERS = (services.FOLDER_NAME, "diffusion_models")


def _transformer_files() -> list[str]:
    names: list[str] = []
    for folder in TRANSFORMER_FOLDERS:
        names += [n for n in services.list_models(folder) if n not in names]
    return names


def _transformer_path(name: str):
    """The file ``name`` from models/echomimic, else models/diffusion_models."""
    errors = []
    for folder in TRANSFORMER_FOLDERS:
        try:
            return services.model_path(name, folder)
        except (FileNotFoundError, ValueError) as e:
            errors.append(str(e))
    raise FileNotFoundError(" / ".join(errors))


class EchoMimicModelLoader:
    """The EchoMimicV3 transformer (preview, flash, or a base Wan2.1-Fun-InP file)."""

    @classmethod
    def INPUT_TYPES(cls):
        from echomimic_core.model.attention import available_backends

        return {"required": {
            "model": (_transformer_files(), {"tooltip": "Transformer file in models/echomimic or "
                      "models/diffusion_models (safetensors, pth, ComfyUI fp8-scaled files)."}),
            "precision": (list(PRECISIONS), {"default": "bf16", "tooltip": "Compute dtype."}),
            "weight_storage": (list(STORAGE), {"default": "default", "tooltip":
                               "fp8 keeps the block matrices in 8 bits (half the memory), cast on the fly."}),
            "attention": (available_backends(), {"default": "sdpa"}),
            "variant": (["auto", "preview", "flash"], {"default": "auto", "tooltip":
                        "auto reads it from the file; a base Wan2.1-Fun-InP file needs preview or flash."}),
        }, "optional": {
            "block_swap": ("INT", {"default": 0, "min": 0, "max": 40, "advanced": True, "tooltip":
                           "Keep this many transformer blocks in CPU memory and stream each to the GPU when it "
                           "runs (less GPU memory, slower). 0 = all blocks on the GPU."}),
        }}

    RETURN_TYPES = ("ECHOMIMIC_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        try:
            _transformer_path(model)
        except FileNotFoundError as e:
            return str(e)
        return True

    def load(self, model, precision, weight_storage, attention, variant, block_swap=0):
        from echomimic_core.checkpoints.transformer import load_transformer

        loaded = load_transformer(_transformer_path(model), dtype=PRECISIONS[precision],
                                  storage_dtype=STORAGE[weight_storage], device=services.offload_device(),
                                  attention_backend=attention, variant=None if variant == "auto" else variant)
        if block_swap > len(loaded.blocks):
            raise ValueError(f"block_swap {block_swap} is more than the model's {len(loaded.blocks)} blocks; "
                             f"use 0..{len(loaded.blocks)}.")
        # placement happens in the sampler (see sampler.on_compute_device); the loader only records it
        loaded.echomimic_block_swap = int(block_swap)
        return (loaded,)


class EchoMimicVAELoader:
    """The Wan2.1 VAE (Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors, or a diffusers file)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": _file_choice("vae", "Wan2.1 VAE file in models/vae."),
            "precision": (list(PRECISIONS), {"default": "bf16"}),
        }}

    RETURN_TYPES = ("ECHOMIMIC_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, vae):
        return _missing_file("vae", vae)

    def load(self, vae, precision):
        from echomimic_core.vae import load_vae

        return (load_vae(services.model_path(vae, "vae"), dtype=PRECISIONS[precision],
                         device=services.offload_device()),)


class EchoMimicTextEncoderLoader:
    """umT5-XXL (Wan's .pth, Hugging Face files, ComfyUI's umt5_xxl fp16 / fp8-scaled files)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": _file_choice("text_encoders", "umT5-XXL file in models/text_encoders."),
            "precision": (list(PRECISIONS), {"default": "bf16"}),
        }}

    RETURN_TYPES = ("ECHOMIMIC_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder):
        return _missing_file("text_encoders", text_encoder)

    def load(self, text_encoder, precision):
        from echomimic_core.encoders.text import TextEncoder

        return (TextEncoder.load(services.model_path(text_encoder, "text_encoders"), dtype=PRECISIONS[precision],
                                 device=services.offload_device()),)


class EchoMimicCLIPVisionLoader:
    """CLIP ViT-H/14 vision tower (Wan's open-clip .pth or ComfyUI's clip_vision_h.safetensors)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": _file_choice("clip_vision", "CLIP ViT-H file in models/clip_vision."),
            "precision": (list(PRECISIONS), {"default": "bf16"}),
        }}

    RETURN_TYPES = ("ECHOMIMIC_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, clip_vision):
        return _missing_file("clip_vision", clip_vision)

    def load(self, clip_vision, precision):
        from echomimic_core.encoders.image import ImageEncoder

        return (ImageEncoder.load(services.model_path(clip_vision, "clip_vision"), dtype=PRECISIONS[precision],
                                  device=services.offload_device()),)


class EchoMimicAudioEncoderLoader:
    """wav2vec2-base-960h (preview), chinese-wav2vec2-base (flash) or Whisper, from models/audio_encoders."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio_encoder": _file_choice("audio_encoders", "Audio encoder file in models/audio_encoders."),
            "kind": (["auto", "preview", "flash", "whisper"], {"default": "auto", "tooltip":
                     "Which model's feature path to use; auto reads the file name / config."}),
            "precision": (list(PRECISIONS), {"default": "fp32", "tooltip":
                          "Audio features are small: fp32 costs little and matches upstream best."}),
        }, "optional": {
            "loudness_normalize": (["auto", "on", "off"], {"default": "auto", "advanced": True, "tooltip":
                                   "Flash: normalise the speech to -23 LUFS first (auto = as upstream: on for "
                                   "flash; preview and Whisper never use it)."}),
        }}

    RETURN_TYPES = ("ECHOMIMIC_AUDIO_ENCODER",)
    RETURN_NAMES = ("audio_encoder",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, audio_encoder):
        return _missing_file("audio_encoders", audio_encoder)

    def load(self, audio_encoder, kind, precision, loudness_normalize="auto"):
        from echomimic_core.encoders.audio import AudioEncoder

        return (AudioEncoder.load(services.model_path(audio_encoder, "audio_encoders"),
                                  kind=None if kind == "auto" else kind, dtype=PRECISIONS[precision],
                                  device=services.offload_device(),
                                  loudness_norm={"on": True, "off": False}.get(loudness_normalize)),)


NODE_CLASS_MAPPINGS = {
    "EchoMimicModelLoader": EchoMimicModelLoader,
    "EchoMimicVAELoader": EchoMimicVAELoader,
    "EchoMimicTextEncoderLoader": EchoMimicTextEncoderLoader,
    "EchoMimicCLIPVisionLoader": EchoMimicCLIPVisionLoader,
    "EchoMimicAudioEncoderLoader": EchoMimicAudioEncoderLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoMimicModelLoader": "EchoMimicV3 Model Loader",
    "EchoMimicVAELoader": "EchoMimicV3 VAE Loader",
    "EchoMimicTextEncoderLoader": "EchoMimicV3 Text Encoder Loader",
    "EchoMimicCLIPVisionLoader": "EchoMimicV3 CLIP Vision Loader",
    "EchoMimicAudioEncoderLoader": "EchoMimicV3 Audio Encoder Loader",
}
