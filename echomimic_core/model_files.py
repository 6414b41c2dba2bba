"""Find the model files of a generation in a folder, whichever way the user laid it out.

Two layouts are recognised, and explicit paths always win:

* upstream's release (``preview/`` or ``flash/``)::

      Wan2.1-Fun-V1.1-1.3B-InP/{Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth,
                                models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth, google/umt5-xxl/}
      transformer/diffusion_pytorch_model.safetensors   (or echomimicv3-flash-pro/...)
      wav2vec2-base-960h/  |  chinese-wav2vec2-base/

* ComfyUI's ``models/`` folder::

      diffusion_models/ or echomimic/   the EchoMimicV3 transformer file
      vae/wan_2.1_vae.safetensors, text_encoders/umt5_xxl_*.safetensors (or clip/),
      clip_vision/clip_vision_h.safetensors, audio_encoders/ (or echomimic/)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class ModelFiles:
    transformer: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None  # only needed when the text-encoder file embeds none
    image_encoder: Path | None = None
    audio_encoder: Path | None = None

    def missing(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "tokenizer" and getattr(self, f.name) is None]


# Candidates per slot, relative to the models folder, most specific first. A trailing "*"
# matches by glob; folders are returned as they are (Hugging Face / diffusers layouts).
_CANDIDATES = {
    "transformer": [
        "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "echomimic/*echomimic*",
        "diffusion_models/*echomimic*",
        "echomimic/*",
        "*echomimic*",
    ],
    "vae": [
        "Wan2.1-Fun-V1.1-1.3B-InP/Wan2.1_VAE.pth",
        "Wan2.1_VAE.pth",
        "vae/wan_2.1_vae*",
        "vae/Wan2*VAE*",
        "vae/*wan*",
    ],
    "text_encoder": [
        "Wan2.1-Fun-V1.1-1.3B-InP/models_t5_umt5-xxl-enc-bf16.pth",
        "models_t5_umt5-xxl-enc-bf16.pth",
        "text_encoders/umt5*",
        "clip/umt5*",
        "text_encoders/*t5*",
        "clip/*t5*",
    ],
    "tokenizer": ["Wan2.1-Fun-V1.1-1.3B-InP/google/umt5-xxl", "google/umt5-xxl"],
    "image_encoder": [
        "Wan2.1-Fun-V1.1-1.3B-InP/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        "clip_vision/clip_vision_h*",
        "clip_vision/*",
    ],
    "audio_encoder": [
        "chinese-wav2vec2-base",
        "wav2vec2-base-960h",
        "whisper-tiny",
        "audio_encoders/*chinese*",
        "audio_encoders/*wav2vec2*",
        "audio_encoders/*whisper*",
        "echomimic/*wav2vec2*",
        "echomimic/*whisper*",
    ],
}


def _first_match(root: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        if "*" in pattern:
            hits = sorted(p for p in root.glob(pattern) if p.is_dir() or p.suffix in WEIGHT_SUFFIXES)
            if hits:
                return hits[0]
        elif (root / pattern).exists():
            return root / pattern
    return None


def find_model_files(
    models_dir: str | Path | None = None, variant: str | None = None, **explicit: str | Path | None
) -> ModelFiles:
    """Resolve every slot: an explicit path if given, else the first match under ``models_dir``.

    ``variant`` ("preview"/"flash") picks the matching audio encoder and transformer when a
    folder holds both releases' files.
    """
    files = ModelFiles()
    for slot in (f.name for f in fields(ModelFiles)):
        path = explicit.get(slot)
        if path is not None:
            path = Path(path)
            if not path.exists():
                raise FileNotFoundError(f"--{slot.replace('_', '-')} {path}: no such file or folder.")
            setattr(files, slot, path)
    if models_dir is None:
        return files
    root = Path(models_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"models folder {root} does not exist; pass the folder that holds "
            "the EchoMimicV3 release or ComfyUI's models/ folder."
        )
    for slot, patterns in _CANDIDATES.items():
        if getattr(files, slot) is None:
            setattr(files, slot, _first_match(root, _prefer(patterns, slot, variant)))
    return files


def _prefer(patterns: list[str], slot: str, variant: str | None) -> list[str]:
    """Put the variant's own files first: flash uses chinese-wav2vec2, preview wav2vec2-base-960h."""
    if variant is None or slot not in ("audio_encoder", "transformer"):
        return patterns
    key = {"flash": ("chinese", "flash"), "preview": ("960h", "transformer/")}.get(variant, ())
    return sorted(patterns, key=lambda p: not any(k in p for k in key))


