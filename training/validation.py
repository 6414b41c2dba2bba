"""Validation during training: a held-out SFT cache sampled with the inference pipeline's guidance
and scheduler every N steps, decoded to videos (saved, and logged to TensorBoard when it runs), plus
the SFT loss on those clips at fixed noise.

Held-out clips are preprocessed like the training clips (``training.preprocess`` into their own
folder); a clip's reference frame is its cached first-frame conditioning ``cond.first_frame``, its
prompt, CLIP tokens and audio the cached ones, the negative prompt the empty prompt (``nulls``).
Only the VAE is loaded (to decode), once, on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from echomimic_core.pipeline import Encoded, branches_for, guidance_for_variant
from echomimic_core.sampling.sampler import denoise, guided_velocity
from echomimic_core.sampling.schedulers import make_scheduler
from echomimic_core.settings import GenerationSettings
from echomimic_core.vae.pixels import decode_frames
from training.dataset import CachedDataset, collate
from training.tasks import build_y, face_gates

log = logging.getLogger(__name__)


class Validator:
    """Renders the first ``max_items`` clips of ``cache_dir`` with ``model``."""

    def __init__(self, cache_dir: str | Path, vae_path: str | None, steps: int, max_items: int, seed: int, fps: float):
        self.data = CachedDataset(cache_dir, kind="sft")
        if self.data.null_text is None:
            raise FileNotFoundError(f"{cache_dir}: nulls.safetensors is missing; re-run training.preprocess there.")
        self.items = [self.data[i] for i in range(min(max_items, len(self.data)))]
        self.vae_path, self.steps, self.seed, self.fps = vae_path, steps, seed, fps
        self._vae = None

    def vae(self):
        if self._vae is None and self.vae_path is not None:
            from echomimic_core.vae import load_vae

            self._vae = load_vae(self.vae_path, dtype=torch.float32)
        return self._vae

    @torch.no_grad()
    def sample(self, model, item: dict, device) -> torch.Tensor:
        """Latents [1, 16, F, h, w] of one held-out clip, first-frame task, as inference samples."""
        variant = model.config.variant
        settings = GenerationSettings.for_variant(variant, steps=self.steps, seed=self.seed)
        latents = item["latents"]
        y = build_y(["first_frame"], {"first_frame": item["cond.first_frame"][None]})
        gate = face_gates([item.get("face_box")], tuple(latents.shape[-2:])) if variant == "preview" else None
        encoded = Encoded(
            context=item["text"],
            negative_context=self.data.null_text,
            clip_fea=item["clip"][None],
            audio=item["audio"][None],
            face_gate=gate,
        )
        branches = {k: v.to(device) for k, v in branches_for(encoded, y, encoded.audio, settings.audio_scale).items()}
        velocity = guided_velocity(model, branches, guidance_for_variant(variant, settings), settings.steps)
        noise = torch.randn((1, *latents.shape), generator=torch.Generator().manual_seed(self.seed)).to(device)
        scheduler = make_scheduler(settings.sampler, settings.steps, settings.shift, variant=variant)
        return denoise(velocity, noise, scheduler)

    def run(self, model, step: int, out_dir: Path, device, trackers=()) -> dict:
        """Sample every held-out clip; write ``out_dir/step-<step>/<id>.mp4`` (with a VAE, else the
        latents as ``<id>.latents.pt``) and return the paths."""
        from echomimic_core import media

        was_training = model.training
        model.eval()
        written = {}
        folder = out_dir / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for item in self.items:
                latents = self.sample(model, item, device)
                vae = self.vae()
                if vae is None:
                    path = folder / f"{item['id']}.latents.pt"
                    torch.save(latents.cpu(), path)
                    written[item["id"]] = str(path)
                    continue
                frames = decode_frames(vae, latents.float().cpu())  # [N, H, W, 3] in [0, 1]
                path = media.write_video(folder / f"{item['id']}.mp4", frames, fps=self.fps)
                written[item["id"]] = str(path)
                for tracker in trackers:
                    writer = getattr(tracker, "writer", None)
                    if writer is not None and hasattr(writer, "add_video"):
                        writer.add_video(
                            f"validation/{item['id']}", frames.permute(0, 3, 1, 2)[None], step, fps=self.fps
                        )
        finally:
            model.train(was_training)
        return written

    @torch.no_grad()
    def loss(self, loss_fn) -> float:
        """The SFT loss of ``loss_fn(batch, generator)`` on the held-out clips at fixed randomness."""
        batch = collate(self.items)
        return sum(loss_fn(batch, torch.Generator().manual_seed(self.seed + s))[0].item() for s in range(3)) / 3
