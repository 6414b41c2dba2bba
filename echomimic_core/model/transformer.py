"""EchoMimicTransformer: the Wan2.1 DiT with EchoMimicV3's decoupled audio cross-attention.

One class for every variant; the variant (preview / flash / Whisper-Tiny / tiny test models) is
the ``TransformerConfig`` plus the swapped audio projector. State-dict names are the released
checkpoints' names, so their files load with ``strict=True``.

The block loop is written once; gradient checkpointing, a step cache (TeaCache) and block swap
are hooks around it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import torch
import torch.utils.checkpoint
from torch import nn

from ..config import TransformerConfig
from .attention import check_backend
from .audio_projector import build_audio_projector
from .blocks import BlockContext, Head, MLPProj, WanAttentionBlock
from .conditioning import Conditioning
from .context_cache import ContextCache, ContextKV, compacts
from .ops import Operations
from .rope import RotaryEmbedding3D
from .sequence_parallel import SequenceShard


class StepCache(Protocol):
    """What the transformer calls around its blocks when a cache (e.g. TeaCache) is given."""

    def before_blocks(self, branch: str, t_mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """t_mod: [B, 6, C] time modulation; x: [B, L, C] block input. Return the block output to
        use instead of running the blocks, or None to run them."""

    def after_blocks(self, branch: str, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """Called after the blocks ran with their input and output."""


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """t: [B] -> [B, dim] float32 on t's device, [cos | sin] as Wan: angles in float64, rounded once.

    The float64 work happens on the CPU whatever t's device: Apple's MPS has no float64, and t
    holds B numbers, so the round trip costs nothing."""
    if t.is_meta:  # shape-only runs (memory planning) have no values to compute with
        return t.new_empty(t.shape[0], dim, dtype=torch.float32)
    half = dim // 2
    t64 = t.detach().to(device="cpu", dtype=torch.float64)
    angles = torch.outer(t64, torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float().to(t.device)


def check_block_swap(n_blocks: int, num_blocks: int) -> None:
    """ValueError unless 0 <= ``n_blocks`` <= the model's ``num_blocks`` (a larger count used to
    swap every block without a word)."""
    if not 0 <= n_blocks <= num_blocks:
        raise ValueError(
            f"block swap {n_blocks}: the transformer has {num_blocks} blocks; swap 0 (none) to {num_blocks} (all)."
        )


class _BlockSwap:
    """Keeps the first ``n`` blocks on ``offload_device`` and streams each to ``device`` for its turn.

    Inference never changes weights, so a block is "offloaded" by pointing its tensors back at
    their host copies (no device-to-host copy). On CUDA the host copies are pinned and uploaded on
    a side stream, so block i+1's upload overlaps block i's kernels (on the compute stream the
    copy would queue behind them); the compute stream waits on an event before using a block.
    """

    def __init__(self, blocks: nn.ModuleList, n: int, device: torch.device, offload_device: torch.device):
        self.n, self.device = n, device
        self.loaded: set[int] = set()
        pin = device.type == "cuda" and offload_device.type == "cpu"
        self.stream = torch.cuda.Stream(device) if pin else None
        self.ready: dict[int, torch.cuda.Event] = {}
        self.host: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for i in range(min(n, len(blocks))):
            pairs = []
            for t in [*blocks[i].parameters(), *blocks[i].buffers()]:
                host = t.data.to(offload_device)
                t.data = host.pin_memory() if pin else host
                pairs.append((t, t.data))
            self.host[i] = pairs

    @property
    def swapped(self) -> set[int]:
        return set(self.host)

    def _load(self, i: int) -> None:
        if i not in self.host or i in self.loaded:
            return
        if self.stream is None:
            for t, host in self.host[i]:
                t.data = host.to(self.device, non_blocking=True)
        else:
            with torch.cuda.stream(self.stream):
                for t, host in self.host[i]:
                    t.data = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
            self.ready[i] = event
        self.loaded.add(i)

    def _wait(self, i: int) -> None:
        """Make the compute stream wait for block i's upload before it reads the weights."""
        event = self.ready.pop(i, None)
        if event is None:
            return
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        for t, _ in self.host[i]:
            # allocated on the upload stream, used on the compute stream: the allocator must not
            # hand the memory out again before the compute stream is done with it
            t.data.record_stream(compute)

    def before(self, i: int) -> None:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "block swap is for inference: gradients would need the offloaded blocks "
                "on the device again; disable block swap (or use torch.no_grad())."
            )
        self._load(i)
        self._wait(i)
        self._load(i + 1)  # queued on the upload stream while this block computes

    def after(self, i: int) -> None:
        if i in self.loaded:
            self._wait(i)  # a block never used still needs its upload finished before release
            for t, host in self.host[i]:
                t.data = host
            self.loaded.discard(i)

    def restore(self) -> None:
        """Put every swapped block on the device for good."""
        for i in self.host:
            self._load(i)
            self._wait(i)
        self.host.clear()
        self.loaded.clear()

    def release(self) -> None:
        """Leave every swapped block in host memory for good (nothing is uploaded)."""
        for i in list(self.loaded):
            self.after(i)
        self.host.clear()


