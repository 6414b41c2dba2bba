"""A tiny random EchoMimicV3 installation, for trying the whole path without the real weights.

``write_demo_models(models_dir)`` writes every model file the pipeline needs — a preview and a
flash transformer, the Wan VAE, umT5 text encoder with its tokenizer embedded, CLIP vision tower,
and each variant's wav2vec2 audio encoder — in ComfyUI's folder layout and file formats, with
random weights (seeded, so the files are the same every time). The real loaders then read them
like any user's files, so the demo exercises the real code; its videos are noise.
``demo_inputs()`` makes a reference image and a speech-like audio clip.

The VAE has the released Wan2.1 VAE's block layout (two residual blocks per level, attention only
in the middle) at a small width, because ComfyUI's Load VAE infers only the width from a file and
builds that layout: so the demo VAE works in ComfyUI's Load VAE too. ComfyUI's Load CLIP (umT5-XXL)
and Load CLIP Vision (ViT-H) build fixed full-size models, so the demo's text and image encoders
load only through this pack's loaders.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import torch

from .audio_alignment import SAMPLE_RATE
from .checkpoints.files import save_state_dict
from .checkpoints.transformer import save_transformer
from .config import VARIANTS, TransformerConfig
from .model_files import ModelFiles

log = logging.getLogger(__name__)

# models/ sub-paths of the demo files: shared by both variants, then each variant's own
SHARED_FILES = {
    "vae": "vae/wan_2.1_vae_demo_tiny.safetensors",
    "text_encoder": "text_encoders/umt5_demo_tiny.safetensors",
    "image_encoder": "clip_vision/clip_vision_demo_tiny.safetensors",
}
VARIANT_FILES = {
    "preview": {
        "transformer": "diffusion_models/echomimicv3_demo_tiny.safetensors",
        "audio_encoder": "audio_encoders/wav2vec2_base_960h_demo_tiny.safetensors",
    },
    # "flash" and "chinese" in the names: how the loaders and the frontend tell the variant
    "flash": {
        "transformer": "diffusion_models/echomimicv3_flash_demo_tiny.safetensors",
        "audio_encoder": "audio_encoders/wav2vec2_chinese_base_demo_tiny.safetensors",
    },
}
TEXT_DIM, CLIP_DIM, AUDIO_DIM, AUDIO_LAYERS = 32, 768, 64, 2
# the released VAE is 96 wide; ComfyUI reads the width from decoder.head.0.gamma. 4 is the narrowest
# that stays well conditioned: at 2 its RMS norms over two channels turn float rounding into visible
# differences (batched and sequential guidance then decode to different videos)
VAE_DIM = 4
DEMO_VERSION = 2  # bump when the files change, so caches keyed on it are rebuilt
_SENTENCES = [
    "a person is talking to the camera",
    "a woman sings a song with a smile",
    "the man speaks clearly in a bright room",
    "close-up portrait, natural light",
    "gesture is bad, blurry hands, strange fingers",
]


def demo_files(variant: str = "preview") -> dict[str, str]:
    """Slot -> path under the models folder of one variant's demo installation."""
    if variant not in VARIANT_FILES:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    return {**SHARED_FILES, **VARIANT_FILES[variant]}


def demo_transformer_config(variant: str = "preview") -> TransformerConfig:
    common = dict(
        dim=64,
        ffn_dim=128,
        freq_dim=32,
        num_heads=2,
        num_layers=2,
        text_dim=TEXT_DIM,
        text_len=512,
        clip_dim=CLIP_DIM,
        clip_tokens=5,
    )
    if variant == "flash":  # every hidden layer of the demo wav2vec2, as flash takes all twelve
        return TransformerConfig(
            **common,
            variant="flash",
            audio_blocks=AUDIO_LAYERS,
            audio_channels=AUDIO_DIM,
            audio_intermediate_dim=32,
            audio_context_tokens=4,
        )
    return TransformerConfig(**common, variant="preview", audio_in_dim=AUDIO_DIM)


def _spiece_model() -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_SENTENCES * 20),
        model_writer=buf,
        vocab_size=64,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    return buf.getvalue()


def _random_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def _demo_transformer(variant: str):
    from .model.transformer import EchoMimicTransformer

    transformer = EchoMimicTransformer(demo_transformer_config(variant))
    with torch.no_grad():  # random but non-zero audio layers, so the audio visibly matters
        for name, p in transformer.named_parameters():
            if "audio" in name and p.ndim >= 2:
                p.normal_(0, 0.05)
    return transformer


