import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from echomimic_core import audio_alignment as al
from echomimic_core.checkpoints.files import CheckpointError
from echomimic_core.encoders.audio import AudioEncoder, wav2vec2_config_from_state

SR = al.SAMPLE_RATE


def tiny_wav2vec2_config(**overrides):
    # 64-wide heads like every released wav2vec2 (a single file's head count is inferred that way)
    args = dict(
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
        mask_time_prob=0.0,
    )
    args.update(overrides)
    return Wav2Vec2Config(**args)


def tiny_whisper_config():
    return WhisperConfig(
        d_model=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=40,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=16,
        num_mel_bins=16,
        max_source_positions=150,  # 3 s windows
        max_target_positions=8,
    )


@pytest.fixture(scope="module")
def wav2vec2():
    torch.manual_seed(0)
    return Wav2Vec2Model(tiny_wav2vec2_config()).eval()


@pytest.fixture(scope="module")
def whisper():
    torch.manual_seed(0)
    return WhisperEncoder(tiny_whisper_config()).eval()


def speech_like(seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    return (
        0.3 * torch.sin(2 * torch.pi * 180 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
        + 0.05 * torch.randn(t.shape, generator=g)
    ).float()


def reference_layers(model, cnn):
    """Layer outputs for CNN features, walking the (post-norm) encoder by hand."""
    hidden, _ = model.feature_projection(cnn)
    hidden = hidden + model.encoder.pos_conv_embed(hidden)
    hidden = model.encoder.layer_norm(hidden)
    outs = []
    for layer in model.encoder.layers:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        outs.append(hidden)
    return torch.stack(outs, dim=2)[0]  # [T, layers, D]


def test_preview_is_normalised_last_hidden_state_two_tokens_per_frame(wav2vec2):
    enc = AudioEncoder(wav2vec2, "preview")
    wav = speech_like(1.0)
    out = enc.features_for_video(wav, 20, 25)
    assert out.shape == (1, 40, 128)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    values = torch.from_numpy(np.asarray(fe(wav.numpy(), sampling_rate=SR).input_values[0]))[None]
    assert abs(float(values.mean())) < 1e-4 and abs(float(values.std()) - 1) < 1e-3
    with torch.no_grad():
        ref = wav2vec2(values).last_hidden_state  # upstream: whole clip, then 2 tokens / frame
    assert torch.equal(out, ref[:, :40])


def test_preview_pads_only_when_the_clip_lacks_tokens(wav2vec2):
    enc = AudioEncoder(wav2vec2, "preview")
    frames = 12
    fe = Wav2Vec2FeatureExtractor(do_normalize=True)
    for extra in (80, 399):  # 640 samples per frame + a tail long enough for 2F features
        wav = speech_like(1.0)[: frames * 640 + extra]
        values = torch.from_numpy(np.asarray(fe(wav.numpy(), sampling_rate=SR).input_values[0]))[None]
        with torch.no_grad():
            ref = wav2vec2(values).last_hidden_state
        assert ref.shape[1] == 2 * frames
        assert torch.equal(enc.features_for_video(wav, frames, 25), ref)  # untouched, like upstream
    assert enc._samples_for_tokens(frames, 25) == frames * 640 + 80
    assert AudioEncoder(wav2vec2, "preview")._samples_for_tokens(3, 30) == 400 + 320 * 5  # ceil(4.17) + 1


def test_preview_other_fps_and_short_audio_pad(wav2vec2):
    enc = AudioEncoder(wav2vec2, "preview")
    wav = speech_like(1.0)
    out30 = enc.features_for_video(wav, 24, 30)
    assert out30.shape == (1, 48, 128)
    raw = enc.wav2vec2_50hz(wav)
    # token 6 of 30 fps = 0.1 s = 50 Hz feature 5 exactly; token 1 sits 5/6 of the way to feature 1
    assert torch.allclose(out30[:, 6], raw[:, 5], atol=1e-6)
    assert torch.allclose(out30[:, 1], raw[:, 0] + (raw[:, 1] - raw[:, 0]) * (5 / 6), atol=1e-5)
    short = enc.features_for_video(wav[:4000], 25, 25)  # 0.25 s of audio for a 1 s video
    assert torch.equal(short[:, :10], enc.wav2vec2_50hz(al.pad_audio_to(wav[:4000], 25 * 640 + 80))[:, :10])
    assert short.shape == (1, 50, 128) and torch.isfinite(short).all()


def test_flash_interpolates_cnn_features_before_transformer(wav2vec2):
    enc = AudioEncoder(wav2vec2, "flash", loudness_norm=False)
    wav = speech_like(0.9)
    frames = 13
    out = enc.features_for_video(wav, frames, 25)
    assert out.shape == (1, frames, 5, 3, 128)
    trimmed = wav[: al.samples_for_frames(frames, 25)]  # upstream: int(F / 25 * 16000) samples
    with torch.no_grad():
        cnn = wav2vec2.feature_extractor(trimmed[None]).transpose(1, 2)
        cnn = torch.nn.functional.interpolate(
            cnn.transpose(1, 2), size=frames, mode="linear", align_corners=True
        ).transpose(1, 2)
        per_frame = reference_layers(wav2vec2, cnn)
    idx = (torch.arange(frames)[:, None] + torch.arange(-2, 3)[None]).clamp(0, frames - 1)
    assert torch.allclose(out[0], per_frame[idx], atol=1e-5, rtol=1e-5)


def test_flash_layers_equal_hf_hidden_states_when_no_stretch(wav2vec2):
    enc = AudioEncoder(wav2vec2, "flash", loudness_norm=False)
    wav = speech_like(0.5)
    with torch.no_grad():
        hs = wav2vec2(wav[None], output_hidden_states=True).hidden_states
    natural = hs[0].shape[1]  # CNN length: interpolation to it is the identity
    per_frame = enc.flash_per_frame(wav, natural)
    assert torch.allclose(per_frame, torch.stack(hs[1:], dim=2)[0], atol=1e-5, rtol=1e-5)


def test_flash_loudness_normalisation_reaches_minus_23_lufs(wav2vec2):
    import pyloudnorm as pyln

    enc = AudioEncoder(wav2vec2, "flash")
    assert enc.loudness_norm
    quiet = speech_like(2.0) * 0.05
    normed = enc.loudness_normalize(quiet)
    assert abs(pyln.Meter(SR).integrated_loudness(normed.numpy()) - (-23.0)) < 0.1
    silent = torch.zeros(SR)
    assert torch.equal(enc.loudness_normalize(silent), silent)
    tiny = quiet[:1000]  # shorter than a 400 ms gating block: passed through
    assert torch.equal(enc.loudness_normalize(tiny), tiny)
    # loudness matters to the flash features, and the switch turns it off
    off = AudioEncoder(enc.model, "flash", loudness_norm=False)
    assert not torch.allclose(enc.features_for_video(quiet, 9, 25), off.features_for_video(quiet, 9, 25))
    # a per-call choice (GenerationSettings.loudness_normalize) overrides the encoder's own
    assert torch.equal(off.features_for_video(quiet, 9, 25, loudness_norm=True), enc.features_for_video(quiet, 9, 25))
    assert torch.equal(enc.features_for_video(quiet, 9, 25, loudness_norm=False), off.features_for_video(quiet, 9, 25))


def test_whisper_chunks_long_audio(whisper):
    # the tiny encoder takes 3 s windows (150 states) the way Whisper-Tiny takes 30 s (1500)
    enc = AudioEncoder(whisper, "whisper")
    assert enc.feature_extractor.n_samples == 3 * SR
    wav = speech_like(4.0)
    out = enc.features_for_video(wav, 10, 25)
    assert out.shape == (1, 20, 128)
    feats = enc.whisper_50hz(wav)
    assert feats.shape == (1, 150 + 50, 128)  # 3 s chunk + 1 s chunk at 50 Hz
    fe = WhisperFeatureExtractor(feature_size=16, chunk_length=3)
    with torch.no_grad():
        first = whisper(fe(wav[: 3 * SR].numpy(), sampling_rate=SR, return_tensors="pt").input_features)
        second = whisper(fe(wav[3 * SR :].numpy(), sampling_rate=SR, return_tensors="pt").input_features)
    assert torch.allclose(feats[0, :150], first.last_hidden_state[0], atol=1e-5)
    assert torch.allclose(feats[0, 150:], second.last_hidden_state[0, :50], atol=1e-5)
    assert torch.equal(out, feats[:, :20])


def test_resampled_input(wav2vec2):
    enc = AudioEncoder(wav2vec2, "flash", loudness_norm=False)
    wav44 = torch.from_numpy(
        np.interp(np.arange(44100) / 44100, np.arange(SR) / SR, speech_like(1.0).numpy()).astype(np.float32)
    )
    stereo = torch.stack([wav44, wav44])
    out = enc.features_for_video(stereo, 9, 25, sample_rate=44100)
    assert out.shape == (1, 9, 5, 3, 128)
    with pytest.raises(ValueError, match="num_frames"):
        enc.features_for_video(stereo, 0, 25, sample_rate=44100)


# ---------------------------------------------------------------------------------------------
# loading every layout


def rounded_fp16(model):
    """A float32 copy of ``model`` whose weights went through fp16 (what an fp16 file stores)."""
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return clone


def _features(enc, frames=9):
    return enc.features_for_video(speech_like(0.6, seed=3), frames, 25)


def test_load_hf_folder_ctc_with_preprocessor(tmp_path, wav2vec2):
    torch.manual_seed(1)
    ctc = Wav2Vec2ForCTC(tiny_wav2vec2_config()).eval()
    ctc.save_pretrained(tmp_path / "wav2vec2-base-960h")
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "wav2vec2-base-960h")
    enc = AudioEncoder.load(tmp_path / "wav2vec2-base-960h")
    assert enc.kind == "preview" and enc.feature_extractor.do_normalize
    assert torch.equal(_features(enc), _features(AudioEncoder(ctc.wav2vec2, "preview")))


def test_load_hf_folder_kind_from_preprocessor_config(tmp_path, wav2vec2):
    folder = tmp_path / "some-wav2vec2"
    wav2vec2.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(folder)
    enc = AudioEncoder.load(folder, loudness_norm=False)
    assert enc.kind == "flash" and not enc.feature_extractor.do_normalize
    assert torch.equal(_features(enc), _features(AudioEncoder(wav2vec2, "flash", loudness_norm=False)))


def test_load_comfy_single_file_fp16_infers_config(tmp_path, wav2vec2):
    state = {k: v.half() for k, v in wav2vec2.state_dict().items()}
    # older exports spell the positional conv's weight norm as weight_g / weight_v
    state["encoder.pos_conv_embed.conv.weight_g"] = state.pop(
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
    )
    state["encoder.pos_conv_embed.conv.weight_v"] = state.pop(
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    )
    path = tmp_path / "wav2vec2-chinese-base_fp16.safetensors"
    save_file(state, str(path))
    enc = AudioEncoder.load(path, loudness_norm=False)
    assert enc.kind == "flash" and enc.num_layers == 3 and enc.dim == 128
    cfg = enc.model.config
    assert tuple(cfg.conv_dim) == (16,) * 7 and cfg.feat_extract_norm == "group" and not cfg.do_stable_layer_norm
    assert cfg.num_conv_pos_embeddings == 16 and cfg.num_conv_pos_embedding_groups == 4
    ref = AudioEncoder(rounded_fp16(wav2vec2), "flash", loudness_norm=False)
    assert torch.allclose(_features(enc), _features(ref), atol=1e-5, rtol=1e-5)
    half = AudioEncoder.load(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and _features(half).dtype == torch.float32


def test_load_prefixed_pth_needs_kind_when_nothing_tells(tmp_path, wav2vec2):
    state = {"wav2vec2." + k: v for k, v in wav2vec2.state_dict().items()}
    state["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    path = tmp_path / "encoder.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="kind='preview' or kind='flash'"):
        AudioEncoder.load(path)
    enc = AudioEncoder.load(path, kind="preview")
    assert torch.equal(_features(enc), _features(AudioEncoder(wav2vec2, "preview")))


def test_infer_config_large_layer_norm_variant():
    torch.manual_seed(0)
    cfg = tiny_wav2vec2_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
    model = Wav2Vec2Model(cfg)
    inferred = wav2vec2_config_from_state(model.state_dict())
    assert inferred.feat_extract_norm == "layer" and inferred.do_stable_layer_norm and inferred.conv_bias
    assert Wav2Vec2Model(inferred).state_dict().keys() == model.state_dict().keys()


def test_load_whisper_layouts(tmp_path, whisper):
    ref = AudioEncoder(whisper, "whisper")
    full = WhisperForConditionalGeneration(tiny_whisper_config()).eval()
    full.model.encoder.load_state_dict(whisper.state_dict())
    full.save_pretrained(tmp_path / "whisper-tiny")
    WhisperFeatureExtractor(feature_size=16, chunk_length=3).save_pretrained(tmp_path / "whisper-tiny")
    enc = AudioEncoder.load(tmp_path / "whisper-tiny")
    assert enc.kind == "whisper" and enc.dim == 128
    assert torch.equal(_features(enc), _features(ref))
    # single file, decoder included, "model." prefix, no config: shapes give the config
    single = tmp_path / "whisper_tiny_fp16.safetensors"
    save_file(
        {k: v.half().contiguous() for k, v in full.state_dict().items() if not k.startswith("proj_out")}, str(single)
    )
    enc2 = AudioEncoder.load(single, kind="whisper_tiny")
    assert enc2.model.config.num_mel_bins == 16 and enc2.num_layers == 2
    assert torch.allclose(
        _features(enc2), _features(AudioEncoder(rounded_fp16(whisper), "whisper")), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(CheckpointError, match="Whisper encoder, but kind='flash'"):
        AudioEncoder.load(single, kind="flash")


def test_load_errors_name_the_problem(tmp_path, wav2vec2):
    path = tmp_path / "wav2vec2-chinese-base.safetensors"
    save_file({"patch_embedding.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="expected a wav2vec2 or Whisper"):
        AudioEncoder.load(path)
    folder = tmp_path / "chinese-wav2vec2-base"
    wav2vec2.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing 1"):
        AudioEncoder.load(folder)
    with pytest.raises(CheckpointError, match="kind='whisper'"):
        AudioEncoder.load(folder, kind="whisper")
    with pytest.raises(ValueError, match="kind must be one of"):
        AudioEncoder.load(folder, kind="large")
    with pytest.raises(CheckpointError, match="no such file"):
        AudioEncoder.load(tmp_path / "absent.safetensors")


def test_whisper_window_mismatch_is_reported(whisper):
    enc = AudioEncoder(whisper, "whisper", feature_extractor=WhisperFeatureExtractor(feature_size=16))
    with pytest.raises(ValueError, match="3000 mel frames per window but this encoder takes 300"):
        enc.features_for_video(speech_like(0.5), 5, 25)


def test_missing_training_only_mask_embedding_is_tolerated(tmp_path):
    torch.manual_seed(2)
    model = Wav2Vec2Model(tiny_wav2vec2_config(mask_time_prob=0.05)).eval()
    assert "masked_spec_embed" in model.state_dict()
    folder = tmp_path / "chinese-wav2vec2-base"
    model.save_pretrained(folder)
    state = {k: v for k, v in model.state_dict().items() if k != "masked_spec_embed"}
    (folder / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    enc = AudioEncoder.load(folder, loudness_norm=False)
    assert enc.kind == "flash"  # from the folder name: no preprocessor_config.json here
    assert torch.equal(_features(enc), _features(AudioEncoder(model, "flash", loudness_norm=False)))


def test_parity_with_upstream_fixture():
    """tests/encoders/data/audio_tiny.*: upstream's flash and preview audio paths, run with
    upstream's own code under transformers 4.51 (see the meta file)."""
    from pathlib import Path

    from echomimic_core.encoders.audio import verify_fixture

    data = Path(__file__).parent / "data"
    meta = json.loads((data / "audio_tiny_meta.json").read_text())
    errors = verify_fixture(data / "audio_tiny.safetensors", meta)
    assert set(errors) == {"flash", "preview"}
    assert errors["flash"] < 1e-5 and errors["preview"] < 1e-5, errors


def test_to_casts_and_keeps_features_float32(wav2vec2):
    import copy

    enc = AudioEncoder(copy.deepcopy(wav2vec2), "preview").to(dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16 and enc.device.type == "cpu"
    out = enc.features_for_video(speech_like(0.5), 10, 25)
    ref = AudioEncoder(wav2vec2, "preview").features_for_video(speech_like(0.5), 10, 25)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() / ref.abs().max() < 0.1  # bf16 rounding, same features
