import torch

from echomimic_core.model import blocks


def test_inference_ffn_split_equals_whole_ffn(monkeypatch, tiny_config_fn, random_model_fn, random_inputs_fn):
    config = tiny_config_fn("preview")  # ffn 48 over dim 32: two parts once widths are capped at 1
    model = random_model_fn(config)
    x, t, cond = random_inputs_fn(config)
    calls = []
    model.blocks[0].ffn[0].register_forward_hook(lambda m, a, out: calls.append(a[0].shape[1]))
    with torch.no_grad():
        whole = model(x, t, cond)
        monkeypatch.setattr(blocks, "FFN_SPLIT_MIN_TOKENS", 1)
        monkeypatch.setattr(blocks, "FFN_HIDDEN_WIDTHS", 1)
        split = model(x, t, cond)
    assert calls == [12, 6, 6]  # 3 latent frames x 4 tokens: whole, then two halves
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6)
