import json

import pytest

from echomimic_core.config import TransformerConfig


@pytest.mark.parametrize("name", ["preview", "flash", "whisper_tiny", "tiny_preview", "tiny_flash"])
def test_presets_round_trip_through_dict(name):
    config = TransformerConfig.preset(name)
    stored = json.loads(json.dumps(config.to_dict()))  # as checkpoint metadata would hold it
    assert TransformerConfig.from_dict(stored) == config


def test_preset_variants():
    assert TransformerConfig.preset("preview").variant == "preview"
    flash = TransformerConfig.preset("flash")
    assert flash.variant == "flash" and flash.audio_window_vf == 8
    assert TransformerConfig.preset("whisper_tiny").audio_in_dim == 384
    with pytest.raises(ValueError, match="unknown transformer preset 'huge'"):
        TransformerConfig.preset("huge")


def test_from_reference_meta_reads_shipped_meta(reference_dir):
    meta = json.loads((reference_dir / "tiny_meta.json").read_text())
    preview = TransformerConfig.from_reference_meta(meta, "preview")
    assert (preview.dim, preview.clip_dim, preview.audio_in_dim) == (96, 48, meta["preview"]["audio_in_dim"])
    flash = TransformerConfig.from_reference_meta(meta, "flash")
    assert (flash.audio_channels, flash.audio_blocks, flash.audio_context_tokens) == (
        meta["flash"]["channels"],
        meta["flash"]["blocks"],
        meta["flash"]["context_tokens"],
    )


def test_from_dict_ignores_upstream_only_keys_and_validates():
    upstream = {
        "_class_name": "WanTransformerAudioMask3DModel",
        "window_size": [-1, -1],
        "dim": 64,
        "num_heads": 4,
        "patch_size": [1, 2, 2],
    }
    assert TransformerConfig.from_dict(upstream).patch_size == (1, 2, 2)
    with pytest.raises(ValueError, match="model_type must be 'i2v'"):
        TransformerConfig(model_type="t2v")
    with pytest.raises(ValueError, match="variant"):
        TransformerConfig(variant="loud")


def test_files_written_before_the_variant_rename_still_load():
    # checkpoint metadata of earlier releases: "audio_variant" and the VAE stride as a field
    old = {**TransformerConfig.preset("flash").to_dict(), "vae_temporal_stride": 4}
    old["audio_variant"] = old.pop("variant")
    assert TransformerConfig.from_dict(old) == TransformerConfig.preset("flash")
    assert "audio_variant" not in TransformerConfig().to_dict()


def test_token_constants_are_the_configs():
    from echomimic_core import audio_alignment, face_region

    config = TransformerConfig()
    assert face_region.TOKEN_STRIDE == config.token_stride == 16
    assert audio_alignment.AUDIO_TOKENS_PER_FRAME == config.audio_tokens_per_frame
    assert audio_alignment.AUDIO_WINDOW == config.audio_window
