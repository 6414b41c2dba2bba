"""The denoising loop.

One loop for every variant and mode: a *velocity function* (model + guidance, or several windows
of it blended, see ``long_video``) is integrated by a flow-matching scheduler. Progress and
cancellation reach the loop through :class:`StepHooks`, so ComfyUI's progress bar / interrupt and
the CLI's terminal bar plug in without the core knowing about either.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..model.conditioning import Conditioning
from .guidance import UNCOND, GuidanceConfig

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """Raised between steps when the caller asked to stop."""


class NonFiniteError(ValueError):
    """The latents (or decoded frames) turned NaN or infinite: the run stops, nothing is written."""


LIKELY_CAUSES = (
    "likely causes: transformer (or LoRA) weights that are NaN (a damaged file), guidance or audio scales far "
    "outside their range, or float16 overflow (compute in bfloat16 or float32 instead)"
)


def check_finite_latents(latents: torch.Tensor, step: int, total: int) -> None:
    """Raise :class:`NonFiniteError` when ``latents`` hold NaN/inf after step ``step`` of ``total``.
    Latents are small next to one model call, so every step is checked: the run stops at the first
    bad step instead of decoding a black video."""
    if not bool(torch.isfinite(latents).all()):
        bad = int((~torch.isfinite(latents)).sum())
        raise NonFiniteError(
            f"denoising step {step}/{total} produced NaN or infinite latents ({bad} of {latents.numel()} values); "
            f"stopped, nothing written. {LIKELY_CAUSES[0].upper()}{LIKELY_CAUSES[1:]}."
        )


@dataclass
class StepHooks:
    """Callbacks the loop calls between steps.

    ``on_step(step, total, latents, denoised)`` gets the latents after the step and the flow
    model's current estimate of the clean latents (for previews). ``on_vae(phase, chunk, done,
    total)`` follows the VAE through ``phase`` "encode" (the chunk's conditioning) or "decode" of
    long-video chunk ``chunk`` (0 in sliding mode): ``done`` of ``total`` passes; on a CPU or with
    small models the VAE takes longer than the steps. ``should_stop()`` is polled before every step,
    every model call of a long video and every VAE pass; returning True raises :class:`Cancelled`.
    Hosts whose interrupt raises its own exception can simply raise there.
    """

    on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_vae: Callable[[str, int, int, int], None] | None = None

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("generation cancelled")


class VelocityFn(Protocol):
    def __call__(self, latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor: ...


def run_branches(
    model,
    latents: torch.Tensor,
    t: torch.Tensor,
    conds: list[Conditioning],
    batched: bool,
    cache=None,
    names: list[str] | None = None,
    sequence=None,
    context_cache=None,
) -> list[torch.Tensor]:
    """Model predictions for each conditioning, in one batched forward or one forward each.

    latents: [1, 16, F, h, w]; returns one [1, 16, F, h, w] prediction per conditioning.
    Batched is faster; sequential needs 1/len(conds) of the activation memory. The TeaCache
    branch key is the joined branch names when batched, so residuals never mix across passes.
    sequence: the model's ``SequenceShard`` when each forward's tokens are split over ranks.
    context_cache: the generation's text/CLIP key-value cache, handed to every forward.
    """
    names = names or [str(i) for i in range(len(conds))]
    # only passed when set: other models (host wrappers, stand-ins) need not know the arguments
    extra = {"sequence": sequence} if sequence is not None else {}
    if context_cache is not None:
        extra["context_cache"] = context_cache
    # the model's compute dtype, not its first parameter's: weights may be stored in another dtype
    dtype = getattr(model, "compute_dtype", None) or (
        next(model.parameters()).dtype if hasattr(model, "parameters") else latents.dtype
    )
    if batched and len(conds) > 1:
        x = latents.expand(len(conds), *latents.shape[1:]).to(dtype)
        out = model(
            x, t.expand(len(conds)), Conditioning.cat(conds), cache=cache, cache_branch="+".join(names), **extra
        )
        return list(out.float().split(1))
    return [
        model(latents.to(dtype), t.expand(1), c, cache=cache, cache_branch=n, **extra).float()
        for c, n in zip(conds, names)
    ]


class BranchRunner(Protocol):
    """What runs a step's branches: ``run_branches`` itself, or a multi-process one (``parallel``)."""

    def __call__(
        self, model, latents, t, conds, batched, cache=None, names=None, *, context_cache=None
    ) -> list[torch.Tensor]: ...


def guided_velocity(
    model,
    branches: dict[str, Conditioning],
    guidance: GuidanceConfig,
    num_steps: int,
    *,
    batched: bool = True,
    cache=None,
    hooks: StepHooks | None = None,
    run: BranchRunner = run_branches,
    context_cache=None,
) -> VelocityFn:
    """A velocity function applying ``guidance`` over the named conditioning ``branches`` for a
    run of ``num_steps`` steps (the dynamic scales and CFG skipping depend on it).

    ``branches`` holds "cond", "drop_audio" and "uncond" as the variant needs them (see
    ``sampling.guidance``). The negative prompt's ``neg_scale`` is applied to the *original*
    negative embeddings at each step it is active, so it never compounds (upstream multiplied
    the already-scaled embeddings again every step). ``run`` evaluates a step's branches
    (``Parallel.run_branches`` spreads them over processes). ``context_cache``: a
    ``model.context_cache.ContextCache`` shared by every step (text/CLIP keys computed once).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")

    def velocity(latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        if hooks is not None:
            hooks.check_stop()
        names = guidance.passes_for_step(step, num_steps)
        conds = []
        for name in names:
            cond = branches[name]
            scale = guidance.negative_factor(step) if name == UNCOND else 1.0
            if scale != 1.0:
                cond = dataclasses.replace(cond, context=_scale_context(cond.context, scale))
            conds.append(cond)
        preds = run(model, latents, t, conds, batched, cache, names, context_cache=context_cache)
        return guidance.combine(dict(zip(names, preds)), step, num_steps)

    return velocity


def _scale_context(context, scale: float):
    if isinstance(context, torch.Tensor):
        return context * scale
    return [c * scale for c in context]


def denoise(
    velocity: VelocityFn,
    latents: torch.Tensor,
    scheduler,
    *,
    hooks: StepHooks | None = None,
    cache=None,
    step_offset: int = 0,
    total_steps: int | None = None,
) -> torch.Tensor:
    """Integrate ``velocity`` from pure noise ``latents`` [B, 16, F, h, w] with ``scheduler``.

    ``step_offset``/``total_steps`` let a long video report one continuous progress count over
    all its chunks. Latents stay float32 between steps whatever the model's compute dtype.
    """
    timesteps = scheduler.timesteps
    total = total_steps or len(timesteps)
    latents = latents.float()
    reporting = hooks is not None and hooks.on_step is not None
    if cache is not None:
        cache.reset()
    for i, t in enumerate(timesteps):
        if hooks is not None:
            hooks.check_stop()
        if cache is not None:
            cache.start_step(i, len(timesteps))
        t = torch.as_tensor(t, dtype=torch.float32, device=latents.device).reshape(1)
        v = velocity(latents, t, i).float()
        # the clean-latent estimate is only for previews: computed only when someone listens
        denoised = latents - (t / 1000.0).view(1, 1, 1, 1, 1) * v if reporting else None
        latents = scheduler.step(v, t, latents).float()
        check_finite_latents(latents, step_offset + i + 1, total)
        if reporting:
            hooks.on_step(step_offset + i + 1, total, latents, denoised)
    if cache is not None:
        skipped = getattr(cache, "skipped_steps", [])
        if skipped:
            log.info("%s skipped %d of %d steps (%s)", type(cache).__name__, len(skipped), len(timesteps), skipped)
        if hasattr(cache, "release"):  # its tensors are not needed past the last step: free them before the VAE
            cache.release()
    return latents
