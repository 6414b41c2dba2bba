"""The Wan2.1 causal 3D VAE behind one small interface: ``WanVAE`` and ``load_vae``.

Numerics are diffusers' ``AutoencoderKLWan``: it reproduces upstream EchoMimicV3's ``wan_vae.py``
(causal chunks of 1, 4, 4, ... frames in the encoder; one latent frame at a time with a feature
cache in the decoder). Untiled encodes and decodes run its weights one video frame at a time
(``framewise``: the same numbers in about half the memory); tiled ones run diffusers' own forward.
Latents crossing this interface are *normalised* the way upstream feeds the transformer:
``(mu - latents_mean) * (1 / latents_std)`` per channel.

Shapes: video ``[B, 3, T, H, W]`` in [-1, 1] with ``T = 4k + 1`` and ``H, W`` multiples of 8
<-> latents ``[B, 16, 1 + (T - 1) / 4, H / 8, W / 8]``.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from echomimic_core.checkpoints.files import CheckpointError, load_state_dict, strip_prefix
from echomimic_core.vae import framewise
from echomimic_core.vae.keys import (
    DIFFUSERS_MARKER,
    ORIGINAL_MARKER,
    config_from_original,
    diffusers_key_to_original,
    diffusers_to_original,
    original_to_diffusers,
)
from echomimic_core.vae_frames import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE

log = logging.getLogger(__name__)

# Per-channel statistics of Wan2.1 VAE latents (Wan's ``vae.py``; also diffusers' and ComfyUI's
# ``latent_formats.Wan21``). Normalised latents are what the DiT was trained on.
WAN21_LATENTS_MEAN = (
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
)
# Constructor arguments newer diffusers added (Wan2.2); at these values older releases build the same model.
_WAN21_DEFAULTS = {"in_channels": 3, "out_channels": 3, "is_residual": False}
# Prefixes seen on VAE weights saved inside bigger bundles.
_PREFIXES = ("vae.", "first_stage_model.", "model.")


def normalize_latents(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw VAE means ``[B, C, F, H, W]`` -> normalised latents, in float32.

    Multiplies by ``1 / std`` rather than dividing, as upstream does, so float32 results agree bit
    for bit more often. ComfyUI's ``VAE.encode`` returns raw latents: run them through this.
    """
    view = (1, -1, 1, 1, 1)
    return (raw.float() - mean.to(raw.device).view(view)) * (1.0 / std.to(raw.device)).view(view)


