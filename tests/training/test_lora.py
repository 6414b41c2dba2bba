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


def test_lora_init_follows_the_seed_not_the_global_rng():
    def adapters(seed):
        model = build_model(ModelConfig(preset="tiny_preview"), seed=0)
        return lora_state_dict(add_lora(model, LoRAConfig(rank=2, target_modules=["q"]), seed=seed), alpha=2.0)

    torch.manual_seed(1)
    first = adapters(7)
    torch.manual_seed(2)  # another global state must not change the adapters
    state = torch.random.get_rng_state()
    second = adapters(7)
    assert torch.equal(torch.random.get_rng_state(), state)  # and the caller's RNG is untouched
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = adapters(8)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)
