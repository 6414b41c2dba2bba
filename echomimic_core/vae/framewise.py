"""The Wan2.1 VAE run one frame at a time: diffusers' numbers in half to two thirds of the memory.

Every layer of the Wan2.1 VAE is causal in time. A ``WanCausalConv3d`` with a 3-frame kernel sees
its last two input frames (zeros before the first); the temporal resamples see the frame before;
everything else (RMS norms, SiLU, the 2D resamples, the middle attention) works within one frame.
diffusers runs the encoder on chunks of 1, 4, 4, ... frames and the decoder on one latent frame
(4 video frames) at a time, so every full-resolution activation is 4 frames deep, and each conv
copies its input twice (``cat`` with the cached frames, then ``pad``). Here each frame goes through
all layers before the next one enters, and each causal conv keeps only its last two input frames.
A conv is a sum over its time taps of 2D convolutions, accumulated into the residual stream where
one follows; the spatial zero padding is the convolution's own; norms and SiLU work in place where
their input is dead. What remains is the frame history itself, which the causal model needs
whatever the order of work (~2 frames per conv, most of the peak).

Frames are ``[B, C, H, W]``. ``_FrameStream`` pushes a frame through the layers, each of which maps
one frame to a list: one frame, none (the temporal downsample waits for a second one) or two (the
temporal upsample). A layer may overwrite its input frame, so a layer that keeps a frame in its
history never passes that same tensor on. Weights are the diffusers ``AutoencoderKLWan``'s modules.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from echomimic_core.vae_frames import latent_frames

Progress = Callable[[int, int], None]
# elements of attention scores computed at once (32 MiB in bf16): the queries of a frame go in slices
ATTENTION_SCORES = 1 << 24
# full-resolution work that is added into a frame (a conv tap, an upsampled frame's conv) goes in
# this many bands of rows: a quarter of a frame is alive instead of a whole one
BANDS = 4


def supports(model) -> bool:
    """Whether ``model`` (an ``AutoencoderKLWan``) has the Wan2.1 layout this forward implements."""
    config = model.config
    if getattr(config, "is_residual", False) or getattr(config, "patch_size", None) is not None:
        return False
    return all(hasattr(block, "upsamplers") for block in model.decoder.up_blocks)


@torch.no_grad()
def decode(model, latents: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """Raw latents ``[B, z_dim, F, h, w]`` -> video ``[B, C, 1 + 4(F-1), 8h, 8w]`` float32 in [-1, 1].

    ``progress(done, B * F)`` is called after each latent frame; an exception from it cancels.
    """
    decoder = model.decoder
    layers = [("conv", model.post_quant_conv), ("conv", decoder.conv_in), *_mid(decoder.mid_block)]
    for block in decoder.up_blocks:
        layers += [("resnet", r) for r in block.resnets]
        if block.upsamplers:
            layers += _resample(block.upsamplers[0])
    layers.append(("head", (decoder.norm_out, decoder.conv_out)))
    resamples = [b.upsamplers[0] for b in decoder.up_blocks if b.upsamplers]
    time_scale = 2 ** sum(r.mode == "upsample3d" for r in resamples)
    space_scale = 2 ** len(resamples)

    b, _, f, h, w = latents.shape
    shape = (b, decoder.conv_out.out_channels, 1 + (f - 1) * time_scale, h * space_scale, w * space_scale)
    # float32, what callers get, written frame by frame (no concatenated copy at the end)
    video = torch.empty(shape, dtype=torch.float32, device=latents.device)
    for i in range(b):  # one sample at a time, as diffusers' use_slicing: the history is per sample
        slots = iter(video[i].unbind(1))  # [C, H, W] views, one per output frame
        stream = _FrameStream(layers, lambda frame, slots=slots: next(slots).copy_(frame[0]))
        for t in range(f):
            stream.push(latents[i : i + 1, :, t])
            if progress is not None:
                progress(i * f + t + 1, b * f)
    return video.clamp_(-1.0, 1.0)


@torch.no_grad()
def encode(model, video: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """Video ``[B, C, 1 + 4k, H, W]`` -> raw posterior parameters ``[B, 2 z_dim, 1 + k, H/8, W/8]``
    (mean, then log-variance, along dim 1), in the model's dtype.

    ``progress(done, B * (1 + k))`` is called after each latent frame (one per diffusers chunk of
    1, 4, 4, ... frames); an exception from it cancels.
    """
    encoder = model.encoder
    layers = [("conv", encoder.conv_in)]
    for layer in encoder.down_blocks:
        if hasattr(layer, "mode"):
            layers += _resample(layer)
        else:
            layers.append(("attention" if hasattr(layer, "to_qkv") else "resnet", layer))
    layers += [*_mid(encoder.mid_block), ("head", (encoder.norm_out, encoder.conv_out)), ("conv", model.quant_conv)]

    b, t = video.shape[0], video.shape[2]
    per_sample = latent_frames(t)
    samples = []
    for i in range(b):
        latents = []

        def sink(frame, latents=latents):
            latents.append(frame)
            if progress is not None:
                progress(len(samples) * per_sample + len(latents), b * per_sample)

        stream = _FrameStream(layers, sink)
        for j in range(t):
            stream.push(video[i : i + 1, :, j])
        samples.append(torch.stack(latents, 2))
    return torch.cat(samples)


def _mid(mid_block) -> list:
    layers = [("resnet", mid_block.resnets[0])]
    for attention, resnet in zip(mid_block.attentions, mid_block.resnets[1:]):
        layers += [("attention", attention), ("resnet", resnet)]
    return layers


def _resample(resample) -> list:
    """A ``WanResample`` as its temporal and spatial halves, in diffusers' order."""
    if resample.mode == "upsample3d":
        return [("upsample_time", resample), ("space", resample)]
    if resample.mode == "downsample3d":
        return [("space", resample), ("downsample_time", resample)]
    return [("space", resample)]