def load_models(
    files: ModelFiles,
    dtype="bfloat16",
    device="cpu",
    storage_dtype=None,
    attention_backend: str = "sdpa",
    encoder_device="cpu",
    block_swap: int = 0,
    loras: list[tuple[str | Path, float]] = (),
    place_transformer: bool = True,
    encoders_on_cpu: bool = False,
    compile_blocks: bool = False,
):
    """Load every model of ``files`` into a :class:`~echomimic_core.pipeline.Models`.

    ``loras``: (file, strength) pairs merged into the transformer's weights after loading.
    The transformer goes to ``device`` (computing in ``dtype``, storing in ``storage_dtype``, e.g.
    fp8); encoders and the VAE start on ``encoder_device`` and visit the compute device only while
    they run. The audio encoder's feature path follows the transformer's variant unless the file
    is a Whisper encoder. ``place_transformer=False`` leaves the transformer on the host with its
    ``block_swap`` recorded, for ``pipeline.generate`` to place it after encoding (a memory plan's
    order); ``encoders_on_cpu``: CLIP and the audio encoder in float32, as they will compute there.
    ``compile_blocks``: torch.compile the transformer's blocks (``EchoMimicTransformer.compile_blocks``).
    """
    import torch

    from .checkpoints.transformer import load_transformer
    from .encoders.audio import AudioEncoder
    from .encoders.image import ImageEncoder
    from .encoders.text import VARIANT_COMPUTE_DTYPES, TextEncoder
    from .pipeline import Models
    from .vae import load_vae

    missing = files.missing()
    if missing:
        raise FileNotFoundError(
            f"model files not found for: {', '.join(missing)}. Put them in the models folder (upstream's "
            "release layout or ComfyUI's models/ folders) or pass them explicitly (--transformer, --vae, ...)."
        )
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    storage = getattr(torch, storage_dtype) if isinstance(storage_dtype, str) else storage_dtype
    transformer = load_transformer(
        files.transformer,
        dtype=dtype,
        storage_dtype=storage,
        device=device if place_transformer and not block_swap else "cpu",
        attention_backend=attention_backend,
    )
    if loras:
        from .checkpoints.lora import apply_lora

        for lora_path, strength in loras:
            apply_lora(transformer, lora_path, strength)
    if compile_blocks:
        transformer.compile_blocks()
    if not place_transformer:
        transformer.echomimic_block_swap = block_swap
    elif block_swap:
        transformer.enable_block_swap(block_swap, device)
    kind = None if "whisper" in files.audio_encoder.name.lower() else transformer.config.variant
    # encoders run in float32 on the CPU (bf16 matmuls are slow there); on an accelerator in dtype
    enc_dtype = torch.float32 if torch.device(device).type == "cpu" or encoders_on_cpu else dtype
    return Models(
        transformer=transformer,
        vae=load_vae(
            files.vae, dtype=torch.float32 if torch.device(device).type == "cpu" else dtype, device=encoder_device
        ),
        text_encoder=TextEncoder.load(
            files.text_encoder,
            tokenizer_path=files.tokenizer,
            device=encoder_device,
            compute_dtype=getattr(torch, VARIANT_COMPUTE_DTYPES[transformer.config.variant]),
        ),
        image_encoder=ImageEncoder.load(files.image_encoder, dtype=enc_dtype, device=encoder_device),
        audio_encoder=AudioEncoder.load(files.audio_encoder, kind=kind, dtype=enc_dtype, device=encoder_device),
    )
