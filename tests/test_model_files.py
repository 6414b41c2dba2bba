from pathlib import Path

import pytest

from echomimic_core.model_files import find_model_files


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_upstream_release_layout(tmp_path):
    base = "Wan2.1-Fun-V1.1-1.3B-InP/"
    touch(
        tmp_path,
        base + "Wan2.1_VAE.pth",
        base + "models_t5_umt5-xxl-enc-bf16.pth",
        base + "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
        base + "google/umt5-xxl/spiece.model",
        "transformer/diffusion_pytorch_model.safetensors",
        "wav2vec2-base-960h/config.json",
    )
    files = find_model_files(tmp_path, variant="preview")
    assert files.missing() == []
    assert files.transformer.parent.name == "transformer"
    assert files.tokenizer.name == "umt5-xxl" and files.audio_encoder.name == "wav2vec2-base-960h"


def test_comfyui_layout_prefers_the_variants_audio_encoder(tmp_path):
    touch(
        tmp_path,
        "diffusion_models/echomimicv3_flash_bf16.safetensors",
        "vae/wan_2.1_vae.safetensors",
        "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "clip_vision/clip_vision_h.safetensors",
        "audio_encoders/wav2vec2-chinese-base_fp16.safetensors",
        "audio_encoders/wav2vec2_base_960h.safetensors",
        "vae/notes.txt",
    )
    files = find_model_files(tmp_path, variant="flash")
    assert files.missing() == []
    assert files.audio_encoder.name == "wav2vec2-chinese-base_fp16.safetensors"
    assert files.vae.name == "wan_2.1_vae.safetensors"
    assert files.tokenizer is None  # ComfyUI text-encoder files carry their tokenizer


def test_explicit_paths_win_and_are_checked(tmp_path):
    touch(tmp_path, "vae/wan_2.1_vae.safetensors", "mine.safetensors")
    files = find_model_files(tmp_path, vae=tmp_path / "mine.safetensors")
    assert files.vae.name == "mine.safetensors"
    assert "transformer" in files.missing()
    with pytest.raises(FileNotFoundError, match="--text-encoder"):
        find_model_files(tmp_path, text_encoder=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="models folder"):
        find_model_files(tmp_path / "absent")
