"""What every node module shares: the category, dtype choices, and ComfyUI <-> core conversions."""

from __future__ import annotations

import contextlib
import logging

import torch

try:  # inside ComfyUI the pack is a package: its own module, never another pack's "workflows"
    from ..workflows.comfy_rules import range_problem, types_match
except ImportError:  # nodes imported as a top-level package (tests, scripts)
    from workflows.comfy_rules import range_problem, types_match

log = logging.getLogger(__name__)

CATEGORY = "EchoMimicV3"
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# an IMAGE a hair outside 0..1 (float rounding in an upstream node) is clamped; further out it is refused
IMAGE_RANGE_TOLERANCE = 1e-3


def image_batch(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, C] float in 0..1, checked, as float32 (numpy, which the core's image
    code uses, has no bf16); an alpha channel is dropped. uint8 or 0..255 values (which would turn
    into an all-white picture) and NaN are refused with the range expected."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4) or not len(image):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"{what}: expected a ComfyUI IMAGE [B, H, W, 3] in 0..1, got {shape}; "
            "connect an image output (Load Image, VAE Decode ...)."
        )
    if not image.is_floating_point():
        raise ValueError(
            f"{what}: expected a ComfyUI IMAGE of floats in 0..1, got {str(image.dtype).removeprefix('torch.')} "
            "values; the node that made it must divide by 255 (or 65535)."
        )
    image = image[..., :3].float()
    low, high = (float(v) for v in image.aminmax())
    if low != low or high != high or not -IMAGE_RANGE_TOLERANCE <= low <= high <= 1 + IMAGE_RANGE_TOLERANCE:
        hint = " (0..255 values: divide by 255)" if 1 < high <= 255 else ""
        raise ValueError(
            f"{what}: expected a ComfyUI IMAGE with values in 0..1, found {low:g}..{high:g}{hint}; "
            "fix or replace the node that made it."
        )
    return image.clamp(0.0, 1.0) if low < 0 or high > 1 else image


def mask_batch(mask, what: str = "mask") -> torch.Tensor:
    """A ComfyUI MASK as float32 [B, H, W]: [B, H, W] and [H, W], and the [B, 1, H, W] /
    [B, H, W, 1] some nodes hand on, are accepted; any other layout is refused naming it."""
    mask = torch.as_tensor(mask).float().cpu()
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    elif mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    elif mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or not len(mask):
        raise ValueError(
            f"{what}: expected a MASK [B, H, W] (or [H, W], [B, 1, H, W]), got shape {tuple(mask.shape)}; "
            "connect a MASK output (Load Image's mask, Convert Image to Mask)."
        )
    return mask


def linked_type_mismatch(node_class, input_types: dict | None) -> str | None:
    """Why a linked input's type does not fit ``node_class``'s INPUT_TYPES, or None.

    A VALIDATE_INPUTS that asks for ``input_types`` switches off ComfyUI's own link type check for
    the whole node (execution.validate_inputs), so such a node has to make it itself. The rule is
    ComfyUI's (``workflows/comfy_rules.types_match``, shared with the offline workflow checker).
    """
    if not isinstance(input_types, dict):
        return None
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, received in input_types.items():
        expected = declared.get(name, (None,))[0]
        if expected is not None and not types_match(received, expected):
            return f"{name}: expected {expected}, but {received} is connected; connect a {expected} output instead."
    return None


def out_of_range(node_class, values: dict) -> str | None:
    """Why one of ``values`` lies outside its widget's min/max in ``node_class``'s INPUT_TYPES, or None.

    ComfyUI skips its own min/max check for every input a VALIDATE_INPUTS names, so such a node
    repeats it for those inputs (an API prompt can carry any number), with ComfyUI's rule
    (``workflows/comfy_rules.range_problem``, shared with the offline workflow checker).
    """
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, value in values.items():
        options = declared[name][1] if len(declared.get(name, ())) > 1 else {}
        problem = range_problem(name, value, options)
        if problem:
            return f"{problem}; change the widget's value."
    return None


def to_signed_nchw(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, 3] in 0..1 -> [B, 3, H, W] in [-1, 1] (what the core's encoders take)."""
    return image.permute(0, 3, 1, 2).mul(2.0).sub(1.0)


# integer samples -> float in [-1, 1): the full scale of each PCM type
_PCM_SCALE = {torch.int16: 2**15, torch.int32: 2**31, torch.int8: 2**7}
# more channels than this on the last axis of [C, T] is a channels-last [T, C] waveform
_MAX_CHANNELS = 8


def audio_input(audio: dict, what: str = "audio") -> tuple[torch.Tensor, int]:
    """A ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate"} -> (the first item as float [C, T], rate).

    Also accepted, as nodes out there produce them: [C, T] or [T] without the batch, channels-last
    [B, T, C], and integer PCM (int16/int32/int8 scaled to [-1, 1), uint8 centred at 128). An empty
    batch or clip, NaN/inf samples and other layouts are refused saying what was expected.
    """
    from echomimic_core.media import check_finite_audio

    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(
            f"{what}: expected a ComfyUI AUDIO dict with 'waveform' and 'sample_rate', got "
            f"{type(audio).__name__}; connect Load Audio or another AUDIO output."
        )
    waveform = torch.as_tensor(audio["waveform"])
    if waveform.ndim == 3:
        if len(waveform) == 0:
            raise ValueError(f"{what}: the AUDIO batch is empty (0 clips); connect an AUDIO that holds a clip.")
        if len(waveform) > 1:
            log.warning("%s: the AUDIO holds a batch of %d clips; only the first is used", what, len(waveform))
        waveform = waveform[0]
    elif waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2:
        raise ValueError(
            f"{what}: expected an AUDIO waveform [B, C, T] (batch, channels, samples), got shape "
            f"{tuple(torch.as_tensor(audio['waveform']).shape)}."
        )
    if waveform.shape[0] > _MAX_CHANNELS and waveform.shape[1] <= _MAX_CHANNELS:
        log.info("%s: waveform is channels-last [T, C] = %s; reading it as [C, T]", what, tuple(waveform.shape))
        waveform = waveform.T
    if waveform.shape[-1] == 0:
        raise ValueError(f"{what}: the AUDIO clip holds no samples; connect a non-empty clip.")
    if waveform.dtype == torch.uint8:
        waveform = (waveform.float() - 128.0) / 128.0
    elif waveform.dtype in _PCM_SCALE:
        waveform = waveform.float() / _PCM_SCALE[waveform.dtype]
    elif not waveform.is_floating_point():
        raise ValueError(f"{what}: expected float (or int16/int32 PCM) samples, got {waveform.dtype}.")
    check_finite_audio(waveform, what)
    rate = int(audio["sample_rate"])
    if rate <= 0:
        raise ValueError(f"{what}: the sample rate must be positive, got {audio['sample_rate']}.")
    return waveform, rate


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
