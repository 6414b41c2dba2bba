"""How much accelerator memory a generation needs, phase by phase, and the settings that fit a budget.

A generation has three phases, and its peak is the largest of them:

* **encode**: umT5 (prompt and negative prompt), the CLIP image tower and the audio encoder, each
  on the device only while it runs (or computed on the CPU: ``encoders_on_cpu``);
* **denoise**: the transformer's resident weights, the conditioning, a step cache's residuals and
  one forward's activations — ``passes`` guidance branches in one batch, or one at a time;
* **decode**: per chunk the VAE encodes the conditioning video and decodes the latents, next to
  the transformer, which stays resident.

The formulas count tensor bytes, which is what the CUDA caching allocator's
``max_memory_allocated`` counts. Their shape follows the code (a forward keeps ~5 buffers of
``[B, L, C]`` alive at its peak, see ``model.blocks``; the VAE, run one frame at a time, holds each
causal conv's last two input frames plus one frame's work, and the chunk's video) and their coefficients were read off
shape-only traces of that code on the meta device (``benchmarks/memory_plan.py --calibrate``
prints them again). ``benchmarks/memory_plan.py`` checks the predictions against runs on a CPU at
the real width. What a GPU adds on top (CUDA context, cuBLAS workspace, allocator slack) is
``RUNTIME_OVERHEAD`` + ``ALLOCATOR_SLACK`` and is only applied when comparing with a budget.

Host memory is planned too, before any model loads: the decoded video a generation holds
(``check_video_fits_in_ram``), which refuses 65536 x 65536 or hours at 4K with the figure instead of
a MemoryError after minutes of loading.

``plan(workload, budget)`` enumerates the memory savers (chunk length, fp8 block weights, block
swap, sequential guidance, VAE tiles, encoders on the CPU, the text/CLIP key cache, TeaCache
residuals on the CPU) and picks the candidate that fits with the least loss: first the longest
chunk (shorter chunks mean more seams), then no fp8 (a small quality cost), then the lowest
estimated time (block swap, tiling and CPU encoders cost only time).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass, field

import torch

from .config import VARIANTS, TransformerConfig
from .encoders.text import VARIANT_COMPUTE_DTYPES
from .long_video import plan_chunks
from .model.context_cache import compacts
from .sampling.guidance import MODE_BRANCHES, VARIANT_MODES, GuidanceConfig
from .settings import VARIANT_DEFAULTS
from .vae_frames import VAE_SPATIAL_STRIDE, latent_frames, round_down_4k1, round_up_4k1

GIB = 1 << 30
MIB = 1 << 20

# ---- coefficients (bytes), from shape-only traces of the code (benchmarks/memory_plan.py --calibrate)
# transformer forward, inference path: live [B, L, C] buffers at the peak (self-attention: the
# stream, q, k, v, the attention output; norms and RoPE work on float32 slices of
# model.ops.CHUNK_ELEMENTS elements, whose scratch is float32 copy + result + cast back)
ACT_BUFFERS = 5.03
# float32 copy + result + cast back (2-byte dtypes); float32 activations need no copy or cast
FP32_SCRATCH_BYTES_PER_ELEMENT = {2: 10, 4: 6}
CHUNK_ELEMENTS = 1 << 22  # model.ops.CHUNK_ELEMENTS (a test holds them equal)
# VAE, untiled: run one frame at a time (vae/framewise.py). Elements per pixel of the frame, in any
# dtype: each causal conv's last two input frames (2 x its input channels, weighted by its
# resolution's share of the pixels; decoder 1/64 latent size, 1/16, 1/4, full), which stay for the
# whole chunk, plus the work at the peak: a full-resolution conv's output, the input frame that just
# left its history and the block's residual input (3 x 96), in the decoder also the time upsample's
# second frame waiting (384 / 16)
VAE_DECODE_HISTORY = 2 * ((16 + 11 * 384) / 64 + (192 + 6 * 384) / 16 + 6 * 192 / 4 + 7 * 96)  # 2364.5
VAE_ENCODE_HISTORY = 2 * (3 + 4 * 96 + (96 + 3 * 192) / 4 + (2 * 192 + 3 * 384) / 16 + 10 * 384 / 64)  # 1422
VAE_DECODE_WORK = 319.0
VAE_ENCODE_WORK = 282.0
# and bytes per pixel of every frame of the chunk: the decoded video (float32, 3 channels); the
# conditioning video (float32) and its copy in the compute dtype
VAE_DECODE_PER_FRAME_PIXEL = {2: 12.4, 4: 12.5}
VAE_ENCODE_PER_FRAME_PIXEL = {2: 18.3, 4: 12.5}
# VAE, tiled: diffusers' AutoencoderKLWan forward on each tile; bytes per pixel of the tile, and per
# pixel of every frame of the chunk (input copies / output so far); 2-byte dtypes vs float32
VAE_TILED_DECODE_PER_PIXEL = {2: 10123.0, 4: 19516.0}
VAE_TILED_DECODE_PER_FRAME_PIXEL = {2: 7.5, 4: 14.0}
VAE_TILED_ENCODE_PER_PIXEL = {2: 7433.0, 4: 14138.0}
VAE_TILED_ENCODE_PER_FRAME_PIXEL = {2: 18.3, 4: 12.5}
VAE_PARAMS = 126_892_531
# umT5-XXL: activations per prompt of 512 tokens besides the per-layer hidden states, and a
# constant; a block is upcast to the compute dtype while it runs when stored lower
TEXT_ACT_PER_PROMPT = {2: 208 * MIB, 4: 224 * MIB}
TEXT_ACT_CONSTANT = {2: 32 * MIB, 4: 64 * MIB}
AUDIO_ACT_PER_SECOND_FP32 = 12.5 * MIB  # wav2vec2: the convolutional feature encoder dominates
CLIP_ACT = {2: 26 * MIB, 4: 52 * MIB}

# ---- what a GPU adds (applied when comparing with a budget, not in the phase figures)
RUNTIME_OVERHEAD = int(0.6 * GIB)  # CUDA context, cuBLAS / cuDNN workspaces, kernels
ALLOCATOR_SLACK = 0.07  # caching-allocator fragmentation over the tensor bytes

# ---- host memory: bytes per pixel channel of the decoded video at its peak (the float32 frames
# render returns, the float32 copy colour matching makes, and the uint8 frames it and the video
# writer convert through)
VIDEO_BYTES_PER_CHANNEL = 4 + 4 + 1 + 1

# ---- rough speed model, only to rank candidates that fit (seconds on a reference GPU)
REFERENCE_FLOPS = 150e12  # bf16 dense, what a 4090 / A100 sustains on large matmuls
PCIE_BYTES_PER_SECOND = 16e9  # pinned host -> device
CPU_FLOPS = 0.5e12  # a desktop CPU running an encoder in float32
SEQUENTIAL_GUIDANCE_COST = 1.03
FP8_COST = 1.05
NO_CONTEXT_CACHE_COST = 1.03
VAE_TILE_COST = 1.15  # the overlap bands are computed twice

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TILE_SIZES = (None, 512, 384, 256)


@dataclass(frozen=True)
class EncoderSizes:
    """Parameter counts and storage of the encoders (the released umT5-XXL, CLIP ViT-H, wav2vec2-base)."""

    text_params: int = 5_680_910_336
    text_layers: int = 24
    text_block_params: int = 192_948_224
    text_storage_bytes: int = 2  # bf16 release (ComfyUI's fp8 files are de-quantised to bf16)
    text_compute_bytes: int = 4  # preview: float32 as upstream; flash: bf16
    text_width: int = 4096
    clip_params: int = 611_088_640
    audio_params: int = 94_371_712


@dataclass(frozen=True)
class Workload:
    """What is generated. ``config``: the transformer (default: the variant's release, 30 layers);
    ``passes``: guidance branches per step (default: the variant's guidance mode's, preview 3, flash 2;
    1 without CFG); ``steps``: default the variant's."""

    variant: str
    height: int
    width: int
    frames: int
    fps: float = 25.0
    dtype: str = "bfloat16"
    passes: int | None = None
    overlap: int = 8
    steps: int | None = None
    step_cache: str = "auto"  # "teacache", "easycache", "off"; auto: the variant's default (flash TeaCache)
    config: TransformerConfig | None = None
    # None: the encoders are not ours to place (ComfyUI's own text / CLIP nodes run them)
    encoders: EncoderSizes | None = field(default_factory=EncoderSizes)
    # the longest prompt's umT5 tokens; None: text_len (512), the most a plan made before the
    # prompt is encoded can assume
    prompt_tokens: int | None = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}.")
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 32:
            raise ValueError(f"width and height must be multiples of 16, at least 32; got {self.width}x{self.height}.")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}.")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}.")
        if self.prompt_tokens is not None and self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0 (or None: text_len), got {self.prompt_tokens}.")

    @property
    def model(self) -> TransformerConfig:
        return self.config or TransformerConfig.preset(self.variant)

    @property
    def text_rows(self) -> int:
        """Rows of a prompt's embedding and keys: in float32 its tokens plus the one row that stands
        for its zero padding to text_len (``model.context_cache``), text_len for a prompt that fills
        it; in half dtypes text_len (upstream's layout, see ``context_cache.compacts``)."""
        text_len = self.model.text_len
        if not compacts(getattr(torch, self.dtype)):
            return text_len
        tokens = text_len if self.prompt_tokens is None else min(self.prompt_tokens, text_len)
        return tokens + (tokens < text_len)

    @property
    def guidance_passes(self) -> int:
        return self.passes or len(MODE_BRANCHES[VARIANT_MODES[self.variant]])

    @property
    def cache_kind(self) -> str | None:
        """The step cache the run uses: "teacache", "easycache" or None."""
        if self.step_cache == "auto":
            return "teacache" if VARIANT_DEFAULTS[self.variant]["teacache_threshold"] > 0 else None
        return None if self.step_cache == "off" else self.step_cache

    @property
    def uses_step_cache(self) -> bool:
        """Any step cache: residuals are kept and the block input is copied."""
        return self.cache_kind is not None

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    @property
    def default_chunk(self) -> int:
        return VARIANT_DEFAULTS[self.variant]["partial_video_length"]


