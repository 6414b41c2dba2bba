"""training.prepare on generated footage: drawn faces talking, a cut, silence, two people, an empty room."""

import json

import pytest

from echomimic_core.boxes import Box
from training.dataset import CachedDataset
from training.prepare import PrepareConfig, main, prepare
from training.preprocess import preprocess, read_manifest
from training.synthetic import write_talking_video

FPS, WINDOW = 25.0, 9  # 9-frame windows keep the footage short
SIZE = (256, 320)  # source frames (H, W)
CFG = dict(frames=WINDOW, fps=FPS, size=(64, 64), detector="haar", detect_every=3)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    (folder / "talk").mkdir()
    truth = write_talking_video(folder / "talk" / "alice.mp4", 2 * WINDOW + 2, FPS, SIZE)
    (folder / "talk" / "alice.txt").write_text("a woman talks to the camera")
    write_talking_video(folder / "cut.mp4", WINDOW + 1, FPS, SIZE, cut_at=4, seed=3)
    write_talking_video(folder / "quiet.mp4", WINDOW + 1, FPS, SIZE, silent=True, seed=4)
    write_talking_video(folder / "pair.mp4", WINDOW + 1, FPS, (256, 480), people=2, seed=5)
    write_talking_video(folder / "empty.mp4", WINDOW + 1, FPS, SIZE, face=False, seed=6)
    return folder, truth


def test_windows_with_a_face_get_sensible_boxes_and_the_rest_a_reason(raw, tmp_path):
    folder, truth = raw
    manifest, report = tmp_path / "clips.jsonl", tmp_path / "skipped.jsonl"
    summary = prepare(folder, manifest, PrepareConfig(**CFG), report=report, progress=False)
    rows = read_manifest(manifest)
    assert [r["id"] for r in rows] == ["talk__alice_w0000", "talk__alice_w0001"]
    assert summary["windows"] == 2 and summary["videos"] == 5
    reasons = {json.loads(line)["video"]: json.loads(line)["reason"] for line in report.read_text().splitlines()}
    assert reasons == {"cut.mp4": "cut", "quiet.mp4": "silence", "pair.mp4": "several faces", "empty.mp4": "no face"}

    true_face = Box.of(truth).scaled(1 / SIZE[0], 1 / SIZE[1])
    for row in rows:
        # manifest boxes are mappings of named edges, fractions of the frame
        face, mouth, crop = (Box.of(row[k]) for k in ("face_box", "mouth_box", "crop_box"))
        assert abs(face.left - true_face.left) < 0.06 and abs(face.bottom - true_face.bottom) < 0.08, (face, true_face)
        mid = (face.top + face.bottom) / 2
        assert (
            face.left <= mouth.left < mouth.right <= face.right
            and mid - 1e-4 <= mouth.top < mouth.bottom <= face.bottom
        )
        assert (
            crop.left <= face.left and crop.top <= face.top and face.right <= crop.right and face.bottom <= crop.bottom
        )
        # the crop has the training aspect (64 x 64 -> square in source pixels)
        assert crop.width * SIZE[1] == pytest.approx(crop.height * SIZE[0], rel=1e-3)
        assert row["caption"] == "a woman talks to the camera" and row["num_frames"] == WINDOW
    assert rows[1]["start_seconds"] == pytest.approx(WINDOW / FPS)
    assert rows[0]["video"] == "../" + folder.name + "/talk/alice.mp4"


def test_preprocess_reads_the_windows_of_the_manifest(raw, tmp_path, encoders):
    folder, _ = raw
    manifest = tmp_path / "clips.jsonl"
    prepare(folder / "talk", manifest, PrepareConfig(**CFG), progress=False)
    stats = preprocess(
        read_manifest(manifest),
        tmp_path / "cache",
        encoders,
        frames=WINDOW,
        size=(64, 64),
        root=tmp_path,
        progress=False,
    )
    assert stats["done"] == 2 and stats["failed"] == 0
    data = CachedDataset(tmp_path / "cache")
    first, second = data[0], data[1]
    assert "cond.lipsync" in first  # a mouth box: the lip-sync task trains
    # the face box is remapped into the face-centred crop: the face fills a good part of it
    face = first["face_box"]  # a Box of fractions
    assert 0.25 < face.width < 0.75 and 0.25 < face.height < 0.75
    assert not (first["latents"] == second["latents"]).all()  # two different windows


def test_cli_refuses_missing_syncnet_weights_and_bad_lengths(raw, tmp_path, capsys):
    folder, _ = raw
    with pytest.raises(SystemExit):
        main([str(folder), "--out", str(tmp_path / "m.jsonl"), "--syncnet", str(tmp_path / "nope.model")])
    assert "SyncNet weights" in capsys.readouterr().err and not (tmp_path / "m.jsonl").exists()
    with pytest.raises(SystemExit):
        main([str(folder), "--out", str(tmp_path / "m.jsonl"), "--frames", "10"])
    assert "4k + 1" in capsys.readouterr().err
