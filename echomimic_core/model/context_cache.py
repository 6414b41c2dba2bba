"""Text and CLIP-image keys/values computed once per chunk instead of per step and branch, the
text in a compact layout.

Every block's cross-attention projects the prompt embedding (umT5) and the CLIP tokens (257) to
keys and values. Neither changes during a chunk's denoising, yet a plain forward recomputes them
for every block, every denoising step and every guidance branch: for preview's three branches x
25 steps, 75 times. A :class:`ContextCache` made for one chunk remembers them per *sample* (one
prompt embedding or one image), so the cond and drop-audio branches, which share the prompt, also
share the keys. Lookups compare the input tensors exactly (``torch.equal``), so a changed input
(the negative prompt's ``neg_scale`` boost on the first steps) is a new entry rather than a stale
hit, and results are the same as without the cache: a batch's rows are projected independently,
so the rows cached one sample at a time are the rows a batched projection computes
(bit-identical on the CPU; on a GPU up to GEMM rounding, as any change of batch size).

Compact text: upstream zero-pads every prompt to ``text_len`` (512) rows and attends over all of
them. Every pad row embeds to the same vector (the text MLP of a zero row), so all pad rows have
one key and one value, and attention over [real rows, N equal pad rows] is attention over [real
rows, one pad row] with log(N) added to that row's logit (N exp(l) = exp(l + log N)). An entry
holds the real rows plus that one pad row (none when the prompt fills ``text_len``), and
:meth:`ContextKV.text` returns the additive logit bias with the keys: a typical prompt's ~50 keys
instead of 512, in the projections, the attention and this cache alike. Only in float32/64: see
``compacts`` for why half dtypes keep upstream's padded prompt.

Memory: per remembered prompt ``layers x 2 x rows x dim`` values (rows: tokens + 1 in float32,
text_len in half dtypes), per image ``layers x 2 x clip_tokens x dim`` (preview in bf16: ~90 MiB
per prompt, ~16 MiB per image; in float32 with a 50-token prompt ~18 MiB per prompt). The cache is
for inference with fixed weights: make a new one per chunk (and after merging a LoRA); the
pipeline drops it before the VAE decodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# float dtypes in which prompts are compacted (see ``compacts``)
_COMPACT_DTYPES = (torch.float32, torch.float64)


def compacts(dtype: torch.dtype) -> bool:
    """Whether prompts computed in ``dtype`` are compacted to their tokens + one pad row. The pad
    row's log(N) bias is stored in the keys' dtype (CUDA's fused kernels take no other): float32
    rounds it by 2^-24, but bfloat16 by up to 2^-6, i.e. the pad rows' weight off by up to 1.6 %,
    where upstream's N equal rows are summed exactly in the kernels' float32 accumulators. So half
    dtypes keep upstream's layout (every prompt zero-padded to text_len), the same numbers."""
    return dtype in _COMPACT_DTYPES


# the bias's key axis is allocated in multiples of this: CUDA's memory-efficient SDPA kernel wants
# a bias whose strides are multiples of 8 elements and pads (copies) any other one first
_BIAS_ALIGN = 8


class _Entry:
    """One sample's input, its embedding and every block's (k, v) of it.

    ``pad_rows``: how many equal pad rows the last row of ``embedded`` stands for (text shorter
    than ``text_len``; see the module doc), 0 when it is an ordinary row."""

    def __init__(self, value: torch.Tensor, embedded: torch.Tensor, pad_rows: int = 0):
        self.value = value
        self.embedded = embedded  # [1, tokens, C]
        self.pad_rows = pad_rows
        self.kv: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}


