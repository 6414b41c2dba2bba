"""Encode nodes: native ComfyUI outputs carrying exactly the core encoders' tokens."""
import json

import torch
from safetensors.torch import load_file

from echomimic_core.encoders.image import ImageEncoder, build_model, wan_to_hf
from echomimic_core.verify_reference import relative_error
from nodes import encoders


def test_clip_vision_encode_matches_upstream_tokens(reference_dir):
    data = load_file(str(reference_dir / "clip_vision_tiny.safetensors"))
    heads = json.loads((reference_dir / "encoders_tiny_meta.json").read_text())["clip_vision_tiny_config"]["num_heads"]
    wan = {k[len("weight."):]: v for k, v in data.items() if k.startswith("weight.")}
    encoder = ImageEncoder(build_model(wan_to_hf(wan), torch.float32, "cpu", heads))
    image = data["input.image"][:, :, 0].permute(0, 2, 3, 1).add(1).div(2)  # [-1,1] NCHW -> IMAGE
    (output,) = encoders.EchoMimicCLIPVisionEncode().encode(encoder, image)
    assert relative_error(output.penultimate_hidden_states, data["output"]) < 1e-5
    assert torch.equal(output["penultimate_hidden_states"], output.penultimate_hidden_states)


class _StubTextEncoder:
    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.seen = None

    def encode(self, prompts):
        self.seen = prompts
        return [torch.ones(len(p) + 1, 8) for p in prompts]


def test_text_encode_gives_conditioning_pairs():
    stub = _StubTextEncoder()
    positive, negative = encoders.EchoMimicTextEncode().encode(stub, "a man talks", "bad hands")
    assert stub.seen == ["a man talks", "bad hands"]
    assert positive[0][0].shape == (1, 12, 8) and positive[0][1] == {}
    assert negative[0][0].shape == (1, 10, 8)
    default = encoders.EchoMimicTextEncode.INPUT_TYPES()["required"]["negative_prompt"][1]["default"]
    assert default.startswith("Gesture is bad.")
