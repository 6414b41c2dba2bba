"""SFT and DPO steps, alternated on one accelerate-prepared model, with exact resume.

Randomness of a step (phases, timesteps, noise, tasks, drops) comes from a CPU generator seeded by
(seed, step, process), and the data stream position from the number of samples consumed, so a
resumed run repeats exactly what the uninterrupted run would have done; accelerate's
``save_state``/``load_state`` carries model, optimizer, LR schedule and RNG, a JSON file our
``TrainState`` (step, samples consumed).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch
from accelerate import Accelerator

from echomimic_core.checkpoints.transformer import save_transformer
from echomimic_core.model.conditioning import Conditioning
from echomimic_core.settings import PAPER_TASKS
from training import flow_matching as fm
from training.config import PHASES, TrainConfig, config_to_dict
from training.dataset import StreamSampler, collate
from training.ema import EMA
from training.launch import make_accelerator
from training.lora import adapters_disabled, add_lora, save_lora
from training.modality_drop import apply_drop, drop_plan
from training.tasks import build_y, face_gates, sample_tasks

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
MODEL_FILE = "transformer.safetensors"
LORA_FILE = "lora.safetensors"
MODEL_EMA_FILE = "transformer_ema.safetensors"
LORA_EMA_FILE = "lora_ema.safetensors"
EMA_FILE = "ema_state.safetensors"
STATE_FILE = "train_state.json"


class TrainState:
    """Counters saved with every checkpoint as JSON (``train_state.json``). Not registered with
    accelerate's ``register_for_checkpointing``, which unpickles custom objects with
    ``weights_only=False``."""

    def __init__(self):
        self.step = 0  # optimizer steps done
        self.sft_samples = 0  # samples consumed from each stream, all processes together
        self.dpo_samples = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "sft_samples": self.sft_samples, "dpo_samples": self.dpo_samples}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.sft_samples, self.dpo_samples = (
            int(state["step"]),
            int(state["sft_samples"]),
            int(state["dpo_samples"]),
        )


def _mix(*parts) -> int:
    """A 63-bit seed from its parts, the same in every process and Python version (unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dpo_steps_until(step: int, every_n_steps: int, start_step: int = 0, ramp_steps: int = 0) -> Fraction:
    """The DPO share summed over optimizer steps 0..``step`` (exact, so the schedule is a function
    of the step alone and a resumed run repeats it). Step k's share is ``1/N`` times the phase-in
    ``min(1, (k - start_step + 1) / ramp_steps)`` from ``start_step`` on (0 before)."""
    if every_n_steps <= 0:
        return Fraction(0)
    j = max(0, step - start_step + 1)  # steps past the start, this one included
    r = ramp_steps
    if r == 0 or j <= r:
        total = Fraction(j) if r == 0 else Fraction(j * (j + 1), 2 * r)
    else:
        total = Fraction(r + 1, 2) + (j - r)
    return total / every_n_steps


def is_dpo_step(step: int, every_n_steps: int, start_step: int = 0, ramp_steps: int = 0) -> bool:
    """Optimizer step ``step`` (0-based) is DPO when the running DPO share crosses a whole number:
    without phase-in, the step closing each block of N; while phasing in, ever more often."""
    before = dpo_steps_until(step - 1, every_n_steps, start_step, ramp_steps) if step > 0 else Fraction(0)
    return int(dpo_steps_until(step, every_n_steps, start_step, ramp_steps)) > int(before)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


class Trainer:
    """Trains ``model`` (``forward(x, t, cond) -> velocity``) on cached SFT (and DPO) data.

    ``sft_data`` / ``dpo_data`` are map-style datasets of items as ``training.dataset`` stores them;
    ``null_text`` [L, D] is the empty-prompt embedding fed where text is dropped.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        sft_data,
        null_text: torch.Tensor,
        dpo_data=None,
        accelerator: Accelerator | None = None,
    ):
        self.config = config
        self.acc = accelerator or make_accelerator(config)
        self.null_text = null_text
        self.sft_data, self.dpo_data = sft_data, dpo_data
        self.state = TrainState()
        self.out = Path(config.output_dir)

        if config.model.gradient_checkpointing:
            model.gradient_checkpointing = True
        self.face_gate = model.config.variant == "preview"  # flash has no face-region gate
        if config.lora.enabled:
            model = add_lora(model, config.lora, seed=config.seed)
        # The frozen DPO reference: with LoRA the same weights with adapters switched off, else a
        # copy taken before training changes anything.
        self.ref_model = None
        if dpo_data is not None and config.dpo.every_n_steps > 0 and not config.lora.enabled:
            dtype = torch.bfloat16 if config.dpo.reference_dtype == "bf16" else torch.float32
            self.ref_model = copy.deepcopy(model).requires_grad_(False).eval().to(self.acc.device, dtype)

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (LoRA targets nothing?).")
        o = config.optim
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        from diffusers.optimization import get_scheduler

        # accelerate steps a prepared scheduler once per process per optimizer step
        n = self.acc.num_processes
        scheduler = get_scheduler(
            o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps * n, num_training_steps=o.max_steps * n
        )
        plugin = getattr(self.acc.state, "deepspeed_plugin", None)
        if plugin is not None:  # our loaders are prepared later, so DeepSpeed learns the batch here
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.data.batch_size
            if config.ema.enabled and plugin.zero_stage == 3:
                raise ValueError(
                    "ema.enabled is not supported under DeepSpeed ZeRO-3 (a rank holds shards); use ZeRO-2."
                )
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        self.ema = EMA(self.acc.unwrap_model(self.model), config.ema.decay) if config.ema.enabled else None
        self.validator = None
        v = config.validation
        if v.every_n_steps and self.acc.is_main_process:
            from training.validation import Validator

            self.validator = Validator(v.cache_dir, v.vae, v.steps, v.max_items, config.seed, v.fps)
        self.grad_norm: float | None = None
        if self.acc.is_main_process:
            self.acc.init_trackers("train", config=_flat(config_to_dict(config)))

    # ---------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.out)

    def resume(self, path: str | Path | None = None) -> bool:
        """Load the given checkpoint folder, or the latest complete one; False if there is none."""
        if path is None:
            found = self.checkpoints()
            if not found:
                return False
            path = found[-1]
        self.acc.load_state(str(Path(path) / "state"))
        self.state.load_state_dict(json.loads((Path(path) / STATE_FILE).read_text()))
        if self.ema is not None:
            self.ema.load(Path(path) / EMA_FILE)
        log.info("resumed from %s at step %d", path, self.state.step)
        return True

    def save_checkpoint(self) -> Path:
        """``checkpoints/checkpoint-<step>/``: accelerate state + the weights in the loader's format.

        Written under ``.partial`` and renamed when complete, so a kill mid-save leaves the previous
        checkpoint as the latest.
        """
        final = self.out / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.state.step}"
        tmp = final.with_name(final.name + ".partial")
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp / "state"))
        weights = self.acc.get_state_dict(self.model)  # collective under FSDP
        self.acc.wait_for_everyone()  # every rank has written its part (RNG states, FSDP shards)
        if self.acc.is_main_process:
            unwrapped = self.acc.unwrap_model(self.model)
            (tmp / STATE_FILE).write_text(json.dumps(self.state.state_dict()))
            if self.config.lora.enabled:
                save_lora(unwrapped, tmp / LORA_FILE, self.config.lora, state_dict=weights)
            else:
                save_transformer(unwrapped, tmp / MODEL_FILE, state_dict=weights)
            if self.ema is not None:
                self.ema.save(tmp / EMA_FILE)
                averaged = {**weights, **self.ema.state_dict(weights)}
                if self.config.lora.enabled:
                    save_lora(unwrapped, tmp / LORA_EMA_FILE, self.config.lora, state_dict=averaged)
                else:
                    save_transformer(unwrapped, tmp / MODEL_EMA_FILE, state_dict=averaged)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return final

    # ---------------------------------------------------------------- data
    def _loader(self, data, batch_size: int, consumed: int):
        sampler = StreamSampler(
            len(data), self.config.seed, start=consumed, batch_size=batch_size, buckets=getattr(data, "buckets", None)
        )
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.config.data.num_workers,
            worker_init_fn=_ignore_ctrl_c if self.config.data.num_workers else None,
        )
        return iter(self.acc.prepare_data_loader(loader))

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(_mix(self.config.seed, self.state.step, self.acc.process_index))

    def _phase_offset(self, micro: int, batch_size: int) -> int:
        """Where this micro-batch continues the step's phase round-robin: the start is shared by
        all processes (seeded without the rank), then samples count on across ranks and
        micro-batches, so every step is stratified whatever the per-process batch size."""
        g = torch.Generator().manual_seed(_mix(self.config.seed, self.state.step, "phases"))
        start = int(torch.randint(len(PHASES), (1,), generator=g))
        accum = self.config.optim.gradient_accumulation_steps
        return start + (self.acc.process_index * accum + micro) * batch_size

    # ---------------------------------------------------------------- steps
    def _conditioning(self, batch: dict, y: torch.Tensor) -> Conditioning:
        gate = None
        if self.face_gate:
            gate = face_gates(batch.get("face_box") or [None] * y.shape[0], tuple(y.shape[-2:]))
        return Conditioning(
            context=batch["text"],
            clip_fea=batch["clip"],
            y=y,
            audio=batch["audio"],
            face_gate=None if gate is None else gate.to(y.device),
        )

    def _draw(self, x0: torch.Tensor, g: torch.Generator, phase_offset: int | None):
        """One step's shared randomness for latents x0 [B, 16, F, h, w]: phases [B] (CPU),
        sigma [B] and t [B] on x0's device, noise like x0 (drawn on the CPU generator, so a run
        is the same on any device)."""
        f = self.config.flow
        phases = fm.sample_phases(x0.shape[0], g, phase_offset)
        sigma, t = fm.sample_timesteps(phases, g, f.shift, f.phase_boundaries, f.num_train_timesteps)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        return phases, sigma.to(x0.device), t.to(x0.device), noise

    def sft_loss(self, batch: dict, g: torch.Generator, phase_offset: int | None = None, model=None):
        """(loss, per-sample losses [B], phases [B], task ids [B]); ``model`` defaults to the
        prepared one (validation passes the unwrapped model: no collective ops on one rank)."""
        x0 = batch["latents"]
        phases, sigma, t, noise = self._draw(x0, g, phase_offset)
        x_t, target = fm.add_noise(x0, noise, sigma)
        tasks = sample_tasks([box is not None for box in batch["mouth_box"]], g, self.config.tasks.ratios)
        conds = {k[len("cond.") :]: v for k, v in batch.items() if k.startswith("cond.")}
        masks = {k[len("mask.") :]: v for k, v in batch.items() if k.startswith("mask.")}
        cond = self._conditioning(batch, build_y(tasks, conds, batch["mouth_box"], masks))
        cond = apply_drop(cond, drop_plan(phases, g, self.config.drop), self.null_text, self.config.drop.image_drop)
        with self.acc.autocast():
            pred = (model or self.model)(x_t, t, cond)
        per = fm.per_sample_mse(pred, target)
        task_ids = torch.tensor([PAPER_TASKS.index(x) for x in tasks])
        return per.mean(), per.detach(), phases, task_ids

    def dpo_loss(self, batch: dict, g: torch.Generator, phase_offset: int | None = None):
        """(loss, implicit reward margin [B]) on chosen vs rejected at shared noise and timestep."""
        win, lose = batch["chosen.latents"], batch["rejected.latents"]
        _, sigma, t, noise = self._draw(win, g, phase_offset)
        x_w, tgt_w = fm.add_noise(win, noise, sigma)
        x_l, tgt_l = fm.add_noise(lose, noise, sigma)
        cond = self._conditioning(
            batch,
            build_y(
                ["first_frame"] * win.shape[0],
                {"first_frame": batch["cond.first_frame"]},
                masks={"first_frame": batch["mask.first_frame"]} if "mask.first_frame" in batch else None,
            ),
        )
        x, tt, target = torch.cat([x_w, x_l]), torch.cat([t, t]), torch.cat([tgt_w, tgt_l])
        both = Conditioning.cat([cond, cond])
        with torch.no_grad(), self.acc.autocast():
            if self.ref_model is not None:
                ref_pred = self.ref_model(x, tt, both)
            else:
                # switch the adapters off on the inner model but call the wrapped one (as TRL
                # does), so DDP/FSDP still manage the parameters
                with adapters_disabled(self.acc.unwrap_model(self.model)):
                    ref_pred = self.model(x, tt, both)
        ref_w, ref_l = fm.per_sample_mse(ref_pred, target).chunk(2)
        with self.acc.autocast():
            pred = self.model(x, tt, both)
        pol_w, pol_l = fm.per_sample_mse(pred, target).chunk(2)
        return fm.dpo_loss(pol_w, pol_l, ref_w, ref_l, self.config.dpo.beta)

    def _backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)
        if self.acc.sync_gradients:
            # the norm before clipping (inf = measure only), logged as grad_norm
            limit = self.config.optim.max_grad_norm if self.config.optim.max_grad_norm > 0 else float("inf")
            norm = self.acc.clip_grad_norm_(self.model.parameters(), limit)
            if norm is None and hasattr(self.model, "get_global_grad_norm"):  # DeepSpeed clips itself
                norm = self.model.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _sft_logs(self, per, phases, task_ids) -> dict:
        per, phases, task_ids = self.acc.gather_for_metrics(
            (per.float(), phases.to(per.device), task_ids.to(per.device))
        )
        logs = {"loss/sft": per.mean().item()}
        for i, name in enumerate(PHASES):
            if (phases == i).any():
                logs[f"loss/sft_phase_{name}"] = per[phases == i].mean().item()
        for i, name in enumerate(PAPER_TASKS):
            if (task_ids == i).any():
                logs[f"loss/sft_task_{name}"] = per[task_ids == i].mean().item()
        return logs

    def _dpo_logs(self, losses, margins) -> dict:
        losses, margins = self.acc.gather_for_metrics((losses.float(), margins.float()))
        # implicit accuracy: the share of pairs whose chosen clip the policy fits better than the
        # reference does, relative to the rejected one (margin > 0)
        return {
            "loss/dpo": losses.mean().item(),
            "dpo/reward_margin": margins.mean().item(),
            "dpo/implicit_accuracy": (margins > 0).float().mean().item(),
        }

    # ---------------------------------------------------------------- loop
    def _any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (a signal may reach the ranks at
        different steps; they must stop, and save, at the same one)."""
        if self.acc.num_processes == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor([int(flag)], device=self.acc.device), "sum").item())

    def train(
        self,
        max_steps: int | None = None,
        on_step_end: Callable[[int, dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict]:
        """Run until ``max_steps`` optimizer steps (default ``optim.max_steps``); returns the logs
        of every step. ``on_step_end(step, logs)`` runs after each step (and its checkpoint);
        ``should_stop()`` is asked after each step, and True on any process ends the run there."""
        cfg = self.config
        max_steps = cfg.optim.max_steps if max_steps is None else max_steps
        accum, n = cfg.optim.gradient_accumulation_steps, self.acc.num_processes
        use_dpo = self.dpo_data is not None and cfg.dpo.every_n_steps > 0
        sft_iter = self._loader(self.sft_data, cfg.data.batch_size, self.state.sft_samples)
        dpo_iter = self._loader(self.dpo_data, cfg.dpo.batch_size, self.state.dpo_samples) if use_dpo else None
        history = []
        self.model.train()
        while self.state.step < max_steps:
            started = time.perf_counter()
            dpo = use_dpo and is_dpo_step(
                self.state.step, cfg.dpo.every_n_steps, cfg.dpo.start_step, cfg.dpo.ramp_steps
            )
            g = self._generator()
            parts: list[tuple] = []  # per micro-batch, for one log entry per optimizer step
            for micro in range(accum):
                with self.acc.accumulate(self.model):
                    if dpo:
                        offset = self._phase_offset(micro, cfg.dpo.batch_size)
                        loss, margin = self.dpo_loss(next(dpo_iter), g, offset)
                        self._backward(loss)
                        parts.append((loss.detach().reshape(1), margin))
                    else:
                        offset = self._phase_offset(micro, cfg.data.batch_size)
                        loss, per, phases, task_ids = self.sft_loss(next(sft_iter), g, offset)
                        self._backward(loss)
                        parts.append((per, phases, task_ids))
            joined = [torch.cat(column) for column in zip(*parts)]
            logs = self._dpo_logs(*joined) if dpo else self._sft_logs(*joined)
            samples = (cfg.dpo.batch_size if dpo else cfg.data.batch_size) * accum * n
            if dpo:
                self.state.dpo_samples += samples
            else:
                self.state.sft_samples += samples
            self.state.step += 1
            if self.ema is not None:
                self.ema.update(self.acc.unwrap_model(self.model))
            logs["lr"] = self.scheduler.get_last_lr()[0]
            if self.grad_norm is not None:
                logs["grad_norm"] = self.grad_norm
            seconds = time.perf_counter() - started
            logs["perf/step_seconds"] = seconds
            logs["perf/samples_per_second"] = samples / seconds
            history.append({"step": self.state.step, **logs})
            if self.state.step % cfg.log_every == 0 or self.state.step == max_steps:
                self.acc.log(logs, step=self.state.step)
            if self.state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.validation.every_n_steps and self.state.step % cfg.validation.every_n_steps == 0:
                self.validate()
            if on_step_end is not None:
                on_step_end(self.state.step, logs)
            if should_stop is not None and self._any_process(should_stop()):
                break
        return history

    def validate(self) -> dict:
        """Validation videos and ``val/loss`` on the main process (the EMA weights when enabled);
        the other processes wait."""
        result = {}
        if self.acc.is_main_process and self.validator is not None:
            model = self.acc.unwrap_model(self.model)
            with self.ema.swapped_in(model) if self.ema is not None else contextlib.nullcontext():
                folder = self.out / "validation"
                trackers = [t for t in self.acc.trackers if getattr(t, "name", "") == "tensorboard"]
                result = self.validator.run(model, self.state.step, folder, self.acc.device, trackers)
                loss = self.validator.loss(lambda batch, g: self.sft_loss(batch, g, model=model))
            self.acc.log({"val/loss": loss}, step=self.state.step)
            log.info("validation at step %d: loss %.4f, written %s", self.state.step, loss, list(result.values()))
        self.acc.wait_for_everyone()
        return result

    def finish(self) -> None:
        self.acc.end_training()


def _ignore_ctrl_c(worker_id: int) -> None:
    """A terminal's Ctrl-C reaches the data workers too; they keep serving batches until the main
    process has finished its step and saved (it shuts them down itself)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoints/checkpoint-<step>`` folders that were completely written, oldest first. Anything
    else there (``checkpoint-5.bak``, a ``.partial`` save, a user's notes) is not a checkpoint."""
    folder = Path(output_dir) / "checkpoints"
    found = []
    for path in folder.glob(CHECKPOINT_PREFIX + "*"):
        step = path.name[len(CHECKPOINT_PREFIX) :]
        if step.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]
