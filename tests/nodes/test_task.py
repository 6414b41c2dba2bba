"""Task node: checks before tensors, the core Task it builds, the preview, and mouth regions at sample size."""

import pytest
import torch

from echomimic_core import pipeline, tasks
from echomimic_core.long_video import Chunk
from nodes.task import EchoMimicTask, TaskSpec, parse_indices


def test_validate_inputs_without_tensors():
    v = EchoMimicTask.VALIDATE_INPUTS
    assert v("first_frame") is True
    assert "twice" in v("keyframes", keyframe_indices="0, 4, 0")
    assert "whole frame numbers" in v("keyframes", keyframe_indices="0, x")
    assert "needs keyframe_indices" in v("keyframes")
    assert "four pixel numbers" in v("lipsync", mouth_box="1, 2, 3")
    assert "four pixel numbers" in v("first_frame", face_box="10 20")
    # ComfyUI tells which inputs are linked: a task missing its input is refused before running
    assert "end_image input connected" in v("first_last", input_types={"image": "IMAGE"})
    assert v("first_last", input_types={"end_image": "IMAGE"}) is True
    assert "continue_frames must be" in v("continue", continue_frames=0, input_types={"source_video": "IMAGE"})
    assert parse_indices("0, 40; -1") == [0, 40, -1]


def test_validate_inputs_checks_link_types_comfyui_skips_for_it():
    # asking for input_types turns ComfyUI's own link type check off, so the node refuses a wrong link itself
    v = EchoMimicTask.VALIDATE_INPUTS
    problem = v("lipsync", input_types={"source_video": "IMAGE", "mouth_mask": "IMAGE"})
    assert "mouth_mask: expected MASK, but IMAGE is connected" in problem
    assert v("lipsync", input_types={"source_video": "IMAGE,MASK", "mouth_mask": "*"}) is True


def test_keyframes_task_and_preview():
    images = torch.rand(3, 32, 48, 3)
    spec, preview = EchoMimicTask().build("keyframes", keyframe_images=images, keyframe_indices="-1, 0, 10")
    assert isinstance(spec, TaskSpec) and spec.task.kind == "keyframes"
    assert torch.equal(spec.task.keyframes[-1], images[0]) and torch.equal(spec.task.keyframes[10], images[2])
    # preview in frame order, negative indices (from the end) last
    assert torch.equal(preview, torch.stack([images[1], images[2], images[0]]))
    with pytest.raises(ValueError, match="names 2 frames but keyframe_images holds 3"):
        EchoMimicTask().build("keyframes", keyframe_images=images, keyframe_indices="0, 1")


def test_first_last_needs_end_image_and_face_region_is_kept():
    with pytest.raises(ValueError, match="needs end_image"):
        EchoMimicTask().build("first_last")
    image, end = torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32, 3)
    spec, preview = EchoMimicTask().build("first_last", image=image, end_image=end, face_box="4, 20, 8, 24")
    assert tuple(spec.face_box) == (4.0, 20.0, 8.0, 24.0) and torch.equal(spec.task.end_image, end[0])
    assert preview.shape == (2, 32, 32, 3) and torch.equal(preview[1], end[0])
    tinted = (preview[0] != image[0]).any(-1)
    assert tinted[4:20, 8:24].all() and tinted.sum() == 16 * 16  # face box tinted on the reference only


def test_lipsync_preview_marks_the_mouth_and_box_scales_to_sample_size():
    video = torch.rand(5, 128, 128, 3)
    spec, preview = EchoMimicTask().build("lipsync", source_video=video, mouth_box="64, 96, 32, 96")
    changed = (preview[0] != video[0]).any(-1)
    assert changed[64:96, 32:96].all() and changed.sum() == 32 * 64
    # the box is in the video's pixels; generation at 64x64 halves it
    plan = pipeline.plan_generation(None, 5, pipeline.GenerationSettings(width=64, height=64), spec.task)
    inputs = tasks.chunk_task_inputs(
        plan.task, plan.reference, Chunk(0, 5, 0), None, 5, (64, 64), plan.task.source_video
    )
    regenerated = inputs.input_video_mask[0, 0, 0] > 0
    assert regenerated[32:48, 16:48].all() and regenerated.sum() == 16 * 32


def test_lipsync_mouth_mask_from_the_mask_editor_is_resized():
    video = torch.rand(5, 128, 128, 3)
    mask = torch.zeros(1, 128, 128)
    mask[0, 64:96, 32:96] = 1
    spec, _ = EchoMimicTask().build("lipsync", source_video=video, mouth_mask=mask)
    plan = pipeline.plan_generation(None, 5, pipeline.GenerationSettings(width=64, height=64), spec.task)
    inputs = tasks.chunk_task_inputs(
        plan.task, plan.reference, Chunk(0, 5, 0), None, 5, (64, 64), plan.task.source_video
    )
    regenerated = inputs.input_video_mask[0, 0] > 0
    assert regenerated[:, 32:48, 16:48].all() and regenerated.sum() == 5 * 16 * 32
    with pytest.raises(ValueError, match="mouth_mask is"):
        bad, _ = EchoMimicTask().build("lipsync", source_video=video, mouth_mask=torch.ones(1, 64, 64))
        pipeline.plan_generation(None, 5, pipeline.GenerationSettings(), bad.task)


def test_continue_keeps_the_last_frames():
    video = torch.rand(10, 32, 32, 3)
    spec, preview = EchoMimicTask().build("continue", source_video=video, continue_frames=3)
    assert spec.task.continue_frames == 3 and torch.equal(preview, video[-3:])
    with pytest.raises(ValueError, match="continue_frames must be in"):
        EchoMimicTask().build("continue", source_video=video, continue_frames=10)
