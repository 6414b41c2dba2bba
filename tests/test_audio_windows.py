"""Windowed audio encoding equals the whole-clip encoding where the receptive field allows."""

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from echomimic_core import audio_alignment as al
from echomimic_core.audio_windows import WindowedAudioFeatures, slice_features
from echomimic_core.config import AUDIO_TOKENS_PER_FRAME
from echomimic_core.encoders.audio import AudioEncoder

SR = al.SAMPLE_RATE


def wav2vec2(local: bool, norm: str = "group", seed: int = 0):
    """A tiny wav2vec2; ``local`` zeroes every attention output so the transformer's receptive field
    is the positional convolution's (16 tokens), which windows with enough context see whole."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=48,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        mask_time_prob=0.0,
    )
    model = Wav2Vec2Model(config).eval()
    with torch.no_grad():  # random GroupNorm affine, so the whole-clip statistics matter
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)
        if local:
            for layer in model.encoder.layers:
                layer.attention.out_proj.weight.zero_()
                layer.attention.out_proj.bias.zero_()
    return model


def speech_with_pauses(seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    voiced = (torch.sin(2 * torch.pi * 1.3 * t) > -0.3).float()
    return (0.4 * torch.sin(2 * torch.pi * 170 * t) * voiced + 0.02 * torch.randn(t.shape, generator=g)).float()


def chunked(source, num_frames, length=13, overlap=4):
    """Features of every frame gathered the way chunks ask for them (overlapping slices)."""
    per = 1 if source.kind == "flash" else AUDIO_TOKENS_PER_FRAME
    parts, start = [], 0
    while start < num_frames:
        piece = source.features(start, length)
        parts.append(piece[:, : per * (length - overlap if start + length < num_frames else length)])
        start += length - overlap
    return torch.cat(parts, 1)[:, : num_frames * per]


@pytest.mark.parametrize("kind", ["preview", "flash"])
def test_a_window_holding_the_whole_clip_is_the_whole_clip_pass_bit_for_bit(kind):
    encoder = AudioEncoder(wav2vec2(local=False), kind, loudness_norm=False)
    wav, frames = speech_with_pauses(1.6), 40
    whole = encoder.features_for_video(wav, frames, 25)
    source = WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=60)
    assert torch.equal(source.features(0, frames), whole)
    assert torch.equal(source.features(7, 9), slice_features(whole, 7, 9, kind))


def test_the_cnn_of_a_window_equals_the_whole_clips_cnn_with_whole_clip_statistics():
    model = wav2vec2(local=False)
    encoder = AudioEncoder(model, "preview")
    values = encoder.model_values(speech_with_pauses(3.0))
    with torch.no_grad():
        whole = model.feature_extractor(values[None]).transpose(1, 2)
    stats = encoder.cnn_norm_stats(values, block=SR // 3)  # statistics gathered in many blocks
    assert encoder.cnn_length(values.numel()) == whole.shape[1]
    for start, stop in ((0, 10), (37, 81), (whole.shape[1] - 5, whole.shape[1])):
        torch.testing.assert_close(
            encoder.cnn_features(values, start, stop, stats), whole[:, start:stop], atol=2e-5, rtol=1e-4
        )
    # the piece's own statistics would not do: the GroupNorm spans the whole clip
    local = encoder.cnn_norm_stats(values[: encoder.cnn_span(37, 81)[1]])
    assert not torch.allclose(encoder.cnn_features(values, 37, 81, local), whole[:, 37:81], atol=1e-3)


@pytest.mark.parametrize("kind,norm", [("preview", "group"), ("flash", "group"), ("preview", "layer")])
def test_windows_equal_the_whole_clip_when_the_receptive_field_fits_in_the_context(kind, norm):
    # attention off: the transformer sees 16 tokens (0.32 s at 50 Hz, 0.64 s at 25 fps flash tokens)
    encoder = AudioEncoder(wav2vec2(local=True, norm=norm), kind, loudness_norm=False)
    wav, frames = speech_with_pauses(4.0), 100
    whole = encoder.features_for_video(wav, frames, 25)
    source = WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=0.8)
    windowed = chunked(source, frames)
    assert windowed.shape == whole.shape
    torch.testing.assert_close(windowed, whole, atol=5e-5, rtol=1e-4)
    # and with too little context the positional convolution's edge shows
    short = chunked(WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=0.0), frames)
    assert not torch.allclose(short, whole, atol=1e-3)


def test_global_attention_makes_windows_approximate_and_context_narrows_the_gap():
    encoder = AudioEncoder(wav2vec2(local=False), "preview")
    wav, frames = speech_with_pauses(6.0), 150
    whole = encoder.features_for_video(wav, frames, 25)
    errors = []
    for context in (0.2, 1.0, 2.5):
        windowed = chunked(WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=context), frames)
        errors.append(float((windowed - whole).norm() / whole.norm()))
    assert errors[0] > errors[1] > errors[2] > 0


def test_whisper_windows_aligned_to_its_30s_pieces_are_exact():
    torch.manual_seed(0)
    # max_source_positions 50: 1 s pieces, so a 3.3 s clip spans four of them
    config = WhisperConfig(
        d_model=64,
        encoder_layers=1,
        encoder_attention_heads=1,
        encoder_ffn_dim=32,
        decoder_layers=1,
        decoder_attention_heads=1,
        num_mel_bins=16,
        max_source_positions=50,
    )
    encoder = AudioEncoder(WhisperEncoder(config).eval(), "whisper")
    wav, frames = speech_with_pauses(3.3), 80
    whole = encoder.features_for_video(wav, frames, 25)
    source = WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=0)
    torch.testing.assert_close(chunked(source, frames), whole, atol=1e-5, rtol=1e-5)


def test_frames_outside_the_clip_are_silent_and_materialize_covers_every_frame():
    encoder = AudioEncoder(wav2vec2(local=True), "preview")
    wav, frames = speech_with_pauses(2.0), 50
    source = WindowedAudioFeatures(encoder, wav, frames, 25, context_seconds=0.8)
    out = source.features(-3, 10)
    assert out.shape == (1, 20, 64) and out[:, :6].abs().sum() == 0 and out[:, 6:].abs().sum() > 0
    tail = source.features(frames - 2, 6)
    assert tail[:, 4:].abs().sum() == 0 and tail[:, :4].abs().sum() > 0
    whole = encoder.features_for_video(wav, frames, 25)
    torch.testing.assert_close(source.materialize(block_seconds=0.6), whole, atol=5e-5, rtol=1e-4)