def denormalize_latents(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> raw VAE latents, in float32 (upstream: ``z / (1 / std) + mean``)."""
    view = (1, -1, 1, 1, 1)
    return latents.float() / (1.0 / std.to(latents.device)).view(view) + mean.to(latents.device).view(view)


# progress(done, total): called after each chunk of work; may raise to cancel.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Tiling:
    """Spatial tiling for low-memory encode/decode, in pixels (multiples of 8).

    Frames larger than ``tile_size`` are split into ``tile_size`` squares that step by
    ``tile_size - overlap``; the ``overlap`` band is blended linearly so no seam shows.
    Activation memory is then bounded by one tile (latent frames still go through the decoder one
    at a time); the assembled output is the only whole-frame tensor.
    """

    tile_size: int = 256
    overlap: int = 64

    def __post_init__(self):
        if self.tile_size % VAE_SPATIAL_STRIDE or self.overlap % VAE_SPATIAL_STRIDE:
            raise ValueError(
                f"tile_size and overlap must be multiples of {VAE_SPATIAL_STRIDE} pixels, "
                f"got {self.tile_size} and {self.overlap}."
            )
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"overlap must be in [0, tile_size), got overlap {self.overlap} with tile_size {self.tile_size}."
            )


@runtime_checkable
class VideoVAE(Protocol):
    """What the pipeline needs from a VAE; ``WanVAE`` implements it, and so can a thin adapter
    around ComfyUI's native VAE (which must normalise with ``normalize_latents``)."""

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def to(self, device=None, dtype=None) -> VideoVAE: ...

    def encode(
        self, video: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
    ) -> torch.Tensor: ...

    def decode(
        self, latents: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
    ) -> torch.Tensor: ...


class WanVAE:
    """Wan2.1 VAE: ``encode`` video -> normalised latents, ``decode`` latents -> video in [-1, 1].

    Inputs may be any float dtype/device; they are moved to the VAE's. Latents come back in float32
    (normalisation is done in float32 whatever the weights' dtype), video in float32.
    """

    def __init__(self, model, latents_mean=WAN21_LATENTS_MEAN, latents_std=WAN21_LATENTS_STD):
        self.model = model.eval().requires_grad_(False)
        # Batches go through one sample at a time, as upstream does: same numbers, less memory.
        self.model.use_slicing = True
        self.latents_mean = torch.as_tensor(latents_mean, dtype=torch.float32)
        self.latents_std = torch.as_tensor(latents_std, dtype=torch.float32)
        if self.latents_mean.shape != (self.latent_channels,) or self.latents_std.shape != (self.latent_channels,):
            raise ValueError(
                f"latents_mean/std must have {self.latent_channels} entries (z_dim), got "
                f"{tuple(self.latents_mean.shape)} and {tuple(self.latents_std.shape)}."
            )

    # -- placement ----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def latent_channels(self) -> int:
        return self.model.config.z_dim

    @property
    def in_channels(self) -> int:
        return getattr(self.model.config, "in_channels", 3)  # diffusers < 0.35 has only RGB

    def to(self, device=None, dtype=None) -> WanVAE:
        # nn.Module.to, not diffusers' override: that one warns on every dtype cast about modules
        # to keep in float32, of which the Wan VAE has none.
        torch.nn.Module.to(self.model, device=device, dtype=dtype)
        return self

    # -- shapes -------------------------------------------------------------------------------
    def latent_shape(self, video_shape) -> tuple[int, ...]:
        """``[B, 3, T, H, W]`` -> ``[B, z_dim, 1 + (T-1)/4, H/8, W/8]``; raises on sizes that would be cut."""
        if len(video_shape) != 5:
            raise ValueError(f"expected a video [B, 3, T, H, W], got shape {tuple(video_shape)}.")
        b, c, t, h, w = video_shape
        if c != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} colour channels on dim 1, got {c} "
                f"(shape {tuple(video_shape)}); the layout is [B, C, T, H, W]."
            )
        if t < 1 or (t - 1) % VAE_TEMPORAL_STRIDE:
            raise ValueError(f"the VAE encodes 4k+1 frames (1, 5, 9, ..., 81), got {t}; trim or pad the clip.")
        if h % VAE_SPATIAL_STRIDE or w % VAE_SPATIAL_STRIDE:
            raise ValueError(
                f"height and width must be multiples of {VAE_SPATIAL_STRIDE}, got {h}x{w}; resize or crop the frames."
            )
        return (
            b,
            self.latent_channels,
            1 + (t - 1) // VAE_TEMPORAL_STRIDE,
            h // VAE_SPATIAL_STRIDE,
            w // VAE_SPATIAL_STRIDE,
        )

    def video_shape(self, latent_shape) -> tuple[int, ...]:
        """``[B, z_dim, F, h, w]`` -> ``[B, 3, 4(F-1)+1, 8h, 8w]``."""
        if len(latent_shape) != 5:
            raise ValueError(f"expected latents [B, {self.latent_channels}, F, h, w], got shape {tuple(latent_shape)}.")
        b, c, f, h, w = latent_shape
        if c != self.latent_channels:
            raise ValueError(
                f"expected {self.latent_channels} latent channels on dim 1, got shape {tuple(latent_shape)}."
            )
        return (
            b,
            getattr(self.model.config, "out_channels", 3),
            1 + (f - 1) * VAE_TEMPORAL_STRIDE,
            h * VAE_SPATIAL_STRIDE,
            w * VAE_SPATIAL_STRIDE,
        )

    # -- encode / decode ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_distribution(
        self, video: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised posterior mean and raw ``log_var``, both ``[B, z_dim, F, H/8, W/8]`` float32."""
        self.latent_shape(video.shape)
        b, _, t, h, w = video.shape
        tiles = _tile_count(h, w, tiling, 1)
        video = video.to(self.device, self.dtype)
        if tiles == 1 and framewise.supports(self.model):
            params = framewise.encode(self.model, video, progress)
        else:
            steps = b * tiles * (1 + (t - 1) // VAE_TEMPORAL_STRIDE)
            with _tiling_scope(self.model, tiling), progress_scope(self.model.encoder, steps, progress):
                params = self.model.encode(video).latent_dist.parameters
        mu, log_var = params.chunk(2, dim=1)
        return normalize_latents(mu, self.latents_mean, self.latents_std), log_var.float()

    def encode(
        self, video: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
    ) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in [-1, 1] -> normalised latents (posterior mean), float32."""
        return self.encode_distribution(video, tiling, progress)[0]

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, tiling: Tiling | None = None, progress: Progress | None = None
    ) -> torch.Tensor:
        """Normalised latents ``[B, z_dim, F, h, w]`` -> video ``[B, 3, 4(F-1)+1, 8h, 8w]`` in [-1, 1], float32."""
        self.video_shape(latents.shape)
        b, _, f, h, w = latents.shape
        tiles = _tile_count(h, w, tiling, VAE_SPATIAL_STRIDE)
        raw = denormalize_latents(latents, self.latents_mean, self.latents_std).to(self.device, self.dtype)
        if tiles == 1 and framewise.supports(self.model):
            return framewise.decode(self.model, raw, progress)
        with _tiling_scope(self.model, tiling), progress_scope(self.model.decoder, b * tiles * f, progress):
            video = self.model.decode(raw).sample
        # diffusers 0.34/0.35 return tiled decodes unclamped; upstream always clamps.
        return video.float().clamp_(-1.0, 1.0)

    # -- checkpoints --------------------------------------------------------------------------
    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the original ``Wan2.1_VAE.pth`` names (what ComfyUI loads)."""
        return diffusers_to_original(self.model.state_dict())


_TILING_ATTRS = (
    "use_tiling",
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_sample_stride_height",
    "tile_sample_stride_width",
)


def _tile_count(height: int, width: int, tiling: Tiling | None, scale: int) -> int:
    """Tiles diffusers cuts a ``height x width`` frame into; sizes in units of ``scale`` pixels."""
    if tiling is None:
        return 1
    size, stride = tiling.tile_size // scale, (tiling.tile_size - tiling.overlap) // scale
    if height <= size and width <= size:
        return 1
    return -(-height // stride) * -(-width // stride)


@contextmanager
def progress_scope(module: torch.nn.Module, total: int, progress: Progress | None):
    """Call ``progress(done, total)`` after each pass of ``module`` (one chunk of one tile).

    Wan VAEs run their encoder once per causal chunk (1, 4, 4, ... frames) and their decoder once
    per latent frame, ours and ComfyUI's alike, so counting the passes of ``encoder`` / ``decoder``
    measures progress through any of them. An exception raised by ``progress`` (e.g. a user's
    cancel) stops the encode/decode there.
    """
    if progress is None:
        yield
        return
    done = 0

    def hook(*_):
        nonlocal done
        done += 1
        progress(min(done, total), total)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _tiling_scope(model, tiling: Tiling | None):
    """Switch diffusers' tiling on with our tile geometry for one call, then restore the model."""
    saved = {a: getattr(model, a) for a in _TILING_ATTRS}
    model.use_tiling = tiling is not None
    if tiling is not None:
        model.tile_sample_min_height = model.tile_sample_min_width = tiling.tile_size
        model.tile_sample_stride_height = model.tile_sample_stride_width = tiling.tile_size - tiling.overlap
    try:
        yield
    finally:
        for a, v in saved.items():
            setattr(model, a, v)


