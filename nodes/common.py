"""What every node module shares: the category, dtype choices, and ComfyUI <-> core conversions."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

CATEGORY = "EchoMimicV3"
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def image_batch(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] 0..1, checked, as float32 (numpy, which the core's image code
    uses, has no bf16); an alpha channel is dropped."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"{what}: expected a ComfyUI IMAGE [B, H, W, 3] in 0..1, got {shape}; "
            "connect an image output (Load Image, VAE Decode ...)."
        )
    return image[..., :3].float()


def linked_type_mismatch(node_class, input_types: dict | None) -> str | None:
    """Why a linked input's type does not fit ``node_class``'s INPUT_TYPES, or None.

    A VALIDATE_INPUTS that asks for ``input_types`` switches off ComfyUI's own link type check for
    the whole node (execution.validate_inputs), so such a node has to make it itself. The rule is
    ComfyUI's: comma-separated types fit when they share one; "*" fits anything.
    """
    if not isinstance(input_types, dict):
        return None
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, received in input_types.items():
        expected = declared.get(name, (None,))[0]
        if not isinstance(expected, str) or not isinstance(received, str) or "*" in (expected, received):
            continue
        if not {t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")}:
            return f"{name}: expected {expected}, but {received} is connected; connect a {expected} output instead."
    return None


def out_of_range(node_class, values: dict) -> str | None:
    """Why one of ``values`` lies outside its widget's min/max in ``node_class``'s INPUT_TYPES, or None.

    ComfyUI skips its own min/max check for every input a VALIDATE_INPUTS names, so such a node
    repeats it for those inputs (an API prompt can carry any number).
    """
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, value in values.items():
        options = declared[name][1] if len(declared.get(name, ())) > 1 else {}
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} must be in [{low}, {high}], got {value}; change the widget's value."
    return None


def to_signed_nchw(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in 0..1 -> [B, 3, H, W] in [-1, 1] (what the core's encoders take)."""
    return image.permute(0, 3, 1, 2).mul(2.0).sub(1.0)


def audio_input(audio: dict, what: str = "audio") -> tuple[torch.Tensor, int]:
    """A ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate"} -> (waveform of the first item [C, T], rate)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(
            f"{what}: expected a ComfyUI AUDIO dict with 'waveform' and 'sample_rate', got "
            f"{type(audio).__name__}; connect Load Audio or another AUDIO output."
        )
    waveform = torch.as_tensor(audio["waveform"])
    if waveform.ndim == 3:
        if len(waveform) > 1:
            log.warning("%s: the AUDIO holds a batch of %d clips; only the first is used", what, len(waveform))
        waveform = waveform[0]
    return waveform, int(audio["sample_rate"])


@contextlib.contextmanager
def on_compute_device(encoder):
    """An encoder (or VAE) wrapper on the compute device for one job, parked and the cache released after.

    ``with on_compute_device(encoder): encoder.encode(...)``. The move is the core's
    ``pipeline.on_device`` (the wrapper's own ``to``, a no-op for models ComfyUI places itself);
    without a GPU both devices are the CPU and nothing moves.
    """
    from echomimic_core.pipeline import on_device

    from . import comfy_services as services

    try:
        with on_device(encoder, services.torch_device(), services.offload_device()):
            yield encoder
    finally:
        services.soft_empty_cache()
