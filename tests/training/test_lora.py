import pytest
import torch

pytest.importorskip("peft", reason="LoRA training needs peft (requirements-train.txt)")

from training.config import LoRAConfig, ModelConfig
from training.lora import PREFIX, add_lora, lora_state_dict
from training.model_init import build_model


def test_lora_file_is_read_from_the_given_state_dict():
    """Under FSDP the module's parameters are shards; the saved adapters must come from the
    gathered state dict the trainer passes."""
    model = add_lora(build_model(ModelConfig(preset="tiny_preview"), seed=0), LoRAConfig(rank=2, target_modules=["q"]))
    own = lora_state_dict(model, alpha=2.0)
    gathered = {k: (v + 1 if "lora_B" in k else v) for k, v in model.state_dict().items()}
    given = lora_state_dict(model, alpha=2.0, state_dict=gathered)
    assert given.keys() == own.keys() and any(k.endswith(".q.lora_B.weight") for k in own)
    for key, value in own.items():
        expected = value + 1 if "lora_B" in key else value
        assert torch.equal(given[key], expected), key
    assert all(k.startswith(PREFIX) for k in given)
