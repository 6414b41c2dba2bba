"""Flow-matching objective with Wan's shifted timesteps, stratified over the three phases.

Rectified flow as Wan2.1 trains it: ``x_t = (1 - sigma) x0 + sigma noise``, the model predicts the
velocity ``noise - x0`` at ``t = 1000 sigma``. Wan shifts sigma towards the noisy end:
``sigma = s u / (1 + (s - 1) u)`` for ``u ~ U(0, 1)``.

EchoMimicV3 splits the timestep axis 1000 -> 0 into early / middle / late phases and trains every
iteration on all three. Here each sample is assigned a phase (round-robin from a random offset, so
a batch of 3 holds one of each) and its ``u`` is drawn uniformly from the part of ``(0, 1)`` that
the shift maps into that phase: within a phase the density is exactly Wan's shifted density.
"""

from __future__ import annotations

import torch

from training.config import PHASES


def shift_sigma(u: torch.Tensor | float, shift: float):
    """Wan's timestep shift of a uniform variable in [0, 1]."""
    return shift * u / (1 + (shift - 1) * u)


def unshift_sigma(sigma: torch.Tensor | float, shift: float):
    """Inverse of :func:`shift_sigma`."""
    return sigma / (shift - (shift - 1) * sigma)


def phase_of(t: torch.Tensor, boundaries: tuple[float, float]) -> torch.Tensor:
    """Phase index per timestep: 0 early (t > b1), 1 middle (b0 < t <= b1), 2 late (t <= b0)."""
    b0, b1 = boundaries
    return torch.where(t > b1, 0, torch.where(t > b0, 1, 2))


def sample_phases(batch: int, generator: torch.Generator, offset: int | None = None) -> torch.Tensor:
    """[B] phase indices, round-robin from a random start so every phase is equally likely and a
    batch of at least 3 covers all of them. ``offset`` continues a round-robin shared by several
    batches (micro-batches of one step, processes), so 3 samples of batch 1 also cover all."""
    start = int(torch.randint(len(PHASES), (1,), generator=generator)) if offset is None else offset
    return (torch.arange(batch) + start) % len(PHASES)


def sample_timesteps(
    phases: torch.Tensor,
    generator: torch.Generator,
    shift: float,
    boundaries: tuple[float, float],
    num_train_timesteps: int = 1000,
):
    """(sigma [B], t [B]) with t = num_train_timesteps * sigma inside each sample's phase."""
    edges = torch.tensor([float(num_train_timesteps), boundaries[1], boundaries[0], 0.0])
    hi_sigma = edges[phases] / num_train_timesteps  # phase p spans t in (edges[p+1], edges[p]]
    lo_sigma = edges[phases + 1] / num_train_timesteps
    lo_u, hi_u = unshift_sigma(lo_sigma, shift), unshift_sigma(hi_sigma, shift)
    r = torch.rand(phases.shape, generator=generator, dtype=torch.float64).float()
    u = lo_u + (hi_u - lo_u) * r
    sigma = shift_sigma(u, shift)
    return sigma, sigma * num_train_timesteps


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """(x_t, velocity target) for latents ``[B, C, F, H, W]`` and sigma ``[B]``."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] mean squared error, computed in float32 whatever the autocast dtype."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float):
    """Diffusion-DPO (Wallace et al. 2023) on flow-matching errors.

    Inputs are per-sample velocity MSEs ``[B]`` of the policy and the frozen reference on the
    chosen (w) and rejected (l) clips at shared noise and timestep. The implicit reward margin
    ``(ref_w - policy_w) - (ref_l - policy_l)`` grows when the policy fits the chosen clip better
    than the reference does, relative to the rejected one. Returns (loss, margin [B]).
    """
    margin = (ref_w - policy_w) - (ref_l - policy_l)
    loss = -torch.nn.functional.logsigmoid(0.5 * beta * margin).mean()
    return loss, margin.detach()
