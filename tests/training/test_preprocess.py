import pytest
import torch

from echomimic_core.boxes import Box
from training.dataset import CachedDataset, collate, read_index
from training.preprocess import preprocess
from training.synthetic import FRAMES, HEIGHT, WIDTH, sft_rows, synthetic_clip


def test_cache_holds_what_training_needs(sft_cache, tiny_config):
    data = CachedDataset(sft_cache)
    assert len(data) == 6 and data.null_text.shape[1] == tiny_config.text_dim
    item = data[1]
    f, h, w = (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8
    assert item["latents"].shape == (16, f, h, w)
    assert {"cond.first_frame", "cond.first_last", "cond.lipsync"} <= set(item)  # row 1 has a mouth box
    assert "cond.lipsync" not in data[0]
    assert item["clip"].shape == (257, tiny_config.clip_dim)
    assert item["audio"].shape == (2 * FRAMES, tiny_config.audio_in_dim)
    assert item["mouth_box"] == Box(top=0.5, bottom=0.8, left=0.3, right=0.7)
    batch = collate([data[0], data[1]])  # a sample without mouth latents still stacks
    assert batch["cond.lipsync"].shape[0] == 2 and not batch["cond.lipsync"][0].any()


def test_masked_video_latents_differ_per_task(sft_cache):
    item = CachedDataset(sft_cache)[1]
    assert not torch.equal(item["cond.first_frame"], item["cond.first_last"])
    # the causal first latent frame only sees pixel frame 0, which every task keeps
    assert torch.equal(item["cond.first_frame"][:, 0], item["latents"][:, 0])


def test_interrupted_run_resumes_without_duplicates(tmp_path, encoders):
    calls = []

    def dying_loader(path, frames, size, audio=None):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return synthetic_clip(path, frames, size)

    kw = dict(frames=FRAMES, size=(HEIGHT, WIDTH), shard_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        preprocess(sft_rows(), tmp_path, encoders, loader=dying_loader, **kw)
    assert [i["id"] for i in read_index(tmp_path)["items"]] == ["clip0", "clip1", "clip2", "clip3"]
    assert not list(tmp_path.glob("*.partial"))
    stats = preprocess(sft_rows(), tmp_path, encoders, loader=synthetic_clip, **kw)
    assert stats == {"done": 2, "skipped_filter": 0, "failed": 0, "cached": 4}
    assert sorted(i["id"] for i in read_index(tmp_path)["items"]) == [f"clip{i}" for i in range(6)]
    assert len(CachedDataset(tmp_path)) == 6


def test_filters_sync_score_and_length(tmp_path, encoders):
    rows = sft_rows(4) + [{"id": "short", "video": "x_len5.mp4", "caption": "c", "sync_score": 9}]
    stats = preprocess(
        rows,
        tmp_path,
        encoders,
        frames=FRAMES,
        size=(HEIGHT, WIDTH),
        loader=synthetic_clip,
        min_sync_score=7.0,
        progress=False,
    )
    assert stats == {"done": 2, "skipped_filter": 3, "failed": 0, "cached": 0}
    assert sorted(i["id"] for i in read_index(tmp_path)["items"]) == ["clip2", "clip3"]


def test_dpo_pairs_share_conditioning(dpo_cache):
    data = CachedDataset(dpo_cache, kind="dpo")
    item = data[0]
    assert item["chosen.latents"].shape == item["rejected.latents"].shape == item["cond.first_frame"].shape
    assert not torch.equal(item["chosen.latents"], item["rejected.latents"])
    with pytest.raises(ValueError, match="expected 'sft'"):
        CachedDataset(dpo_cache)


def test_cli_decodes_real_video_files(tmp_path, encoders, monkeypatch):
    import json

    from echomimic_core import media
    from training import preprocess as pre

    clip = synthetic_clip("real.mp4", FRAMES, (HEIGHT, WIDTH))
    frames = ((clip.video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    media.write_video(tmp_path / "real.mp4", frames, fps=25.0, audio=clip.waveform, sample_rate=16000)
    media.write_video(tmp_path / "short.mp4", frames[:5], fps=25.0, audio=clip.waveform, sample_rate=16000)
    rows = [{"id": "a", "video": "real.mp4", "caption": "hello"}, {"id": "b", "video": "short.mp4"}]
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setattr(pre, "build_encoders", lambda args: encoders)
    args = [
        "--manifest",
        str(tmp_path / "clips.jsonl"),
        "--out",
        str(tmp_path / "cache"),
        "--frames",
        str(FRAMES),
        "--height",
        str(HEIGHT),
        "--width",
        str(WIDTH),
        "--vae",
        "v",
        "--text-encoder",
        "t",
        "--clip",
        "c",
        "--audio-encoder",
        "a",
    ]
    assert pre.main(args) == 0
    data = CachedDataset(tmp_path / "cache")
    assert [item["id"] for item in data.items] == ["a"]  # the 5-frame clip is filtered as too short
    assert data[0]["latents"].shape == (16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)


def test_load_clip_resamples_to_25fps_and_crops_to_the_aspect(tmp_path):
    from echomimic_core import media
    from training.preprocess import crop_box, load_clip

    ramp = torch.arange(17, dtype=torch.float32) / 16  # frame i has brightness i/16, at 50 fps
    frames = ramp.view(17, 1, 1, 1).expand(17, 32, 48, 3).clone()
    frames[:, :, :8] = 0  # a dark band on the left that the centre crop removes
    media.write_video(tmp_path / "v.mp4", frames, fps=50.0, audio=torch.zeros(16000), sample_rate=16000)
    clip = load_clip(str(tmp_path / "v.mp4"), 9, (32, 32), fps=25.0)
    assert clip.video.shape == (3, 9, 32, 32) and clip.fps == 25.0
    brightness = (clip.video.mean((0, 2, 3)) + 1) / 2
    assert torch.allclose(brightness, ramp[::2], atol=0.03)  # every second source frame
    assert tuple(clip.crop) == pytest.approx((0.0, 1.0, 1 / 6, 5 / 6))  # top, bottom, left, right
    assert tuple(crop_box(Box(0.2, 0.4, 0.5, 0.75), clip.crop)) == pytest.approx((0.2, 0.4, 0.5, 0.875))


def test_boxes_are_checked_cropped_and_dropped_when_cut_away(caplog):
    from training.preprocess import clip_boxes

    crop = Box(top=0.0, bottom=1.0, left=0.25, right=0.75)  # the centre half of a wide frame
    face = {"top": 0.1, "bottom": 0.5, "left": 0.3, "right": 0.7}
    row = {"id": "c", "face_box": face, "mouth_box": {"top": 0.6, "bottom": 0.8, "left": 0.0, "right": 0.2}}
    out = clip_boxes(row, crop, (32, 32))
    assert out["face_box"] == pytest.approx({"top": 0.1, "bottom": 0.5, "left": 0.1, "right": 0.9})
    assert "mouth_box" not in out and "mouth_box lies outside" in caplog.text  # left of the crop
    with pytest.raises(ValueError, match="left < right"):
        clip_boxes({"id": "d", "face_box": {"top": 0.1, "bottom": 0.5, "left": 0.7, "right": 0.3}}, crop, (32, 32))
    # an old manifest's [x0, y0, x1, y1] list gives the same box, with a warning
    with pytest.warns(FutureWarning, match="old manifest format"):
        old = clip_boxes({"id": "e", "face_box": [0.3, 0.1, 0.7, 0.5]}, crop, (32, 32))
    assert old["face_box"] == out["face_box"]


def test_caches_written_with_the_old_task_name_still_train(tmp_path, sft_cache):
    """Caches from before the rename store cond.mouth; they are read as cond.lipsync."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(sft_cache, tmp_path / "old")
    for shard in (tmp_path / "old").glob("shard-*.safetensors"):
        tensors = load_file(shard)
        save_file({k.replace("/cond.lipsync", "/cond.mouth"): v for k, v in tensors.items()}, shard)
    assert any(k.endswith("/cond.mouth") for k in load_file(next((tmp_path / "old").glob("shard-*"))))
    old, new = CachedDataset(tmp_path / "old")[1], CachedDataset(sft_cache)[1]
    assert "cond.mouth" not in old and torch.equal(old["cond.lipsync"], new["cond.lipsync"])


def test_lipsync_latents_encode_the_video_outside_the_mouth_box(sft_cache, encoders):
    from training.preprocess import masked_video

    item = CachedDataset(sft_cache)[1]
    clip = synthetic_clip("clip1.mp4", FRAMES, (HEIGHT, WIDTH))
    masked = masked_video(clip.video, "lipsync", item["mouth_box"])
    y1, y2, x1, x2 = (round(0.5 * HEIGHT), round(0.8 * HEIGHT), round(0.3 * WIDTH), round(0.7 * WIDTH))
    assert not masked[:, :, y1:y2, x1:x2].any()
    masked[:, :, y1:y2, x1:x2] = clip.video[:, :, y1:y2, x1:x2]
    assert torch.equal(masked, clip.video)
    expected = encoders.vae(masked_video(clip.video, "lipsync", item["mouth_box"]))
    assert torch.equal(item["cond.lipsync"], expected.bfloat16().float())  # cached in bf16, read as float32


def test_caches_are_bf16_on_disk_and_float32_in_training(tmp_path, sft_cache, encoders):
    from safetensors import safe_open

    shard = sorted(sft_cache.glob("shard-*.safetensors"))[0]
    with safe_open(str(shard), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert CachedDataset(sft_cache)[0]["latents"].dtype == torch.float32
    kw = dict(frames=FRAMES, size=(HEIGHT, WIDTH), loader=synthetic_clip, progress=False)
    preprocess(sft_rows(2), tmp_path / "fp32", encoders, cache_dtype="fp32", **kw)
    exact = CachedDataset(tmp_path / "fp32")[0]["latents"]
    assert torch.equal(exact, encoders.vae(synthetic_clip("clip0.mp4", FRAMES, (HEIGHT, WIDTH)).video))
    assert torch.equal(CachedDataset(sft_cache)[0]["latents"], exact.bfloat16().float())
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        preprocess(sft_rows(1), tmp_path / "x", encoders, cache_dtype="fp8", **kw)