def _norm(norm, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``WanRMS_norm`` over the channels of a frame ``[B, C, H, W]``, written to ``out`` (``x``
    itself when it is dead). diffusers' operations in its order: ``F.normalize``'s
    ``x / max(||x||, 1e-12)`` (in float32 for half dtypes), then ``* sqrt(C) * gamma + bias``."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    norm2 = torch.linalg.vector_norm(x, 2, dim=1, keepdim=True, dtype=torch.float32 if half else None)
    out = torch.div(x, norm2.clamp_min_(1e-12), out=out).mul_(norm.scale).mul_(norm.gamma.view(-1, 1, 1))
    if isinstance(norm.bias, torch.Tensor):
        out = out.add_(norm.bias.view(-1, 1, 1))
    return out


def _norm_silu(norm, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return F.silu(_norm(norm, x, out), inplace=True)


def _conv_frames(conv, frames: list[torch.Tensor], into: torch.Tensor | None = None) -> torch.Tensor:
    """A Conv3d's output frame from its last input frames (oldest first; frames before the first
    are zeros and add nothing) -> ``[B, C', H', W']``, added into ``into`` when given.

    Computed as 2D convolutions, each over the frames of one time tap, summed into one buffer: no
    stacked copy of the input and no padded one (the spatial zero padding is the convolution's).
    Where that costs more than stacking the frames (the low-resolution stages: a tap's weights, which
    a kernel may copy to make them contiguous, outweigh the frames) the frames are stacked instead
    and convolved at once through a view of the weights.
    """
    depth, height, width = conv.kernel_size
    stride, padding = conv.stride[1:], (conv._padding[2], conv._padding[0])
    area = frames[0].shape[-2] * frames[0].shape[-1]
    by_taps = conv.weight[:, :, 0].numel() + conv.out_channels * area // BANDS
    if depth > 1 and by_taps >= depth * frames[0].shape[1] * area:
        frames = [torch.zeros_like(frames[0])] * (depth - len(frames)) + frames
        stacked = torch.stack(frames, dim=2).flatten(1, 2)  # [B, C * depth, H, W], channel-major like the weight
        y = F.conv2d(stacked, conv.weight.flatten(1, 2), conv.bias, stride, padding)
        return y if into is None else into.add_(y)
    first = depth - len(frames)
    for tap in range(first, depth):
        frame = frames.pop(0)  # the oldest frame, out of the history already, goes after its tap
        weight, bias = conv.weight[:, :, tap], conv.bias if tap == first else None
        if into is None:
            into = F.conv2d(frame, weight, bias, stride, padding)
            continue
        # added in bands of rows, so a tap's output never exists whole (causal convs never stride in space)
        for r0, r1 in _bands(into.shape[-2]):
            into[..., r0:r1, :] += _rows(partial(F.conv2d, weight=weight, bias=bias, padding=padding), frame, 1, r0, r1)
    return into


def _bands(height: int) -> list[tuple[int, int]]:
    """Rows ``[r0, r1)`` of a frame in ``BANDS`` bands of an even number of rows."""
    step = max(2, -(-height // BANDS) + (-(-height // BANDS)) % 2)
    return [(r0, min(r0 + step, height)) for r0 in range(0, height, step)]


def _rows(fn, x: torch.Tensor, margin: int, r0: int, r1: int, scale: int = 1) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``fn(x)``, a row-local map (a same-padded convolution, after a nearest
    ``scale``x upsample) from the input rows they need plus ``margin`` more on each side: the map's
    own zero padding is then wrong only on rows cut off here, except at the frame's edges, where it
    is the frame's."""
    lo, hi = max(r0 // scale - margin, 0), min(-(-r1 // scale) + margin, x.shape[-2])
    return fn(x[..., lo:hi, :])[..., r0 - lo * scale : r1 - lo * scale, :]


class _FrameStream:
    """One sample's pass through ``layers``: frames go in one by one, each to the end before the next.

    ``history`` holds each causal conv's last input frames (at most 2) and what each temporal
    resample needs of the frames before; ``sink`` receives the output frames in order.
    """

    def __init__(self, layers: list, sink: Callable[[torch.Tensor], None]):
        self.layers, self.sink = layers, sink
        self.history: dict = {}

    def push(self, x: torch.Tensor, start: int = 0) -> None:
        for i in range(start, len(self.layers)):
            kind, module = self.layers[i]
            out = getattr(self, "_" + kind)(module, x)
            if len(out) != 1:
                # none or two frames: each goes on alone, after this frame's last reference is dropped
                x = None
                while out:
                    self.push(out.pop(0), i + 1)
                return
            x = out.pop()
        self.sink(x)

    def _causal(self, conv, x: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """A ``WanCausalConv3d`` on frame ``x`` after its last input frames (zeros before the first)."""
        context = conv._padding[4]  # 2 for a 3-frame kernel, 0 for 1x1x1
        frames = [*self.history.get(conv, []), x]
        if context:
            self.history[conv] = frames[-context:]
        return _conv_frames(conv, frames, into)

    def _conv(self, conv, x):
        return [self._causal(conv, x)]

    def _resnet(self, block, x):
        shortcut = x if isinstance(block.conv_shortcut, torch.nn.Identity) else self._causal(block.conv_shortcut, x)
        y = self._causal(block.conv1, _norm_silu(block.norm1, x, torch.empty_like(x)))
        # conv1's output is dead once normalised; conv2 adds into the shortcut (diffusers: x + h)
        return [self._causal(block.conv2, _norm_silu(block.norm2, y, y), into=shortcut)]

    def _attention(self, block, x):
        """``WanAttentionBlock``: one-head self-attention within a frame, plus its input. Queries go
        in slices: no fused kernel takes the head of 384 channels, and the whole score matrix of a
        96x96 latent frame (768x768 video) would be 2 x 162 MiB in bf16, the largest tensor of the run."""
        b, c, h, w = x.shape
        qkv = block.to_qkv(_norm(block.norm, x, torch.empty_like(x)))
        q, k, v = qkv.flatten(2).transpose(1, 2).contiguous().unsqueeze(1).chunk(3, dim=-1)  # [B, 1, HW, C]
        del qkv
        out = torch.empty_like(q)
        step = max(1, ATTENTION_SCORES // (h * w))
        for i in range(0, h * w, step):
            out[:, :, i : i + step] = F.scaled_dot_product_attention(q[:, :, i : i + step], k, v)
        del q, k, v
        return [block.proj(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)).add_(x)]

    def _head(self, norm_conv, x):
        norm, conv = norm_conv
        return [self._causal(conv, _norm_silu(norm, x, x))]

    def _space(self, resample, x):
        """The 2D up/down sample of a frame (``resample.resample``: upsample + conv or pad + conv)."""
        first, conv = resample.resample
        if not isinstance(first, torch.nn.Upsample):
            return [conv(first(x))]
        # nearest-neighbour copies values: in the frame's own dtype, without diffusers' round trip
        # through float32, the result is the same; and in bands of rows, so the 4x-area upsampled
        # frame never exists whole
        scale = int(first.scale_factor[0])
        out = torch.empty(
            x.shape[0], conv.out_channels, x.shape[-2] * scale, x.shape[-1] * scale, dtype=x.dtype, device=x.device
        )
        for r0, r1 in _bands(out.shape[-2]):
            out[..., r0:r1, :] = _rows(lambda rows: conv(torch.nn.Upsample.forward(first, rows)), x, 1, r0, r1, scale)
        return [out]

    def _upsample_time(self, resample, x):
        """One frame -> two (time_conv's channel halves, in that order). The very first frame
        passes unchanged and is not in time_conv's history, which starts from zeros at the second
        (diffusers' 'Rep' rule for the first chunk)."""
        if resample not in self.history:
            self.history[resample] = True
            return [x]
        pair = self._causal(resample.time_conv, x).unflatten(1, (2, -1))
        # the second frame apart, so the pair's storage goes with the first frame while it runs on
        return [pair[:, 0], pair[:, 1].clone()]

    def _downsample_time(self, resample, x):
        """The first frame passes unchanged; after it, each two frames with the one before them go
        through time_conv (3-frame kernel, stride 2) -> one frame."""
        pending = self.history.get(resample)
        if pending is None:
            self.history[resample] = [x]
            return [x.clone()]  # the next layer may overwrite its input; the history keeps x
        pending.append(x)
        if len(pending) < 3:
            return []
        self.history[resample] = [x]
        return [_conv_frames(resample.time_conv, pending)]
