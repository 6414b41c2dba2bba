"""Loader nodes: files listed from the model folders, checked before loading, loaded by the core."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from echomimic_core.checkpoints.transformer import save_transformer
from echomimic_core.config import TransformerConfig
from echomimic_core.model.transformer import EchoMimicTransformer
from echomimic_core.verify_reference import relative_error
from nodes import loaders


def test_model_loader_lists_validates_and_loads(folders):
    config = TransformerConfig.preset("tiny_preview")
    model = EchoMimicTransformer(config)
    (folders / "models" / "echomimic" / "tiny").mkdir(parents=True)
    save_transformer(model, folders / "models" / "echomimic" / "tiny" / "m.safetensors")

    choices = loaders.EchoMimicModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert choices == ["tiny/m.safetensors"]
    assert "not found" in loaders.EchoMimicModelLoader.VALIDATE_INPUTS("other.safetensors")
    assert loaders.EchoMimicModelLoader.VALIDATE_INPUTS("tiny/m.safetensors") is True

    (loaded,) = loaders.EchoMimicModelLoader().load("tiny/m.safetensors", "fp32", "default", "sdpa", "auto")
    assert loaded.config == config
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    (fp8,) = loaders.EchoMimicModelLoader().load("tiny/m.safetensors", "fp32", "fp8_e4m3fn", "sdpa", "auto")
    assert fp8.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn


def test_model_loader_also_reads_diffusion_models_and_names_both_folders(folders, monkeypatch):
    from echomimic_core.checkpoints import transformer as transformer_files

    config = TransformerConfig.preset("tiny_preview")
    (folders / "models" / "diffusion_models").mkdir(parents=True)
    save_transformer(EchoMimicTransformer(config), folders / "models" / "diffusion_models" / "d.safetensors")
    assert loaders.EchoMimicModelLoader.INPUT_TYPES()["required"]["model"][0] == ["d.safetensors"]
    assert loaders.EchoMimicModelLoader.VALIDATE_INPUTS("d.safetensors") is True
    message = loaders.EchoMimicModelLoader.VALIDATE_INPUTS("x.safetensors")
    assert "'echomimic' folder" in message and "'diffusion_models' folder" in message
    (loaded,) = loaders.EchoMimicModelLoader().load("d.safetensors", "fp32", "default", "sdpa", "auto", 1)
    assert loaded.config == config and loaded.echomimic_block_swap == 1
    with monkeypatch.context() as m:  # refused from the header, before the weights load
        m.setattr(transformer_files, "load_transformer", lambda *a, **k: pytest.fail("loaded before the check"))
        with pytest.raises(ValueError, match=f"block swap 40: the transformer has {config.num_layers} blocks"):
            loaders.EchoMimicModelLoader().load("d.safetensors", "fp32", "default", "sdpa", "auto", 40)


def test_vae_loader_reproduces_the_upstream_latents(folders, reference_dir):
    data = load_file(str(reference_dir / "vae_tiny.safetensors"))
    (folders / "models" / "vae").mkdir(parents=True)
    save_file(
        {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")},
        str(folders / "models" / "vae" / "wan_tiny.safetensors"),
    )
    assert loaders.EchoMimicVAELoader.INPUT_TYPES()["required"]["vae"][0] == ["wan_tiny.safetensors"]
    (vae,) = loaders.EchoMimicVAELoader().load("wan_tiny.safetensors", "fp32")
    # the encoder is causal: the first 5 frames give the first 2 latent frames of the whole clip
    assert relative_error(vae.encode(data["input.video"][:, :, :5]), data["output.latent"][:, :, :2]) < 1e-4


def test_audio_encoder_loader(folders):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )
    (folders / "models" / "audio_encoders").mkdir(parents=True)
    save_file(Wav2Vec2Model(config).state_dict(), str(folders / "models" / "audio_encoders" / "w2v.safetensors"))
    (encoder,) = loaders.EchoMimicAudioEncoderLoader().load("w2v.safetensors", "flash", "fp32")
    assert encoder.kind == "flash" and encoder.num_layers == 2 and encoder.loudness_norm  # upstream's flash default
    (quiet,) = loaders.EchoMimicAudioEncoderLoader().load("w2v.safetensors", "flash", "fp32", "off")
    assert quiet.loudness_norm is False


@pytest.mark.parametrize(
    "cls,folder",
    [
        (loaders.EchoMimicTextEncoderLoader, "text_encoders"),
        (loaders.EchoMimicCLIPVisionLoader, "clip_vision"),
        (loaders.EchoMimicAudioEncoderLoader, "audio_encoders"),
    ],
)
def test_missing_files_are_reported_before_loading(folders, cls, folder):
    assert next(iter(cls.INPUT_TYPES()["required"].values()))[0] == []
    message = cls.VALIDATE_INPUTS("nothing.safetensors")
    assert folder in message and "ECHOMIMIC_MODELS_DIR" in message
    (folders / "models" / folder).mkdir(parents=True, exist_ok=True)
    (folders / "models" / folder / "present.safetensors").write_bytes(b"")
    assert cls.VALIDATE_INPUTS("present.safetensors") is True
