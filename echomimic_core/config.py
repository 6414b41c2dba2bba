"""TransformerConfig: every width and constant of the EchoMimicV3 DiT, recorded once.

Upstream hard-wires several widths inside forward code (audio 768, CLIP 1280, token width
1536, 257 CLIP tokens); here they are fields, so tiny test models and the Whisper-Tiny
variant are presets of the same dataclass rather than copies of the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .vae_frames import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE

VARIANTS = ("preview", "flash")
# The features an audio encoder emits ("kind"): a variant's wav2vec2 path, or Whisper-Tiny's, which
# feeds a preview-variant model (the whisper_tiny preset).
AUDIO_KINDS = (*VARIANTS, "whisper")
# What the audio encoders emit and the projectors read (the configs' defaults; audio_alignment and
# the encoders use these names, so a config field and its constant cannot drift apart).
AUDIO_TOKENS_PER_FRAME = 2  # preview / Whisper: feature tokens per video frame (50 Hz features at 25 fps)
AUDIO_WINDOW = 5  # flash: feature frames k-2 .. k+2 around each video frame
PATCH_SIZE = (1, 2, 2)  # (frames, height, width) per token
# Keys older files (checkpoint metadata, config.json) used for today's fields.
LEGACY_KEYS = {"audio_variant": "variant"}


@dataclass
class TransformerConfig:
    # Wan2.1 DiT (names and defaults of the released 1.3B config.json)
    model_type: str = "i2v"
    patch_size: tuple[int, int, int] = PATCH_SIZE
    text_len: int = 512
    in_dim: int = 36
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    # CLIP image tokens (ViT-H/14 penultimate layer: 257 tokens of 1280)
    clip_dim: int = 1280
    clip_tokens: int = 257
    # the released variant, i.e. its audio path: "preview" (Linear+LayerNorm tokens, windowed per
    # latent frame, face-gated) or "flash" (MultiTalk-style MLP projector, context_tokens per latent frame)
    variant: str = "preview"
    # preview: [B, audio_tokens_per_frame * video_frames, audio_in_dim]
    audio_in_dim: int = 768
    audio_tokens_per_frame: int = AUDIO_TOKENS_PER_FRAME
    audio_window_expand: int = 4
    # flash: [B, video_frames, audio_window, audio_blocks, audio_channels]
    audio_window: int = AUDIO_WINDOW
    audio_blocks: int = 12
    audio_channels: int = 768
    audio_intermediate_dim: int = 512
    audio_context_tokens: int = 32

    def __post_init__(self):
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.model_type != "i2v":
            raise ValueError(
                f"model_type must be 'i2v' (EchoMimicV3 is image-to-video), got "
                f"{self.model_type!r}; t2v Wan checkpoints are not EchoMimic models."
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim {self.dim} must split into {self.num_heads} heads of even width.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def audio_window_vf(self) -> int:
        """Flash window length of every latent frame after the first (5 + 4 - 1 = 8)."""
        return self.audio_window + VAE_TEMPORAL_STRIDE - 1

    @property
    def token_stride(self) -> int:
        """Pixels per token side: the VAE's 8 x the patch's 2 = 16."""
        return VAE_SPATIAL_STRIDE * self.patch_size[1]

    # ---- serialisation (stored in checkpoint metadata) ----
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        """Build from a dict; unknown keys (e.g. diffusers' ``_class_name``, ``window_size``, the
        ``vae_temporal_stride`` older files stored) are ignored so upstream ``config.json`` files can
        be read too; ``LEGACY_KEYS`` (``audio_variant``) are read under their new names."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {LEGACY_KEYS.get(k, k): v for k, v in d.items() if LEGACY_KEYS.get(k) not in d}
        return cls(**{k: v for k, v in d.items() if k in names})

    # ---- presets ----
    @classmethod
    def preset(cls, name: str) -> TransformerConfig:
        presets = {
            "preview": lambda: cls(variant="preview"),
            "flash": lambda: cls(variant="flash"),
            # Whisper-Tiny encoder features: 384 wide at 50 Hz = 2 tokens per frame at 25 fps
            "whisper_tiny": lambda: cls(variant="preview", audio_in_dim=384, audio_tokens_per_frame=2),
            "tiny_preview": lambda: cls.from_reference_meta(TINY_REFERENCE_META, "preview"),
            "tiny_flash": lambda: cls.from_reference_meta(TINY_REFERENCE_META, "flash"),
        }
        if name not in presets:
            raise ValueError(f"unknown transformer preset {name!r}; choose one of {sorted(presets)}.")
        return presets[name]()

    @classmethod
    def from_reference_meta(cls, meta: dict, variant: str) -> TransformerConfig:
        """Config of a parity fixture described by ``tests/data/reference/tiny_meta.json``."""
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        base = dict(meta["tiny_config"])
        base["variant"] = variant
        if variant == "preview":
            p = meta["preview"]
            base.update(audio_in_dim=p["audio_in_dim"], audio_tokens_per_frame=p.get("audio_tokens_per_video_frame", 2))
        else:
            f = meta["flash"]
            base.update(
                audio_window=f["audio_window"],
                audio_blocks=f["blocks"],
                audio_channels=f["channels"],
                audio_intermediate_dim=f["intermediate_dim"],
                audio_context_tokens=f["context_tokens"],
            )
        return cls.from_dict(base)


# The shipped tiny fixture's semantics (tests/data/reference/tiny_meta.json), for demos and tests
# that need a tiny model without reading the reference folder.
TINY_REFERENCE_META: dict = {
    "tiny_config": {
        "model_type": "i2v",
        "patch_size": [1, 2, 2],
        "text_len": 24,
        "in_dim": 36,
        "dim": 96,
        "ffn_dim": 160,
        "freq_dim": 32,
        "text_dim": 40,
        "out_dim": 16,
        "num_heads": 4,
        "num_layers": 2,
        "eps": 1e-6,
        "cross_attn_norm": True,
        "qk_norm": True,
        "clip_dim": 48,
    },
    "preview": {"audio_in_dim": 32, "audio_tokens_per_video_frame": 2},
    "flash": {"audio_window": 5, "channels": 16, "blocks": 3, "intermediate_dim": 40, "context_tokens": 4},
}
