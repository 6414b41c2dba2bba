"""DPO pair generation: candidates from the model, scores, a pair manifest preprocess reads."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from echomimic_core import media
from echomimic_core.demo import demo_inputs
from training.pairs import identity, main, make_pairs, sharpness


def test_sharpness_and_identity_rank_what_they_should():
    rng = torch.Generator().manual_seed(0)
    sharp = (torch.rand(4, 32, 32, 1, generator=rng) > 0.5).float().expand(4, 32, 32, 3)
    blurred = torch.nn.functional.avg_pool2d(sharp.permute(0, 3, 1, 2), 5, 1, 2).permute(0, 2, 3, 1)
    assert sharpness(sharp) > 4 * sharpness(blurred)

    class Encoder:  # class token = the image's mean colour
        image_size = 8

        def encode(self, pixels):
            return pixels.mean((2, 3))[:, None, :] + torch.tensor([0.0, 0.0, 1.0])

    reference = torch.zeros(8, 8, 3) + torch.tensor([1.0, 0.0, 0.0])
    same = reference.expand(4, 8, 8, 3)
    other = (torch.zeros(8, 8, 3) + torch.tensor([0.0, 1.0, 0.0])).expand(4, 8, 8, 3)
    assert identity(same, reference, Encoder(), every=1) == pytest.approx(1.0)
    assert identity(other, reference, Encoder(), every=1) < 0.5


def test_pairs_take_best_against_worst_per_reference():
    rows = [
        {"ref": "a", "seed": s, "video": f"a/{s}.mp4", "audio": "a.wav", "sharpness": v, "label": lab}
        for s, v, lab in ((1, 5.0, 0), (2, 9.0, 1), (3, 7.0, None))
    ] + [{"ref": "b", "seed": 1, "video": "b/1.mp4", "audio": "b.wav", "sharpness": 3.0}]
    pairs = make_pairs(rows, "sharpness")
    assert len(pairs) == 1 and (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a/2.mp4", "a/1.mp4")
    assert make_pairs(rows, "label")[0]["chosen"] == "a/2.mp4"
    assert make_pairs(rows, "sharpness", min_gap=5.0) == []


@pytest.mark.slow
def test_generate_then_pair_then_preprocess(tmp_path, encoders, capsys):
    from scipy.io import wavfile

    from training.dataset import CachedDataset
    from training.preprocess import preprocess, read_manifest

    image, audio, sr = demo_inputs(seconds=0.5)
    Image.fromarray(image).save(tmp_path / "ref.png")
    wavfile.write(tmp_path / "ref.wav", sr, (audio[0].numpy() * 32767).astype(np.int16))
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"id": "r0", "image": "ref.png", "audio": "ref.wav", "caption": "a person talking"}))
    gen = tmp_path / "gen"
    args = ["generate", str(refs), "--out", str(gen), "--demo", "--candidates", "2", "--steps", "2", "--device", "cpu"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (gen / "candidates.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [43, 44] and all(r["sharpness"] > 0 and -1 <= r["identity"] <= 1 for r in rows)
    assert all((gen / r["video"]).is_file() for r in rows)

    with pytest.raises(SystemExit):  # no labels yet
        main(["pair", str(gen / "candidates.jsonl"), "--out", str(tmp_path / "pairs.jsonl"), "--score", "label"])
    assert "add your labels" in capsys.readouterr().err
    out = tmp_path / "data" / "pairs.jsonl"
    assert main(["pair", str(gen / "candidates.jsonl"), "--out", str(out), "--score", "sharpness"]) == 0
    pair = read_manifest(out)[0]
    assert (out.parent / pair["chosen"]).is_file() and (out.parent / pair["audio"]).is_file()

    frames = media.load_video(out.parent / pair["chosen"], with_audio=False).frames.shape[0]
    frames = (frames - 1) // 4 * 4 + 1
    stats = preprocess(
        read_manifest(out),
        tmp_path / "dpo",
        encoders,
        kind="dpo",
        frames=frames,
        size=(32, 32),
        root=out.parent,
        progress=False,
    )
    assert stats["done"] == 1
    assert CachedDataset(tmp_path / "dpo", kind="dpo")[0]["chosen.latents"].shape[1] == (frames - 1) // 4 + 1
