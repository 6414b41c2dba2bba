"""What the encoder loaders share: naming a wrong file's model family, and exact weight assignment.

Their key tables (Wan <-> Hugging Face names) use :mod:`echomimic_core.checkpoints.keytables`.
"""

from __future__ import annotations

import torch

from ..checkpoints.files import CheckpointError

# One distinctive key per model family, used to say what a wrong file actually is.
_FAMILY_SIGNS = (
    ("a Wan2.1 VAE", ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma")),
    ("a Wan / EchoMimic diffusion transformer", ("patch_embedding.weight", "blocks.0.self_attn.q.weight")),
    ("a CLIP vision model (Hugging Face layout)", ("vision_model.encoder.layers.0.layer_norm1.weight",)),
    ("an open-clip visual tower (Wan layout)", ("visual.transformer.0.attn.to_qkv.weight",)),
    ("a umT5 text encoder (Hugging Face layout)", ("encoder.block.0.layer.0.SelfAttention.q.weight",)),
    ("a umT5 text encoder (Wan layout)", ("blocks.0.ffn.gate.0.weight",)),
    (
        "a wav2vec2 audio encoder",
        ("feature_projection.projection.weight", "wav2vec2.feature_projection.projection.weight"),
    ),
    ("a Whisper model", ("encoder.embed_positions.weight",)),
)


def guess_family(keys) -> str:
    """A human description of what a state dict looks like, for error messages."""
    keys = set(keys)
    for name, signs in _FAMILY_SIGNS:
        if any(any(k == s or k.endswith("." + s) for k in keys) for s in signs):
            return name
    sample = sorted(keys)[:3]
    return f"an unrecognised model (keys such as {sample})"


def assign_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, hint: str, optional: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``model`` (built on the meta device) by assignment, exactly.

    Every key, name and shape, must match, else one :class:`CheckpointError` lists the missing,
    unexpected and mis-shaped tensors and ends with ``hint`` (what to do). ``optional`` keys may be
    absent (tensors inference never reads) and are filled with zeros. Assigning rather than copying
    skips the random init and a second copy of the weights in RAM.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{what} do not fit the model built for them: missing {len(missing)} {missing[:5]}, "
            f"unexpected {len(unexpected)} {unexpected[:5]}, wrong shapes {mismatched[:3]}. {hint}"
        )
    state = dict(state)
    for key in set(own) - set(state):
        state[key] = torch.zeros(own[key].shape, dtype=own[key].dtype)
    model.load_state_dict(state, strict=True, assign=True)
