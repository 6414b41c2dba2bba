"""Time, weight memory and agreement of the umT5 / CLIP encoders per storage / compute dtype.

    python benchmarks/encoders_speed.py                     # full widths, 2 umT5 + 2 CLIP blocks, CPU
    python benchmarks/encoders_speed.py --layers 24 --device cuda

Random weights (nothing is downloaded). umT5 rows: storage dtype of the big matrices, compute
dtype, whether all 512 positions run (Wan) or only the prompt's, weight bytes, seconds per
prompt, and max relative error against float32 storage + float32 compute on 512 positions
(what upstream's preview scripts compute). Weight bytes scale linearly with --layers (the
full umT5-XXL has 24 blocks and a 256384-row token table; the table is shrunk here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import synchronize  # noqa: E402

from echomimic_core.encoders import image, text  # noqa: E402
from echomimic_core.verify_reference import relative_error  # noqa: E402


def _timed(fn, repeats: int, device: torch.device):
    fn()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    synchronize(device)
    return out, (time.perf_counter() - start) / repeats


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def bench_text(layers: int, tokens: int, repeats: int, device: torch.device) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(
        vocab_size=32000,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=layers,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    random_model = UMT5EncoderModel(cfg)
    state = {k: v.to(torch.bfloat16) for k, v in random_model.state_dict().items()}  # like the release
    del random_model
    ids = torch.randint(3, cfg.vocab_size, (1, text.TEXT_LEN))
    mask = torch.zeros_like(ids)
    mask[:, :tokens] = 1
    ids[:, tokens:] = 0
    reference = None
    print(f"umT5 ({layers} blocks, {tokens} prompt tokens, {device})")
    print(f"{'storage':>8} {'compute':>8} {'positions':>9} {'weights GiB':>11} {'s/prompt':>9} {'rel err':>9}")
    for storage, compute in (
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ):
        encoder = text.TextEncoder(text.build_model(state, storage, device, compute))
        for positions in (text.TEXT_LEN, tokens):
            out, seconds = _timed(lambda: encoder.forward_ids(ids[:, :positions], mask[:, :positions]), repeats, device)
            out = out[0, :tokens].float().cpu()
            reference = out if reference is None else reference
            print(
                f"{str(storage)[6:]:>8} {str(compute)[6:]:>8} {positions:>9} "
                f"{_bytes(encoder.model) / 2**30:>11.3f} {seconds:>9.3f} {relative_error(out, reference):>9.2e}"
            )


def bench_image(layers: int, repeats: int, device: torch.device) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=layers + 1,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
    )
    own = CLIPVisionModel(cfg)
    prefix = "" if hasattr(own, "vision_model") else "vision_model."
    state = {prefix + k: v for k, v in own.state_dict().items()}
    del own
    images = torch.rand(1, 3, 512, 512) * 2 - 1
    reference = None
    print(f"\nCLIP ViT-H/14 ({layers} of {layers + 1} blocks run, {device})")
    print(f"{'dtype':>8} {'weights GiB':>11} {'s/image':>9} {'rel err':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        encoder = image.ImageEncoder(image.build_model(state, dtype, device))
        out, seconds = _timed(lambda: encoder.encode(images), repeats, device)
        out = out.float().cpu()
        reference = out if reference is None else reference
        print(
            f"{str(dtype)[6:]:>8} {_bytes(encoder.model) / 2**30:>11.3f} {seconds:>9.3f} "
            f"{relative_error(out, reference):>9.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=40, help="real prompt length")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    bench_text(args.layers, args.tokens, args.repeats, device)
    bench_image(args.layers, args.repeats, device)


if __name__ == "__main__":
    main()
