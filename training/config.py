"""Training configuration: one dataclass tree, loaded from YAML or JSON.

    python -m training.train --config cfg.yaml

Every field has a default, so a config file only names what it changes. Unknown keys are an
error (a typo must not silently train with the default).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echomimic_core.settings import PAPER_TASKS, GenerationSettings

PHASES = ("early", "middle", "late")
# Names configs used before training took the core's names.
LEGACY_TASK_NAMES = {"mouth": "lipsync"}
MODALITIES = ("text", "image", "audio")
# What a dropped image zeroes: the CLIP tokens of the decoupled cross-attention only (the paper), or
# also the inpainting input y (reference frame + task mask; the behaviour before the fix).
IMAGE_DROP_TARGETS = ("clip", "clip_and_y")


@dataclass
class ModelConfig:
    # A TransformerConfig preset name (e.g. "preview", "flash", "tiny_preview") used when no
    # checkpoint is given, or to build the model a Wan2.1-Fun-InP checkpoint is loaded into.
    preset: str = "preview"
    # EchoMimicV3 checkpoint (all keys present) or Wan2.1-Fun-InP checkpoint (audio layers
    # missing: they are initialised as upstream does). None = random init (tests only).
    checkpoint: str | None = None
    gradient_checkpointing: bool = True


@dataclass
class DataConfig:
    # Folder written by `python -m training.preprocess` (shards + index.json + nulls).
    sft_dir: str = "data/cache"
    # Folder of preprocessed DPO pairs; None disables DPO.
    dpo_dir: str | None = None
    batch_size: int = 3
    num_workers: int = 2


@dataclass
class FlowConfig:
    # Wan's timestep shift: sigma' = shift*sigma / (1 + (shift-1)*sigma).
    shift: float = 5.0
    num_train_timesteps: int = 1000
    # Phase boundaries on the 0..1000 timestep axis, high t = noisy = early:
    # early (b1, 1000], middle (b0, b1], late [0, b0].
    phase_boundaries: tuple[float, float] = (333.0, 666.0)


@dataclass
class DropConfig:
    # Phase-specific modality drop (the paper's training strategy).
    phase_drop: bool = True
    # Late phase: probability of dropping two modalities instead of one.
    late_two_prob: float = 0.5
    # Early phase: probability of dropping the CLIP image tokens, and the audio. Inference feeds the
    # CLIP image at every step, so the early phase must also see it kept (below 1); audio stays
    # dropped early (the paper's text-led early phase; audio guidance extrapolates from that).
    early_image_prob: float = 0.5
    early_audio_prob: float = 1.0
    # "clip": a dropped image zeroes the CLIP tokens only and y (reference frame + task mask) is
    # always kept, as at inference; "clip_and_y": also zero y (the behaviour before this option).
    image_drop: str = "clip"
    # Classifier-free dropout applied on top, per sample, so inference guidance has an
    # unconditional branch to extrapolate from.
    cfg_text: float = 0.1
    cfg_audio: float = 0.1
    cfg_all: float = 0.05


@dataclass
class TaskConfig:
    # Relative sampling weights of the inpainting tasks; "lipsync" falls back to "first_frame"
    # for clips without a mouth box.
    ratios: dict[str, float] = field(default_factory=lambda: {"first_frame": 0.6, "first_last": 0.2, "lipsync": 0.2})

    def __post_init__(self):
        self.ratios = rename_legacy_tasks(self.ratios, "tasks.ratios")


@dataclass
class DPOConfig:
    # Every N-th optimizer step is a DPO step (0 = SFT only).
    every_n_steps: int = 4
    # Phase-in ("incrementally introduce" DPO, as the paper does): SFT only before start_step, then
    # the DPO share grows linearly over ramp_steps to one step in every_n_steps (0 = at once).
    start_step: int = 0
    ramp_steps: int = 0
    beta: float = 500.0
    batch_size: int = 1
    # The frozen reference of full fine-tuning: a copy stored in "bf16" (half the memory; its
    # predictions still run under the step's autocast) or "fp32". With LoRA the reference is the
    # model itself with its adapters off (no copy) whatever this says.
    reference_dtype: str = "bf16"


REFERENCE_DTYPES = ("bf16", "fp32")


@dataclass
class EMAConfig:
    # An exponential moving average of the trainable weights, saved beside every checkpoint
    # (transformer_ema.safetensors / lora_ema.safetensors) and used by validation when enabled.
    enabled: bool = False
    decay: float = 0.999


@dataclass
class ValidationConfig:
    # Every N optimizer steps (0 = never): sample the held-out clips of cache_dir (a
    # training.preprocess folder) with the inference pipeline, write videos to
    # <output_dir>/validation/step-N/ and TensorBoard, and log val/loss.
    every_n_steps: int = 0
    cache_dir: str | None = None
    vae: str | None = None  # VAE file to decode the videos (without it the latents are saved)
    max_items: int = 2
    steps: int = 20  # sampling steps
    fps: float = GenerationSettings.fps  # the rate the clips were preprocessed at


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q", "k", "v", "o", "k_img", "v_img", "k_audio", "v_audio", "ffn.0", "ffn.2"]
    )


@dataclass
class OptimConfig:
    lr: float = 1e-4  # the paper's learning rate
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 100
    max_steps: int = 10000
    gradient_accumulation_steps: int = 1


@dataclass
class TrainConfig:
    output_dir: str = "runs/echomimic"
    seed: int = 42
    # "no" | "bf16" | "fp16"; accelerate's own setting from the launch config wins if given.
    mixed_precision: str = "bf16"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    # "auto" = tensorboard when installed, plus a JSONL file that is always written.
    trackers: list[str] = field(default_factory=lambda: ["auto"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def validate(self) -> TrainConfig:
        b0, b1 = self.flow.phase_boundaries
        if not 0 < b0 < b1 < self.flow.num_train_timesteps:
            raise ValueError(
                f"flow.phase_boundaries must satisfy 0 < b0 < b1 < "
                f"{self.flow.num_train_timesteps}, got {self.flow.phase_boundaries}."
            )
        unknown = set(self.tasks.ratios) - set(PAPER_TASKS)
        if unknown or not any(v > 0 for v in self.tasks.ratios.values()):
            raise ValueError(
                f"tasks.ratios: expected positive weights for some of {PAPER_TASKS}, got {self.tasks.ratios}."
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no/bf16/fp16, got {self.mixed_precision!r}.")
        positive = {
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
            "data.batch_size": self.data.batch_size,
            "dpo.batch_size": self.dpo.batch_size,
            "optim.max_steps": self.optim.max_steps,
            "optim.gradient_accumulation_steps": self.optim.gradient_accumulation_steps,
            "lora.rank": self.lora.rank,
        }
        for name, value in positive.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}.")
        if self.dpo.every_n_steps < 0:
            raise ValueError(f"dpo.every_n_steps must be 0 (no DPO) or more, got {self.dpo.every_n_steps}.")
        if self.dpo.reference_dtype not in REFERENCE_DTYPES:
            raise ValueError(
                f"dpo.reference_dtype must be one of {REFERENCE_DTYPES}, got {self.dpo.reference_dtype!r}."
            )
        if not 0.0 < self.ema.decay < 1.0:
            raise ValueError(f"ema.decay must lie in (0, 1), got {self.ema.decay}.")
        v = self.validation
        if v.every_n_steps < 0 or v.max_items < 1 or v.steps < 1:
            raise ValueError(
                f"validation: every_n_steps >= 0, max_items >= 1 and steps >= 1 expected, got "
                f"{v.every_n_steps}, {v.max_items}, {v.steps}."
            )
        if v.every_n_steps and not v.cache_dir:
            raise ValueError("validation.every_n_steps is set but validation.cache_dir (held-out clips) is not.")
        for name in ("start_step", "ramp_steps"):
            if getattr(self.dpo, name) < 0:
                raise ValueError(f"dpo.{name} must be 0 or more, got {getattr(self.dpo, name)}.")
        if self.drop.image_drop not in IMAGE_DROP_TARGETS:
            raise ValueError(f"drop.image_drop must be one of {IMAGE_DROP_TARGETS}, got {self.drop.image_drop!r}.")
        for name in ("cfg_text", "cfg_audio", "cfg_all", "late_two_prob", "early_image_prob", "early_audio_prob"):
            p = getattr(self.drop, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"drop.{name} is a probability, got {p}.")
        return self


def rename_legacy_tasks(ratios: dict[str, float], where: str) -> dict[str, float]:
    """Old task names -> the core's, with a FutureWarning (configs written before the rename)."""
    renamed = {}
    for name, weight in ratios.items():
        new = LEGACY_TASK_NAMES.get(name, name)
        if new != name:
            warnings.warn(
                f"{where}: task {name!r} is now called {new!r} (the core's name); "
                f"rename it in the config, the old name will stop working.",
                FutureWarning,
                stacklevel=3,
            )
            if new in ratios:
                raise ValueError(f"{where}: names both {name!r} and its new name {new!r}; keep only {new!r}.")
        renamed[new] = weight
    return renamed


