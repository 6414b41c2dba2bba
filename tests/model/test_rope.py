import math

import pytest
import torch

from echomimic_core.model.rope import Riflex, RotaryEmbedding3D, apply_rope


def _complex_rope(x, grid, freqs):
    """Wan's formulation, independently: complex pairs times e^{i angle}, in complex128."""
    f, h, w = grid
    pos = [torch.arange(n, dtype=torch.float64) for n in grid]
    ang = torch.cat(
        [
            torch.outer(pos[0], freqs[0]).view(f, 1, 1, -1).expand(f, h, w, -1),
            torch.outer(pos[1], freqs[1]).view(1, h, 1, -1).expand(f, h, w, -1),
            torch.outer(pos[2], freqs[2]).view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        -1,
    ).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)).flatten(-2)


def test_real_rope_matches_complex_formulation():
    head_dim, grid = 24, (3, 4, 5)
    rope = RotaryEmbedding3D(head_dim)
    assert rope.axis_dims == (8, 8, 8)
    x = torch.randn(2, math.prod(grid), 3, head_dim)
    cos, sin = rope.cos_sin(grid, torch.device("cpu"))
    ours = apply_rope(x, cos, sin)
    torch.testing.assert_close(ours.double(), _complex_rope(x, grid, rope.freqs), rtol=1e-6, atol=1e-6)
    assert ours.dtype == x.dtype


def test_axis_split_of_real_head_dim():
    # 1.3B: head_dim 128 -> 44 frame channels, 42 height, 42 width (Wan's d - 4(d//6), 2(d//6), 2(d//6))
    assert RotaryEmbedding3D(128).axis_dims == (44, 42, 42)


def test_riflex_sets_kth_frame_frequency_only():
    rope = RotaryEmbedding3D(128)
    base = [f.clone() for f in rope.freqs]
    freqs = Riflex(k=6, L_test=21).frame_frequencies(rope.freqs[0])
    assert (freqs != base[0]).nonzero().flatten().tolist() == [5]
    assert math.isclose(freqs[5].item(), 0.9 * 2 * math.pi / 21 / 4.886)
    assert all(torch.equal(f, b) for f, b in zip(rope.freqs, base))  # the table itself is never changed
    with pytest.raises(ValueError, match=r"RIFLEx k must be in 1\.\.22"):
        Riflex(k=23).frame_frequencies(rope.freqs[0])


def test_riflex_tables_are_per_call():
    """A RIFLEx table changes only the frame channels, and a plain call after it is a fresh model's."""
    grid, cpu = (5, 2, 3), torch.device("cpu")
    rope = RotaryEmbedding3D(24)
    plain = rope.cos_sin(grid, cpu)
    riflex = Riflex(k=1, L_test=5)
    cos, sin = rope.cos_sin(grid, cpu, riflex)
    frame = rope.axis_dims[0] // 2
    assert not torch.equal(cos[:, :, :1], plain[0][:, :, :1])  # pair 0 of the frame axis: RIFLEx's k=1
    assert torch.equal(cos[:, :, 1:], plain[0][:, :, 1:]) and torch.equal(sin[:, :, frame:], plain[1][:, :, frame:])
    again = rope.cos_sin(grid, cpu)
    fresh = RotaryEmbedding3D(24).cos_sin(grid, cpu)
    assert torch.equal(again[0], fresh[0]) and torch.equal(again[1], fresh[1])
    # the table matches the independent complex formulation with the RIFLEx frequencies
    x = torch.randn(1, math.prod(grid), 2, 24)
    freqs = (riflex.frame_frequencies(rope.freqs[0]), *rope.freqs[1:])
    torch.testing.assert_close(apply_rope(x, cos, sin).double(), _complex_rope(x, grid, freqs), rtol=1e-6, atol=1e-6)
