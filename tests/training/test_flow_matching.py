import math

import torch

from training import flow_matching as fm

BOUNDS = (333.0, 666.0)


def test_shift_inverse_and_direction():
    u = torch.linspace(0, 1, 11)
    s = fm.shift_sigma(u, 5.0)
    assert torch.allclose(fm.unshift_sigma(s, 5.0), u, atol=1e-6)
    assert (s[1:-1] > u[1:-1]).all()  # shift > 1 moves timesteps towards the noisy end


def test_batch_of_three_covers_every_phase_inside_its_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        phases = fm.sample_phases(3, g)
        assert sorted(phases.tolist()) == [0, 1, 2]
        sigma, t = fm.sample_timesteps(phases, g, 5.0, BOUNDS)
        assert torch.equal(fm.phase_of(t, BOUNDS), phases)
        assert torch.allclose(t, sigma * 1000)


def test_within_a_phase_the_density_is_wans_shifted_density():
    g = torch.Generator().manual_seed(1)
    n = 40000
    t_plain = fm.shift_sigma(torch.rand(n, generator=g), 5.0) * 1000  # Wan: shifted uniform
    phases = torch.arange(n) % 3
    _, t_strat = fm.sample_timesteps(phases, g, 5.0, BOUNDS)
    for p in range(3):
        plain = t_plain[fm.phase_of(t_plain, BOUNDS) == p]
        strat = t_strat[phases == p]
        assert abs(plain.mean() - strat.mean()) < 3.0, p
        assert abs(plain.quantile(0.9) - strat.quantile(0.9)) < 5.0, p


def test_add_noise_is_the_rectified_flow_path():
    x0, noise = torch.randn(2, 16, 3, 4, 6), torch.randn(2, 16, 3, 4, 6)
    sigma = torch.tensor([0.0, 1.0])
    x_t, v = fm.add_noise(x0, noise, sigma)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1])
    assert torch.allclose(v, noise - x0)
    x_half, _ = fm.add_noise(x0, noise, torch.tensor([0.25, 0.25]))
    assert torch.allclose(x_half, x0 + 0.25 * v, atol=1e-6)


def test_dpo_loss_and_margin():
    zero = torch.zeros(4)
    loss, margin = fm.dpo_loss(zero, zero, zero, zero, beta=10.0)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6) and not margin.any()
    # policy fits the chosen clip better than the reference does: positive margin, lower loss
    loss2, margin2 = fm.dpo_loss(zero + 0.1, zero + 0.5, zero + 0.2, zero + 0.5, beta=10.0)
    assert torch.allclose(margin2, torch.full((4,), 0.1)) and loss2 < loss
