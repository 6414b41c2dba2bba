"""Node inputs in the layouts and ranges other nodes produce: accepted, or refused saying what was
expected (issue 10)."""

import pytest
import torch

from nodes.audio import EchoMimicAudioFrames
from nodes.common import audio_input, image_batch, mask_batch
from nodes.masks import EchoMimicFaceMask
from nodes.task import EchoMimicTask


@pytest.mark.parametrize(
    "image, message",
    [
        (torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8), "got uint8 values; the node that made it must divide"),
        (torch.rand(1, 8, 8, 3) * 255, r"expected a ComfyUI IMAGE with values in 0\.\.1, found .*\(0\.\.255 values"),
        (torch.rand(1, 8, 8, 3) * 2 - 1, r"values in 0\.\.1, found -"),
        (torch.full((1, 8, 8, 3), float("nan")), "found nan..nan"),
        (torch.zeros(0, 8, 8, 3), r"expected a ComfyUI IMAGE \[B, H, W, 3\] in 0..1, got \(0, 8, 8, 3\)"),
    ],
)
def test_image_outside_0_1_is_refused_with_the_range(image, message):
    with pytest.raises(ValueError, match=f"reference: .*{message}"):
        image_batch(image, "reference")


def test_image_a_hair_outside_is_clamped_and_the_reference_node_refuses_0_255():
    image = torch.rand(1, 8, 8, 3)
    image[0, 0, 0] = torch.tensor([1.0004, -0.0002, 0.5])
    out = image_batch(image)
    assert out.min() == 0 and out.max() == 1
    with pytest.raises(ValueError, match=r"image: expected a ComfyUI IMAGE with values in 0\.\.1"):
        EchoMimicFaceMask().run(torch.rand(1, 32, 32, 3) * 255, box="4, 20, 4, 20")


def audio(waveform, rate=16000):
    return {"waveform": waveform, "sample_rate": rate}


def test_audio_layouts_are_read_as_comfyui_audio():
    tone = torch.sin(torch.linspace(0, 200, 8000))
    wave, rate = audio_input(audio(tone[None, None]))
    assert wave.shape == (1, 8000) and rate == 16000
    stereo = torch.stack([tone, -tone])  # [2, T]
    channels_last, _ = audio_input(audio(stereo.T[None]))  # [1, T, 2]
    assert torch.equal(channels_last, stereo)
    pcm, _ = audio_input(audio((tone * 32767).to(torch.int16)[None, None]))
    assert pcm.dtype == torch.float32 and torch.allclose(pcm[0], tone, atol=1e-4)
    unbatched, _ = audio_input(audio(tone))  # [T]
    assert unbatched.shape == (1, 8000)
    frames, seconds = EchoMimicAudioFrames().count(audio((tone * 32767).to(torch.int16)[None, :, None]), 25.0, 0)
    assert frames == 12 and seconds == pytest.approx(0.48)


@pytest.mark.parametrize(
    "waveform, message",
    [
        (torch.zeros(0, 1, 100), "the AUDIO batch is empty"),
        (torch.zeros(1, 1, 0), "holds no samples"),
        (torch.zeros(1, 1, 1, 100), r"expected an AUDIO waveform \[B, C, T\].*got shape \(1, 1, 1, 100\)"),
        (torch.tensor([[[0.1, float("nan"), 0.2]]]), "voice: 1 of 3 audio samples are NaN or infinite"),
    ],
)
def test_unusable_audio_is_refused_saying_what_was_expected(waveform, message):
    with pytest.raises(ValueError, match=message):
        audio_input(audio(waveform), "voice")


def test_masks_in_4d_layouts_are_accepted_others_refused():
    plain = (torch.rand(2, 16, 24) > 0.5).float()
    for layout in (plain, plain[:, None], plain[..., None], plain[0]):
        assert mask_batch(layout).shape[-2:] == (16, 24)
    with pytest.raises(ValueError, match=r"face_mask: expected a MASK \[B, H, W\].*got shape \(2, 16, 24, 3\)"):
        mask_batch(torch.rand(2, 16, 24, 3), "face_mask")
    face = torch.zeros(1, 1, 32, 32)
    face[..., 8:20, 4:28] = 1
    mask = EchoMimicFaceMask().run(torch.rand(1, 32, 32, 3), mask=face)["result"][0]
    assert mask[0, 8:20, 4:28].all() and mask.sum() == 12 * 24
    spec, _ = EchoMimicTask().build(
        "lipsync", source_video=torch.rand(3, 32, 32, 3), mouth_mask=face[..., None][:, 0], face_mask=face
    )
    assert spec.face_mask.shape == (32, 32) and spec.task.mouth_mask.shape == (32, 32)


def test_mouth_box_outside_the_video_is_refused_like_the_face_box():
    video = torch.rand(4, 48, 64, 3)
    for box, shown in (
        ("30, 20, 0, 64", "top=30, bottom=20"),
        ("0, 48, 60, 100", "right=100"),
        ("50, 60, 0, 10", "top=50"),
    ):
        with pytest.raises(ValueError, match=rf"mouth box \(in source video pixels\) .*{shown}.*48x64"):
            EchoMimicTask().build("lipsync", source_video=video, mouth_box=box)
    with pytest.raises(ValueError, match=r"face box top=30, bottom=20.*32x32"):
        EchoMimicFaceMask().run(torch.rand(1, 32, 32, 3), box="30, 20, 0, 10")
