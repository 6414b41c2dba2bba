"""Text and CLIP-image keys/values computed once per generation instead of per step and branch.

Every block's cross-attention projects the prompt embedding (umT5, 512 tokens) and the CLIP
tokens (257) to keys and values. Neither changes during a generation, yet a plain forward
recomputes them for every block, every denoising step and every guidance branch: for preview's
three branches x 25 steps, 75 times. A :class:`ContextCache` made for one generation remembers
them per *sample* (one prompt embedding or one image), so the cond and drop-audio branches, which
share the prompt, also share the keys. Lookups compare the input tensors exactly
(``torch.equal``), so a changed input (the negative prompt's ``neg_scale`` boost on the first
steps) is a new entry rather than a stale hit, and results are the same as without the cache:
a batch's rows are projected independently, so the rows cached one sample at a time are the rows
a batched projection computes (bit-identical on the CPU; on a GPU up to GEMM rounding, as any
change of batch size).

Memory: per remembered prompt ``layers x 2 x text_len x dim`` values, per image ``layers x 2 x
clip_tokens x dim`` (preview in bf16: ~95 MiB per prompt, ~16 MiB per image; three prompts are
remembered when neg_scale is on). The cache is for inference with fixed weights: make a new one
per generation (and after merging a LoRA).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class _Entry:
    """One sample's input, its embedding and every block's (k, v) of it."""

    def __init__(self, value: torch.Tensor, embedded: torch.Tensor):
        self.value = value
        self.embedded = embedded  # [1, tokens, C]
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

    def entry(self, kind: str, value: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> _Entry:
        """The entry for ``value`` (one sample's raw input), embedding it with ``embed`` on a miss."""
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
        e = _Entry(value.detach().clone() if self.persistent else value, embed(value))
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
    (text_len + clip_tokens) x dim per sample) where one block's at a time suffice."""

    def __init__(self, texts: list[_Entry], images: list[_Entry], remember: bool = True):
        self.texts, self.images, self.remember = texts, images, remember

    def _batch(self, entries: list[_Entry], attn, project) -> tuple[torch.Tensor, torch.Tensor]:
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
        if len(pairs) == 1:
            return pairs[0]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def lookup(self, attn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """k_text, v_text, k_img, v_img for ``attn`` (a DecoupledCrossAttention), each [B, L, n, d]."""
        return (*self._batch(self.texts, attn, attn.text_kv), *self._batch(self.images, attn, attn.image_kv))
