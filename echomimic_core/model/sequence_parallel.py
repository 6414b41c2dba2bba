"""Sequence parallelism: the video tokens of one forward split over the ranks of a process group.

Ulysses (Jacobs et al. 2023, "DeepSpeed Ulysses"), as Wan2.1 and xDiT run it: each rank holds the
tokens of a contiguous range of latent frames; self-attention swaps the split with one all-to-all
(tokens -> heads: every rank then holds the WHOLE sequence for ``heads / P`` heads), runs the usual
kernel, and swaps back. Everything else in a block is per token and needs no communication.

Splitting at latent-frame boundaries keeps the rest exact and local:

* RoPE: a rank takes the rows of the (F, H, W) tables for its tokens.
* audio cross-attention: the queries of latent frame t attend to frame t's audio window only, so
  a rank keeps the windows of its own frames (``AudioTokens.frame_range``).
* the face gate ``[B, tokens per latent frame]`` is the same for every frame: unchanged.
* text / CLIP keys are global and small: every rank projects them itself.

Frames need not divide evenly (a 113-frame chunk has 29 latent frames): the all-to-alls take
per-rank sizes, so no padding token ever enters the attention and the result equals one process's
up to float rounding. ``heads`` must be a multiple of the group size (1.3B: 12 heads -> 2, 3, 4, 6).
Inference only (no autograd through the collectives).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.distributed as dist

from .attention import attention
from .blocks import BlockContext


def frame_split(frames: int, parts: int) -> list[int]:
    """Latent frames per rank: contiguous, the first ``frames % parts`` ranks one more."""
    if frames < parts:
        raise ValueError(
            f"sequence parallelism over {parts} ranks needs at least {parts} latent frames, got {frames}; "
            "use fewer sequence ranks or a longer chunk."
        )
    return [frames // parts + (r < frames % parts) for r in range(parts)]


class SequenceShard:
    """This rank's share of the token sequence and the collectives that move it.

    group: the ranks sharing one forward (None = the default group). Built once per process; the
    frame split is recomputed for every forward from its token grid, so chunks and sliding windows
    of any length work.
    """

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def check_heads(self, num_heads: int) -> None:
        if num_heads % self.world:
            raise ValueError(
                f"sequence parallelism splits the {num_heads} attention heads over {self.world} ranks; "
                f"use a number of sequence ranks that divides {num_heads}."
            )

    # ---- where this rank's tokens are ----
    def frame_range(self, frames: int) -> tuple[int, int]:
        sizes = frame_split(frames, self.world)
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def local_input(self, x: torch.Tensor, grid: tuple[int, int, int], frame_patch: int) -> torch.Tensor:
        """[B, C, F, H, W] -> the latent frames of this rank's tokens (``frame_patch`` frames per token)."""
        start, stop = self.frame_range(grid[0])
        return x[:, :, start * frame_patch : stop * frame_patch]

    def local_context(self, ctx: BlockContext, grid: tuple[int, int, int]) -> BlockContext:
        """The blocks' context for this rank's tokens: its RoPE rows, its frames' audio windows,
        and self-attention through the all-to-all."""
        start, stop = self.frame_range(grid[0])
        per_frame = grid[1] * grid[2]
        cos, sin = ctx.rope
        rows = slice(start * per_frame, stop * per_frame)
        return dataclasses.replace(
            ctx,
            rope=(cos[rows], sin[rows]),
            audio=ctx.audio.frame_range(start, stop),
            self_attention=functools.partial(self.attention, counts=self.token_counts(grid)),
        )

    def token_counts(self, grid: tuple[int, int, int]) -> list[int]:
        """Tokens held by each rank for a (F, H, W) token grid."""
        return [n * grid[1] * grid[2] for n in frame_split(grid[0], self.world)]

    # ---- collectives ----
    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa", *, counts: list[int]
    ) -> torch.Tensor:
        """Ulysses self-attention. q/k/v: [B, L_r, H, D] (this rank's tokens, all heads) -> [B, L_r, H, D];
        ``counts``: tokens per rank (``token_counts``)."""
        qkv = self._tokens_to_heads(torch.cat([q, k, v]), counts)  # [3B, L, H/P, D]
        out = attention(*qkv.chunk(3), backend)  # [B, L, H/P, D]
        return self._heads_to_tokens(out, counts)

    def _tokens_to_heads(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """[N, L_r, H, D] -> [N, L, H/P, D]: send head group j to rank j, receive every rank's tokens."""
        n, local, heads, dim = x.shape
        p = self.world
        send = x.reshape(n, local, p, heads // p, dim).permute(2, 1, 0, 3, 4).contiguous()  # [P, L_r, N, H/P, D]
        recv = x.new_empty(sum(counts), n, heads // p, dim)
        dist.all_to_all_single(
            recv, send.flatten(0, 1), output_split_sizes=counts, input_split_sizes=[local] * p, group=self.group
        )
        return recv.permute(1, 0, 2, 3)  # [N, L, H/P, D], tokens in rank order = sequence order

    def _heads_to_tokens(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """[N, L, H/P, D] -> [N, L_r, H, D]: the inverse of ``_tokens_to_heads``."""
        n, _, heads_p, dim = x.shape
        p, local = self.world, counts[self.rank]
        send = x.permute(1, 0, 2, 3).contiguous()  # [L, N, H/P, D]
        recv = x.new_empty(p * local, n, heads_p, dim)
        dist.all_to_all_single(recv, send, output_split_sizes=[local] * p, input_split_sizes=counts, group=self.group)
        return recv.view(p, local, n, heads_p, dim).permute(2, 1, 0, 3, 4).reshape(n, local, p * heads_p, dim)

    def gather(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L_r, C] on every rank -> [B, L, C] on every rank (tokens in sequence order)."""
        counts = self.token_counts(grid)
        longest = max(counts)
        padded = torch.nn.functional.pad(x, (0, 0, 0, longest - x.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)  # equal sizes: uneven shards are padded
        return torch.cat([part[:, :n] for part, n in zip(parts, counts)], dim=1)