class ContextCache:
    """Remembers embedded prompts / images and their per-block keys and values (see module doc).

    ``max_entries`` bounds each kind (prompt, image); the oldest entry is dropped first.
    Counts ``hits`` and ``misses`` of embedding lookups (one per sample and forward).
    """

    def __init__(self, max_entries: int = 8, persistent: bool = True):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}.")
        self.max_entries = max_entries
        # a cache living across forwards (persistent) keeps a copy of each input (the caller may
        # change its tensor in place) and every block's keys; one made for a single forward compares
        # against the inputs themselves and keeps one block's keys at a time (see ContextKV)
        self.persistent = persistent
        self._entries: dict[str, list[_Entry]] = {"text": [], "image": []}
        self.hits = self.misses = 0

    def entry(
        self, kind: str, value: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor], pad_rows: int = 0
    ) -> _Entry:
        """The entry for ``value`` (one sample's raw input), embedding it with ``embed`` on a miss;
        ``pad_rows``: the pad rows the embedding's last row stands for (see ``_Entry``)."""
        entries = self._entries[kind]
        for e in entries:
            same = e.value is value
            if not same and e.value.shape == value.shape and e.value.dtype == value.dtype:
                # meta tensors (shape-only runs) have no values to compare: only identity counts
                same = e.value.device == value.device and not value.is_meta and torch.equal(e.value, value)
            if same:
                self.hits += 1
                return e
        self.misses += 1
        e = _Entry(value.detach().clone() if self.persistent else value, embed(value), pad_rows)
        entries.append(e)
        if len(entries) > self.max_entries:
            entries.pop(0)
        return e

    def entries(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def nbytes(self) -> int:
        """Bytes held on the devices (inputs, embeddings, keys and values)."""
        total = 0
        for entries in self._entries.values():
            for e in entries:
                tensors = [e.value, e.embedded, *(t for kv in e.kv.values() for t in kv)]
                total += sum(t.numel() * t.element_size() for t in tensors)
        return total


class ContextKV:
    """One forward's view of a cache: the entries of its batch's samples, in batch order.

    ``remember``: keep every block's keys in the entries for later forwards (a generation's
    cache). A cache made for one forward does not: all blocks' keys would pile up (layers x 2 x
    (text tokens + clip_tokens) x dim per sample) where one block's at a time suffice."""

    def __init__(self, texts: list[_Entry], images: list[_Entry], remember: bool = True):
        self.texts, self.images, self.remember = texts, images, remember
        self._bias: dict[tuple[torch.dtype, torch.device], torch.Tensor | None] = {}

    def _pairs(self, entries: list[_Entry], attn, project) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each sample's (k, v) [1, tokens, n, d], projected once per distinct entry."""
        # with autograd on, keys are computed on every call and not kept: a checkpointed block
        # must compute (and save) the same tensors when it is re-run for the backward pass
        remember = self.remember and not torch.is_grad_enabled()
        fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        pairs = []
        for e in entries:
            if not remember:
                if id(e) not in fresh:
                    fresh[id(e)] = project(e.embedded)
                pairs.append(fresh[id(e)])
                continue
            if attn not in e.kv:
                e.kv[attn] = project(e.embedded)
            pairs.append(e.kv[attn])
        return pairs

    @staticmethod
    def _stack(entries: list[_Entry], pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, tokens, n, d] keys and values of the batch. One entry for every sample (the same
        image in every guidance branch): a broadcast view, no copy (SDPA reads it by strides).
        Samples of different lengths: the shorter ones end in filler rows, zero keys and values
        that the bias gives weight exp(-inf) = 0, exactly."""
        k, v = pairs[0]
        if all(e is entries[0] for e in entries):
            return k.expand(len(entries), *k.shape[1:]), v.expand(len(entries), *v.shape[1:])
        longest = max(p[0].shape[1] for p in pairs)
        if all(p[0].shape[1] == longest for p in pairs):
            return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        ks = k.new_zeros(len(pairs), longest, *k.shape[2:])
        vs = v.new_zeros(len(pairs), longest, *v.shape[2:])
        for i, (ki, vi) in enumerate(pairs):
            ks[i, : ki.shape[1]] = ki[0]
            vs[i, : vi.shape[1]] = vi[0]
        return ks, vs

    def _text_bias(self, keys: torch.Tensor) -> torch.Tensor | None:
        """[B or 1, 1, 1, keys] additive logit bias of the stacked text keys, in their dtype: 0 on
        real rows, log(N) on a row standing for N pad rows, -inf on filler rows; None when it
        would be all zeros (every prompt fills text_len)."""
        cache_key = (keys.dtype, keys.device)
        if cache_key in self._bias:
            return self._bias[cache_key]
        lengths = [e.embedded.shape[1] for e in self.texts]
        longest = keys.shape[1]
        bias = None
        if any(e.pad_rows for e in self.texts) or min(lengths) < longest:
            same = all(e is self.texts[0] for e in self.texts)
            rows = self.texts[:1] if same else self.texts
            aligned = -(-longest // _BIAS_ALIGN) * _BIAS_ALIGN
            host = torch.full((len(rows), aligned), -math.inf, dtype=torch.float64)
            for i, e in enumerate(rows):
                n = e.embedded.shape[1]
                host[i, :n] = 0.0
                if e.pad_rows:
                    host[i, n - 1] = math.log(e.pad_rows)
            # a bias in the keys' dtype: CUDA's fused kernels refuse (or misread) any other (which
            # is why only float32/64 prompts are compacted, see ``compacts``)
            bias = host.to(device=keys.device, dtype=keys.dtype)[:, None, None, :longest]
        self._bias[cache_key] = bias
        return bias

    def text(self, attn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """k_text, v_text [B, tokens, n, d] and their logit bias (see ``_text_bias``) for ``attn``
        (a DecoupledCrossAttention)."""
        k, v = self._stack(self.texts, self._pairs(self.texts, attn, attn.text_kv))
        return k, v, self._text_bias(k)

    def image(self, attn) -> tuple[torch.Tensor, torch.Tensor]:
        """k_img, v_img [B, clip_tokens, n, d] for ``attn``."""
        return self._stack(self.images, self._pairs(self.images, attn, attn.image_kv))