@dataclass(frozen=True)
class Options:
    """The memory savers of one candidate."""

    chunk: int  # frames per chunk (partial_video_length)
    fp8: bool = False  # transformer block matrices stored as float8_e4m3fn
    block_swap: int = 0  # blocks kept in host memory and streamed in
    batch_guidance: bool = True
    vae_tile: int | None = None  # pixels; None = whole frames
    encoders_on_cpu: bool = False
    context_cache: bool = True
    teacache_offload: bool = False

    def describe(self) -> str:
        parts = [f"chunks of {self.chunk} frames"]
        if self.fp8:
            parts.append("fp8 block weights")
        if self.block_swap:
            parts.append(f"block swap {self.block_swap}")
        if not self.batch_guidance:
            parts.append("guidance passes one at a time")
        if self.vae_tile:
            parts.append(f"VAE tiles of {self.vae_tile} px")
        if self.encoders_on_cpu:
            parts.append("encoders on the CPU")
        if not self.context_cache:
            parts.append("no text/CLIP key cache")
        if self.teacache_offload:
            parts.append("TeaCache residuals on the CPU")
        return ", ".join(parts)

    def settings_overrides(self) -> dict:
        """The ``GenerationSettings`` fields this candidate sets."""
        out = {
            "partial_video_length": self.chunk,
            "batch_guidance": self.batch_guidance,
            "vae_tile_size": self.vae_tile,
            "context_cache": self.context_cache,
        }
        if self.teacache_offload:
            out["teacache_offload"] = True
        return out


