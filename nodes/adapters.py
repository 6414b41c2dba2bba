"""ComfyUI's native types -> what the core consumes, in one place.

* ``VAE``: the pack's ``WanVAE`` is used as is; ComfyUI's native ``VAE`` goes through
  :class:`ComfyVideoVAE`, which speaks the core's ``VideoVAE`` interface (normalised latents,
  video ``[B, 3, T, H, W]`` in [-1, 1]) around ComfyUI's (IMAGE 0..1 in, raw latents out).
* ``CONDITIONING``: the first entry's tokens ``[1, L, D]``; ComfyUI's Wan text encoder zero-pads to
  512 tokens, so trailing all-zero rows are dropped (the transformer pads with zeros again).
* ``CLIP_VISION_OUTPUT``: ``penultimate_hidden_states`` ``[B, 257, 1280]`` (Wan's CLIP tokens).
* ``CLIP_VISION`` (Load CLIP Vision): :class:`ComfyImageEncoder` runs ComfyUI's model on upstream's
  preprocessing; ComfyUI's own CLIP Vision Encode resizes with antialiasing and rounds to 8 bits,
  which upstream does not, so its tokens are not the ones the models were trained with.
* audio: the pack's ``ECHOMIMIC_AUDIO_EMBEDS``. ComfyUI's ``AUDIO_ENCODER_OUTPUT`` is refused with
  the reason: its wav2vec2 features differ from both released models' inputs.
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

AUDIO_ENCODE_NODE = "EchoMimicV3 Audio Encoder Loader + EchoMimicV3 Audio Encode"


class ComfyVideoVAE:
    """ComfyUI's ``VAE`` (a Wan2.1 VAE) behind the core's ``VideoVAE`` interface.

    ComfyUI's ``VAE.encode`` takes IMAGE frames ``[T, H, W, 3]`` in 0..1 and returns *raw* Wan
    latents ``[1, 16, t, h, w]``; ``decode`` takes raw latents and returns ``[1, T, H, W, 3]`` in
    0..1. The core works on normalised latents (``(raw - mean) / std``, Wan21's latent format).
    ComfyUI loads and offloads its VAE itself on every call, so ``to`` does nothing.
    """

    def __init__(self, vae):
        from echomimic_core.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD

        channels = getattr(vae, "latent_channels", 16)
        if channels != 16:
            raise ValueError(
                f"the connected VAE has {channels} latent channels; EchoMimicV3 needs the Wan2.1 "
                "VAE (16 channels, wan_2.1_vae.safetensors), not the Wan2.2 or an image VAE."
            )
        self.vae = vae
        self.latents_mean = torch.tensor(WAN21_LATENTS_MEAN)
        self.latents_std = torch.tensor(WAN21_LATENTS_STD)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.vae, "vae_dtype", torch.float32)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.vae, "device", "cpu"))

    def to(self, device=None, dtype=None) -> ComfyVideoVAE:
        return self

    def _passes(self, part: str, total: int, progress):
        """Report ``progress`` per pass of ComfyUI's Wan VAE ``encoder`` / ``decoder`` (when reachable)."""
        from echomimic_core.vae import progress_scope

        module = getattr(getattr(self.vae, "first_stage_model", None), part, None)
        if progress is None or not isinstance(module, torch.nn.Module):
            return contextlib.nullcontext()
        return progress_scope(module, total, progress)

    def encode(self, video: torch.Tensor, tiling=None, progress=None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, t, h, w]`` float32."""
        from echomimic_core.vae import normalize_latents
        from echomimic_core.vae_frames import latent_frames

        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video [B, 3, T, H, W], got {tuple(video.shape)}")
        latents = []
        b, _, t = video.shape[:3]
        passes = b * latent_frames(t)  # one encoder pass per causal chunk (1, 4, 4, ... frames)
        # ComfyUI's tiled encode drives the node's progress bar itself
        with self._passes("encoder", passes, progress) if tiling is None else contextlib.nullcontext():
            for clip in video:
                frames = clip.float().permute(1, 2, 3, 0).add(1.0).mul(0.5).cpu()  # [T, H, W, 3] 0..1
                if tiling is None:
                    raw = self.vae.encode(frames)
                else:
                    raw = self.vae.encode_tiled(
                        frames, tile_x=tiling.tile_size, tile_y=tiling.tile_size, overlap=tiling.overlap
                    )
                latents.append(normalize_latents(raw.float(), self.latents_mean, self.latents_std))
        return torch.cat(latents).to(video.device)

    def decode(self, latents: torch.Tensor, tiling=None, progress=None) -> torch.Tensor:
        """Normalised latents ``[B, 16, t, h, w]`` -> video ``[B, 3, T, H, W]`` in [-1, 1] float32."""
        from echomimic_core.vae import denormalize_latents
        from echomimic_core.vae_frames import VAE_SPATIAL_STRIDE

        raw = denormalize_latents(latents.float().cpu(), self.latents_mean, self.latents_std)
        if tiling is None:
            with self._passes("decoder", latents.shape[0] * latents.shape[2], progress):  # one per latent frame
                images = self.vae.decode(raw)
        else:
            step = VAE_SPATIAL_STRIDE  # ComfyUI's decode_tiled counts tiles in latent pixels
            images = self.vae.decode_tiled(
                raw, tile_x=tiling.tile_size // step, tile_y=tiling.tile_size // step, overlap=tiling.overlap // step
            )
        if images.ndim == 4:  # [T, H, W, 3]: a single clip
            images = images[None]
        # [B, T, H, W, 3] 0..1 -> [B, 3, T, H, W] in [-1, 1]
        return images.float().permute(0, 4, 1, 2, 3).mul(2.0).sub(1.0).to(latents.device)


class ComfyImageEncoder:
    """ComfyUI's ``CLIP_VISION`` (``comfy.clip_vision.ClipVisionModel``) behind the core's ``ImageEncoder``.

    The core's preprocessing (the whole image bicubic-resized to 224 without antialiasing, as
    upstream) feeds ComfyUI's model, which returns the output before the last block as its second
    value when asked for ``intermediate_output=-2`` (what it calls ``penultimate_hidden_states``).
    ComfyUI loads and offloads the model itself, so ``to`` does nothing.
    """

    def __init__(self, clip_vision):
        from echomimic_core.encoders.image import CLIP_MEAN, CLIP_STD

        if getattr(clip_vision, "return_all_hidden_states", False):
            raise ValueError(
                "clip_vision: the connected model is a SigLIP image encoder; EchoMimicV3 needs "
                "clip_vision_h.safetensors (CLIP ViT-H/14)."
            )
        self.clip_vision = clip_vision
        self.image_size = int(getattr(clip_vision, "image_size", 224))
        self.mean = torch.tensor(getattr(clip_vision, "image_mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(getattr(clip_vision, "image_std", CLIP_STD)).view(1, 3, 1, 1)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.clip_vision, "dtype", torch.float32)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.clip_vision, "load_device", "cpu"))

    def to(self, device) -> ComfyImageEncoder:
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        from echomimic_core.encoders.image import clip_preprocess

        return clip_preprocess(images, self.image_size, self.mean, self.std, self.dtype, self.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> ``[B, 257, 1280]`` for ViT-H (Wan's ``clip_fea``)."""
        from . import comfy_services as services

        services.load_model_gpu(getattr(self.clip_vision, "patcher", None))
        # float32 in, as ComfyUI's encode_image: its manual-cast layers cast the weights to the input.
        out = self.clip_vision.model(pixel_values=self.preprocess(images).float(), intermediate_output=-2)
        return out[1]


