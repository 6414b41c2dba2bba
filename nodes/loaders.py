"""Loader nodes: the EchoMimicV3 transformer and the pack's own VAE / text / image / audio encoders.

Each loader lists files from a ComfyUI model folder (``comfy_services``), loads with the core's
loader (any released layout, fp8 files included) and parks the weights on ComfyUI's offload
device; the sampler moves what it needs to the compute device.
"""

from __future__ import annotations

import torch

from echomimic_core.config import AUDIO_KINDS, VARIANTS

from . import comfy_services as services
from .common import CATEGORY, PRECISIONS

STORAGE = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


# The transformer may sit in the pack's own folder or in ComfyUI's diffusion_models (the demo's place).
TRANSFORMER_FOLDERS = (services.FOLDER_NAME, "diffusion_models")


def _transformer_files() -> list[str]:
    names: list[str] = []
    for folder in TRANSFORMER_FOLDERS:
        names += [n for n in services.list_models(folder) if n not in names]
    return names


class EchoMimicModelLoader:
    """The EchoMimicV3 transformer (preview, flash, or a base Wan2.1-Fun-InP file)."""

    @classmethod
    def INPUT_TYPES(cls):
        from echomimic_core.model.attention import available_backends

        return {
            "required": {
                "model": (
                    _transformer_files(),
                    {
                        "tooltip": "Transformer file in models/echomimic or "
                        "models/diffusion_models (safetensors, pth, ComfyUI fp8-scaled files)."
                    },
                ),
                "precision": (list(PRECISIONS), {"default": "bf16", "tooltip": "Compute dtype."}),
                "weight_storage": (
                    list(STORAGE),
                    {
                        "default": "default",
                        "tooltip": "fp8 keeps the block matrices in 8 bits (half the memory), cast on the fly.",
                    },
                ),
                "attention": (available_backends(), {"default": "sdpa"}),
                "variant": (
                    ["auto", *VARIANTS],
                    {
                        "default": "auto",
                        "tooltip": "auto reads it from the file; a base Wan2.1-Fun-InP file needs preview or flash.",
                    },
                ),
            },
            "optional": {
                "block_swap": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 40,
                        "advanced": True,
                        "tooltip": "Keep this many transformer blocks in CPU memory and stream each to the GPU when it "
                        "runs (less GPU memory, slower). 0 = all blocks on the GPU.",
                    },
                ),
                "compile": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "advanced": True,
                        "tooltip": "torch.compile the transformer blocks: the first run of each chunk length "
                        "compiles (a minute or so), later steps are faster.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("ECHOMIMIC_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, model):
        return services.missing_model(model, *TRANSFORMER_FOLDERS)

    def load(self, model, precision, weight_storage, attention, variant, block_swap=0, compile=False):
        from echomimic_core.checkpoints.transformer import inspect_checkpoint, load_transformer
        from echomimic_core.model.transformer import check_block_swap

        path = services.find_model(model, TRANSFORMER_FOLDERS)
        variant = None if variant == "auto" else variant
        # from the file's header: a block count the model does not have is refused before loading it
        check_block_swap(block_swap, inspect_checkpoint(path, variant).config.num_layers)
        loaded = load_transformer(
            path,
            dtype=PRECISIONS[precision],
            storage_dtype=STORAGE[weight_storage],
            device=services.offload_device(),
            attention_backend=attention,
            variant=variant,
        )
        # placement happens in the sampler (comfy_services.transformer_loaded); the loader only records it
        loaded.echomimic_block_swap = int(block_swap)
        if compile:
            loaded.compile_blocks()
        return (loaded,)


class _EncoderLoader:
    """One file from one model folder at a compute precision, loaded by a core loader onto the offload device.

    A subclass names its folder, its combo (``FILE_INPUT``, the name saved workflows use) and its
    output, and keeps its own ``VALIDATE_INPUTS``: ComfyUI passes that method only the inputs its
    signature names, so each class spells out its combo's name there.
    """

    FOLDER = FILE_INPUT = TOOLTIP = ""
    DEFAULT_PRECISION = "bf16"
    PRECISION_TOOLTIP = "Compute dtype."
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                cls.FILE_INPUT: (services.list_models(cls.FOLDER), {"tooltip": cls.TOOLTIP}),
                "precision": (list(PRECISIONS), {"default": cls.DEFAULT_PRECISION, "tooltip": cls.PRECISION_TOOLTIP}),
            }
        }

    def _load(self, load_file, name: str, precision: str, **options):
        """``load_file(path, dtype=..., device=offload, **options)`` on the file ``name`` of this folder."""
        return load_file(
            services.model_path(name, self.FOLDER),
            dtype=PRECISIONS[precision],
            device=services.offload_device(),
            **options,
        )


