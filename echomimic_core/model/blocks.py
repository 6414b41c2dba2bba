"""Wan2.1 DiT blocks with EchoMimicV3's decoupled (text / image / audio) cross-attention."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TransformerConfig
from .attention import attention
from .audio_projector import AudioTokens
from .context_cache import ContextKV
from .ops import Operations
from .rope import apply_rope

# Inference splits the FFN over tokens so that its hidden (+ GELU output), 2 x [L, dim] per
# part, stays at the attention's transient peak instead of above it (unsplit: 2 x 5.8 x [L, dim]);
# at real lengths each part still has thousands of rows, which keeps the matmuls efficient.
FFN_SPLIT_MIN_TOKENS = 1024
FFN_HIDDEN_WIDTHS = 1  # max hidden chunk width, in multiples of [L, dim]


@dataclass
class BlockContext:
    """Everything a block needs besides the hidden states; the same for every block.

    context: the batch's embedded text (in float32 compact: real tokens + one pad row) and CLIP tokens
    [clip_tokens, C] per sample, with every block's keys/values of them (computed on first use,
    see ``context_cache``);
    audio: projected audio tokens and windows; face_gate: [B, tokens_per_latent_frame] or None
    (face-region gate on the audio output); audio_scale: float or [B] tensor;
    rope: (cos, sin) [L, 1, head_dim/2]; backend: attention backend name;
    self_attention: the self-attention kernel ``(q, k, v, backend)``: ``attention``, or the
    sequence-parallel all-to-all around it when the tokens are split over ranks.
    """

    context: ContextKV
    audio: AudioTokens
    face_gate: torch.Tensor | None
    audio_scale: float | torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    backend: str = "sdpa"
    self_attention: Callable[..., torch.Tensor] = attention


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6, ops=Operations):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = ops.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = ops.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, L, heads, head_dim]"""
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, ctx: BlockContext, pre=None) -> torch.Tensor:
        """x: [B, L, C] -> [B, L, C]. ``pre``: applied to x first (the block's modulated norm), here
        rather than by the caller so that its output dies once q, k and v exist."""
        h = pre(x) if pre is not None else x
        cos, sin = ctx.rope
        q = apply_rope(self.heads(self.norm_q(self.q(h))), cos, sin)
        k = apply_rope(self.heads(self.norm_k(self.k(h))), cos, sin)
        v = self.heads(self.v(h))
        del h
        out = ctx.self_attention(q, k, v, ctx.backend)
        del q, k, v
        return self.o(out.flatten(2))


