"""SyncNet scoring: the network's layout, the MFCCs it was trained on, and prepare's sync filter."""

import json

import numpy as np
import pytest
import torch

from training.prepare import PrepareConfig, prepare
from training.syncnet import SyncNet, SyncNetScorer, mfcc, sync_confidence
from training.synthetic import write_talking_video


def test_mfcc_matches_python_speech_features_or_its_definition():
    signal = np.random.default_rng(0).normal(0, 3000, 16000)
    feats = mfcc(signal)
    assert feats.shape == (99, 13)  # 25 ms windows every 10 ms
    # the first coefficient is the log energy of the pre-emphasised, 512-point power spectrum
    emphasised = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    first = np.abs(np.fft.rfft(emphasised[:400], 512)) ** 2 / 512
    assert feats[0, 0] == pytest.approx(np.log(first.sum()))
    psf = pytest.importorskip("python_speech_features")
    assert np.allclose(feats, psf.mfcc(signal.astype(np.int16), 16000), atol=1e-6)


def test_confidence_peaks_at_the_true_offset_for_a_network_that_tracks_loudness():
    """A stand-in network whose embeddings are the loudness of the mouth crops and of the MFCC
    energy: sync_confidence must find the shift between the two streams."""

    def standardised(x):
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)

    class Loudness(torch.nn.Module):
        def video_embedding(self, frames):  # [N, 3, 5, H, W] -> brightness of the 5 frames
            return standardised(frames.mean((1, 3, 4)))

        def audio_embedding(self, cc):  # [N, 1, 13, 20] -> log energy of the 5 frames' audio
            return standardised(cc[:, 0, 0].unflatten(1, (5, 4)).mean(2))

    loud = np.random.default_rng(0).uniform(0.05, 1.0, 40)
    noise = np.random.default_rng(1).normal(0, 1, 640 * 40)
    audio = (noise * np.repeat(loud, 640) * 0.3).astype(np.float32)
    video = np.repeat(np.log(loud)[:, None, None, None], 8, 1).repeat(8, 2).repeat(3, 3).astype(np.float32)
    confidence, offset = sync_confidence(Loudness(), video, audio, vshift=4)
    assert offset == 0 and confidence > 0.5
    _, offset = sync_confidence(Loudness(), np.roll(video, 2, axis=0), audio, vshift=4)
    assert offset == 2  # the video lags the audio (the audio leads) by two frames


def test_prepare_scores_sync_and_filters_with_user_weights(tmp_path, monkeypatch):
    from echomimic_core import media

    decoded = []
    load_audio_16k = media.load_audio_16k
    monkeypatch.setattr(media, "load_audio_16k", lambda path: decoded.append(path) or load_audio_16k(path))
    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), weights)
    write_talking_video(tmp_path / "raw" / "a.mp4", 12, 25.0, (256, 320))
    cfg = dict(frames=9, size=(64, 64), detector="haar", detect_every=4)
    # 9 frames give 4 embeddings: offsets of +-2 frames, so that no offset sees only padding (with
    # the default +-10 every score would be 0, whatever the crops)
    scorer = SyncNetScorer(SyncNetScorer.load(weights).net, vshift=2)
    prepare(tmp_path / "raw", tmp_path / "m.jsonl", PrepareConfig(**cfg), sync_scorer=scorer, progress=False)
    row = json.loads((tmp_path / "m.jsonl").read_text())
    # the row holds the score of its own window and face box
    confidence, offset = scorer(tmp_path / "raw" / "a.mp4", row["start_seconds"], 9, 25.0, row["face_box"])
    assert row["sync_score"] == round(confidence, 4) and row["sync_offset_frames"] == offset
    summary = prepare(
        tmp_path / "raw", tmp_path / "m2.jsonl", PrepareConfig(**cfg, min_sync=1e9), sync_scorer=scorer, progress=False
    )
    assert summary["windows"] == 0 and summary["skipped"] == {"low sync": 1}
    assert len(decoded) == 1  # the scorer decodes a video's soundtrack once for all its windows


def test_weights_that_are_not_syncnet_are_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not SyncNet weights"):
        SyncNetScorer.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        SyncNetScorer.load(tmp_path / "missing.model")
