"""Audio-visual sync confidence and offset with SyncNet weights the user supplies (nothing is
downloaded): the paper filters its training clips by sync.

The network is SyncNet as ``syncnet_python`` releases it (``syncnet_v2.model``, a plain state dict
``netcnnaud.* / netfcaud.* / netcnnlip.* / netfclip.*``): 5 video frames (224 x 224 face crops,
BGR, 0..255) and the 20 MFCC frames (13 coefficients, 100 per second) of the same 0.2 s each map to
a 1024-d embedding. For offsets of -``vshift``..``vshift`` video frames the mean distance between
the two streams is measured; the offset is where it is smallest and the confidence is the median
distance minus the smallest (a few units for well-synced speech, ~0 for unrelated audio). MFCCs
follow the ``python_speech_features.mfcc`` defaults the weights were trained with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

VIDEO_FPS, AUDIO_RATE = 25.0, 16000
CROP_SIDE = 224
WINDOW = 5  # video frames per embedding


def _bn_relu(conv, bn_cls, channels):
    return [conv, bn_cls(channels), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """SyncNet ("S" of syncnet_python): audio [N, 1, 13, 20] and video [N, 3, 5, 224, 224] embeddings."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        c2, b2 = nn.Conv2d, nn.BatchNorm2d
        self.netcnnaud = nn.Sequential(
            *_bn_relu(c2(1, 64, 3, 1, 1), b2, 64),
            nn.MaxPool2d(1, 1),
            *_bn_relu(c2(64, 192, 3, 1, 1), b2, 192),
            nn.MaxPool2d(3, (1, 2)),
            *_bn_relu(c2(192, 384, 3, padding=1), b2, 384),
            *_bn_relu(c2(384, 256, 3, padding=1), b2, 256),
            *_bn_relu(c2(256, 256, 3, padding=1), b2, 256),
            nn.MaxPool2d(3, 2),
            *_bn_relu(c2(256, 512, (5, 4)), b2, 512),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        c3, b3 = nn.Conv3d, nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(
            *_bn_relu(c3(3, 96, (5, 7, 7), (1, 2, 2)), b3, 96),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3, 256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), b3, 256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(c3(256, 512, (1, 6, 6)), b3, 512),
        )

    def audio_embedding(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] -> [N, D]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def video_embedding(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR 0..255 -> [N, D]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def _mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def _hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def mfcc(signal: np.ndarray, rate: int = AUDIO_RATE, numcep: int = 13, nfilt: int = 26, nfft: int = 512) -> np.ndarray:
    """[frames, 13] MFCCs of ``signal`` (int16-scaled samples), 25 ms windows every 10 ms:
    pre-emphasis 0.97, rectangular windows, power spectrum, 26 triangular mel filters, log, DCT-II
    (orthonormal), lifter 22, the first coefficient replaced by the log frame energy."""
    from scipy.fft import dct

    signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1]).astype(np.float64)
    length, step = int(round(0.025 * rate)), int(round(0.01 * rate))
    count = 1 if len(signal) <= length else 1 + int(np.ceil((len(signal) - length) / step))
    padded = np.concatenate([signal, np.zeros(max(0, (count - 1) * step + length - len(signal)))])
    index = np.arange(length)[None, :] + step * np.arange(count)[:, None]
    frames = padded[index]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    bins = np.floor((nfft + 1) * _hz(np.linspace(_mel(0.0), _mel(rate / 2), nfilt + 2)) / rate).astype(int)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        bank[j, lo:mid] = (np.arange(lo, mid) - lo) / (mid - lo)
        bank[j, mid:hi] = (hi - np.arange(mid, hi)) / (hi - mid)
    feat = power @ bank.T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    feat = dct(feat, type=2, axis=1, norm="ortho")[:, :numcep]
    feat *= 1 + 11 * np.sin(np.pi * np.arange(numcep) / 22)
    feat[:, 0] = np.log(energy)
    return feat


