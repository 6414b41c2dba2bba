"""Time and peak host memory of load_transformer, per compute / storage dtype.

    python benchmarks/checkpoint_load.py                       # full-size preview, random bf16 file
    python benchmarks/checkpoint_load.py --layers 4 --file-dtype fp32 --device cuda
    python benchmarks/checkpoint_load.py --weights echomimicv3-flash-pro.safetensors

Each load runs in a fresh process so peaks do not mix. Columns: file size, peak resident memory
of the load above the process's baseline after imports (VmHWM; memory-mapped file pages count
here too), anonymous memory still held after the load (RssAnon: the copies we made), and the
CUDA peak. "About one copy" means peak RSS close to the larger of file and model size.
Random weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_core.checkpoints.files import save_state_dict  # noqa: E402
from echomimic_core.checkpoints.transformer import _build_on_meta, load_transformer  # noqa: E402
from echomimic_core.config import TransformerConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.float8_e4m3fn}


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def write_random_file(config: TransformerConfig, dtype: torch.dtype, path: Path) -> None:
    torch.manual_seed(0)
    shapes = _build_on_meta(config, "sdpa").state_dict()
    state = {k: (torch.randn(v.shape) * 0.02).to(dtype) for k, v in shapes.items()}
    save_state_dict(state, path, metadata={"echomimic_config": json.dumps(config.to_dict())})


def child(args) -> None:
    """One load in this process; prints a JSON line of measurements."""
    base_rss = _proc_kib("VmRSS")
    device = torch.device(args.device)
    start = time.perf_counter()
    model = load_transformer(
        args.weights,
        dtype=DTYPES[args.dtype],
        storage_dtype=DTYPES[args.storage] if args.storage else None,
        device=device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "model_gib": model_bytes / 2**30,
                "peak_rss_gib": (_proc_kib("VmHWM") - base_rss) / 2**20,
                "anon_gib": _proc_kib("RssAnon") / 2**20,
                "cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else float("nan"),
            }
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("preview", "flash"), default="preview")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--file-dtype", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=["bf16:", "bf16:fp8", "fp32:"],
        help="compute:storage pairs of fp32/bf16/fp16 (storage also fp8; empty = compute dtype), "
        "e.g. bf16: bf16:fp8 fp32:",
    )
    parser.add_argument("--weights", type=Path, help="a real transformer file instead of a random one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    parser.add_argument("--storage", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    for run in args.runs:  # before writing a random file of gigabytes
        compute, _, storage = run.partition(":")
        if compute not in DTYPES or compute == "fp8" or (storage and storage not in DTYPES):
            parser.error(
                f"--runs {run!r}: expected COMPUTE:STORAGE with COMPUTE one of fp32/bf16/fp16 and "
                f"STORAGE one of {'/'.join(DTYPES)} or empty, e.g. bf16:fp8"
            )

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            config = TransformerConfig.preset(args.preset)
            config.num_layers = args.layers
            weights = Path(tmp) / "random.safetensors"
            write_random_file(config, DTYPES[args.file_dtype], weights)
        size = sum(p.stat().st_size for p in ([weights] if weights.is_file() else weights.iterdir())) / 2**30
        print(f"file {weights.name}: {size:.2f} GiB, device {args.device}")
        print(
            f"{'compute':>8} {'storage':>8} {'seconds':>8} {'model GiB':>10} {'peak RSS GiB':>13} "
            f"{'anon GiB':>9} {'CUDA peak GiB':>14}"
        )
        for run in args.runs:
            compute, _, storage = run.partition(":")
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--weights",
                    str(weights),
                    "--device",
                    args.device,
                    "--dtype",
                    compute,
                    "--storage",
                    storage,
                ],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:  # the child's own error, not a CalledProcessError without it
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"the {run} load failed (exit code {out.returncode}); its error is above")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{compute:>8} {storage or compute:>8} {r['seconds']:8.2f} {r['model_gib']:10.2f} "
                f"{r['peak_rss_gib']:13.2f} {r['anon_gib']:9.2f} {r['cuda_peak_gib']:14.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
