"""Multi-task 0-1 mask inpainting: the conditioning ``y`` for every EchoMimicV3 task.

The model sees ``y = cat([mask_latents (4 ch), masked_video_latents (16 ch)], dim=1)`` beside the noisy
latents. Every task is one pixel-space pair:

* ``input_video``  [1, 3, F, H, W] in [0, 1]: the frames (or pixels) the model must keep;
* ``input_video_mask`` [1, 1, F, H, W]: 0 = keep, 255 = generate (upstream's convention).

From that pair, ``masked_pixels`` ([-1, 1], generated pixels zeroed) goes through the VAE into the 16
latent channels and ``mask_latents`` folds the mask onto the latent grid: 1 = keep, the first pixel
frame counted 4 times (the causal VAE's first latent frame covers one pixel frame, the others four),
then trilinear resizing as upstream. Tasks: first frame -> video, first + last frame, several start
frames (long-video continuation), arbitrary keyframes, and local mouth-region reconstruction over a
source video (spatial mask per frame).

The VAE stays outside: ``conditioning_y`` takes an ``encode`` callable or already-encoded latents.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .vae_frames import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, latent_frames

log = logging.getLogger(__name__)

KEEP, GENERATE = 0.0, 255.0

ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class TaskInputs:
    """Pixel-space inputs of one generation.

    input_video: [1, 3, F, H, W] float32 in [0, 1]; input_video_mask: [1, 1, F, H, W] float32, 0 keep /
    255 generate; reference_image: the first kept image at sample size (what CLIP sees), or None.
    """

    input_video: torch.Tensor
    input_video_mask: torch.Tensor
    reference_image: Image.Image | None = None

    @property
    def num_frames(self) -> int:
        return self.input_video.shape[2]


def pick_sample_size(height: int, width: int, area: int | Sequence[int] = (768, 768)) -> tuple[int, int]:
    """(H, W) to generate at: scaled to `area` pixels keeping the aspect, floored to multiples of 16.

    `area` is a pixel count or an (h, w) pair whose product is used. Images smaller than the area are
    never upscaled (only floored to 16), exactly as upstream's ``get_sample_size``.
    """
    target = area if isinstance(area, (int, float)) else area[0] * area[1]
    if height < 16 or width < 16:
        raise ValueError(f"image is {height}x{width}; both sides must be at least 16 pixels.")
    if target < height * width:
        ratio = math.sqrt(height * width / target)
        width = width / ratio // 16 * 16
        height = height / ratio // 16 * 16
    else:
        width = width // 16 * 16
        height = height // 16 * 16
    return int(height), int(width)


def to_pil(image: ImageLike) -> Image.Image:
    """PIL RGB from a PIL image, a uint8 [H, W, 3] array/tensor, or a float [3, H, W] tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"float image tensors must be [3, H, W] in [0, 1]; got {tuple(image.shape)}.")
            # upstream turns generated frames into images the same way: (x * 255).astype(uint8)
            image = (image.detach().cpu().permute(1, 2, 0) * 255).numpy().astype(np.uint8)
        else:
            image = image.detach().cpu().numpy()
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"expected an RGB image [H, W, 3]; got {getattr(image, 'shape', type(image))}.")
    return Image.fromarray(image.astype(np.uint8))


def resize_to_sample(image: ImageLike, sample_size: Sequence[int]) -> Image.Image:
    """LANCZOS resize to sample_size = (H, W), as upstream's get_image_to_video_latent2/3."""
    height, width = sample_size
    return to_pil(image).resize([width, height], resample=Image.Resampling.LANCZOS)


