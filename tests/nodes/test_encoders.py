"""Encode nodes: native ComfyUI outputs carrying exactly the core encoders' tokens."""

import json

import pytest
import torch
from safetensors.torch import load_file

from echomimic_core.encoders.image import ImageEncoder, build_model, wan_to_hf
from echomimic_core.verify_reference import relative_error
from nodes import encoders


def test_clip_vision_encode_matches_upstream_tokens(reference_dir):
    data = load_file(str(reference_dir / "clip_vision_tiny.safetensors"))
    heads = json.loads((reference_dir / "encoders_tiny_meta.json").read_text())["clip_vision_tiny_config"]["num_heads"]
    wan = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    encoder = ImageEncoder(build_model(wan_to_hf(wan), torch.float32, "cpu", heads))
    image = data["input.image"][:, :, 0].permute(0, 2, 3, 1).add(1).div(2)  # [-1,1] NCHW -> IMAGE
    (output,) = encoders.EchoMimicCLIPVisionEncode().encode(encoder, image)
    assert relative_error(output.penultimate_hidden_states, data["output"]) < 1e-5
    assert torch.equal(output["penultimate_hidden_states"], output.penultimate_hidden_states)


class _StubTextEncoder:
    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.seen = None

    def to(self, device):
        self.model.to(device)
        return self

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


class _ComfyClipVision:
    """Stand-in for ``comfy.clip_vision.ClipVisionModel``: ``model(pixel_values, intermediate_output=-2)``
    returns (last block's output, the output before it, ...), as ComfyUI's CLIP model does."""

    def __init__(self, full_model):
        self.image_size, self.dtype, self.load_device = 224, torch.float32, torch.device("cpu")
        self.patcher, self.calls = object(), []
        self.full = full_model

        def model(pixel_values, intermediate_output=None):
            self.calls.append((tuple(pixel_values.shape), pixel_values.dtype, intermediate_output))
            states = self.full(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            return states[-1], states[intermediate_output], None

        self.model = model

    def encode_image(self, image, crop=True):
        raise AssertionError("ComfyUI's preprocessing (antialias, 8-bit rounding) is not upstream's")


def test_clip_vision_encode_runs_comfy_load_clip_vision_with_upstream_preprocessing(reference_dir, monkeypatch):
    from transformers import CLIPVisionModel

    from echomimic_core.encoders.image import config_from_hf_state
    from nodes import comfy_services

    data = load_file(str(reference_dir / "clip_vision_tiny.safetensors"))
    heads = json.loads((reference_dir / "encoders_tiny_meta.json").read_text())["clip_vision_tiny_config"]["num_heads"]
    state = wan_to_hf({k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")})
    full = CLIPVisionModel(config_from_hf_state(state, heads)).eval()
    own = "vision_model." if hasattr(full, "vision_model") else ""
    full.load_state_dict(
        {
            own + k[len("vision_model.") :]: v
            for k, v in state.items()
            if k.startswith("vision_model.") and not k.endswith("position_ids")
        },
        strict=False,
    )
    comfy_model = _ComfyClipVision(full)
    comfy_model.image_size = full.config.image_size
    loaded = []
    monkeypatch.setattr(comfy_services, "load_model_gpu", loaded.append)

    image = data["input.image"][:, :, 0].permute(0, 2, 3, 1).add(1).div(2)
    (output,) = encoders.EchoMimicCLIPVisionEncode().encode(comfy_model, image)
    assert relative_error(output.penultimate_hidden_states, data["output"]) < 1e-5
    assert loaded == [comfy_model.patcher] and comfy_model.calls[0][2] == -2


def test_clip_vision_encode_accepts_both_loaders_and_refuses_others():
    types = encoders.EchoMimicCLIPVisionEncode.INPUT_TYPES()["required"]["clip_vision"][0].split(",")
    assert set(types) == {"ECHOMIMIC_CLIP_VISION", "CLIP_VISION"}
    image = torch.rand(1, 8, 8, 3)
    with pytest.raises(ValueError, match="Load CLIP Vision"):
        encoders.EchoMimicCLIPVisionEncode().encode(object(), image)