@dataclass
class Estimate:
    """Predicted peak bytes per phase, each with its parts."""

    workload: Workload
    options: Options
    phases: dict[str, dict[str, int]]

    def phase(self, name: str) -> int:
        return sum(self.phases[name].values())

    @property
    def encode(self) -> int:
        return self.phase("encode")

    @property
    def denoise(self) -> int:
        return self.phase("denoise")

    @property
    def decode(self) -> int:
        return self.phase("decode")

    @property
    def peak(self) -> int:
        """The largest phase: tensor bytes, what ``max_memory_allocated`` would report."""
        return max(self.encode, self.denoise, self.decode)

    @property
    def required(self) -> int:
        """What the device must have free: the peak plus the runtime's own memory."""
        return int(self.peak * (1 + ALLOCATOR_SLACK)) + RUNTIME_OVERHEAD


# ---------------------------------------------------------------------------------------------
# parameter counts


def block_params(c: TransformerConfig) -> tuple[int, int]:
    """(all parameters, 2-D matrices) of one block; the matrices are what fp8 storage shrinks."""
    d, f = c.dim, c.ffn_dim
    flash = c.variant == "flash"
    norm = d if c.qk_norm else 0
    matrices = 4 * d * d + 8 * d * d + (d * d if flash else 0) + 2 * d * f
    vectors = (
        4 * d  # self q k v o biases
        + 2 * norm  # norm_q, norm_k
        + (2 * d if c.cross_attn_norm else 0)  # norm3
        + 6 * d  # cross q k v o k_img v_img biases
        + 3 * norm  # norm_q, norm_k, norm_k_img
        + (3 * d if flash else 0)  # k_audio, v_audio, q_audio biases
        + norm  # norm_k_audio
        + f
        + d  # ffn biases
        + 6 * d  # modulation
    )
    return matrices + vectors, matrices