# -- building and loading ---------------------------------------------------------------------
def _build(config: dict, state: dict[str, torch.Tensor], dtype, device, source: str):
    """An ``AutoencoderKLWan`` holding ``state`` (diffusers names), without a random init first."""
    from diffusers import AutoencoderKLWan

    config = _supported_config(AutoencoderKLWan, config, source)
    with torch.device("meta"):
        model = AutoencoderKLWan(**config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        blocks = config.get("num_res_blocks", 2)
        missing, unexpected = ([_original_name(k, blocks) for k in keys] for keys in (missing, unexpected))
        raise CheckpointError(
            f"{source}: does not match a Wan2.1 VAE with config {config}: "
            f"{len(missing)} missing tensors (e.g. {missing[:5]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:5]}). Use the Wan2.1 VAE file (Wan2.1_VAE.pth or wan_2.1_vae.safetensors)."
        )
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{source}: tensor shapes do not fit the Wan2.1 VAE config {config}: {e}") from e
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors left uninitialised after loading: {leftover[:5]}.")
    return model


def _supported_config(cls, config: dict, source: str) -> dict:
    """``config`` for the installed diffusers: arguments it predates are dropped at their defaults."""
    if not hasattr(cls, "tiled_decode"):
        import diffusers

        raise ImportError(
            f"diffusers {diffusers.__version__} has no tiled Wan VAE; this node pack needs "
            "diffusers >= 0.34: pip install -U diffusers"
        )
    accepted = set(inspect.signature(cls.__init__).parameters)
    dropped = {k: v for k, v in config.items() if k not in accepted}
    unsupported = {k: v for k, v in dropped.items() if _WAN21_DEFAULTS.get(k) != v}
    if unsupported:
        import diffusers

        raise CheckpointError(
            f"{source}: needs AutoencoderKLWan arguments {unsupported} that diffusers "
            f"{diffusers.__version__} lacks; pip install -U diffusers."
        )
    return {k: v for k, v in config.items() if k in accepted}


def _original_name(key: str, num_res_blocks: int) -> str:
    """A diffusers name as the user's (original-layout) file spells it, for error messages."""
    try:
        return diffusers_key_to_original(key, num_res_blocks)
    except KeyError:
        return key


def _layout(state: dict[str, torch.Tensor], source: str) -> str:
    """'original' or 'diffusers' for a Wan VAE state dict; a CheckpointError naming what it is otherwise."""
    if ORIGINAL_MARKER in state:
        return "original"
    if DIFFUSERS_MARKER in state:
        return "diffusers"
    sample = sorted(state)[:4]
    if any(k.startswith(("blocks.", "patch_embedding.", "model.diffusion_model.")) for k in state):
        what = "a diffusion transformer"
    elif any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in state):
        what = "an image (Stable Diffusion style) VAE"
    else:
        what = "not a Wan VAE"
    raise CheckpointError(
        f"{source}: this is {what} (keys such as {sample}), expected the Wan2.1 VAE with keys like "
        f"'{ORIGINAL_MARKER}'. Pick Wan2.1_VAE.pth / wan_2.1_vae.safetensors in the VAE slot."
    )