def image_encoder(clip_vision):
    """The core's ``ImageEncoder`` for either CLIP vision model a user can connect."""
    from echomimic_core.encoders.image import ImageEncoder

    if isinstance(clip_vision, (ImageEncoder, ComfyImageEncoder)):
        return clip_vision
    if hasattr(clip_vision, "encode_image") and hasattr(clip_vision, "model"):
        return ComfyImageEncoder(clip_vision)
    raise ValueError(
        f"clip_vision: expected Load CLIP Vision (clip_vision_h.safetensors) or the EchoMimicV3 CLIP "
        f"Vision Loader's output, got {type(clip_vision).__name__}."
    )


def video_vae(vae):
    """The core's ``VideoVAE`` for either VAE a user can connect (the pack's loader or ComfyUI's)."""
    from echomimic_core.vae import WanVAE

    if isinstance(vae, (WanVAE, ComfyVideoVAE)):
        return vae
    if hasattr(vae, "first_stage_model") or hasattr(vae, "decode_tiled"):
        return ComfyVideoVAE(vae)
    raise ValueError(
        f"vae: expected the EchoMimicV3 VAE Loader's output or ComfyUI's VAE (Load VAE with "
        f"wan_2.1_vae.safetensors), got {type(vae).__name__}."
    )


def text_embedding(conditioning, what: str = "positive") -> torch.Tensor:
    """CONDITIONING -> ``[L, D]`` prompt tokens with ComfyUI's zero padding removed."""
    try:
        tokens = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        tokens = None
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise ValueError(
            f"{what}: expected CONDITIONING from CLIP Text Encode (CLIPLoader type 'wan' with "
            f"umT5-XXL) or EchoMimicV3 Text Encode, got {type(conditioning).__name__}."
        )
    if len(conditioning) > 1:
        log.warning("%s: %d conditioning entries combined; only the first is used", what, len(conditioning))
    tokens = tokens[0]
    nonzero = tokens.abs().amax(dim=-1) > 0
    length = int(nonzero.nonzero().max()) + 1 if nonzero.any() else 0
    if length == 0:
        raise ValueError(f"{what}: the conditioning is all zeros; encode a prompt with CLIP Text Encode.")
    return tokens[:length].float()


def clip_embedding(clip_vision_output) -> torch.Tensor:
    """CLIP_VISION_OUTPUT -> ``[1, 257, D]`` (the first image's penultimate-layer tokens)."""
    tokens = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if tokens is None and isinstance(clip_vision_output, dict):
        tokens = clip_vision_output.get("penultimate_hidden_states")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        raise ValueError(
            "clip_vision_output: expected CLIP Vision Encode's output (clip_vision_h, crop 'none') "
            f"or EchoMimicV3 CLIP Vision Encode's, got {type(clip_vision_output).__name__}."
        )
    return tokens[:1].float()


def audio_features(embeds) -> dict:
    """ECHOMIMIC_AUDIO_EMBEDS, checked; ComfyUI's AUDIO_ENCODER_OUTPUT is refused with the reason."""
    if isinstance(embeds, dict) and "encoded_audio_all_layers" in embeds:
        raise ValueError(
            "audio_embeds: ComfyUI's Audio Encoder Encode output is not the input EchoMimicV3 was trained on: "
            "for preview its wav2vec2 skips the waveform normalisation wav2vec2-base-960h expects, for flash "
            "the features must be resampled to the video fps inside the encoder, and Whisper-Tiny is not "
            f"among ComfyUI's encoders. Use {AUDIO_ENCODE_NODE} (same model files, models/audio_encoders)."
        )
    needed = ("features", "kind", "num_frames", "fps", "audio")
    if not isinstance(embeds, dict) or any(k not in embeds for k in needed):
        raise ValueError(f"audio_embeds: expected the output of {AUDIO_ENCODE_NODE}, got {type(embeds).__name__}.")
    return embeds