class EchoMimicTransformer(nn.Module):
    """Wan2.1-Fun-1.3B-InP DiT + EchoMimicV3 audio.

    forward(x [B, 16, F, H, W], t [B] on 0..1000, cond) -> [B, out_dim, F, H, W]
    """

    def __init__(self, config: TransformerConfig, attention_backend: str = "sdpa", ops=Operations):
        super().__init__()
        check_backend(attention_backend, head_dim=config.dim // config.num_heads)
        self.config = c = config
        self.attention_backend = attention_backend
        # when set, inputs are cast to this dtype (weights are cast on the fly by ``ops``)
        self.compute_dtype: torch.dtype | None = None
        self.gradient_checkpointing = False
        self._swap: _BlockSwap | None = None

        self.patch_embedding = ops.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            ops.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), ops.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(ops.Linear(c.freq_dim, c.dim), nn.SiLU(), ops.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(c.dim, c.dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(c, ops) for _ in range(c.num_layers)])
        self.head = Head(c, ops)
        self.img_emb = MLPProj(c.clip_dim, c.dim, ops)
        # released names: "audio2token" (preview) / "audio_injection" (flash)
        self.audio_key = "audio_injection" if c.variant == "flash" else "audio2token"
        self.add_module(self.audio_key, build_audio_projector(c, ops))
        self.rope = RotaryEmbedding3D(c.head_dim, c.rope_theta)

    @property
    def audio_projector(self) -> nn.Module:
        return getattr(self, self.audio_key)

    # ---- options ----
    def enable_block_swap(self, n_blocks: int, compute_device, offload_device="cpu") -> None:
        """Keep the first ``n_blocks`` blocks on ``offload_device`` and stream each to
        ``compute_device`` just before it runs; everything else moves to ``compute_device``."""
        check_block_swap(n_blocks, len(self.blocks))
        compute_device, offload_device = torch.device(compute_device), torch.device(offload_device)
        if self._swap is not None:  # the old swapped blocks stay on the host: no upload of them here
            self._swap.release()
            self._swap = None
        for i, block in enumerate(self.blocks):
            if i >= n_blocks:
                block.to(compute_device)
        for name, module in self.named_children():
            if name != "blocks":
                module.to(compute_device)
        self._swap = _BlockSwap(self.blocks, n_blocks, compute_device, offload_device) if n_blocks > 0 else None

    def disable_block_swap(self) -> None:
        """Upload the swapped blocks for good (the whole model then sits on the compute device)."""
        if self._swap is not None:
            self._swap.restore()
        self._swap = None

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` every block (``options``: mode, backend, dynamic, as torch.compile).

        The block loop and its hooks (block swap, step caches, checkpointing) and the parts outside
        the blocks stay eager; state-dict names do not change. Each new input shape compiles on its
        first forward (tens of seconds on a GPU, minutes on a CPU); the results equal eager mode's
        to float rounding (fused kernels round differently)."""
        for block in self.blocks:
            block.compile(**options)

    @property
    def block_swap(self) -> int:
        """Blocks currently kept on the host and streamed in (0 = none)."""
        return self._swap.n if self._swap is not None else 0

    def place(self, device, offload_device="cpu", block_swap: int = 0) -> None:
        """Move the model to ``device`` for a run, all of it or all but the first ``block_swap``
        blocks, which stay in ``offload_device`` memory and stream in as they run. After ``park``
        the same call moves only the resident part back (the host copies are kept)."""
        device = torch.device(device)
        swap = self._swap
        if block_swap and swap is not None and swap.n == block_swap and swap.device == device:
            self._move_resident(device)
        elif block_swap:
            self.enable_block_swap(block_swap, device, offload_device)
        else:
            if swap is not None:
                swap.release()
                self._swap = None
            self.to(device)

    def park(self, offload_device="cpu") -> None:
        """Off the device after a run: the resident part moves to ``offload_device``; swapped blocks
        are already there (their host copies), so nothing is uploaded on the way out; the cached
        RoPE tables are dropped with the rest."""
        self._move_resident(torch.device(offload_device))
        self.rope.clear()

    def _move_resident(self, device: torch.device) -> None:
        swapped = self._swap.swapped if self._swap is not None else set()
        for i, block in enumerate(self.blocks):
            if i not in swapped:
                block.to(device)
        for name, module in self.named_children():
            if name != "blocks":
                module.to(device)

    # ---- forward pieces ----
    def time_embed(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """t: [B] -> e [B, C], e0 [B, 6, C], computed in float32 then cast to ``dtype``.

        Autocast is switched off here, as upstream Wan runs this under ``autocast(float32)``: under
        training's bf16 autocast the two MLPs would otherwise round the modulation of every block
        (0.37 % relative error measured)."""
        # (meta, used for shape-only runs, has no autocast to switch off)
        no_autocast = (
            torch.autocast(t.device.type, enabled=False)
            if torch.amp.is_autocast_available(t.device.type)
            else contextlib.nullcontext()
        )
        with no_autocast:
            e = self.time_embedding(sinusoidal_embedding(self.config.freq_dim, t))
            e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
        return e.to(dtype), e0.to(dtype)

    def block_context(
        self,
        cond: Conditioning,
        grid: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        context_cache: ContextCache | None = None,
    ) -> BlockContext:
        """Embed the conditioning once per forward for every block: each sample's text, its real
        tokens plus one zero row standing for the zero padding to text_len that upstream attends
        over (see ``model.context_cache``), embedded to [1, L_i + 1, C]; CLIP [B, clip_tokens, clip_dim]
        -> [B, clip_tokens, C]; audio projected to tokens + per-latent-frame windows; the face gate
        [B, tokens per latent frame]; RoPE tables for the (F, H', W') token ``grid`` (with the
        call's RIFLEx, if any). With a ``context_cache`` (inference only) text and CLIP embeddings
        and their keys/values are remembered across forwards (see ``model.context_cache``)."""
        c = self.config
        texts = [u.to(device=device, dtype=dtype) for u in cond.text_list()]
        too_long = [u.shape[0] for u in texts if u.shape[0] > c.text_len]
        if too_long or any(u.ndim != 2 or u.shape[1] != c.text_dim for u in texts):
            raise ValueError(
                f"text embeddings must be [<= {c.text_len}, {c.text_dim}] per sample, got "
                f"{[tuple(u.shape) for u in texts]}; truncate the prompt or check the text encoder."
            )
        clip = cond.clip_fea.to(device=device, dtype=dtype)
        if clip.shape[1:] != (c.clip_tokens, c.clip_dim):
            raise ValueError(
                f"clip_fea must be [B, {c.clip_tokens}, {c.clip_dim}] (CLIP penultimate tokens), "
                f"got {tuple(clip.shape)}."
            )

        # the dtype the keys will have: under autocast (training) the projections' output dtype
        autocast = device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)
        compact = compacts(torch.get_autocast_dtype(device.type) if autocast else dtype)

        def pads(u):  # zero rows the prompt is padded to text_len with (upstream's layout)
            return c.text_len - u.shape[0]

        def rows(u):  # compact: [L_i + 1, text_dim], one zero row for all the pads; else [text_len, text_dim]
            extra = min(pads(u), 1) if compact else pads(u)
            return torch.cat([u, u.new_zeros(extra, u.shape[1])]) if extra else u

        # a cache kept across forwards only without autograd; within one forward samples that share
        # a prompt (cond / drop_audio) share its keys either way, and each sample is projected alone
        # (a GEMM's rows can round differently with the batch size): cached == uncached, bit for bit
        if context_cache is None or torch.is_grad_enabled():
            context_cache = ContextCache(max_entries=max(1, len(texts)), persistent=False)
        context_kv = ContextKV(
            [
                context_cache.entry("text", u, lambda u: self.text_embedding(rows(u)[None]), pads(u) if compact else 0)
                for u in texts
            ],
            [context_cache.entry("image", v, lambda v: self.img_emb(v[None])) for v in clip],
            remember=context_cache.persistent,
        )
        audio = self.audio_projector(cond.audio.to(device=device, dtype=dtype))
        if audio.frames != grid[0]:
            raise ValueError(
                f"audio covers {audio.frames} latent frames but the latents have {grid[0]}; "
                f"the audio features must match the video length ({c.variant} layout)."
            )
        gate = cond.face_gate
        if gate is not None:
            gate = gate.to(device)
            if gate.shape != (len(texts), grid[1] * grid[2]):
                raise ValueError(
                    f"face_gate must be [B, {grid[1] * grid[2]}] (one gate per token of a latent "
                    f"frame), got {tuple(gate.shape)}."
                )
        scale = cond.audio_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(device) if scale.ndim else float(scale)
        return BlockContext(
            context=context_kv,
            audio=audio,
            face_gate=gate,
            audio_scale=scale,
            rope=self.rope.cos_sin(grid, device, cond.riflex),
            backend=self.attention_backend,
        )

    def run_blocks(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        ctx: BlockContext,
        cache: StepCache | None = None,
        cache_branch: str = "all",
    ) -> torch.Tensor:
        """The one block loop. x: [B, L, C]; e0: [B, 6, C].

        Under ``torch.no_grad`` the blocks update ``x`` in place (see ``WanAttentionBlock``): pass
        a tensor nobody else reads, as ``forward`` does."""
        x_in = None
        if cache is not None:
            cached = cache.before_blocks(cache_branch, e0, x)
            if cached is not None:
                return cached
            # the cache needs the input after the blocks ran; blocks may write x in place
            x_in, x = x, x.clone()
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if self._swap is not None:
                self._swap.before(i)
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(block, x, e0, ctx, use_reentrant=False)
            else:
                x = block(x, e0, ctx)
            if self._swap is not None:
                self._swap.after(i)
        if cache is not None:
            cache.after_blocks(cache_branch, x_in, x)
        return x

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F*H*W, pt*ph*pw*C] -> [B, C, F*pt, H*ph, W*pw]"""
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], -1, f * pt, h * ph, w * pw)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        cache: StepCache | None = None,
        cache_branch: str = "all",
        sequence: SequenceShard | None = None,
        context_cache: ContextCache | None = None,
    ) -> torch.Tensor:
        """x: [B, 16, F, H, W] noisy latents; t: [B] (or scalar) timesteps on 0..1000.
        Returns [B, out_dim, F, H, W] in x's dtype.

        cache: a step cache (TeaCache, MagCache) consulted around the blocks under the name
        ``cache_branch``. sequence: this rank's share of the tokens when the forward is split over
        a process group (every rank passes the same inputs and gets the whole output); None = all
        tokens here. context_cache: text/CLIP keys and values kept across the calls of one
        generation (``model.context_cache``)."""
        c = self.config
        out_dtype, device = x.dtype, x.device
        dtype = self.compute_dtype or x.dtype
        b = x.shape[0]
        if cond.batch_size != b or cond.y.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"cond.y {tuple(cond.y.shape)} must match the latents {tuple(x.shape)} in batch "
                f"and F, H, W; build one Conditioning per batch (Conditioning.cat)."
            )
        if x.shape[1] + cond.y.shape[1] != c.in_dim:
            raise ValueError(f"latents ({x.shape[1]} ch) + y ({cond.y.shape[1]} ch) must give in_dim {c.in_dim}.")
        t = torch.as_tensor(t, device=device).reshape(-1).expand(b)

        grid = tuple(n // p for n, p in zip(x.shape[2:], c.patch_size))  # (F, H', W') tokens
        inputs = torch.cat([x, cond.y.to(device)], dim=1)
        if sequence is not None:  # embed only this rank's frames: the patch kernel never spans two
            inputs = sequence.local_input(inputs, grid, c.patch_size[0])
        h = self.patch_embedding(inputs.to(dtype))  # [B, C, F_r, H', W']
        # [B, L_r, C], token-major for the matmuls; rebinding h frees the convolution's output, and
        # the blocks update this tensor in place (no second [B, L, C] beside the stream)
        h = h.flatten(2).transpose(1, 2).contiguous()
        e, e0 = self.time_embed(t, dtype)
        ctx = self.block_context(cond, grid, dtype, device, context_cache)
        if sequence is not None:
            ctx = sequence.local_context(ctx, grid)
        h = self.head(self.run_blocks(h, e0, ctx, cache, cache_branch), e)
        if sequence is not None:
            h = sequence.gather(h, grid)
        out = self.unpatchify(h, grid)
        if dtype == torch.float16 and not torch.isfinite(out).all():
            # float16 has no headroom: an overflow in the residual stream turns the frame into NaN
            raise FloatingPointError(
                "the transformer overflowed in float16 compute (inf/NaN in its output); run it in bfloat16 "
                "(or float32 where the GPU has no bfloat16)."
            )
        return out.to(out_dtype)


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """Run a ``preview_*``/``flash_*`` parity fixture (tests/data/reference/README.md) in float32."""
    from safetensors.torch import load_file

    from ..verify_reference import relative_error

    path = Path(path)
    variant = "flash" if path.name.startswith("flash") else "preview"
    data = load_file(str(path))
    model = EchoMimicTransformer(TransformerConfig.from_reference_meta(meta, variant)).eval()
    model.load_state_dict({k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}, strict=True)
    texts = sorted((k for k in data if k.startswith("input.text_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    cond = Conditioning(
        context=[data[k] for k in texts],
        clip_fea=data["input.clip_fea"],
        y=data["input.y"],
        audio=data["input.audio"],
        face_gate=data.get("input.ip_mask"),
        audio_scale=float(data["input.audio_scale"]) if "input.audio_scale" in data else 1.0,
    )
    with torch.no_grad():
        out = model(data["input.x"], data["input.t"], cond)
    return {"output": relative_error(out, data["output"])}