def other_params(c: TransformerConfig) -> int:
    """Parameters outside the blocks: embeddings, time MLPs, head, CLIP and audio projectors."""
    d = c.dim
    patch = math.prod(c.patch_size)
    n = d * c.in_dim * patch + d  # patch_embedding
    n += c.text_dim * d + d + d * d + d  # text_embedding
    n += c.freq_dim * d + d + d * d + d  # time_embedding
    n += 6 * d * d + 6 * d  # time_projection
    n += d * patch * c.out_dim + patch * c.out_dim + 2 * d  # head
    n += 2 * c.clip_dim + c.clip_dim * c.clip_dim + c.clip_dim + c.clip_dim * d + d + 2 * d  # img_emb
    if c.variant == "flash":
        per_step = c.audio_blocks * c.audio_channels
        inter = c.audio_intermediate_dim
        n += c.audio_window * per_step * inter + inter  # proj1
        n += c.audio_window_vf * per_step * inter + inter  # proj1_vf
        n += inter * inter + inter  # proj2
        n += inter * c.audio_context_tokens * d + c.audio_context_tokens * d  # proj3
        n += 2 * d  # norm
    else:
        n += c.audio_in_dim * d + 2 * d  # proj (no bias) + norm
    return n


def transformer_bytes(c: TransformerConfig, compute_bytes: int, fp8: bool) -> tuple[int, int]:
    """(one block, everything outside the blocks) in bytes as stored."""
    total, matrices = block_params(c)
    block = (total - matrices) * compute_bytes + matrices * (1 if fp8 else compute_bytes)
    return block, other_params(c) * compute_bytes


# ---------------------------------------------------------------------------------------------
# the three phases


