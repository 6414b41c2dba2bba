"""ComfyUI's link and range rules have one implementation, used by the workflow checker and the nodes."""

import subprocess
import sys

from workflows import comfy_rules


def test_the_checker_and_the_nodes_use_the_same_rules():
    from nodes import common
    from workflows import validate

    assert validate.types_match is common.types_match is comfy_rules.types_match
    assert validate.range_problem is common.range_problem is comfy_rules.range_problem


def test_link_rule_and_range_rule():
    assert comfy_rules.types_match("ECHOMIMIC_VAE", "ECHOMIMIC_VAE,VAE")
    assert comfy_rules.types_match("IMAGE", "*") and comfy_rules.types_match("COMFY_MATCHTYPE_V3", "MASK")
    assert not comfy_rules.types_match("MASK", "IMAGE")
    assert comfy_rules.range_problem("steps", 201, {"min": 0, "max": 200}) == "steps=201 is above its maximum 200"
    assert comfy_rules.range_problem("steps", 200, {"min": 0, "max": 200}) is None


def test_the_node_check_refuses_a_mismatched_link_with_the_shared_rule():
    from nodes.task import EchoMimicTask

    problem = EchoMimicTask.VALIDATE_INPUTS("first_last", input_types={"end_image": "MASK"})
    assert problem == "end_image: expected IMAGE, but MASK is connected; connect a IMAGE output instead."
    assert EchoMimicTask.VALIDATE_INPUTS("first_last", input_types={"end_image": "IMAGE"}) is True


def test_workflow_checker_imports_without_torch():
    code = "import sys; import workflows.validate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