def _demo_vae_state() -> dict[str, torch.Tensor]:
    """The Wan2.1 VAE's layout (what ComfyUI's Load VAE builds for any width) at ``VAE_DIM``."""
    from diffusers import AutoencoderKLWan

    from .vae.keys import diffusers_to_original

    vae = AutoencoderKLWan(
        base_dim=VAE_DIM,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    return diffusers_to_original(_random_state(vae))


def write_demo_models(
    models_dir: str | Path, seed: int = 0, overwrite: bool = False, variant: str = "preview"
) -> ModelFiles:
    """Write both variants' tiny demo files under ``models_dir`` (ComfyUI layout); return ``variant``'s.

    Existing files are kept unless ``overwrite``: the files are deterministic, so a second call is free.
    """
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

    from .encoders.text import save_comfy_file

    root = Path(models_dir)
    wanted = {slot: root / rel for slot, rel in demo_files(variant).items()}
    every = {rel for v in VARIANT_FILES for rel in demo_files(v).values()}
    if not overwrite and all((root / rel).is_file() for rel in every):
        return ModelFiles(**wanted)
    log.info("writing the tiny demo models to %s", root)
    # seeded draws without touching the caller's global RNG (ComfyUI / training seeds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        save_transformer(_demo_transformer("preview"), root / VARIANT_FILES["preview"]["transformer"])
        save_state_dict(_demo_vae_state(), root / SHARED_FILES["vae"])

        proto = _spiece_model()
        t5 = UMT5EncoderModel(
            UMT5Config(
                vocab_size=64,
                d_model=TEXT_DIM,
                d_kv=16,
                d_ff=48,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=32,
                feed_forward_proj="gated-gelu",
                tie_word_embeddings=False,
            )
        )
        save_comfy_file(_random_state(t5), root / SHARED_FILES["text_encoder"], spiece_proto=proto)

        clip = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=CLIP_DIM,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=12,
                image_size=28,
                patch_size=14,
            )
        )
        clip_state = _random_state(clip)  # ComfyUI's clip_vision files carry the vision_model. prefix
        save_state_dict(
            {k if k.startswith("vision_model.") else "vision_model." + k: v for k, v in clip_state.items()},
            root / SHARED_FILES["image_encoder"],
        )

        wav2vec2 = Wav2Vec2Model(
            Wav2Vec2Config(
                hidden_size=AUDIO_DIM,
                num_hidden_layers=AUDIO_LAYERS,
                num_attention_heads=1,
                intermediate_size=64,
                conv_dim=(32,) * 7,
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
            )
        )
        # one random wav2vec2 under both names: the file name tells the loader which feature path
        for v in VARIANT_FILES:
            save_state_dict(_random_state(wav2vec2), root / VARIANT_FILES[v]["audio_encoder"])
        save_transformer(_demo_transformer("flash"), root / VARIANT_FILES["flash"]["transformer"])
    return ModelFiles(**wanted)


def demo_face_box(size: int = 96) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the face drawn by :func:`demo_inputs` (cartoons defeat the face detector)."""
    s = size / 96
    return int(14 * s), int(66 * s), int(28 * s), int(68 * s)


def demo_inputs(seconds: float = 2.4, size: int = 96, sample_rate: int = SAMPLE_RATE):
    """(image [H, W, 3] uint8 with a cartoon face, audio [1, T] float32, its sample rate).

    The audio is speech-like: voiced syllables (a 140 Hz buzz shaped by two formants) separated by
    short pauses, so silent and voiced frames alternate.
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (70, 110, 160))
    d = ImageDraw.Draw(img)
    s = size / 96
    d.ellipse([28 * s, 14 * s, 68 * s, 66 * s], fill=(232, 190, 160))  # face
    d.ellipse([37 * s, 30 * s, 43 * s, 36 * s], fill=(40, 30, 30))  # eyes
    d.ellipse([53 * s, 30 * s, 59 * s, 36 * s], fill=(40, 30, 30))
    d.ellipse([42 * s, 48 * s, 54 * s, 55 * s], fill=(150, 50, 60))  # mouth
    d.rectangle([22 * s, 66 * s, 74 * s, 96 * s], fill=(200, 60, 60))  # shoulders

    return np.asarray(img), torch.from_numpy(speech_like(seconds, sample_rate))[None], sample_rate


def speech_like(seconds: float, sample_rate: int = SAMPLE_RATE, phase: float = 0.0) -> np.ndarray:
    """float32 [T]: voiced syllables (a 140 Hz buzz shaped by two formants) at 4 Hz separated by
    short pauses, so silent and voiced frames alternate; ``phase`` (radians) shifts the syllables."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    buzz = np.sign(np.sin(2 * math.pi * 140 * t)) * 0.3
    formants = np.sin(2 * math.pi * 700 * t) * 0.5 + np.sin(2 * math.pi * 1200 * t) * 0.3
    syllables = (np.sin(2 * math.pi * 4 * t + phase) > -0.2).astype(np.float64)
    return (buzz * (0.5 + 0.5 * formants) * syllables * 0.5).astype(np.float32)
