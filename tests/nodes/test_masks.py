"""Face mask node: typed box, painted mask, detector fallback, and the preview it shows."""

import pytest
import torch

from nodes import masks


def test_typed_box_wins_and_is_drawn(folders):
    image = torch.rand(1, 40, 60, 3)
    result = masks.EchoMimicFaceMask().run(image, mask=torch.ones(1, 40, 60), box="10, 30, 20, 50")
    (mask,) = result["result"]
    assert mask.shape == (1, 40, 60) and mask.sum() == 20 * 30 and mask[0, 10, 20] == 1 and mask[0, 30, 20] == 0
    assert result["ui"]["echomimic_face_boxes"] == [{"top": 10.0, "bottom": 30.0, "left": 20.0, "right": 50.0}]
    preview = result["ui"]["images"][0]
    assert preview["type"] == "temp" and (folders / "temp" / preview["subfolder"] / preview["filename"]).is_file()


def test_painted_mask_gives_its_bounding_box(folders):
    painted = torch.zeros(1, 40, 60)
    painted[0, 5:9, 7:12] = 1
    painted[0, 20, 30] = 1
    (mask,) = masks.EchoMimicFaceMask().run(torch.rand(1, 40, 60, 3), mask=painted)["result"]
    assert mask[0].nonzero().min(0).values.tolist() == [5, 7] and mask[0].nonzero().max(0).values.tolist() == [20, 30]
    with pytest.raises(ValueError, match="mask is 30x20 but the image is 60x40"):
        masks.EchoMimicFaceMask().run(torch.rand(1, 40, 60, 3), mask=painted[:, :20, :30])


def test_no_face_covers_everything(folders):
    result = masks.EchoMimicFaceMask().run(torch.full((1, 64, 64, 3), 0.5))
    assert torch.all(result["result"][0] == 1) and result["ui"]["echomimic_face_boxes"] == []


def test_bad_boxes_are_rejected():
    assert masks.EchoMimicFaceMask.VALIDATE_INPUTS("1, 2, 3").startswith("face box '1, 2, 3'")
    assert masks.EchoMimicFaceMask.VALIDATE_INPUTS("") is True
    with pytest.raises(ValueError, match="does not lie inside"):
        masks.EchoMimicFaceMask().run(torch.rand(1, 40, 60, 3), box="10, 50, 0, 10")


def test_the_nodes_and_the_core_draw_the_same_pixels(folders):
    from echomimic_core.boxes import Box
    from echomimic_core.tasks import Task, lipsync_region
    from nodes.masks import EchoMimicFaceMask
    from nodes.task import EchoMimicTask

    fractional = Box(top=2.5, bottom=5.5, left=1.2, right=3.0)
    expected = fractional.region(8, 6)
    image = torch.rand(1, 8, 6, 3)
    drawn = EchoMimicFaceMask().run(image, box="2.5, 5.5, 1.2, 3")["result"][0][0]
    assert torch.equal(drawn > 0.5, expected)
    preview = EchoMimicTask().build("first_frame", image=image, face_box="2.5, 5.5, 1.2, 3")[1][0]
    assert torch.equal((preview != image[0]).any(-1), expected)  # the tinted pixels
    video = torch.rand(2, 8, 6, 3)
    mouth = lipsync_region(Task(kind="lipsync", source_video=video, mouth_box=fractional), video, (8, 6))
    assert torch.equal(mouth, expected.expand(2, 8, 6))