def _frame(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 tensor of a PIL image."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def keyframe_inputs(keyframes: Mapping[int, ImageLike], num_frames: int, sample_size: Sequence[int]) -> TaskInputs:
    """Keep the given frames (index -> image; negative indices count from the end), generate the rest.

    Frames that are generated hold a copy of the earliest keyframe, as upstream fills them (they are
    zeroed in ``masked_pixels`` anyway). All images are LANCZOS-resized to sample_size (H, W).
    """
    if not keyframes:
        raise ValueError(
            "keyframe_inputs needs at least one keyframe; for pure generation use generate_everything_inputs()."
        )
    indices = {}
    for index, image in keyframes.items():
        position = index + num_frames if index < 0 else index
        if not 0 <= position < num_frames:
            raise ValueError(f"keyframe index {index} is outside a {num_frames}-frame video.")
        indices[position] = resize_to_sample(image, sample_size)
    first = indices[min(indices)]
    video = _frame(first)[:, None].repeat(1, num_frames, 1, 1)
    mask = torch.full((1, num_frames, *video.shape[2:]), GENERATE)
    for position, image in indices.items():
        video[:, position] = _frame(image)
        mask[:, position] = KEEP
    return TaskInputs(video[None] / 255, mask[None], first)


def keep_frame(inputs: TaskInputs, position: int, image: ImageLike) -> TaskInputs:
    """``inputs`` with frame ``position`` also kept, as ``image`` (resized to the sample size);
    a frame the inputs already keep stays as it is."""
    if inputs.input_video_mask[0, 0, position].eq(KEEP).all():
        return inputs
    video, mask = inputs.input_video.clone(), inputs.input_video_mask.clone()
    video[0, :, position] = _frame(resize_to_sample(image, video.shape[-2:])).float() / 255
    mask[0, :, position] = KEEP
    return TaskInputs(video, mask, inputs.reference_image)


def start_frames_inputs(
    images: Sequence[ImageLike] | ImageLike,
    num_frames: int,
    sample_size: Sequence[int],
    end: Sequence[ImageLike] | ImageLike | None = None,
) -> TaskInputs:
    """First frame -> video (one image), several start frames (a list, or a stacked [N, H, W, 3] uint8 /
    [N, 3, H, W] float batch; long-video continuation), and optionally end frame(s) kept at the tail."""
    starts = _image_list(images)
    ends = [] if end is None else _image_list(end)
    if len(starts) + len(ends) > num_frames:
        raise ValueError(f"{len(starts)} start + {len(ends)} end frames do not fit in {num_frames} frames.")
    keyframes: dict[int, ImageLike] = dict(enumerate(starts))
    keyframes.update({num_frames - len(ends) + i: image for i, image in enumerate(ends)})
    return keyframe_inputs(keyframes, num_frames, sample_size)


def _image_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def generate_everything_inputs(num_frames: int, sample_size: Sequence[int]) -> TaskInputs:
    """Nothing kept (no reference frame): y becomes all zeros, as upstream."""
    height, width = sample_size
    return TaskInputs(
        torch.zeros(1, 3, num_frames, height, width), torch.full((1, 1, num_frames, height, width), GENERATE)
    )


def region_inputs(video: torch.Tensor, region: torch.Tensor) -> TaskInputs:
    """Local reconstruction over a source video: keep every pixel except `region` (e.g. the mouth).

    video: [1, 3, F, H, W] in [0, 1] at sample size; region: [H, W] (same for every frame) or
    [F, H, W], nonzero/True = regenerate. The audio then drives only what the region leaves open.
    """
    if video.ndim != 5 or video.shape[:2] != (1, 3):
        raise ValueError(f"video must be [1, 3, F, H, W] in [0, 1]; got {tuple(video.shape)}.")
    frames, (height, width) = video.shape[2], video.shape[3:]
    if region.ndim == 2:
        region = region[None].expand(frames, -1, -1)
    if tuple(region.shape) != (frames, height, width):
        raise ValueError(
            f"region mask must be [H, W] or [F, H, W] = [{frames}, {height}, {width}] to match "
            f"the video; got {tuple(region.shape)}. Resize it to the sample size first."
        )
    mask = torch.where(region.bool(), GENERATE, KEEP).to(torch.float32)
    return TaskInputs(video.to(torch.float32), mask[None, None], to_pil(video[0, :, 0].float()))


def binary_mask(input_video_mask: torch.Tensor) -> torch.Tensor:
    """[1, 1, F, H, W] float32, 1 = generate: upstream's mask processor binarises at 0.5 (0/255 in)."""
    mask = input_video_mask.to(torch.float32)
    return (mask >= 0.5).to(torch.float32)


def masked_pixels(inputs: TaskInputs) -> torch.Tensor:
    """[1, 3, F, H, W] in [-1, 1] with every generated pixel zeroed: what the VAE encodes."""
    keep = binary_mask(inputs.input_video_mask) < 0.5
    return (2.0 * inputs.input_video.to(torch.float32) - 1.0) * keep.expand_as(inputs.input_video)


def mask_latents(input_video_mask: torch.Tensor, latent_hw: Sequence[int] | None = None) -> torch.Tensor:
    """The 4 mask channels of y: [1, 4, F_lat, h, w], 1 = keep.

    The first pixel frame is repeated 4x so that F + 3 frames fold into F_lat = (F - 1) / 4 + 1 groups of
    4 (channels); the first latent frame and the others are resized separately with trilinear
    interpolation onto (h, w) (default H/8, W/8), as upstream's resize_mask.
    """
    mask = binary_mask(input_video_mask)
    batch, _, frames, height, width = mask.shape
    if (frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"the video has {frames} frames; the VAE needs 4k + 1 frames (e.g. 81, 113).")
    h, w = latent_hw or (height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
    mask = torch.cat([mask[:, :, :1].repeat_interleave(VAE_TEMPORAL_STRIDE, dim=2), mask[:, :, 1:]], dim=2)
    # [B, 1, F + 3, H, W] -> [B, F_lat, 4, H, W] -> [B, 4, F_lat, H, W]
    mask = (1 - mask).view(batch, mask.shape[2] // 4, 4, height, width).transpose(1, 2)
    latent_frames = mask.shape[2]
    first = F.interpolate(mask[:, :, :1], size=(1, h, w), mode="trilinear", align_corners=False)
    if latent_frames == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=(latent_frames - 1, h, w), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def conditioning_y(
    inputs: TaskInputs,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    masked_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [1, 20, F_lat, h, w] = 4 mask channels + 16 masked-video latent channels.

    Give either `encode` (masked_pixels [1, 3, F, H, W] in [-1, 1] -> normalised VAE latents
    [1, 16, F_lat, h, w]) or the already-encoded `masked_latents`. When nothing is kept, upstream feeds
    zeros for both parts instead of encoding a blank video; so do we (`encode` is then not called).
    """
    if (inputs.input_video_mask == GENERATE).all():
        frames, (height, width) = inputs.num_frames, inputs.input_video.shape[3:]
        shape = (
            1,
            16,
            latent_frames(frames),
            height // VAE_SPATIAL_STRIDE,
            width // VAE_SPATIAL_STRIDE,
        )
        like = masked_latents if masked_latents is not None else torch.empty(0)
        return torch.zeros(shape[0], 4 + shape[1], *shape[2:], dtype=like.dtype, device=like.device)
    if masked_latents is None:
        if encode is None:
            raise ValueError("conditioning_y needs either `encode` (a VAE encode callable) or `masked_latents`.")
        masked_latents = encode(masked_pixels(inputs))
    if masked_latents.ndim != 5:
        raise ValueError(f"masked-video latents must be [1, 16, F_lat, h, w]; got {tuple(masked_latents.shape)}.")
    mask = mask_latents(inputs.input_video_mask, masked_latents.shape[3:])
    if mask.shape[2] != masked_latents.shape[2]:
        raise ValueError(
            f"mask has {mask.shape[2]} latent frames but the latents have {masked_latents.shape[2]}; "
            "encode exactly masked_pixels(inputs)."
        )
    return torch.cat([mask.to(masked_latents), masked_latents], dim=1)


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """Relative errors of input_video, mask, masked_pixels and mask_latents for each task_masks case."""
    from safetensors.torch import load_file

    from echomimic_core.verify_reference import relative_error

    tensors = load_file(str(path))
    sample_size, frames = meta["sample_size"], meta["video_length"]
    errors = {}
    for case, spec in meta["cases"].items():
        starts = [tensors[f"{case}.start_{i}"].numpy() for i in range(spec["starts"])]
        end = tensors[f"{case}.end"].numpy() if spec["end"] else None
        inputs = start_frames_inputs(starts, frames, sample_size, end=end)
        errors[f"{case}.input_video"] = relative_error(inputs.input_video, tensors[f"{case}.input_video"])
        errors[f"{case}.input_video_mask"] = relative_error(
            inputs.input_video_mask, tensors[f"{case}.input_video_mask"]
        )
        errors[f"{case}.masked_pixels"] = relative_error(masked_pixels(inputs), tensors[f"{case}.masked_pixels"])
        ref_mask = tensors[f"{case}.mask_latents"]
        errors[f"{case}.mask_latents"] = relative_error(
            mask_latents(inputs.input_video_mask, ref_mask.shape[3:]), ref_mask
        )
    return errors
