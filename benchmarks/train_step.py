"""Time and peak GPU memory of SFT and DPO training steps, on synthetic data (no weights needed).

    python benchmarks/train_step.py --preset preview --frames 81 --height 512 --width 512 \
        --steps 6 --mixed-precision bf16 [--layers 30] [--lora] [--no-checkpointing]

Random weights of the preset's size (``--layers`` shrinks the depth for a quick look), a synthetic
cache made by ``training.synthetic``'s stand-in encoders at the given clip size, then the real
``Trainer`` (accelerate, AdamW, phase drop, DPO every 2nd step). The first two steps (one of each
kind) are warm-up and not timed. Prints one table row per step kind. Peak memory: the trained
model's weights plus the requested device's peak above them during training (CUDA allocator;
resident-memory growth on the CPU; see peak_memory.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import PeakMemory, synchronize  # noqa: E402

from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.model.transformer import EchoMimicTransformer  # noqa: E402
from training.config import config_from_dict  # noqa: E402
from training.dataset import CachedDataset  # noqa: E402
from training.model_init import zero_audio_attention  # noqa: E402
from training.preprocess import preprocess  # noqa: E402
from training.synthetic import sft_rows, synthetic_clip, tiny_encoders  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny_preview")
    p.add_argument("--layers", type=int, default=None, help="override num_layers")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16", "fp16"))
    p.add_argument("--lora", action="store_true")
    p.add_argument("--no-checkpointing", action="store_true")
    args = p.parse_args(argv)

    config = TransformerConfig.preset(args.preset)
    if args.layers:
        config = dataclasses.replace(config, num_layers=args.layers)
    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    encoders = tiny_encoders(config)
    kw = dict(frames=args.frames, size=(args.height, args.width), loader=synthetic_clip, progress=False)
    preprocess(sft_rows(4), work / "sft", encoders, **kw)
    pairs = [{"id": f"p{i}", "chosen": f"a{i}.mp4", "rejected": f"b{i}.mp4"} for i in range(2)]
    preprocess(pairs, work / "dpo", encoders, kind="dpo", **kw)

    train_cfg = config_from_dict(
        {
            "output_dir": str(work / "run"),
            "mixed_precision": args.mixed_precision,
            "log_every": 10**9,
            "checkpoint_every": 10**9,
            "model": {"gradient_checkpointing": not args.no_checkpointing},
            "data": {"batch_size": args.batch_size, "num_workers": 0},
            "dpo": {"every_n_steps": 2, "batch_size": args.batch_size},
            "lora": {"enabled": args.lora},
            "optim": {"warmup_steps": 0, "max_steps": args.steps + 2},
        }
    )
    model = EchoMimicTransformer(config)
    zero_audio_attention(model)
    sft = CachedDataset(work / "sft")
    dpo = CachedDataset(work / "dpo", kind="dpo")
    trainer = Trainer(train_cfg, model, sft, sft.null_text, dpo_data=dpo)
    device = trainer.acc.device

    times: dict[str, list[float]] = {"sft": [], "dpo": []}
    clock = [time.perf_counter()]

    def on_step_end(step, logs):
        synchronize(device)
        now = time.perf_counter()
        if step > 2:
            times["dpo" if "loss/dpo" in logs else "sft"].append(now - clock[0])
        clock[0] = now

    # the weights are on the device before training starts; optimizer state and activations appear
    # during it (RSS on the CPU: tensor tracking would slow the timed steps down)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    with PeakMemory(device, mode="rss") as memory:
        trainer.train(args.steps + 2, on_step_end=on_step_end)
    peak = (weights + memory.peak) / 2**30
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"device {trainer.acc.device}, {params:.1f}M params, {config.num_layers} layers, "
        f"{args.frames}x{args.height}x{args.width}, batch {args.batch_size}, {args.mixed_precision}, "
        f"checkpointing {'off' if args.no_checkpointing else 'on'}, lora {'on' if args.lora else 'off'}"
    )
    print(f"{'step':<6}{'n':>4}{'mean s':>10}{'min s':>10}{'peak GiB':>10}")
    for kind, values in times.items():
        if values:
            mean = sum(values) / len(values)
            print(f"{kind:<6}{len(values):>4}{mean:>10.3f}{min(values):>10.3f}{peak:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
