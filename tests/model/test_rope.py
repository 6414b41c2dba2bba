import math

import torch

from echomimic_core.model.rope import RotaryEmbedding3D, apply_rope


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
    rope.enable_riflex(k=6, L_test=21)
    changed = (rope.freqs[0] != base[0]).nonzero().flatten().tolist()
    assert changed == [5]
    assert math.isclose(rope.freqs[0][5].item(), 0.9 * 2 * math.pi / 21 / 4.886)
    assert torch.equal(rope.freqs[1], base[1]) and torch.equal(rope.freqs[2], base[2])
    rope.disable_riflex()
    assert torch.equal(rope.freqs[0], base[0])