def face_crops(frames: np.ndarray, face_box, out: int = CROP_SIDE) -> np.ndarray:
    """RGB uint8 [F, H, W, 3] -> BGR float [F, out, out, 3]: a square around the face box (its
    larger side plus 40 %), as syncnet_python's face-track crops, resized to ``out``."""
    import cv2

    h, w = frames.shape[1:3]
    y1, y2, x1, x2 = face_box
    side = max(y2 - y1, x2 - x1) * 1.4
    cy, cx = (y1 + y2) / 2, (x1 + x2) / 2
    pad = int(side)
    crops = []
    for frame in frames:
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(110, 110, 110))
        top, left = int(cy - side / 2) + pad, int(cx - side / 2) + pad
        patch = padded[top : top + int(side), left : left + int(side)]
        crops.append(cv2.resize(patch, (out, out), interpolation=cv2.INTER_AREA)[..., ::-1])
    return np.stack(crops).astype(np.float32)


@torch.no_grad()
def sync_confidence(
    net: SyncNet, crops: np.ndarray, audio16k: np.ndarray, vshift: int = 10, batch: int = 16
) -> tuple[float, int]:
    """(confidence, offset in video frames; positive = audio leads) of BGR crops [F, 224, 224, 3]
    at 25 fps and their 16 kHz audio (float in [-1, 1])."""
    feats = mfcc(audio16k * 32768.0)  # the weights expect int16-scaled samples
    usable = min(len(crops), len(feats) // 4) - WINDOW
    if usable < 1:
        raise ValueError(f"a sync score needs more than {WINDOW} frames with their audio; got {len(crops)}.")
    video = torch.from_numpy(crops).permute(3, 0, 1, 2)  # [3, F, 224, 224]
    cc = torch.from_numpy(feats.T.astype(np.float32))  # [13, frames]
    vid_emb, aud_emb = [], []
    for i in range(0, usable, batch):
        idx = range(i, min(usable, i + batch))
        vid_emb.append(net.video_embedding(torch.stack([video[:, k : k + WINDOW] for k in idx])))
        aud_emb.append(net.audio_embedding(torch.stack([cc[None, :, 4 * k : 4 * k + 20] for k in idx])))
    v, a = torch.cat(vid_emb), torch.cat(aud_emb)
    a = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    dists = torch.stack([torch.nn.functional.pairwise_distance(v, a[s : s + len(v)]) for s in range(2 * vshift + 1)])
    mean = dists.mean(1)  # [2 * vshift + 1]
    best = int(mean.argmin())
    return float(mean.median() - mean[best]), vshift - best


class SyncNetScorer:
    """``training.prepare``'s sync scorer: (video, start, frames, fps, mouth box) -> (confidence, offset)."""

    def __init__(self, net: SyncNet, vshift: int = 10):
        self.net, self.vshift = net.eval(), vshift
        self._audio: tuple[Path, np.ndarray] | None = None  # the last video's soundtrack, mono 16 kHz

    @classmethod
    def load(cls, path: str | Path) -> SyncNetScorer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file. --syncnet takes SyncNet weights you have (syncnet_python's "
                "syncnet_v2.model layout); nothing is downloaded. Leave --syncnet out to skip sync filtering."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, nn.Module):  # pragma: no cover - weights_only refuses whole modules
            state = state.state_dict()
        net = SyncNet()
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: not SyncNet weights in syncnet_python's layout (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})."
            )
        return cls(net)

    def __call__(self, video: Path, start: float, frames: int, fps: float, face_box_frac) -> tuple[float, int]:
        from training.boxes import read_box
        from training.footage import read_window

        if abs(fps - VIDEO_FPS) > 1e-6:
            raise ValueError(f"SyncNet works at {VIDEO_FPS:g} fps; prepare windows at --fps 25 to score sync.")
        pixels = read_window(video, start, frames, fps)
        h, w = pixels.shape[1:3]
        crops = face_crops(pixels, read_box(face_box_frac, "face_box").scaled(h, w))
        piece = self._soundtrack(video)[int(start * AUDIO_RATE) : int((start + frames / fps) * AUDIO_RATE)]
        return sync_confidence(self.net, crops, piece, self.vshift)

    def _soundtrack(self, video: Path) -> np.ndarray:
        """The video's whole soundtrack, decoded once for all its windows (prepare scores them in a row)."""
        from echomimic_core import media

        if self._audio is None or self._audio[0] != video:
            audio = media.load_audio_16k(video).numpy()
            self._audio = (video, audio.reshape(-1) if audio.ndim == 1 else audio.mean(0))
        return self._audio[1]
