"""Classifier-free guidance for EchoMimicV3: which model passes a step needs and how they combine.

Branches (each one model evaluation on the same latents):

* ``uncond``     negative prompt, zero audio
* ``drop_audio`` prompt, zero audio
* ``cond``       prompt, audio

preview ("three_way"): ``uncond + gs * (drop_audio - uncond) + ags * (cond - drop_audio)``
flash ("audio_only"): ``drop_audio + ags * (cond - drop_audio)`` (upstream calls its zero-audio pass
"uncond", but it uses the positive prompt, i.e. it is ``drop_audio``; text guidance is not applied).

As upstream: CFG runs only when ``guidance_scale > 1`` (also in flash, where gs only switches it on);
``cfg_skip_ratio`` drops CFG for the last fraction of steps; the dynamic schedules decay a scale s as
``s/2 + s/2 * (1 - cos(pi * ((N - i) / N) ** 5)) / 2``; ``neg_scale`` multiplies the negative prompt
embeddings on steps ``i <= neg_steps``. Upstream re-multiplies the already-scaled embeddings every step,
so they compound to ``neg_scale ** (neg_steps + 1)`` and stay there for the rest of the run; we scale the
ORIGINAL embeddings (``neg_scale`` on those steps, 1 afterwards) unless ``compound_neg_scale=True``
asks for upstream's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..settings import VARIANT_DEFAULTS

UNCOND, DROP_AUDIO, COND = "uncond", "drop_audio", "cond"
# the branches a guided step evaluates, in upstream's batch order, per mode
MODE_BRANCHES = {"three_way": (UNCOND, DROP_AUDIO, COND), "audio_only": (COND, DROP_AUDIO)}
MODES = tuple(MODE_BRANCHES)
# each released variant's guidance, as upstream runs it
VARIANT_MODES = {"preview": "three_way", "flash": "audio_only"}


def dynamic_scale(scale: float, step: int, num_steps: int) -> float:
    """Upstream's cosine-decayed guidance scale at `step` (0-based) of `num_steps`: s at step 0 -> s/2."""
    return scale / 2 + (scale / 2) * ((1 - math.cos(math.pi * ((num_steps - step) / num_steps) ** 5.0)) / 2)


@dataclass
class GuidanceConfig:
    """Guidance settings of one generation (defaults: preview's, from ``settings.VARIANT_DEFAULTS``).

    mode: "three_way" (preview) or "audio_only" (flash). guidance_scale: text CFG (also the on-switch:
    CFG runs only if > 1). audio_guidance_scale: audio CFG. use_dynamic_cfg / use_dynamic_acfg: cosine
    decay of each scale. neg_scale, neg_steps: negative-prompt boost on steps 0..neg_steps.
    compound_neg_scale: reproduce upstream's compounding of that boost. cfg_skip_ratio: fraction of the
    last steps run without CFG (cond pass only).
    """

    mode: str = "three_way"
    guidance_scale: float = VARIANT_DEFAULTS["preview"]["guidance_scale"]
    audio_guidance_scale: float = VARIANT_DEFAULTS["preview"]["audio_guidance_scale"]
    use_dynamic_cfg: bool = VARIANT_DEFAULTS["preview"]["use_dynamic_cfg"]
    use_dynamic_acfg: bool = VARIANT_DEFAULTS["preview"]["use_dynamic_acfg"]
    neg_scale: float = VARIANT_DEFAULTS["preview"]["neg_scale"]
    neg_steps: int = VARIANT_DEFAULTS["preview"]["neg_steps"]
    compound_neg_scale: bool = False
    cfg_skip_ratio: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"guidance mode must be one of {MODES}, got {self.mode!r}.")
        if not 0.0 <= self.cfg_skip_ratio <= 1.0:
            raise ValueError(f"cfg_skip_ratio must be in [0, 1], got {self.cfg_skip_ratio}.")

    @property
    def cfg_enabled(self) -> bool:
        return self.guidance_scale > 1.0

    def cfg_active(self, step: int, num_steps: int) -> bool:
        """Whether step `step` (0-based) of `num_steps` runs guided passes."""
        return self.cfg_enabled and not (self.cfg_skip_ratio > 0 and step >= num_steps * (1 - self.cfg_skip_ratio))

    def passes_for_step(self, step: int, num_steps: int) -> tuple[str, ...]:
        """Branch names to evaluate at this step, in upstream's batch order."""
        if not self.cfg_active(step, num_steps):
            return (COND,)
        return MODE_BRANCHES[self.mode]

    def scales_for_step(self, step: int, num_steps: int) -> tuple[float, float]:
        """(text scale, audio scale) used at this step."""
        gs, ags = self.guidance_scale, self.audio_guidance_scale
        if self.use_dynamic_cfg:
            gs = dynamic_scale(gs, step, num_steps)
        if self.use_dynamic_acfg:
            ags = dynamic_scale(ags, step, num_steps)
        return gs, ags

    def negative_factor(self, step: int) -> float:
        """Factor applied to the ORIGINAL negative prompt embeddings at this step."""
        if self.compound_neg_scale:
            return self.neg_scale ** (min(step, self.neg_steps) + 1)
        return self.neg_scale if step <= self.neg_steps else 1.0

    def combine(self, outputs: Mapping[str, torch.Tensor], step: int, num_steps: int) -> torch.Tensor:
        """Guided velocity from the branch outputs of this step (keys as returned by passes_for_step)."""
        needed = self.passes_for_step(step, num_steps)
        missing = [name for name in needed if name not in outputs]
        if missing:
            raise KeyError(f"step {step} needs model outputs for {needed}; missing {missing}.")
        if needed == (COND,):
            return outputs[COND]
        gs, ags = self.scales_for_step(step, num_steps)
        cond, drop = outputs[COND], outputs[DROP_AUDIO]
        if self.mode == "audio_only":
            return drop + ags * (cond - drop)
        uncond = outputs[UNCOND]
        return uncond + gs * (drop - uncond) + ags * (cond - drop)
