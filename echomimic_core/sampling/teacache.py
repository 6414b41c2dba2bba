"""TeaCache: skip the transformer blocks on steps whose time modulation barely changed.

Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model" (2024). At every
denoising step the relative L1 change of the time modulation ``t_mod`` (Wan's ``e0``, [B, 6, C]) is
rescaled by a model-specific polynomial and accumulated; while the sum stays below the threshold the
blocks are skipped and the block input is advanced by the residual (output - input) of the last step
that ran them. The first ``num_skip_start_steps`` steps always run.

Differences from upstream's ``cache_utils.TeaCache`` + transformer code, on purpose:

* one step is counted per denoising step (``start_step``), not per model call: upstream's flash
  pipeline calls the model twice per step and so advanced its counter twice and mixed the cond and
  uncond residuals; here the skip decision is made once per step and residuals are kept per branch
  (the ``branch`` key the model passes: "cond", "uncond", "uncond+drop_audio+cond", ...). For the
  preview pipeline (one batched call per step) the behaviour is upstream's.
* a threshold of 0 never skips. (Upstream's polynomial is negative for tiny changes, so its threshold 0
  could still skip.)
* a branch that has no stored residual yet (or whose shape changed) is computed rather than crashing.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

# Polynomial (highest power first) mapping the raw relative L1 change of t_mod to an estimate of the
# output change; fitted by the TeaCache authors for Wan2.1 1.3B (T2V and Fun, which EchoMimicV3 is).
WAN21_1_3B_COEFFICIENTS = (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)


class TeaCache:
    """Step cache the transformer consults around its block loop.

    threshold: accumulated rescaled change below which blocks are skipped (upstream default 0.1;
    0 = never skip). num_skip_start_steps: leading steps that always run (upstream 5). offload: keep
    residuals on the CPU (saves GPU memory, costs a transfer per skipped call).

    Sampler: ``reset()`` per run, ``start_step(i, total)`` before each step's model calls.
    Model: ``before_blocks(branch, t_mod, x)`` -> output to use or None; ``after_blocks(branch, x_in,
    x_out)`` after running the blocks. Calls for different windows of one step (sliding long-video
    windows) go through ``scoped(window)``, so each window keeps its own residuals.
    """

    def __init__(
        self,
        threshold: float = 0.1,
        num_skip_start_steps: int = 5,
        coefficients=WAN21_1_3B_COEFFICIENTS,
        offload: bool = False,
    ):
        if threshold < 0:
            raise ValueError(f"TeaCache threshold must be >= 0 (0 = never skip), got {threshold}.")
        if num_skip_start_steps < 0:
            raise ValueError(f"num_skip_start_steps must be >= 0, got {num_skip_start_steps}.")
        self.threshold = threshold
        self.num_skip_start_steps = num_skip_start_steps
        self.coefficients = np.asarray(coefficients, dtype=np.float64)
        self.offload = offload
        self.reset()

    def reset(self) -> None:
        """Forget everything; call once per generation (and per long-video chunk)."""
        self.step: int | None = None
        self.skipped_steps: list[int] = []
        self._explicit_steps = False
        self._decided_step: int | None = None
        self._should_calc = True
        self._accumulated = 0.0
        self._previous_t_mod: torch.Tensor | None = None
        self._residuals: dict[str, torch.Tensor] = {}
        self._branches_this_step: set[str] = set()

    def release(self) -> None:
        """Drop the residuals after the last step (the skipped steps stay for the caller to read)."""
        self._residuals = {}

    def start_step(self, step: int, total: int) -> None:
        """Mark the start of denoising step `step` (0-based) of `total`."""
        self._explicit_steps = True
        self.step = step
        self._branches_this_step.clear()

    def relative_change(self, t_mod: torch.Tensor) -> float:
        """mean |t_mod - previous| / mean |previous|, in t_mod's dtype as upstream."""
        prev = self._previous_t_mod.to(t_mod.device)
        return ((t_mod - prev).abs().mean() / prev.abs().mean()).cpu().item()

    def _decide(self, t_mod: torch.Tensor) -> None:
        calc = True
        if self.threshold > 0 and self.step >= self.num_skip_start_steps and self._previous_t_mod is not None:
            self._accumulated += float(np.polyval(self.coefficients, self.relative_change(t_mod)))
            calc = self._accumulated >= self.threshold
        if calc:
            self._accumulated = 0.0
        else:
            self.skipped_steps.append(self.step)
        self._previous_t_mod = t_mod.detach().clone()
        self._should_calc = calc
        self._decided_step = self.step

    def before_blocks(self, branch: str, t_mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """t_mod: [B, 6, C] time modulation; x: [B, L, C] block input. x + cached residual, or None."""
        if not self._explicit_steps and (self.step is None or branch in self._branches_this_step):
            # no sampler driving us: every repeated branch starts a new step
            self.step = 0 if self.step is None else self.step + 1
            self._branches_this_step.clear()
        self._branches_this_step.add(branch)
        if self._decided_step != self.step:
            self._decide(t_mod)
        if self._should_calc:
            return None
        residual = self._residuals.get(branch)
        if residual is None or residual.shape != x.shape:
            log.debug("TeaCache: no residual for branch %r at step %s; running the blocks", branch, self.step)
            return None
        return x + residual.to(x.device)

    def scoped(self, scope: str) -> ScopedCache:
        """This cache as seen by one sliding long-video window: the window's residuals are its own
        (branch names prefixed with ``scope``; windows see different latents), while the skip
        decision stays one per step: it depends only on the timestep's modulation, the same for
        every window, so per-window decisions would all agree anyway."""
        return ScopedCache(self, scope)

    def after_blocks(self, branch: str, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """Store this branch's residual x_out - x_in ([B, L, C]) for later skipped steps."""
        if self.threshold <= 0:  # never skips: keep no residuals (saves a [B, L, C] copy per branch)
            return
        residual = (x_out - x_in).detach()
        # offload: one device-to-host copy of the difference, not two of its operands
        self._residuals[branch] = residual.cpu() if self.offload else residual


class ScopedCache:
    """A TeaCache under a name prefix (see ``TeaCache.scoped``); what the transformer is given."""

    def __init__(self, cache: TeaCache, scope: str):
        self.cache, self.scope = cache, scope

    def before_blocks(self, branch: str, t_mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        return self.cache.before_blocks(f"{self.scope}/{branch}", t_mod, x)

    def after_blocks(self, branch: str, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        self.cache.after_blocks(f"{self.scope}/{branch}", x_in, x_out)