class EchoMimicVAELoader(_EncoderLoader):
    """The Wan2.1 VAE (Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae.safetensors, or a diffusers file)."""

    FOLDER = FILE_INPUT = "vae"
    TOOLTIP = "Wan2.1 VAE file in models/vae."
    RETURN_TYPES = ("ECHOMIMIC_VAE",)
    RETURN_NAMES = ("vae",)

    @classmethod
    def VALIDATE_INPUTS(cls, vae):
        return services.missing_model(vae, cls.FOLDER)

    def load(self, vae, precision):
        from echomimic_core.vae import load_vae

        return (self._load(load_vae, vae, precision),)


class EchoMimicTextEncoderLoader(_EncoderLoader):
    """umT5-XXL (Wan's .pth, Hugging Face files, ComfyUI's umt5_xxl fp16 / fp8-scaled files)."""

    FOLDER, FILE_INPUT = "text_encoders", "text_encoder"
    TOOLTIP = "umT5-XXL file in models/text_encoders."
    RETURN_TYPES = ("ECHOMIMIC_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)

    @classmethod
    def VALIDATE_INPUTS(cls, text_encoder):
        return services.missing_model(text_encoder, cls.FOLDER)

    def load(self, text_encoder, precision):
        from echomimic_core.encoders.text import TextEncoder

        return (self._load(TextEncoder.load, text_encoder, precision),)


class EchoMimicCLIPVisionLoader(_EncoderLoader):
    """CLIP ViT-H/14 vision tower (Wan's open-clip .pth or ComfyUI's clip_vision_h.safetensors)."""

    FOLDER = FILE_INPUT = "clip_vision"
    TOOLTIP = "CLIP ViT-H file in models/clip_vision."
    RETURN_TYPES = ("ECHOMIMIC_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)

    @classmethod
    def VALIDATE_INPUTS(cls, clip_vision):
        return services.missing_model(clip_vision, cls.FOLDER)

    def load(self, clip_vision, precision):
        from echomimic_core.encoders.image import ImageEncoder

        return (self._load(ImageEncoder.load, clip_vision, precision),)


class EchoMimicAudioEncoderLoader(_EncoderLoader):
    """wav2vec2-base-960h (preview), chinese-wav2vec2-base (flash) or Whisper, from models/audio_encoders."""

    FOLDER, FILE_INPUT = "audio_encoders", "audio_encoder"
    TOOLTIP = "Audio encoder file in models/audio_encoders."
    DEFAULT_PRECISION = "fp32"
    PRECISION_TOOLTIP = "Audio features are small: fp32 costs little and matches upstream best."
    RETURN_TYPES = ("ECHOMIMIC_AUDIO_ENCODER",)
    RETURN_NAMES = ("audio_encoder",)

    @classmethod
    def INPUT_TYPES(cls):
        required = super().INPUT_TYPES()["required"]
        return {
            "required": {
                cls.FILE_INPUT: required[cls.FILE_INPUT],
                "kind": (
                    ["auto", *AUDIO_KINDS],
                    {
                        "default": "auto",
                        "tooltip": "Which model's feature path to use; auto reads the file name / config.",
                    },
                ),
                "precision": required["precision"],
            },
            "optional": {
                "loudness_normalize": (
                    ["auto", "on", "off"],
                    {
                        "default": "auto",
                        "advanced": True,
                        "tooltip": "Flash: normalise the speech to -23 LUFS first (auto = as upstream: on for "
                        "flash; preview and Whisper never use it).",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, audio_encoder):
        return services.missing_model(audio_encoder, cls.FOLDER)

    def load(self, audio_encoder, kind, precision, loudness_normalize="auto"):
        from echomimic_core.encoders.audio import AudioEncoder

        return (
            self._load(
                AudioEncoder.load,
                audio_encoder,
                precision,
                kind=None if kind == "auto" else kind,
                loudness_norm={"on": True, "off": False}.get(loudness_normalize),
            ),
        )


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
