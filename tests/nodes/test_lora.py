"""LoRA node: merges into a copy, so the cached loader output never accumulates LoRAs."""

import torch

from echomimic_core.checkpoints.files import save_state_dict
from echomimic_core.config import TransformerConfig
from echomimic_core.model.transformer import EchoMimicTransformer
from nodes.lora import EchoMimicLoRA


def test_lora_node_merges_into_a_copy(folders):
    torch.manual_seed(0)
    model = EchoMimicTransformer(TransformerConfig.preset("tiny_preview"))
    w = model.blocks[0].cross_attn.k.weight
    a, b = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    (folders / "models" / "loras").mkdir(parents=True)
    save_state_dict(
        {
            "diffusion_model.blocks.0.cross_attn.k.lora_A.weight": a,
            "diffusion_model.blocks.0.cross_attn.k.lora_B.weight": b,
        },
        folders / "models" / "loras" / "s.safetensors",
    )
    assert EchoMimicLoRA.INPUT_TYPES()["required"]["lora"][0] == ["s.safetensors"]
    assert "not found" in EchoMimicLoRA.VALIDATE_INPUTS("other.safetensors")
    before = w.detach().clone()
    (merged,) = EchoMimicLoRA().apply(model, "s.safetensors", 0.5)
    (again,) = EchoMimicLoRA().apply(model, "s.safetensors", 0.5)  # re-queued: same result, no stacking
    expected = before + 0.5 * (b @ a)  # alpha defaults to the rank: scale = strength
    torch.testing.assert_close(merged.blocks[0].cross_attn.k.weight.detach(), expected)
    torch.testing.assert_close(again.blocks[0].cross_attn.k.weight.detach(), expected)
    assert torch.equal(w.detach(), before)
    assert EchoMimicLoRA().apply(model, "s.safetensors", 0.0)[0] is model
