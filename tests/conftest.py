"""Shared fixtures: where the upstream reference data lives, and deterministic torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The upstream parity fixtures ship in the repository; ECHOMIMIC_REFERENCE points the suite at another copy.
REFERENCE_DIR = Path(os.environ.get("ECHOMIMIC_REFERENCE", REPO / "tests" / "data" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.fail(
            f"reference data not found at {REFERENCE_DIR}: it ships in tests/data/reference; "
            "unset ECHOMIMIC_REFERENCE or point it at a folder of fixtures."
        )
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def object_info_path() -> Path:
    """ComfyUI 0.8's core node schemas, as the pack ships them for workflows.validate."""
    from workflows.validate import DEFAULT_OBJECT_INFO

    return DEFAULT_OBJECT_INFO


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def demo_model_files(tmp_path_factory):
    """The tiny demo installation (every model file, ComfyUI layout), written once per session."""
    from echomimic_core.demo import write_demo_models

    return write_demo_models(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="session")
def demo_models(demo_model_files):
    from echomimic_core.model_files import load_models

    return load_models(demo_model_files, dtype="float32")


@pytest.fixture(scope="session")
def torchrun():
    """Runs ``torchrun --standalone --nproc_per_node N ARGS`` (a script and its arguments, or ``-m``
    and a module's); gloo on the CPU, a free port. Fails the test with the workers' output if the
    launch fails."""

    def run(nprocs: int, *args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}"]
        # one thread per worker: the workers share the machine's cores (and runs compare bit for bit)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path]),
            **(env or {}),
        }
        done = subprocess.run(
            [*command, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
        if done.returncode != 0:
            pytest.fail(f"torchrun x{nprocs} {args} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
        return done

    return run


class ComfyVAEStandIn:
    """ComfyUI's VAE contract (comfy.sd.VAE), backed by our WanVAE: IMAGE [T, H, W, 3] 0..1 in, raw
    latents out; decode -> [1, T, H, W, 3]; the Wan model's encoder/decoder under first_stage_model."""

    def __init__(self, wan):
        self.wan, self.latent_channels, self.calls = wan, 16, []
        self.first_stage_model = wan.model

    # diffusers' own forward, which runs the encoder once per chunk and the decoder once per latent
    # frame as ComfyUI's does (WanVAE runs the weights frame by frame instead)
    @torch.no_grad()
    def encode(self, pixels):
        self.calls.append("encode")
        video = pixels.movedim(-1, 0)[None] * 2 - 1  # [T, H, W, 3] -> [1, 3, T, H, W]
        return self.wan.model.encode(video.to(self.wan.dtype)).latent_dist.mode().float()

    @torch.no_grad()
    def decode(self, raw):
        self.calls.append("decode")
        video = self.wan.model.decode(raw.to(self.wan.dtype)).sample.float()
        return ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)


@pytest.fixture
def comfy_vae():
    """Wraps a WanVAE as ComfyUI's Load VAE output (tests run without ComfyUI)."""
    return ComfyVAEStandIn
