"""The compact text context: the real tokens plus one pad row with a log(count) logit bias give
upstream's attention over the prompt zero-padded to text_len, for any prompt length and for a
batch of prompts of different lengths, with gradients as well."""

import math

import pytest
import torch

from echomimic_core.model.attention import attention
from echomimic_core.model.conditioning import Conditioning
from echomimic_core.model.context_cache import ContextCache, ContextKV, compacts


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(D)) v per head, written out: [B, L, H, D] in and out."""
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)


def padded_text_attention(model, block, q, texts):
    """Upstream's text cross-attention: each prompt zero-padded to text_len rows, embedded, and
    attended over all of them."""
    c = model.config
    rows = torch.stack([torch.cat([u, u.new_zeros(c.text_len - u.shape[0], c.text_dim)]) for u in texts])
    return naive_attention(q, *block.cross_attn.text_kv(model.text_embedding(rows)))


def compact_text_attention(model, block, q, texts):
    compact = lambda u: torch.cat([u, u.new_zeros(1, u.shape[1])]) if u.shape[0] < model.config.text_len else u  # noqa: E731
    cache = ContextCache(persistent=False)
    entries = [
        cache.entry("text", u, lambda u: model.text_embedding(compact(u)[None]), model.config.text_len - u.shape[0])
        for u in texts
    ]
    k, v, bias = ContextKV(entries, [], remember=False).text(block.cross_attn)
    return attention(q, k, v, "sdpa", bias=bias), k.shape[1], bias


@pytest.mark.parametrize("lengths", [(0,), (1,), (5,), (7,), (8,), (3, 8, 0, 5)])
def test_compact_text_attention_equals_attention_over_the_padded_prompt(lengths, tiny_config_fn, random_model_fn):
    """text_len 8: empty, short, one short of full and full prompts, alone and batched together."""
    model = random_model_fn(tiny_config_fn("preview"))
    c, block = model.config, model.blocks[0]
    g = torch.Generator().manual_seed(sum(lengths))
    texts = [torch.randn(n, c.text_dim, generator=g) for n in lengths]
    q = torch.randn(len(texts), 6, c.num_heads, c.dim // c.num_heads, generator=g)
    with torch.no_grad():
        expected = padded_text_attention(model, block, q, texts)
        out, keys, bias = compact_text_attention(model, block, q, texts)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert keys == max(n + (n < c.text_len) for n in lengths)  # real rows + one pad row, not text_len
    if lengths == (8,):
        assert bias is None  # a full prompt has no pad row: plain attention on any backend
    else:
        row = bias[0, 0, 0]
        n = lengths[0]
        if n < c.text_len:
            assert row[n].item() == pytest.approx(math.log(c.text_len - n))  # the pad row stands for the rest
        assert torch.all(row[:n] == 0) and torch.all(row[n + 1 :] == -math.inf)  # filler rows weigh nothing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_model_with_compact_text_equals_model_given_the_zero_padded_prompt(
    dtype, tiny_config_fn, random_model_fn, random_inputs_fn
):
    """The whole forward, prompts of different lengths (one empty) in one batch: the real tokens
    alone (compact) against the same prompts handed over as zero-padded [B, text_len, text_dim] rows
    (attended one by one, upstream's layout): outputs equal in float64 (the same maths) and to float32
    rounding in float32, gradients to float32 rounding."""
    model = random_model_fn(tiny_config_fn("preview")).to(dtype)
    x, t, cond = random_inputs_fn(model.config, batch=3, text_lens=(5, 0, 7))
    x, cond = x.to(dtype), cond.to(dtype=dtype)
    c = model.config
    rows = [torch.cat([u, u.new_zeros(c.text_len - len(u), c.text_dim)]) for u in cond.context]
    padded = Conditioning(**{**cond.__dict__, "context": torch.stack(rows)})
    results = []
    for conditioning in (cond, padded):
        model.zero_grad()
        out = model(x, t, conditioning)
        out.square().mean().backward()
        grads = [model.text_embedding[0].weight.grad, model.blocks[1].cross_attn.k.weight.grad]
        results.append([out.detach(), *(g.clone() for g in grads)])
    (out, *grads), (expected, *expected_grads) = results
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    for got, want in zip(grads, expected_grads):
        # the norms compute in float32 whatever the dtype (as Wan): one pad row's gradient, N
        # times a padded row's, rounds there once instead of N times
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_one_image_for_every_branch_is_a_view_not_copies(tiny_config_fn, random_model_fn, random_inputs_fn):
    """Three guidance branches with the same CLIP tokens: one entry, its keys broadcast over the batch."""
    model = random_model_fn(tiny_config_fn("preview"))
    _, _, cond = random_inputs_fn(model.config, batch=1)
    cache = ContextCache()
    entries = [cache.entry("image", cond.clip_fea[0], lambda v: model.img_emb(v[None])) for _ in range(3)]
    with torch.no_grad():
        k, v = ContextKV([], entries).image(model.blocks[0].cross_attn)
    assert k.shape[0] == v.shape[0] == 3 and k.stride(0) == v.stride(0) == 0
    assert cache.misses == 1 and cache.hits == 2


@pytest.mark.parametrize("autocast", [False, True])
def test_half_dtypes_keep_upstreams_padded_prompt_bit_for_bit(
    autocast, tiny_config_fn, random_model_fn, random_inputs_fn
):
    """In bfloat16 the pad row's log(N) bias would round by up to 2^-6 (the pad rows' weight off by
    up to 1.6 %), so bf16 prompts (also under bf16 autocast, as in training) are not compacted: the
    forward is upstream's, bit for bit the same as handing over the zero-padded prompts."""
    model = random_model_fn(tiny_config_fn("preview"))
    if not autocast:
        model = model.to(torch.bfloat16)
    x, t, cond = random_inputs_fn(model.config, batch=3, text_lens=(5, 0, 7))
    if not autocast:
        x, cond = x.to(torch.bfloat16), cond.to(dtype=torch.bfloat16)
    c = model.config
    rows = [torch.cat([u, u.new_zeros(c.text_len - len(u), c.text_dim)]) for u in cond.context]
    padded = Conditioning(**{**cond.__dict__, "context": torch.stack(rows)})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, expected = model(x, t, cond), model(x, t, padded)
    assert compacts(torch.float32) and not compacts(torch.bfloat16)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
