"""EasyCache: skip the transformer blocks while their measured transformation rate says the output
barely moves.

Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching" (2025). Unlike TeaCache it needs no per-model polynomial: at every step that runs the
blocks it measures how much their output changed relative to how much their input changed since
the previous computed step, the transformation rate ``k = mean|Δy| / mean|Δx|``. On later steps
the output change is predicted as ``k · mean|x_t - x_{t-1}| / mean|y|`` and accumulated; while the
sum stays below the threshold the blocks are skipped and the input is advanced by the residual
``y - x`` of the last computed step. Above it, the blocks run and the sum restarts.

As with our TeaCache: one decision per denoising step (made on the step's first branch, which the
other branches follow), residuals per branch, a threshold of 0 never skips and keeps nothing
(exact), the first ``num_skip_start_steps`` steps always run, and ``skipped_steps`` /
``skipped_forwards`` say what was saved.

Memory: the deciding branch keeps its last input, its last computed input and its residual; every
other branch its residual: ``[B, L, C]`` each (``offload`` keeps them on the CPU).
"""

from __future__ import annotations

import torch

from .teacache import ScopedCache


class EasyCache:
    """Step cache the transformer consults around its block loop (the ``StepCache`` protocol).

    threshold: accumulated predicted relative output change below which blocks are skipped (0 =
    never skip; the paper uses ~0.05 for Wan2.1). num_skip_start_steps: leading steps that always
    run (at least two computed steps are needed to measure the rate). offload: keep the tensors on
    the CPU.
    """

    def __init__(self, threshold: float = 0.05, num_skip_start_steps: int = 2, offload: bool = False):
        if threshold < 0:
            raise ValueError(f"EasyCache threshold must be >= 0 (0 = never skip), got {threshold}.")
        if num_skip_start_steps < 0:
            raise ValueError(f"num_skip_start_steps must be >= 0, got {num_skip_start_steps}.")
        self.threshold = threshold
        self.num_skip_start_steps = num_skip_start_steps
        self.offload = offload
        self.reset()

    def reset(self) -> None:
        """Forget everything; the sampler calls it at the start (and end) of every run."""
        self.step: int | None = None
        self.skipped_steps: list[int] = []
        self.skipped_forwards = 0
        self._decided_step: int | None = None
        self._should_calc = True
        self._accumulated = 0.0
        self._rate: float | None = None
        self._lead: str | None = None  # the branch that decides
        self._last_input: torch.Tensor | None = None  # the lead's input at the previous step
        self._computed_input: torch.Tensor | None = None  # the lead's input at the last computed step
        self._residuals: dict[str, torch.Tensor] = {}

    def release(self) -> None:
        """Drop the kept tensors after the last step (the counts stay for the caller to read)."""
        self._last_input = self._computed_input = None
        self._residuals = {}

    def start_step(self, step: int, total: int) -> None:
        self.step = step

    def scoped(self, scope: str) -> ScopedCache:
        """This cache for one sliding long-video window: residuals per window, decisions per step."""
        return ScopedCache(self, scope)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.cpu() if self.offload else t.clone()

    @staticmethod
    def _mean_abs(t: torch.Tensor) -> float:
        return t.float().abs().mean().item()

    def _decide(self, branch: str, x: torch.Tensor) -> None:
        self._decided_step = self.step
        calc = True
        if self._lead is None:
            self._lead = branch
        if (
            self.threshold > 0
            and self.step >= self.num_skip_start_steps
            and self._rate is not None
            and self._last_input is not None
            and branch in self._residuals
        ):
            previous = self._last_input.to(x.device)
            output = self._computed_input.to(x.device) + self._residuals[branch].to(x.device)
            self._accumulated += self._rate * self._mean_abs(x - previous) / max(self._mean_abs(output), 1e-12)
            calc = self._accumulated >= self.threshold
        if calc:
            self._accumulated = 0.0
        else:
            self.skipped_steps.append(self.step)
        self._should_calc = calc

    def before_blocks(self, branch: str, t_mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """x: [B, L, C] block input. x + the branch's last residual on a skipped step, else None."""
        if self.threshold <= 0:
            return None
        if self._decided_step != self.step:
            self._decide(branch, x)
        if branch == self._lead:
            self._last_input = self._keep(x)
        residual = self._residuals.get(branch)
        if self._should_calc or residual is None or residual.shape != x.shape:
            return None
        self.skipped_forwards += 1
        return x + residual.to(x.device)

    def after_blocks(self, branch: str, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """After the blocks ran: the branch's residual; for the deciding branch the new rate."""
        if self.threshold <= 0:
            return
        residual = (x_out - x_in).detach()
        if branch == self._lead:
            if self._computed_input is not None and branch in self._residuals:
                before_in = self._computed_input.to(x_in.device)
                before_out = before_in + self._residuals[branch].to(x_in.device)
                change = self._mean_abs(x_in - before_in)
                self._rate = self._mean_abs(x_out - before_out) / change if change > 0 else None
            self._computed_input = self._keep(x_in)
        self._residuals[branch] = residual.cpu() if self.offload else residual
