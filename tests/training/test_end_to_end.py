"""A whole training round on the tiny demo installation: raw footage -> prepare -> preprocess (the
real encoder loaders) -> SFT -> DPO pairs from the SFT checkpoint -> DPO -> validation video ->
the node pack's model loader."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.io import wavfile

from echomimic_core import media
from echomimic_core.demo import speech_like
from nodes import comfy_services as cs
from training import pairs, preprocess
from training.prepare import PrepareConfig, prepare
from training.synthetic import draw_face, write_talking_video
from training.trackers import read_metrics
from training.train import run

FRAMES, SIZE = 9, 64


def _preprocess(files, manifest, out, kind="sft"):
    args = ["--manifest", str(manifest), "--out", str(out), "--kind", kind, "--frames", str(FRAMES)]
    args += ["--height", str(SIZE), "--width", str(SIZE), "--device", "cpu", "--vae", str(files.vae)]
    args += ["--text-encoder", str(files.text_encoder), "--clip", str(files.image_encoder)]
    args += ["--audio-encoder", str(files.audio_encoder), "--audio-kind", "preview"]
    assert preprocess.main(args) == 0


@pytest.mark.slow
def test_prepare_preprocess_sft_pairs_dpo_validate_and_load(tmp_path, demo_model_files, monkeypatch):
    files = demo_model_files
    # 1. raw footage -> windows
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(2):
        write_talking_video(raw / f"speaker{i}.mp4", 2 * FRAMES + 2, 25.0, (192, 160), seed=i)
    cfg = PrepareConfig(frames=FRAMES, size=(SIZE, SIZE), detector="haar", detect_every=3)
    summary = prepare(raw, tmp_path / "data" / "clips.jsonl", cfg, progress=False)
    assert summary["windows"] == 4, summary

    # 2. preprocess with the node pack's encoders (demo weights)
    _preprocess(files, tmp_path / "data" / "clips.jsonl", tmp_path / "cache_sft")

    # 3. SFT from the demo transformer
    config = {
        "output_dir": str(tmp_path / "run"),
        "mixed_precision": "no",
        "checkpoint_every": 2,
        "log_every": 1,
        "model": {"preset": "preview", "checkpoint": str(files.transformer), "gradient_checkpointing": False},
        "data": {"sft_dir": str(tmp_path / "cache_sft"), "batch_size": 2, "num_workers": 0},
        "dpo": {"every_n_steps": 0},
        "optim": {"max_steps": 2, "warmup_steps": 0},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    sft = run(tmp_path / "sft.yaml")
    checkpoint = sft.checkpoints()[-1] / "transformer.safetensors"
    assert checkpoint.is_file()

    # 4. candidates from the SFT checkpoint, scored, paired, preprocessed as DPO pairs
    image, _ = draw_face((SIZE, SIZE), scale=0.45)
    Image.fromarray(image).save(tmp_path / "ref.png")
    wavfile.write(tmp_path / "ref.wav", 16000, (speech_like(0.5) * 32767).astype(np.int16))
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"id": "r0", "image": "ref.png", "audio": "ref.wav", "caption": "a person talking"}))
    gen = ["generate", str(refs), "--out", str(tmp_path / "gen"), "--demo", "--transformer", str(checkpoint)]
    assert pairs.main(gen + ["--candidates", "2", "--steps", "2", "--max-frames", str(FRAMES), "--device", "cpu"]) == 0
    pair_manifest = tmp_path / "data" / "pairs.jsonl"
    assert pairs.main(["pair", str(tmp_path / "gen" / "candidates.jsonl"), "--out", str(pair_manifest)]) == 0
    _preprocess(files, pair_manifest, tmp_path / "cache_dpo", kind="dpo")

    # 5. DPO (resuming the SFT run) with a validation video at the end
    config["dpo"] = {"every_n_steps": 1, "beta": 500.0}
    config["data"]["dpo_dir"] = str(tmp_path / "cache_dpo")
    config["optim"]["max_steps"] = 4
    config["validation"] = {
        "every_n_steps": 4,
        "cache_dir": str(tmp_path / "cache_sft"),
        "vae": str(files.vae),
        "max_items": 1,
        "steps": 2,
    }
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(config))
    dpo = run(tmp_path / "dpo.yaml")
    assert dpo.state.step == 4 and dpo.state.dpo_samples == 2
    rows = read_metrics(tmp_path / "run" / "logs" / "train" / "metrics.jsonl")
    assert any("dpo/implicit_accuracy" in r for r in rows) and any("val/loss" in r for r in rows)
    videos = list((tmp_path / "run" / "validation" / "step-4").glob("*.mp4"))
    assert len(videos) == 1 and media.load_video(videos[0], with_audio=False).frames.shape[0] == FRAMES

    # 6. the final checkpoint in the node pack's model loader
    for name in ("folder_paths", "comfy.utils", "comfy.model_management"):
        monkeypatch.setattr(cs, "_missing", cs._missing | {name})
    monkeypatch.setenv("ECHOMIMIC_MODELS_DIR", str(tmp_path / "models" / "echomimic"))
    (tmp_path / "models" / "echomimic").mkdir(parents=True)
    shutil.copy(
        dpo.checkpoints()[-1] / "transformer.safetensors", tmp_path / "models" / "echomimic" / "trained.safetensors"
    )
    from nodes.loaders import EchoMimicModelLoader

    (loaded,) = EchoMimicModelLoader().load("trained.safetensors", "fp32", "default", "sdpa", "auto")
    trained = dpo.acc.unwrap_model(dpo.model).state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