_TYPE_NAMES = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}


def _typed(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against the field's type ``hint``; ValueError naming ``key``, the expected
    type and what was found. A number written as text that YAML 1.1 does not read as one
    (``lr: 1e-4``; YAML 1.2 and JSON do) is taken as the number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _typed(value, hint, key)
    if origin in (tuple, list):
        items = args[:1] * len(value) if origin is list or args[-1:] == (Ellipsis,) else args
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            size = f"{len(items)} " if origin is tuple else ""
            raise ValueError(f"{key}: expected a list of {size}values, found {value!r}.")
        return origin(_typed(v, h, f"{key}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, found {value!r}.")
        return {k: _typed(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    expected = (float, int) if hint is float else hint
    if isinstance(value, expected) and not (isinstance(value, bool) and hint is not bool):
        return value
    raise ValueError(f"{key}: expected {_TYPE_NAMES.get(hint, hint)}, found {value!r} ({type(value).__name__}).")


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping of keys, found {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hints_text = "; ".join(
            f"{key!r}: did you mean {close[0]!r}?"
            for key in unknown
            if (close := difflib.get_close_matches(key, fields, 1))
        )
        raise ValueError(
            f"{where or 'config'}: unknown keys {unknown}{' (' + hints_text + ')' if hints_text else ''}; "
            f"known keys are {sorted(fields)}."
        )
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        key = f"{where}.{name}".lstrip(".")
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        else:
            kwargs[name] = _typed(value, hints[name], key)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "").validate()


def load_config(path: str | Path) -> TrainConfig:
    """Read a TrainConfig from ``.yaml``/``.yml`` or ``.json``; every problem is a ValueError (or
    FileNotFoundError) naming the file and, where it has one, the line or the key."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: expected a .yaml, .yml or .json config file.")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file.")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}, column {e.colno}: {e.msg}.") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            tabs = " (YAML indents with spaces, not tabs)" if "\t" in text else ""
            raise ValueError(f"{path}: {where}{getattr(e, 'problem', None) or e}{tabs}.") from None
    try:
        return config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
