"""Audio nodes: frame counts from an AUDIO and the encoder's features for exactly those frames."""

import math

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from echomimic_core.encoders.audio import AudioEncoder
from echomimic_core.media import prepare_audio
from nodes import audio as audio_nodes


def _audio(seconds, rate=44100, channels=2):
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.3 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t))
    return {"waveform": wave.repeat(1, channels, 1), "sample_rate": rate}


def test_audio_frames():
    # floor(duration * fps), capped; no 4k+1 rounding (the pipeline trims its last chunk instead)
    assert audio_nodes.EchoMimicAudioFrames().count(_audio(2.0), 25.0, 0) == (50, 50 / 25.0)
    assert audio_nodes.EchoMimicAudioFrames().count(_audio(2.0), 25.0, 30)[0] == 30
    with pytest.raises(ValueError, match="less than one frame"):
        audio_nodes.EchoMimicAudioFrames().count(_audio(0.02), 25.0, 0)
    with pytest.raises(ValueError, match="AUDIO dict"):
        audio_nodes.EchoMimicAudioFrames().count(torch.zeros(3), 25.0, 0)


def test_audio_encode_flash_windows():
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )
    encoder = AudioEncoder(Wav2Vec2Model(config).eval(), "flash", loudness_norm=False)
    clip = _audio(1.0)
    embeds, frames = audio_nodes.EchoMimicAudioEncode().encode(encoder, clip, 25.0, 0)
    assert frames == 25 and embeds["num_frames"] == 25 and embeds["kind"] == "flash"
    assert embeds["features"].shape == (1, 25, 5, 2, 64)
    direct = encoder.features_for_video(prepare_audio(clip["waveform"][0], 44100), 25, 25.0)
    assert torch.equal(embeds["features"], direct.float())
    # the sampler hands back the user's own audio (rate, channels), not the 16 kHz mono the encoder read
    assert embeds["audio"]["sample_rate"] == 44100 and torch.equal(embeds["audio"]["waveform"], clip["waveform"])


def test_audio_encode_with_context_makes_features_per_chunk():
    from echomimic_core.audio_windows import WindowedAudioFeatures, slice_features

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=16,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    encoder = AudioEncoder(Wav2Vec2Model(config).eval(), "preview")
    clip = _audio(1.0)
    embeds, frames = audio_nodes.EchoMimicAudioEncode().encode(encoder, clip, 25.0, 0, context_seconds=10.0)
    assert isinstance(embeds["features"], WindowedAudioFeatures) and embeds["features"].num_frames == frames == 25
    # a clip shorter than a chunk plus twice the context is the whole-clip pass, chunk by chunk
    direct = encoder.features_for_video(prepare_audio(clip["waveform"][0], 44100), 25, 25.0)
    assert torch.equal(embeds["features"].features(5, 9), slice_features(direct, 5, 9, "preview"))
