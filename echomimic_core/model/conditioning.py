"""Conditioning: everything the transformer is conditioned on, travelling as one object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .rope import Riflex


@dataclass
class Conditioning:
    """Inputs of one forward besides the noisy latents and the timestep.

    context: per-sample text embeddings, a list of [L_i, text_dim], or a padded [B, text_len, text_dim]
        (the model attends over the zero padding to text_len as upstream, though computed as one
        row, see ``model.context_cache``; rows given as zeros are attended one by one, same result).
    clip_fea: [B, clip_tokens, clip_dim] CLIP image tokens.
    y: [B, 20, F, H, W] = 4 mask channels + 16 masked-video latent channels.
    audio: preview [B, tokens_per_frame * video_frames, audio_in_dim];
        flash [B, video_frames, window, blocks, channels].
    face_gate: [B, tokens_per_latent_frame] 0/1 gate on the audio attention output (face region), or None.
        preview always has one upstream; upstream flash has none (pass None for its exact output;
        a gate given to a flash model is applied, as an explicit user choice).
    audio_scale: multiplier of the audio attention output, a float or a [B] tensor.
    riflex: RIFLEx for this forward's frame positions (one for the whole batch), or None.
    """

    context: list[torch.Tensor] | torch.Tensor
    clip_fea: torch.Tensor
    y: torch.Tensor
    audio: torch.Tensor
    face_gate: torch.Tensor | None = None
    audio_scale: float | torch.Tensor = 1.0
    riflex: Riflex | None = None

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    def text_list(self) -> list[torch.Tensor]:
        """Per-sample text embeddings [L_i, text_dim]."""
        return list(self.context.unbind(0)) if isinstance(self.context, torch.Tensor) else list(self.context)

    def scale_per_sample(self) -> torch.Tensor:
        """audio_scale as a float32 [B] tensor on ``y``'s device (so ``cat`` can mix float and tensor scales)."""
        s = torch.as_tensor(self.audio_scale, dtype=torch.float32, device=self.y.device)
        return s.expand(self.batch_size).clone() if s.ndim == 0 else s.float()

    @classmethod
    def cat(cls, conds: list[Conditioning]) -> Conditioning:
        """Batch-concatenate (e.g. cond / uncond guidance passes run as one forward)."""
        if not conds:
            raise ValueError("Conditioning.cat needs at least one Conditioning.")
        if len(conds) == 1:
            return conds[0]
        masks = None
        if any(c.face_gate is not None for c in conds):
            like = next(c.face_gate for c in conds if c.face_gate is not None)
            # a sample without a gate attends to audio everywhere: an all-ones gate
            masks = torch.cat(
                [
                    c.face_gate if c.face_gate is not None else like.new_ones((c.batch_size, like.shape[1]))
                    for c in conds
                ]
            )
        riflex = {c.riflex for c in conds}
        if len(riflex) > 1:
            raise ValueError(
                f"cannot batch conditionings with different RIFLEx settings {riflex}: positions are "
                "encoded once per forward; give every branch the same riflex."
            )
        scales = [c.audio_scale for c in conds]
        if all(not isinstance(s, torch.Tensor) for s in scales) and len(set(scales)) == 1:
            scale = scales[0]
        else:
            scale = torch.cat([c.scale_per_sample() for c in conds])
        return cls(
            context=[t for c in conds for t in c.text_list()],
            clip_fea=torch.cat([c.clip_fea for c in conds]),
            y=torch.cat([c.y for c in conds]),
            audio=torch.cat([c.audio for c in conds]),
            face_gate=masks,
            audio_scale=scale,
            riflex=conds[0].riflex,
        )

    def to(self, device=None, dtype=None) -> Conditioning:
        """Move tensors; ``dtype`` applies to floating-point features (not to the gate's meaning)."""

        def move(t):
            if not isinstance(t, torch.Tensor):
                return t
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        context = move(self.context) if isinstance(self.context, torch.Tensor) else [move(t) for t in self.context]
        return dataclasses.replace(
            self,
            context=context,
            clip_fea=move(self.clip_fea),
            y=move(self.y),
            audio=move(self.audio),
            face_gate=move(self.face_gate),
            audio_scale=move(self.audio_scale),
        )

    def with_audio(self, audio: torch.Tensor) -> Conditioning:
        return dataclasses.replace(self, audio=audio)

    def without_audio(self) -> Conditioning:
        """The audio-dropped branch of guidance: zero features, as upstream's unconditional audio."""
        return self.with_audio(torch.zeros_like(self.audio))