def _check_latent_channels(z_dim: int, source: str) -> None:
    if z_dim != len(WAN21_LATENTS_MEAN):
        raise CheckpointError(
            f"{source}: a Wan VAE with {z_dim} latent channels; EchoMimicV3 uses the Wan2.1 VAE "
            "(16 channels). A 48-channel file is the Wan2.2 VAE: use Wan2.1_VAE.pth instead."
        )


def from_state_dict(
    state: dict[str, torch.Tensor],
    dtype=torch.float32,
    device="cpu",
    latents_mean=WAN21_LATENTS_MEAN,
    latents_std=WAN21_LATENTS_STD,
    source: str = "state dict",
) -> WanVAE:
    """A ``WanVAE`` from an original- or diffusers-layout state dict; config read from the shapes.

    Tensors already in ``dtype`` on ``device`` become the parameters without a copy, so the model
    shares storage with ``state``.
    """
    state = strip_prefix(state, _PREFIXES)
    try:
        if _layout(state, source) == "diffusers":
            state = diffusers_to_original(state)
        config = config_from_original(state)
    except KeyError as e:  # a tensor the layout needs is absent, or one no Wan2.1 VAE has
        raise CheckpointError(
            f"{source}: not a complete Wan2.1 VAE ({e}). The file may be truncated or "
            "belong to another model; use Wan2.1_VAE.pth / wan_2.1_vae.safetensors."
        ) from e
    _check_latent_channels(config["z_dim"], source)
    model = _build(config, original_to_diffusers(state), dtype, device, source)
    return WanVAE(model, latents_mean, latents_std)


def _from_diffusers_folder(folder: Path, dtype, device) -> WanVAE:
    config = json.loads((folder / "config.json").read_text())
    if config.get("_class_name", "AutoencoderKLWan") != "AutoencoderKLWan":
        raise CheckpointError(
            f"{folder}: config.json describes a {config['_class_name']}, expected an "
            "AutoencoderKLWan (the Wan2.1 VAE). Point at the vae/ folder of a Wan2.1 model."
        )
    _check_latent_channels(config.get("z_dim", 16), str(folder))
    if config.get("is_residual"):
        raise CheckpointError(f"{folder}: a Wan2.2-style residual VAE (is_residual); EchoMimicV3 needs the Wan2.1 VAE.")
    from diffusers import AutoencoderKLWan

    init_keys = set(inspect.signature(AutoencoderKLWan.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in config.items() if k in init_keys}
    state = strip_prefix(load_state_dict(folder), _PREFIXES)
    if _layout(state, str(folder)) == "original":
        try:
            state = original_to_diffusers(state)
        except KeyError as e:
            raise CheckpointError(f"{folder}: holds a tensor no Wan2.1 VAE has ({e}).") from e
    model = _build(kwargs, state, dtype, device, str(folder))
    return WanVAE(model, model.config.latents_mean, model.config.latents_std)


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> WanVAE:
    """Load the Wan2.1 VAE from ``Wan2.1_VAE.pth``, ``wan_2.1_vae.safetensors`` (any dtype) or a
    diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``). Never downloads."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        vae = _from_diffusers_folder(path, dtype, device)
    else:
        vae = from_state_dict(load_state_dict(path), dtype, device, source=str(path))
    log.info("loaded Wan2.1 VAE from %s (%s, %s)", path, vae.dtype, vae.device)
    return vae
