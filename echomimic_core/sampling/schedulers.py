"""Flow-matching schedulers: Euler ("Flow"), UniPC ("Flow_Unipc") and DPM-Solver++ ("Flow_DPM++").

The model predicts a velocity ``v`` with ``x_t = (1 - sigma) * x0 + sigma * noise``; every scheduler
walks ``sigma`` from ~1 to 0 and exposes ``timesteps = sigma * 1000`` (what the transformer is fed).

Upstream builds each scheduler from one config (``scheduler_kwargs.shift`` = the "config shift", 5 in
``config/config.yaml``) and then passes a "sampling shift" (``--shift``, 5) at ``set_timesteps``:

* ``Flow`` is diffusers' ``FlowMatchEulerDiscreteScheduler`` (used directly here); its timesteps come
  from the config shift alone (upstream's ``mu=1`` is ignored without dynamic shifting).
* ``Flow_Unipc`` takes ``linspace(sigma_max, 0, n + 1)[:n]`` where ``sigma_max`` is the config-shifted
  training sigma of step 0.999, then applies the sampling shift.
* ``Flow_DPM++`` takes ``shift(linspace(1, 0, n + 1)[:n])`` with the sampling shift and then, inside
  ``set_timesteps``, applies the config shift *again*. The preview script (config shift 5) therefore
  samples with an effective shift of 25; the flash script forces the config shift to 1 for UniPC and
  DPM++, so it shifts once. ``dpm_reapply_config_shift`` (default True = upstream) controls this.

UniPC and DPM++ are written out here because diffusers' flow-sigma variants build a different sigma
grid (they cannot express the config-shifted ``sigma_max`` or the double shift): on the samplers
fixture they are off by ~1e-3 (flash) to ~0.3 (preview DPM++), where these match bit for bit. Timesteps of those two are truncated to integers, as upstream.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import VARIANTS
from ..settings import SAMPLERS

log = logging.getLogger(__name__)

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas, shift: float):
    """Flow-matching time shift ``s * sigma / (1 + (s - 1) * sigma)`` (numpy or torch, dtype kept)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def default_config_shift(name: str, shift: float, variant: str) -> float:
    """The scheduler-config shift each upstream script uses.

    preview: the config file's shift (equal to the sampling shift, 5, in every released script);
    flash: forced to 1 for UniPC and DPM++ (``infer_flash.py``), kept for Euler.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
    return 1.0 if variant == "flash" and name != "Flow" else shift


def _training_sigma_range(config_shift: float) -> tuple[float, float]:
    """(sigma_max, sigma_min) of upstream's 1000-step training grid after the config shift (float32)."""
    alphas = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy()
    sigmas = shift_sigmas(torch.from_numpy(1.0 - alphas).to(torch.float32), config_shift)
    return sigmas[0].item(), sigmas[-1].item()


