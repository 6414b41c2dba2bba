"""Wan2.1 VAE: loading any released layout, normalised encode/decode, tiling, parity check.

``wan`` holds the ``WanVAE`` interface and loaders, ``keys`` the original <-> diffusers key map.
"""

from __future__ import annotations

from pathlib import Path

from echomimic_core.vae.keys import (
    config_from_original,
    diffusers_key_to_original,
    diffusers_to_original,
    original_key_to_diffusers,
    original_to_diffusers,
)
from echomimic_core.vae.wan import (
    WAN21_LATENTS_MEAN,
    WAN21_LATENTS_STD,
    Progress,
    Tiling,
    VideoVAE,
    WanVAE,
    denormalize_latents,
    from_state_dict,
    load_vae,
    normalize_latents,
    progress_scope,
)

__all__ = [
    "WAN21_LATENTS_MEAN",
    "WAN21_LATENTS_STD",
    "Progress",
    "Tiling",
    "VideoVAE",
    "WanVAE",
    "config_from_original",
    "denormalize_latents",
    "diffusers_key_to_original",
    "diffusers_to_original",
    "from_state_dict",
    "load_vae",
    "normalize_latents",
    "original_key_to_diffusers",
    "original_to_diffusers",
    "progress_scope",
    "verify_fixture",
]


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """Relative errors against a ``vae_*`` fixture (format: tests/data/reference/README.md).

    The fixture's ``output.decoded`` is upstream's decoder output before its final clamp, so it is
    clamped here to compare with our (clamping) ``decode``. ``meta`` is not needed: the config is
    read from the weights' shapes.
    """
    from safetensors.torch import load_file

    from echomimic_core.verify_reference import relative_error

    data = load_file(str(path))
    weights = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    vae = from_state_dict(weights, latents_mean=data["latents_mean"], latents_std=data["latents_std"], source=str(path))
    latent, log_var = vae.encode_distribution(data["input.video"])
    decoded = vae.decode(data["output.latent"])
    return {
        "latent": relative_error(latent, data["output.latent"]),
        "log_var": relative_error(log_var, data["output.log_var"]),
        "decoded": relative_error(decoded, data["output.decoded"].clamp(-1, 1)),
    }