def _tokens(c: TransformerConfig, frames: int, height: int, width: int) -> int:
    pt, ph, pw = c.patch_size
    return (latent_frames(frames) // pt) * (height // VAE_SPATIAL_STRIDE // ph) * (width // VAE_SPATIAL_STRIDE // pw)


def forward_activations(c: TransformerConfig, batch: int, tokens: int, compute_bytes: int) -> int:
    """Peak bytes one transformer forward allocates (inference path) for ``batch`` samples of
    ``tokens`` tokens: the block peak, RoPE tables, float32 scratch, the conditioning's embeddings."""
    unit = batch * tokens * c.dim
    blocks = ACT_BUFFERS * unit * compute_bytes
    rope = tokens * c.head_dim * 4  # cos and sin, [L, 1, head_dim / 2] float32 each
    scratch = min(unit, CHUNK_ELEMENTS) * FP32_SCRATCH_BYTES_PER_ELEMENT[2 if compute_bytes <= 2 else 4]
    # per sample: an allowance for the conditioning, sized as the padded prompt, its embedding, the
    # CLIP tokens' embedding and one block's keys/values of both were (the time projection's float32
    # weight copy lives before the blocks). The compact prompt (model.context_cache) lowered the
    # traced peak by its embedding's rows only (~1 %), within the fit: the allowance stays as fitted
    context = batch * (c.text_len * (c.text_dim + 3 * c.dim) + 3 * c.clip_tokens * c.dim) * compute_bytes
    return int(blocks + rope + scratch + context)


def _latent_state(c: TransformerConfig, batch: int, latent_pixels: int, compute_bytes: int) -> int:
    """Sampler-side tensors per step: latents and scheduler history (float32), the batch's latents
    in the compute dtype, the mask + masked-video conditioning y (float32, per branch and batched)."""
    y = c.in_dim - c.out_dim
    per_pixel = c.out_dim * 4 * 4 + c.out_dim * compute_bytes * batch + y * 4 * (batch + 1)
    return per_pixel * latent_pixels


def vae_bytes(frames: int, height: int, width: int, compute_bytes: int, tile: int | None, decode: bool) -> int:
    """Peak bytes the VAE allocates to encode (``decode=False``) or decode one ``frames``-frame chunk."""
    key = 2 if compute_bytes <= 2 else 4
    video = frames * height * width
    if tile is not None and (height > tile or width > tile):  # diffusers' forward, one tile at a time
        area = tile * tile
        if decode:
            return int(VAE_TILED_DECODE_PER_PIXEL[key] * area + VAE_TILED_DECODE_PER_FRAME_PIXEL[key] * video)
        return int(VAE_TILED_ENCODE_PER_PIXEL[key] * area + VAE_TILED_ENCODE_PER_FRAME_PIXEL[key] * video)
    if decode:
        per_pixel = (VAE_DECODE_HISTORY + VAE_DECODE_WORK) * compute_bytes
        return int(per_pixel * height * width + VAE_DECODE_PER_FRAME_PIXEL[key] * video)
    per_pixel = (VAE_ENCODE_HISTORY + VAE_ENCODE_WORK) * compute_bytes
    return int(per_pixel * height * width + VAE_ENCODE_PER_FRAME_PIXEL[key] * video)


def estimate(w: Workload, o: Options) -> Estimate:
    """Predicted peak bytes of each phase for workload ``w`` with memory savers ``o``."""
    c = w.model
    s = DTYPE_BYTES[w.dtype]
    chunk = min(round_down_4k1(o.chunk), round_up_4k1(w.frames))
    tokens = _tokens(c, chunk, w.height, w.width)
    latent_pixels = latent_frames(chunk) * (w.height // VAE_SPATIAL_STRIDE) * (w.width // VAE_SPATIAL_STRIDE)
    passes = w.guidance_passes
    batch = passes if o.batch_guidance else 1

    block, other = transformer_bytes(c, s, o.fp8)
    swap = min(o.block_swap, c.num_layers)
    resident = other + (c.num_layers - swap) * block + min(swap, 2) * block  # two swapped blocks in flight
    weights = {"transformer weights": resident}

    unit = tokens * c.dim * s
    kv_per_prompt = c.num_layers * 2 * w.text_rows * c.dim * s
    kv_per_image = c.num_layers * 2 * c.clip_tokens * c.dim * s
    prompts = 3 if w.variant == "preview" else 1  # preview: prompt, negative, boosted negative
    cache = (prompts * kv_per_prompt + kv_per_image) if o.context_cache else 0
    # TeaCache keeps each branch's residual; EasyCache also the deciding branch's last and last
    # computed inputs (the whole batch when the passes run batched)
    kept = passes if w.cache_kind == "teacache" else (3 * passes if o.batch_guidance else passes + 2)
    residuals = kept * unit if w.uses_step_cache and not o.teacache_offload else 0
    denoise = {
        **weights,
        "activations": forward_activations(c, batch, tokens, s) + (batch * unit if w.uses_step_cache else 0),
        "latents": _latent_state(c, batch, latent_pixels, s),
        "text/CLIP key cache": cache,
        "step cache residuals": residuals,
    }
    if o.fp8:  # one matrix at a time is cast to the compute dtype
        denoise["fp8 cast"] = c.dim * c.ffn_dim * s

    vae_weights = VAE_PARAMS * s
    vae_work = max(
        vae_bytes(chunk, w.height, w.width, s, o.vae_tile, decode=True),
        vae_bytes(chunk, w.height, w.width, s, o.vae_tile, decode=False),
    )
    decode = {  # the key cache is made per chunk and dropped before the VAE runs
        **weights,
        "VAE weights": vae_weights,
        "VAE activations": vae_work,
        "latents": latent_pixels * c.out_dim * 4 * 2,
    }

    e = w.encoders
    if e is None:
        encode = {"encoders (not ours to place)": 0}
    elif o.encoders_on_cpu:
        encode = {"encoders (on the CPU)": 0}
    else:
        text_weights = e.text_params * e.text_storage_bytes
        upcast = e.text_block_params * e.text_compute_bytes if e.text_compute_bytes != e.text_storage_bytes else 0
        text_act = (
            TEXT_ACT_CONSTANT[min(e.text_compute_bytes, 4)]
            + 2 * TEXT_ACT_PER_PROMPT[min(e.text_compute_bytes, 4)]
            + 2 * e.text_layers * 512 * e.text_width * e.text_compute_bytes
        )
        text = text_weights + upcast + text_act
        clip = e.clip_params * s + CLIP_ACT[2 if s <= 2 else 4]
        audio = e.audio_params * s + int(AUDIO_ACT_PER_SECOND_FP32 * w.seconds * s / 4)
        largest = max(("umT5", text), ("CLIP", clip), ("audio encoder", audio), key=lambda kv: kv[1])
        encode = {f"{largest[0]} (largest encoder)": largest[1]}
    return Estimate(w, dataclasses.replace(o, chunk=chunk), {"encode": encode, "denoise": denoise, "decode": decode})


# ---------------------------------------------------------------------------------------------
# host memory: the decoded video


def video_bytes(frames: int, sample_size: tuple[int, int]) -> int:
    """Host bytes ``frames`` decoded frames at (height, width) need at their peak."""
    height, width = sample_size
    return frames * height * width * 3 * VIDEO_BYTES_PER_CHANNEL


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_video_fits_in_ram(frames: int, sample_size: tuple[int, int], available: int | None = None) -> None:
    """ValueError with the figure when ``frames`` decoded frames alone need more than the machine's RAM."""
    available = physical_memory() if available is None else available
    needed = video_bytes(frames, sample_size)
    if available is not None and needed > available:
        height, width = sample_size
        raise ValueError(
            f"{frames} frames at {width}x{height} need about {needed / GIB:,.1f} GiB of memory for the "
            f"decoded video alone; this machine has {available / GIB:,.1f} GiB. Lower the size "
            "(--width/--height or sample_area) or the length (--max-frames, a shorter audio clip)."
        )


# ---------------------------------------------------------------------------------------------
# speed, only to rank candidates


def estimated_seconds(w: Workload, o: Options) -> float:
    """A rough generation time on a reference GPU, to prefer cheap savers over costly ones."""
    c = w.model
    steps = w.steps or VARIANT_DEFAULTS[w.variant]["steps"]
    chunks = plan_chunks(max(w.frames, 1), max(o.chunk, 5), min(w.overlap, max(o.chunk, 5) - 2))
    flops = 0.0
    per_token = 2 * sum(block_params(c)) * c.num_layers
    for ch in chunks:
        tokens = _tokens(c, ch.length, w.height, w.width)
        flops += tokens * per_token + 4 * tokens * tokens * c.dim * c.num_layers
    seconds = flops * steps * w.guidance_passes / REFERENCE_FLOPS
    if not o.batch_guidance:
        seconds *= SEQUENTIAL_GUIDANCE_COST
    if o.fp8:
        seconds *= FP8_COST
    if not o.context_cache:
        seconds *= NO_CONTEXT_CACHE_COST
    forwards = len(chunks) * steps * (1 if o.batch_guidance else w.guidance_passes)
    block, _ = transformer_bytes(c, DTYPE_BYTES[w.dtype], o.fp8)
    seconds += forwards * o.block_swap * block / PCIE_BYTES_PER_SECOND
    decode = len(chunks) * 2.0 * (w.height * w.width) / (768 * 768) * (VAE_TILE_COST if o.vae_tile else 1.0)
    seconds += decode
    if o.encoders_on_cpu and w.encoders is not None:
        seconds += 2 * 2 * w.encoders.text_params * 512 / CPU_FLOPS
    return seconds


# ---------------------------------------------------------------------------------------------
# choosing


def chunk_candidates(w: Workload) -> list[int]:
    """The variant's chunk length, then shorter 4k+1 lengths down to 17 (each shorter by 16)."""
    longest = min(w.default_chunk, round_up_4k1(w.frames))
    out = [longest]
    while out[-1] - 16 >= 17:
        out.append(out[-1] - 16)
    return out


def candidates(w: Workload, fixed: dict | None = None) -> list[Options]:
    """Every combination of memory savers the planner considers; ``fixed`` holds ``Options`` fields
    the caller has already decided (e.g. ``{"fp8": False}`` for a model loaded without fp8)."""
    fixed = fixed or {}
    unknown = set(fixed) - {f.name for f in dataclasses.fields(Options)}
    if unknown:
        raise ValueError(
            f"unknown plan options {sorted(unknown)}; known: {[f.name for f in dataclasses.fields(Options)]}"
        )
    layers = w.model.num_layers
    swaps = sorted({0, *range(2, layers + 1, 2), layers})

    def values(name, choices):
        return (fixed[name],) if name in fixed else choices

    chunks = (fixed["chunk"],) if "chunk" in fixed else chunk_candidates(w)
    return [
        Options(chunk, fp8, swap, batched, tile, cpu_enc, kv, offload)
        for chunk, fp8, swap, batched, tile, cpu_enc, kv, offload in itertools.product(
            chunks,
            values("fp8", (False, True)),
            values("block_swap", swaps),
            values("batch_guidance", (True, False) if w.guidance_passes > 1 else (True,)),
            values("vae_tile", TILE_SIZES),
            values("encoders_on_cpu", (False, True) if w.encoders is not None else (False,)),
            values("context_cache", (True, False)),
            values("teacache_offload", (False, True) if w.uses_step_cache else (False,)),
        )
    ]


def _rank(w: Workload, o: Options) -> tuple:
    return (w.default_chunk - o.chunk, o.fp8, estimated_seconds(w, o))


@dataclass
class Plan:
    workload: Workload
    budget: int  # bytes
    chosen: Estimate | None  # None: nothing fits
    rows: list[Estimate]  # one per chunk length x fp8: the best that fits, else the smallest
    smallest: Estimate  # the least memory any candidate needs

    @property
    def fits(self) -> bool:
        return self.chosen is not None


def plan(w: Workload, budget_bytes: int, fixed: dict | None = None) -> Plan:
    """The candidate that fits ``budget_bytes`` with the least loss (see the module docstring);
    ``fixed``: options already decided (see ``candidates``)."""
    estimates = [estimate(w, o) for o in candidates(w, fixed)]
    fitting = [e for e in estimates if e.required <= budget_bytes]
    chosen = min(fitting, key=lambda e: _rank(w, e.options)) if fitting else None
    rows = []
    for chunk, fp8 in sorted({(e.options.chunk, e.options.fp8) for e in estimates}, key=lambda k: (-k[0], k[1])):
        group = [e for e in estimates if e.options.chunk == chunk and e.options.fp8 == fp8]
        fit = [e for e in group if e.required <= budget_bytes]
        rows.append(
            min(fit, key=lambda e: _rank(w, e.options))
            if fit
            else min(group, key=lambda e: (e.required, _rank(w, e.options)))
        )
    smallest = min(estimates, key=lambda e: (e.required, _rank(w, e.options)))
    return Plan(w, budget_bytes, chosen, rows, smallest)


def format_plan(p: Plan) -> str:
    """The candidate table and the choice, for the ``plan`` command and logs."""
    w = p.workload
    head = (
        f"EchoMimicV3 {w.variant}, {w.width}x{w.height}, {w.frames} frames ({w.seconds:.2f} s at {w.fps:g} fps), "
        f"{w.dtype}, {w.guidance_passes} guidance passes; budget {p.budget / GIB:.1f} GiB"
    )
    lines = [
        head,
        f"{'chunk':>5} {'fp8':>3} {'swap':>4} {'guidance':>10} {'VAE tile':>8} {'encoders':>8} {'kv cache':>8} "
        f"{'encode':>7} {'denoise':>7} {'decode':>7} {'needs':>7}  fits  (GiB)",
    ]
    for e in p.rows:
        o = e.options
        mark = "  <- chosen" if p.chosen is not None and e.options == p.chosen.options else ""
        lines.append(
            f"{o.chunk:>5} {'yes' if o.fp8 else 'no':>3} {o.block_swap:>4} "
            f"{'batched' if o.batch_guidance else 'one by one':>10} {o.vae_tile or '-':>8} "
            f"{'cpu' if o.encoders_on_cpu else 'device':>8} {'on' if o.context_cache else 'off':>8} "
            f"{e.encode / GIB:>7.2f} {e.denoise / GIB:>7.2f} {e.decode / GIB:>7.2f} {e.required / GIB:>7.2f}  "
            f"{'yes' if e.required <= p.budget else 'no':>4}{mark}"
        )
    if p.chosen is not None:
        lines.append(f"chosen: {p.chosen.options.describe()} (needs {p.chosen.required / GIB:.2f} GiB)")
    else:
        lines.append(
            f"nothing fits {p.budget / GIB:.1f} GiB: the smallest plan needs {p.smallest.required / GIB:.2f} GiB "
            f"({p.smallest.options.describe()})"
        )
    shown = p.chosen or p.smallest
    held = min(shown.options.chunk + w.overlap, w.frames)
    lines.append(
        f"host memory for the decoded video: {video_bytes(held, (w.height, w.width)) / GIB:.2f} GiB streamed to a "
        f"file chunk by chunk (generate, video_file), {video_bytes(w.frames, (w.height, w.width)) / GIB:.2f} GiB "
        "with every frame held (the images output)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# from a generation's settings, and the device's memory


def workload_for(
    variant: str,
    settings,
    sample_size: tuple[int, int],
    frames: int,
    dtype: str = "bfloat16",
    config: TransformerConfig | None = None,
    encoders: bool = True,
    prompt_tokens: int | None = None,
) -> Workload:
    """The workload of a generation: ``settings`` (a ``GenerationSettings``) decide the guidance
    passes (CFG on when guidance_scale > 1), TeaCache and the chunk overlap; ``encoders=False`` when
    someone else runs the encoders (ComfyUI); ``prompt_tokens``: the longest prompt's tokens when
    known (None: text_len)."""
    # the branches of the first step, which all run (cfg_skip_ratio drops them only later)
    guidance = GuidanceConfig(mode=VARIANT_MODES[variant], guidance_scale=settings.guidance_scale)
    text = EncoderSizes(text_compute_bytes=DTYPE_BYTES[VARIANT_COMPUTE_DTYPES[variant]])  # as model_files loads it
    return Workload(
        variant=variant,
        height=sample_size[0],
        width=sample_size[1],
        frames=frames,
        fps=settings.fps,
        dtype=dtype,
        passes=len(guidance.passes_for_step(0, settings.steps)),
        overlap=settings.overlap_video_length,
        steps=settings.steps,
        step_cache="easycache"
        if settings.easycache_threshold > 0
        else ("teacache" if settings.teacache_threshold > 0 else "off"),
        config=config,
        encoders=text if encoders else None,
        prompt_tokens=prompt_tokens,
    )


def parse_budget(text: str) -> float | None:
    """``--vram-budget`` / the node's value: GB as a number, or "auto" (None)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--vram-budget takes a number of GB or 'auto', got {text!r}.") from None
    if not value > 0:
        raise ValueError(f"--vram-budget must be a positive number of GB (or 'auto'), got {text!r}.")
    return value


def device_budget(device) -> int | None:
    """Bytes a generation may use on ``device`` ("auto"): what is free there plus what this process
    already holds in torch's cache; None where there is no device memory to plan for (CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    return None
