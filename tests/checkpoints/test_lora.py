import pytest
import torch

from echomimic_core.checkpoints.files import CheckpointError, save_state_dict
from echomimic_core.checkpoints.lora import apply_lora, merge_lora, with_lora
from echomimic_core.config import TransformerConfig
from echomimic_core.model.transformer import EchoMimicTransformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return EchoMimicTransformer(TransformerConfig.preset("tiny_preview"))


def test_kohya_spelling_file_merges_the_expected_delta(model, tmp_path):
    w = model.blocks[1].self_attn.q.weight
    a, b = torch.randn(4, w.shape[1]), torch.randn(w.shape[0], 4)
    path = tmp_path / "style.safetensors"
    save_state_dict(
        {
            "diffusion_model.blocks.1.self_attn.q.lora_down.weight": a,
            "diffusion_model.blocks.1.self_attn.q.lora_up.weight": b,
            "diffusion_model.blocks.1.self_attn.q.alpha": torch.tensor(2.0),
        },
        path,
    )
    before = w.detach().clone()
    assert apply_lora(model, path, strength=0.5) == 1
    torch.testing.assert_close(w.detach(), before + 0.5 * 2.0 / 4 * (b @ a))


def test_lora_for_another_model_is_a_clear_error(model):
    lora = {
        "blocks.99.self_attn.q.lora_A.weight": torch.zeros(2, 3),
        "blocks.99.self_attn.q.lora_B.weight": torch.zeros(3, 2),
    }
    with pytest.raises(CheckpointError, match="does not have"):
        merge_lora(dict(model.named_parameters()), lora)
    with pytest.raises(CheckpointError, match="is this a LoRA file"):
        merge_lora({}, {"blocks.0.self_attn.q.weight": torch.zeros(2, 2)})


def test_merge_into_fp8_weights_saturates_instead_of_nan():
    w = torch.full((2, 3), 400.0).to(torch.float8_e4m3fn)
    lora = {"q.lora_A.weight": torch.ones(1, 3), "q.lora_B.weight": torch.full((2, 1), 100.0)}
    merged = merge_lora({"q.weight": w}, lora)["q.weight"]
    assert merged.dtype == torch.float8_e4m3fn
    assert torch.equal(merged.float(), torch.full((2, 3), 448.0))  # 500 saturates at e4m3's max


def test_with_lora_copies_only_the_changed_layers(model):
    w = model.blocks[0].cross_attn.k.weight
    a, b = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    lora = {
        "diffusion_model.blocks.0.cross_attn.k.lora_A.weight": a,
        "diffusion_model.blocks.0.cross_attn.k.lora_B.weight": b,
    }
    before = w.detach().clone()
    merged = with_lora(model, lora, 0.5)
    torch.testing.assert_close(merged.blocks[0].cross_attn.k.weight.detach(), before + 0.5 * (b @ a))
    assert torch.equal(w.detach(), before)  # the original is untouched
    shared = [n for n, p in merged.named_parameters() if p is dict(model.named_parameters())[n]]
    assert "blocks.0.cross_attn.k.weight" not in shared
    assert len(shared) == len(list(model.parameters())) - 1  # everything else is the same tensor


def test_with_lora_does_not_carry_the_originals_run_state(model):
    """A model that ran in ComfyUI keeps its parked block swap and its memory-manager handle; the
    LoRA copy starts without them (it places itself on its first run), and still merges."""
    model.place("cpu", "cpu", block_swap=1)
    model.park("cpu")
    model.echomimic_patcher = object()
    w = model.blocks[0].cross_attn.k.weight
    a, b = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    merged = with_lora(model, {"blocks.0.cross_attn.k.lora_A.weight": a, "blocks.0.cross_attn.k.lora_B.weight": b})
    assert merged.block_swap == 0 and merged.echomimic_patcher is None
    assert model.block_swap == 1
    torch.testing.assert_close(merged.blocks[0].cross_attn.k.weight.detach(), w.detach() + b @ a)


def test_kohya_flattened_module_names(model):
    w = model.blocks[1].cross_attn.k_img.weight
    a, b = torch.randn(2, w.shape[1]), torch.randn(w.shape[0], 2)
    lora = {
        "lora_unet_blocks_1_cross_attn_k_img.lora_down.weight": a,
        "lora_unet_blocks_1_cross_attn_k_img.lora_up.weight": b,
        "lora_unet_blocks_1_cross_attn_k_img.alpha": torch.tensor(2.0),
    }
    before = w.detach().clone()
    merged = with_lora(model, lora)
    torch.testing.assert_close(merged.blocks[1].cross_attn.k_img.weight.detach(), before + (b @ a))
    with pytest.raises(CheckpointError, match="does not have"):
        with_lora(model, {"lora_unet_blocks_9_ffn_0.lora_down.weight": a, "lora_unet_blocks_9_ffn_0.lora_up.weight": b})