class DecoupledCrossAttention(SelfAttention):
    """One query; text, CLIP-image and audio keys/values; the three outputs are summed.

    Audio attention is local: the queries of latent frame t attend only to frame t's audio
    window. preview: ``k_audio``/``v_audio`` without bias; flash: with bias, plus a ``q_audio``
    that upstream computes and never uses (kept for strict loading, not computed).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = True,
        eps: float = 1e-6,
        variant: str = "preview",
        ops=Operations,
    ):
        super().__init__(dim, num_heads, qk_norm, eps, ops)
        flash = variant == "flash"
        self.k_img = ops.Linear(dim, dim)
        self.v_img = ops.Linear(dim, dim)
        self.norm_k_img = ops.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        if flash:
            self.q_audio = ops.Linear(dim, dim)
        self.k_audio = ops.Linear(dim, dim, bias=flash)
        self.v_audio = ops.Linear(dim, dim, bias=flash)
        self.norm_k_audio = ops.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded text [B, tokens, C] -> k, v [B, tokens, n, d]."""
        return self.heads(self.norm_k(self.k(text))), self.heads(self.v(text))

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded CLIP tokens [B, clip_tokens, C] -> k, v [B, clip_tokens, n, d]."""
        return self.heads(self.norm_k_img(self.k_img(image))), self.heads(self.v_img(image))

    def forward(self, x: torch.Tensor, ctx: BlockContext, pre=None) -> torch.Tensor:
        """x: [B, L, C] with L = T * tokens_per_latent_frame -> [B, L, C]. ``pre``: applied to x
        first (the block's norm3), here so that its output dies once q exists.

        Under no_grad the three outputs are summed in place (two [B, L, C] buffers fewer)."""
        b, length, dim = x.shape
        q = self.heads(self.norm_q(self.q(pre(x) if pre is not None else x)))  # [B, L, n, d]
        inplace = not torch.is_grad_enabled()

        k, v, bias = ctx.context.text(self)  # compact text keys + their logit bias (context_cache)
        out = attention(q, k, v, ctx.backend, bias=bias).flatten(2)
        del k, v
        image_out = attention(q, *ctx.context.image(self), ctx.backend).flatten(2)
        out = out.add_(image_out) if inplace else out + image_out
        del image_out

        # audio: project each unique token once, then gather per-frame windows [B*T, W, n, d]
        audio = ctx.audio
        t = audio.frames
        k_audio = self.heads(audio.windows(self.norm_k_audio(self.k_audio(audio.tokens))))
        v_audio = self.heads(audio.windows(self.v_audio(audio.tokens)))
        q_frames = q.reshape(b * t, length // t, self.num_heads, self.head_dim)
        audio_out = attention(q_frames, k_audio, v_audio, ctx.backend).reshape(b, t, length // t, dim)
        del q, q_frames
        # in place or not, the same products in the same order
        if ctx.face_gate is not None:
            gate = ctx.face_gate.to(audio_out.dtype)[:, None, :, None]
            audio_out = audio_out.mul_(gate) if inplace else audio_out * gate
        scale = ctx.audio_scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(audio_out.dtype).view(-1, 1, 1, 1)
            audio_out = audio_out.mul_(scale) if inplace else audio_out * scale
        elif scale != 1.0:  # x * 1.0 == x: skip the pass
            audio_out = audio_out.mul_(scale) if inplace else audio_out * scale
        audio_out = audio_out.reshape(b, length, dim)
        out = out.add_(audio_out) if inplace else out + audio_out
        del audio_out
        return self.o(out)


class WanAttentionBlock(nn.Module):
    """Wan block: 6-way modulated self-attention, cross-attention, FFN (GELU tanh)."""

    def __init__(self, config: TransformerConfig, ops=Operations):
        super().__init__()
        c = config
        dim = c.dim
        self.norm1 = ops.LayerNorm(dim, eps=c.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, c.num_heads, c.qk_norm, c.eps, ops)
        self.norm3 = ops.LayerNorm(dim, eps=c.eps, elementwise_affine=True) if c.cross_attn_norm else nn.Identity()
        self.cross_attn = DecoupledCrossAttention(dim, c.num_heads, c.qk_norm, c.eps, c.variant, ops)
        self.norm2 = ops.LayerNorm(dim, eps=c.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(ops.Linear(dim, c.ffn_dim), nn.GELU(approximate="tanh"), ops.Linear(c.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """x: [B, L, C]; e0: [B, 6, C] time modulation -> [B, L, C]

        Under ``torch.no_grad`` the residual stream is updated in place: ``x`` itself is returned,
        changed (the block loop hands each block a tensor nobody else reads). That saves two
        [B, L, C] buffers at the peak; with autograd on, ``x`` is left untouched."""
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.to(e0.dtype) + e0).chunk(
            6, dim=1
        )  # each [B, 1, C]
        # addcmul: one pass for "a + b * c" where Wan writes two
        attn = self.self_attn(x, ctx, pre=lambda x: torch.addcmul(shift_sa, self.norm1(x), 1 + scale_sa))
        if torch.is_grad_enabled():
            x = torch.addcmul(x, attn, gate_sa)
            x = x + self.cross_attn(x, ctx, pre=self.norm3)
            return torch.addcmul(x, self.ffn(torch.addcmul(shift_ff, self.norm2(x), 1 + scale_ff)), gate_ff)
        x.addcmul_(attn, gate_sa)
        del attn
        x.add_(self.cross_attn(x, ctx, pre=self.norm3))
        h = torch.addcmul(shift_ff, self.norm2(x), 1 + scale_ff)
        length = x.shape[1]
        if length < FFN_SPLIT_MIN_TOKENS:
            return x.addcmul_(self.ffn(h), gate_ff)
        # FFN rows are independent, so the split does not change the maths
        parts = -(-self.ffn[0].out_features // (FFN_HIDDEN_WIDTHS * x.shape[2]))
        step = -(-length // parts)
        for start in range(0, length, step):
            part = slice(start, start + step)
            x[:, part].addcmul_(self.ffn(h[:, part]), gate_ff)
        return x


class Head(nn.Module):
    """Final 2-way modulated LayerNorm + Linear to patch channels."""

    def __init__(self, config: TransformerConfig, ops=Operations):
        super().__init__()
        c = config
        self.norm = ops.LayerNorm(c.dim, eps=c.eps, elementwise_affine=False)
        self.head = ops.Linear(c.dim, math.prod(c.patch_size) * c.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, c.dim) / c.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x: [B, L, C]; e: [B, C] time embedding -> [B, L, prod(patch) * out_dim]"""
        shift, scale = (self.modulation.to(e.dtype) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class MLPProj(nn.Module):
    """``img_emb``: CLIP tokens [B, 257, clip_dim] -> [B, 257, dim]."""

    def __init__(self, in_dim: int, out_dim: int, ops=Operations):
        super().__init__()
        self.proj = nn.Sequential(
            ops.LayerNorm(in_dim),
            ops.Linear(in_dim, in_dim),
            nn.GELU(),
            ops.Linear(in_dim, out_dim),
            ops.LayerNorm(out_dim),
        )

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(image_embeds)
