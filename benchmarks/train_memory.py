"""Training memory per GPU for the real 1.3B configurations, counted on the meta device (no weights,
no GPU): parameters, then weights + gradients + AdamW state per distribution strategy, the DPO
reference, and the activations gradient checkpointing keeps.

    python benchmarks/train_memory.py [--frames 113 --height 480 --width 832 --gpus 8 --batch 1]

Parameter and state bytes are exact for the model as built (fp32 master weights, fp32 gradients,
two fp32 AdamW moments). Activations are an estimate: with every block checkpointed, each block's
input (float32, tokens x dim) is kept, plus one block's recomputation at a time (bf16 q/k/v/o,
the FFN's hidden layer, float32 residual copies); attention through SDPA/flash keeps no score matrix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_core.config import TransformerConfig  # noqa: E402
from echomimic_core.model.transformer import EchoMimicTransformer  # noqa: E402
from echomimic_core.vae_frames import latent_frames  # noqa: E402
from training.preprocess import DEFAULT_FRAMES  # noqa: E402

GB = 1e9


def parameter_count(preset: str) -> tuple[int, int]:
    """(all parameters, those of the audio path) of a preset, built on the meta device."""
    with torch.device("meta"):
        model = EchoMimicTransformer(TransformerConfig.preset(preset))
    total = sum(p.numel() for p in model.parameters())
    audio = sum(p.numel() for n, p in model.named_parameters() if "audio" in n)
    return total, audio


def tokens(config: TransformerConfig, frames: int, height: int, width: int) -> int:
    """Tokens of one clip: latent frames x the token grid of a frame."""
    stride = config.token_stride
    return latent_frames(frames) * (height // stride) * (width // stride)


def activation_bytes(config: TransformerConfig, n_tokens: int) -> float:
    """Per sample: every block's float32 input kept by checkpointing, plus one block recomputed."""
    kept = config.num_layers * n_tokens * config.dim * 4
    block = n_tokens * (8 * config.dim * 2 + config.ffn_dim * 2 * 2 + 4 * config.dim * 4)
    return kept + block


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--batch", type=int, default=1, help="samples per GPU")
    args = p.parse_args(argv)
    n = args.gpus
    n_tokens = tokens(TransformerConfig.preset("preview"), args.frames, args.height, args.width)
    print(
        f"clip {args.frames} frames {args.height}x{args.width}: {n_tokens} tokens; {n} GPUs; batch {args.batch}/GPU\n"
    )
    print(
        f"{'preset':8} {'params':>8} {'audio':>7} | {'strategy':22} {'states GB':>9} {'+ref fp32':>9} {'+ref bf16':>9} {'act GB':>7} {'total (bf16 ref)':>16}"
    )
    for preset in ("preview", "flash"):
        total, audio = parameter_count(preset)
        config = TransformerConfig.preset(preset)
        act = activation_bytes(config, n_tokens) * args.batch / GB
        strategies = {
            "one GPU / DDP": 16 * total,
            f"ZeRO-2 over {n}": 4 * total + 12 * total / n,
            f"ZeRO-3 / FSDP over {n}": 16 * total / n,
            "LoRA (base fp32)": 4 * total,
        }
        for name, states in strategies.items():
            ref32 = 0 if name.startswith("LoRA") else 4 * total
            ref16 = 0 if name.startswith("LoRA") else 2 * total
            print(
                f"{preset:8} {total / 1e9:7.3f}B {audio / 1e6:6.1f}M | {name:22} {states / GB:9.1f} "
                f"{ref32 / GB:9.1f} {ref16 / GB:9.1f} {act:7.1f} {(states + ref16) / GB + act:16.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