def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma (inf at the ends is intended)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class _MultistepFlowScheduler:
    """Shared state of the integer-timestep multistep solvers: sigmas [n + 1] (last 0), a step counter."""

    order = 2

    def __init__(self, sampling_sigmas: np.ndarray):
        self.timesteps = torch.from_numpy(sampling_sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)
        self.sigmas = torch.from_numpy(np.concatenate([sampling_sigmas, [0.0]]).astype(np.float32))
        self.num_steps = len(self.timesteps)
        self.reset()

    def reset(self) -> None:
        """Forget the history so the same object can run another generation."""
        self.step_index = 0
        self.model_outputs: list[torch.Tensor | None] = [None] * self.order
        self.lower_order_nums = 0

    def _push_output(self, x0_pred: torch.Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [x0_pred]

    def _check_step(self) -> int:
        if self.step_index >= self.num_steps:
            raise RuntimeError(
                f"scheduler already ran all {self.num_steps} steps; call reset() before starting another generation."
            )
        return self.step_index


class FlowUniPC(_MultistepFlowScheduler):
    """UniPC-2 (B(h) = expm1, data prediction) on flow sigmas, with corrector, as Wan's flow UniPC.

    ``timesteps``: int64 [steps]. ``step(velocity, t, sample)`` returns the next sample.
    """

    def __init__(self, steps: int, shift: float, config_shift: float):
        sigma_max, sigma_min = _training_sigma_range(config_shift)
        sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
        super().__init__(shift_sigmas(sigmas, shift))

    def reset(self) -> None:
        super().reset()
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _coefficients(self, order: int, h: torch.Tensor, rks: list):
        """(h_phi_1, B_h, R [order, order], b [order]) of the UniPC linear system (bh2)."""
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = torch.expm1(hh)
        rks = torch.tensor(rks + [1.0])
        rows, b, factorial = [], [], 1
        for i in range(1, order + 1):
            rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, b_h, torch.stack(rows), torch.tensor(b)

    def _predict(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: sigmas[i] -> sigmas[i + 1] using the last `order` data predictions."""
        i = self.step_index
        m0 = self.model_outputs[-1]
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        lambda_s0 = _log_snr(sigma_s0)
        h = _log_snr(sigma_t) - lambda_s0
        rks, d1s = [], []
        for k in range(1, order):
            rk = (_log_snr(self.sigmas[i - k]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        h_phi_1, b_h, _, _ = self._coefficients(order, h, rks)
        x_t = sigma_t / sigma_s0 * sample - (1 - sigma_t) * h_phi_1 * m0
        if d1s:
            # order 2 is the only multistep order here; UniP-2 uses rho = 1/2
            rhos = torch.tensor([0.5], dtype=sample.dtype, device=sample.device)
            x_t = x_t - (1 - sigma_t) * b_h * torch.einsum("k,bkc...->bc...", rhos, torch.stack(d1s, dim=1))
        return x_t.to(sample.dtype)

    def _correct(
        self, x0_pred: torch.Tensor, last_sample: torch.Tensor, sample: torch.Tensor, order: int
    ) -> torch.Tensor:
        """UniC: refine `sample` (at sigmas[i]) with the fresh prediction `x0_pred` made there."""
        i = self.step_index
        m0 = self.model_outputs[-1]
        sigma_t, sigma_s0 = self.sigmas[i], self.sigmas[i - 1]
        lambda_s0 = _log_snr(sigma_s0)
        h = _log_snr(sigma_t) - lambda_s0
        rks, d1s = [], []
        for k in range(1, order):
            rk = (_log_snr(self.sigmas[i - (k + 1)]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        h_phi_1, b_h, rows, b = self._coefficients(order, h, rks)
        # the small solve stays on the CPU (as upstream's sigmas); only its result moves to the sample
        rhos = (torch.tensor([0.5]) if order == 1 else torch.linalg.solve(rows, b)).to(last_sample)
        x_t = sigma_t / sigma_s0 * last_sample - (1 - sigma_t) * h_phi_1 * m0
        corr = torch.einsum("k,bkc...->bc...", rhos[:-1], torch.stack(d1s, dim=1)) if d1s else 0
        x_t = x_t - (1 - sigma_t) * b_h * (corr + rhos[-1] * (x0_pred - m0))
        return x_t.to(last_sample.dtype)

    def step(self, velocity: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """One solver step. velocity, sample: [B, C, F, H, W]; t is taken from the internal counter."""
        i = self._check_step()
        x0_pred = sample - self.sigmas[i] * velocity
        if i > 0 and self.last_sample is not None:
            sample = self._correct(x0_pred, self.last_sample, sample, self.this_order)
        self._push_output(x0_pred)
        # lower order for the final step, and warm-up while the history fills
        self.this_order = min(self.order, self.num_steps - i, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.order)
        self.step_index += 1
        return prev


class FlowDPMSolverPP(_MultistepFlowScheduler):
    """Multistep DPM-Solver++ (2nd order, midpoint) on flow sigmas, as Wan's flow DPM-Solver.

    The final step is first order (final sigma is zero). ``timesteps``: int64 [steps].
    """

    def __init__(self, steps: int, shift: float, config_shift: float, reapply_config_shift: bool = True):
        sigmas = shift_sigmas(np.linspace(1, 0, steps + 1)[:steps], shift)
        if reapply_config_shift:
            sigmas = shift_sigmas(sigmas, config_shift)
        super().__init__(sigmas)

    def step(self, velocity: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """One solver step. velocity, sample: [B, C, F, H, W]; t is taken from the internal counter."""
        i = self._check_step()
        self._push_output(sample - self.sigmas[i] * velocity)
        x = sample.to(torch.float32)
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t = 1 - sigma_t
        h = _log_snr(sigma_t) - _log_snr(sigma_s0)
        m0 = self.model_outputs[-1]
        if self.lower_order_nums < 1 or i == self.num_steps - 1:
            prev = (sigma_t / sigma_s0) * x - (alpha_t * (torch.exp(-h) - 1.0)) * m0
        else:
            r0 = (_log_snr(sigma_s0) - _log_snr(self.sigmas[i - 1])) / h
            d1 = (1.0 / r0) * (m0 - self.model_outputs[-2])
            prev = (
                (sigma_t / sigma_s0) * x
                - (alpha_t * (torch.exp(-h) - 1.0)) * m0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
            )
        self.lower_order_nums = min(self.lower_order_nums + 1, self.order)
        self.step_index += 1
        return prev.to(velocity.dtype)


class FlowEuler:
    """diffusers' FlowMatchEulerDiscreteScheduler with upstream's config; float timesteps [steps]."""

    def __init__(self, steps: int, shift: float):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self._scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            shift=shift,
            use_dynamic_shifting=False,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        self._steps = steps
        self.reset()

    def reset(self) -> None:
        self._scheduler.set_timesteps(self._steps)
        # count from the first step instead of searching t in the schedule (same result, no lookup)
        self._scheduler.set_begin_index(0)
        self.timesteps = self._scheduler.timesteps
        self.sigmas = self._scheduler.sigmas
        self.num_steps = len(self.timesteps)

    def step(self, velocity: torch.Tensor, t, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step x + (sigma_next - sigma) * v. velocity, sample: [B, C, F, H, W]."""
        if self._scheduler.step_index is not None and self._scheduler.step_index >= self.num_steps:
            raise RuntimeError(
                f"scheduler already ran all {self.num_steps} steps; call reset() before starting another generation."
            )
        return self._scheduler.step(velocity, t, sample, return_dict=False)[0]


def make_scheduler(
    name: str,
    steps: int,
    shift: float = 5.0,
    variant: str = "preview",
    *,
    config_shift: float | None = None,
    dpm_reapply_config_shift: bool = True,
):
    """Build a fresh scheduler for one generation.

    name: "Flow" | "Flow_Unipc" | "Flow_DPM++"; steps: number of denoising steps; shift: the sampling
    shift (upstream ``--shift``, 5); variant: "preview" or "flash" picks the config shift each upstream
    script uses (see ``default_config_shift``), or pass ``config_shift`` explicitly.
    ``dpm_reapply_config_shift``: DPM++ applies the config shift a second time inside set_timesteps, as
    upstream does (matters for preview, whose config shift is 5; set False to shift once).

    Returns an object with ``.timesteps`` ([steps], 0..1000 scale), ``.step(velocity, t, sample) ->
    sample`` and ``.reset()``; steps are counted internally, so call ``step`` once per timestep in order.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if config_shift is None:
        config_shift = default_config_shift(name, shift, variant)
    if name == "Flow":
        return FlowEuler(steps, config_shift)
    if name == "Flow_Unipc":
        return FlowUniPC(steps, shift, config_shift)
    return FlowDPMSolverPP(steps, shift, config_shift, reapply_config_shift=dpm_reapply_config_shift)


def toy_velocity(x: torch.Tensor, c: torch.Tensor, t) -> torch.Tensor:
    """The fixture's stand-in model: v = 0.3 * x - 0.7 * c * (t / 1000)."""
    return 0.3 * x - 0.7 * c * (t / 1000)


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """Relative errors of timesteps and final latents for every run in a samplers* fixture."""
    from safetensors.torch import load_file

    from echomimic_core.verify_reference import relative_error

    tensors = load_file(str(path))
    x_init, c = tensors["x_init"], tensors["c"]
    errors = {}
    for run in meta["runs"]:
        key = run["key"]
        scheduler = make_scheduler(
            run["sampler"], run["steps"], run["sampling_shift"], run["setup"], config_shift=run["config_shift"]
        )
        x = x_init.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(toy_velocity(x, c, t), t, x)
        errors[f"{key}.timesteps"] = relative_error(scheduler.timesteps, tensors[f"{key}.timesteps"])
        errors[f"{key}.final"] = relative_error(x, tensors[f"{key}.final"])
    return errors
