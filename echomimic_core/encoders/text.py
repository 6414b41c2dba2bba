"""umT5-XXL text encoder (Wan's ``T5EncoderModel``) on transformers' ``UMT5EncoderModel``.

Checkpoint layouts read by ``TextEncoder.load``:
  * Wan ``models_t5_umt5-xxl-enc-bf16.pth`` (and kijai's safetensors of it): ``token_embedding``,
    ``blocks.{i}.attn.q``, ``blocks.{i}.ffn.gate.0`` ... (``WAN_TO_HF``);
  * Hugging Face ``UMT5EncoderModel`` folders/files and ComfyUI's ``umt5_xxl_fp16`` /
    ``umt5_xxl_fp8_e4m3fn_scaled`` files (HF names; scaled fp8 de-quantised; the sentencepiece
    model embedded as a ``spiece_model`` uint8 tensor is used as tokenizer when present).

Wan's encoder (``shared_pos=False``) gives every block its own relative position bias; that is
UMT5's layout (every layer has ``relative_attention_bias``), so the weights map one to one. Wan's
FFN is ``fc2(fc1(x) * gelu_tanh(gate(x)))`` = UMT5's gated-gelu ``wo(gelu_new(wi_0 x) * wi_1 x)``.
The attention kernel is replaced by ``wan_t5_attention`` so that scores, bias, mask fill and the
float32 softmax happen exactly as in Wan (HF's eager path takes the softmax in the model dtype).

Precision as upstream runs it: the preview scripts (infer_preview.py, app.py) copy the bf16
release into a float32 model, so the encoder computes in float32; infer_flash.py loads it with
``low_cpu_mem_usage=True, torch_dtype=bf16`` and computes in bfloat16. ``compute_dtype`` picks
either; weights can stay stored in bf16 either way (cast one block at a time).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from ..checkpoints.files import CheckpointError, load_state_dict, save_state_dict, strip_prefix
from ..checkpoints.keytables import KeyTable, rename
from ..checkpoints.quant import FP8_DTYPES, dequantize_scaled_fp8, is_scaled_fp8
from .keymap import assign_weights, guess_family

log = logging.getLogger(__name__)

TEXT_LEN = 512  # Wan pads every prompt to 512 tokens and keeps the real length afterwards
# the dtype each variant's umT5 computes in, as upstream runs it (see the module docstring)
VARIANT_COMPUTE_DTYPES = {"preview": "float32", "flash": "bfloat16"}
ATTENTION_NAME = "echomimic_wan_t5"
SPIECE_KEY = "spiece_model"
_PREFIXES = ("text_encoders.umt5xxl.transformer.", "umt5xxl.transformer.", "text_encoder.", "model.")

WAN_TO_HF: KeyTable = (
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
    ("blocks.{i}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
    ("blocks.{i}.attn.q.weight", "encoder.block.{i}.layer.0.SelfAttention.q.weight"),
    ("blocks.{i}.attn.k.weight", "encoder.block.{i}.layer.0.SelfAttention.k.weight"),
    ("blocks.{i}.attn.v.weight", "encoder.block.{i}.layer.0.SelfAttention.v.weight"),
    ("blocks.{i}.attn.o.weight", "encoder.block.{i}.layer.0.SelfAttention.o.weight"),
    (
        "blocks.{i}.pos_embedding.embedding.weight",
        "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("blocks.{i}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
    ("blocks.{i}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{i}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{i}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
)
_TIED = "encoder.embed_tokens.weight"


# ---------------------------------------------------------------------------------------------
# key conversion


def wan_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan layout -> HF ``UMT5EncoderModel`` names (``shared.weight`` only; the tie is implied)."""
    if "pos_embedding.embedding.weight" in state:
        raise CheckpointError(
            "this Wan T5 checkpoint uses one shared relative position bias (shared_pos=True); "
            "Wan2.1's umT5-XXL has one per block. Use models_t5_umt5-xxl-enc-bf16.pth."
        )
    return rename(state, WAN_TO_HF, what="Wan umT5 checkpoint")


def hf_to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``UMT5EncoderModel`` names -> Wan layout (the tied ``encoder.embed_tokens`` copy dropped)."""
    state = dict(state)
    tied = state.pop(_TIED, None)
    if "shared.weight" not in state and tied is not None:
        state["shared.weight"] = tied
    return rename(state, WAN_TO_HF, reverse=True, what="umT5 checkpoint (Hugging Face names)")


def detect_layout(keys) -> str:
    """``"wan"`` or ``"hf"``; anything else is the wrong file for the text-encoder slot."""
    keys = set(keys)
    if "token_embedding.weight" in keys and "blocks.0.ffn.gate.0.weight" in keys:
        return "wan"
    if ("shared.weight" in keys or _TIED in keys) and "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in keys:
        if (
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in keys
            and "encoder.block.1.layer.0.SelfAttention.q.weight" in keys
        ):
            raise CheckpointError(
                "this is a T5 v1.1 encoder (one position bias in block 0, e.g. t5xxl_fp16 for "
                "Flux/SD3), not umT5-XXL. Select umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled or "
                "Wan's models_t5_umt5-xxl-enc-bf16.pth."
            )
        return "hf"
    raise CheckpointError(
        f"expected a umT5-XXL text encoder (Wan's models_t5_umt5-xxl-enc-bf16.pth or ComfyUI's "
        f"umt5_xxl_*.safetensors), but this file looks like {guess_family(keys)}. "
        "Select the umT5 text-encoder file for this input."
    )


def config_from_hf_state(state: dict[str, torch.Tensor]):
    """The ``UMT5Config`` the weights imply (vocab, widths, heads from the bias table, depth)."""
    from transformers import UMT5Config

    emb = state.get("shared.weight", state.get(_TIED))
    bias = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    q = state["encoder.block.0.layer.0.SelfAttention.q.weight"]
    num_buckets, num_heads = bias.shape
    num_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    return UMT5Config(
        vocab_size=emb.shape[0],
        d_model=emb.shape[1],
        d_kv=q.shape[0] // num_heads,
        d_ff=state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )


# ---------------------------------------------------------------------------------------------
# attention exactly as Wan computes it


def wan_t5_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_bias=None, **kwargs
):
    """query/key/value: [B, heads, L, head_dim]; returns ([B, L, heads, head_dim], None).

    Wan: bias = pos_bias with masked keys set to finfo.min; scores = q.k (no scaling) + bias;
    softmax in float32, cast back; einsum layouts as in Wan so the same kernels run.
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, L, heads, head_dim]
    b, n, lq, lk = q.size(0), q.size(2), q.size(1), k.size(1)
    bias = q.new_zeros(b, n, lq, lk)
    if position_bias is not None:
        bias = bias + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend
            bias = bias.masked_fill(~attention_mask, torch.finfo(q.dtype).min)
        else:  # additive 0 / finfo.min
            bias = bias.masked_fill(attention_mask < 0, torch.finfo(q.dtype).min)
    attn = torch.einsum("binc,bjnc->bnij", q, k) + bias
    attn = torch.softmax(attn.float(), dim=-1).type_as(attn)
    return torch.einsum("bnij,bjnc->binc", attn, v), None


def _register_attention() -> str:
    """Register the Wan kernel with transformers 5; 4.x's UMT5 computes attention itself, already
    with a float32 softmax (checked bit-exact against Wan's formulas with 4.51)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        log.debug("transformers without attention/mask interfaces: UMT5's own attention is used.")
        return "eager"
    AttentionInterface.register(ATTENTION_NAME, wan_t5_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _is_matrix(key: str) -> bool:
    """The big tensors (projections, token table) that may be stored below the compute dtype."""
    return key == "shared.weight" or key.endswith(
        (".q.weight", ".k.weight", ".v.weight", ".o.weight", ".wi_0.weight", ".wi_1.weight", ".wo.weight")
    )


def upcast_during_forward(module: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Parameters stored in another dtype are cast to ``compute_dtype`` for this module's forward
    only and restored after, so a block at a time exists at full precision."""

    def before(mod, args):
        after(mod, args, None)  # a forward that raised never ran ``after``: restore first
        for p in mod.parameters():
            if p.dtype != compute_dtype:
                mod._stored_params.append((p, p.data))
                p.data = p.data.to(compute_dtype)

    def after(mod, args, output):
        for p, stored in mod._stored_params:
            p.data = stored
        mod._stored_params = []

    module._stored_params = []
    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def build_model(
    state_hf: dict[str, torch.Tensor], dtype: torch.dtype | None, device, compute_dtype: torch.dtype = torch.float32
):
    """A ``UMT5EncoderModel`` built on the meta device and given the tensors (no 2x RAM peak).

    ``dtype``: storage of the projection matrices and token table (None: as in the file);
    norms and position biases are kept in ``compute_dtype``. Upstream loads the bf16 release
    into a float32 model, so bf16 storage + float32 compute reproduces it at half the memory.
    """
    from transformers import UMT5EncoderModel

    config = config_from_hf_state(state_hf)
    config._attn_implementation = _register_attention()
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    emb = state_hf.get("shared.weight", state_hf.get(_TIED))
    weights = {k: v for k, v in state_hf.items() if k != _TIED}
    weights["shared.weight"] = emb
    weights = {
        k: v.to(device=device, dtype=(dtype or v.dtype) if _is_matrix(k) else compute_dtype) for k, v in weights.items()
    }
    weights[_TIED] = weights["shared.weight"]
    assign_weights(model, weights, "umT5 weights", "The file is incomplete or not a umT5-XXL encoder.")
    if weights["shared.weight"].dtype != compute_dtype:
        # the lookup is exact in either dtype: cast the looked-up rows, not the whole table
        model.encoder.embed_tokens.register_forward_hook(lambda m, a, out: out.to(compute_dtype))
    if any(p.dtype != compute_dtype for p in model.encoder.block.parameters()):
        for block in model.encoder.block:
            upcast_during_forward(block, compute_dtype)
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# tokenizer


def tokenizer_from_spiece(proto: bytes):
    """The HF umT5 tokenizer (``</s>`` appended, pad 0) built from a sentencepiece model."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(proto)
        # from_pretrained converts the sentencepiece model into the same fast tokenizer HF ships
        return T5Tokenizer.from_pretrained(tmp, extra_ids=0, local_files_only=True)


def load_tokenizer(path: str | Path):
    """A tokenizer from a folder (``google/umt5-xxl`` layout) or a sentencepiece ``.model`` file."""
    path = Path(path)
    if path.is_file():
        return tokenizer_from_spiece(path.read_bytes())
    if not (path / "tokenizer_config.json").is_file() and (path / "spiece.model").is_file():
        return tokenizer_from_spiece((path / "spiece.model").read_bytes())
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _find_tokenizer_near(path: Path) -> Path | None:
    """A tokenizer shipped beside the weights (HF folder, or a diffusers ``tokenizer/`` sibling)."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent / "tokenizer", folder / "google" / "umt5-xxl"):
        if (candidate / "tokenizer.json").is_file() or (candidate / "spiece.model").is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# the encoder


def read_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32):
    """(HF-layout state dict, embedded sentencepiece bytes or None) from any supported file."""
    raw = load_state_dict(path)
    spiece = next((raw.pop(k) for k in list(raw) if k.rsplit(".", 1)[-1] == SPIECE_KEY), None)
    if is_scaled_fp8(raw):  # before prefix stripping: the marker tensor carries no prefix
        raw = dequantize_scaled_fp8(raw, dtype)
    # plain fp8 casts (no scales) and any unscaled fp8 leftovers: torch cannot compute in fp8
    raw = {k: v.to(dtype) if v.dtype in FP8_DTYPES else v for k, v in raw.items()}
    raw = strip_prefix(raw, _PREFIXES)
    if detect_layout(raw) == "wan":
        state = wan_to_hf(raw)
    else:  # a full UMT5 (encoder-decoder) checkpoint also works: only the encoder is used
        state = {k: v for k, v in raw.items() if k.startswith(("shared.", "encoder."))}
    proto = bytes(spiece.cpu().to(torch.uint8).numpy().tobytes()) if spiece is not None else None
    return state, proto


class TextEncoder:
    """Prompts -> per-prompt umT5 embeddings ``[L_real, dim]``, as Wan feeds the transformer."""

    def __init__(self, model, tokenizer=None, text_len: int = TEXT_LEN):
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = text_len

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the embeddings it returns (the compute dtype)."""
        return self.model.encoder.final_layer_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @classmethod
    def load(
        cls,
        path: str | Path,
        tokenizer_path: str | Path | None = None,
        dtype: torch.dtype | None = None,
        device="cpu",
        text_len: int = TEXT_LEN,
        compute_dtype: torch.dtype = torch.float32,
    ) -> TextEncoder:
        """Any supported umT5 checkpoint; the tokenizer from ``tokenizer_path``, the file's
        embedded ``spiece_model``, or a tokenizer folder beside the weights (in that order).

        ``dtype``: storage of the large matrices (None: as in the file; scaled fp8 -> bf16).
        ``compute_dtype``: float32 reproduces upstream (which runs the bf16 release in a float32
        model); bfloat16 is faster and lighter on activations, not bit-exact.
        """
        state, proto = read_checkpoint(path, dtype or torch.bfloat16)
        if tokenizer_path is not None:
            tokenizer = load_tokenizer(tokenizer_path)
        elif proto is not None:
            tokenizer = tokenizer_from_spiece(proto)
        else:
            near = _find_tokenizer_near(Path(path))
            tokenizer = load_tokenizer(near) if near is not None else None
        if tokenizer is None:
            log.info("%s carries no tokenizer and none was given; encode() will need one.", path)
        return cls(build_model(state, dtype, device, compute_dtype), tokenizer, text_len)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask ``[B, text_len]``: padded to ``text_len`` and truncated there, ``</s>`` added."""
        if self.tokenizer is None:
            raise RuntimeError(
                "this text encoder has no tokenizer: its file embeds none. Load it with "
                "tokenizer_path=<google/umt5-xxl tokenizer folder or spiece.model>."
            )
        out = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        full = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        for prompt, ids in zip(prompts, full):
            if len(ids) > self.text_len:
                log.warning("prompt truncated to %d tokens: %r...", self.text_len, prompt[:60])
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def forward_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask: [B, L] -> final-norm hidden states [B, L, dim] (padded positions included)."""
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.last_hidden_state

    def encode(self, prompts: list[str] | str, pad_to_text_len: bool = True) -> list[torch.Tensor]:
        """One ``[L_real, dim]`` tensor per prompt.

        ``pad_to_text_len=True`` runs all ``text_len`` (512) positions as Wan does. False runs only
        up to the longest prompt: the masked padding never reaches the real tokens, so results
        agree to float rounding (~1e-6 relative) at a fraction of the cost (CPU offload).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids, mask = self.tokenize(prompts)
        lengths = mask.gt(0).sum(dim=1)
        if not pad_to_text_len:
            longest = int(lengths.max())
            ids, mask = ids[:, :longest], mask[:, :longest]
        hidden = self.forward_ids(ids, mask)
        return [h[:n] for h, n in zip(hidden, lengths.tolist())]

    def to(self, device) -> TextEncoder:
        """Move the weights (e.g. offload to the CPU between uses)."""
        self.model.to(device)
        return self


def save_comfy_file(state_hf: dict[str, torch.Tensor], path: str | Path, spiece_proto: bytes | None = None) -> None:
    """Write HF-named weights (+ embedded tokenizer) the way ComfyUI's umt5 files are laid out."""
    out = {k: v for k, v in state_hf.items() if k != _TIED}
    if spiece_proto is not None:
        out[SPIECE_KEY] = torch.frombuffer(bytearray(spiece_proto), dtype=torch.uint8)
    save_state_dict(out, path)


# ---------------------------------------------------------------------------------------------
# parity fixture


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """umt5_* fixtures: Wan-layout weights through every supported route vs the upstream output."""
    from safetensors.torch import load_file

    from ..verify_reference import relative_error

    data = load_file(str(path))
    wan = {k[len("weight.") :]: v for k, v in data.items() if k.startswith("weight.")}
    ids, mask, ref = data["input.ids"], data["input.mask"], data["output"]
    hf = wan_to_hf(wan)
    errors = {"wan->hf": relative_error(TextEncoder(build_model(hf, torch.float32, "cpu")).forward_ids(ids, mask), ref)}
    back = wan_to_hf(hf_to_wan(hf))
    errors["wan->hf->wan->hf"] = relative_error(
        TextEncoder(build_model(back, torch.float32, "cpu")).forward_ids(ids, mask), ref
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, weights in (("comfy_file", hf), ("wan_file", wan)):
            file = Path(tmp) / f"{name}.safetensors"
            (save_comfy_file(weights, file) if name == "comfy_file" else save_state_dict(weights, file))
            enc = TextEncoder.load(file, dtype=torch.float32)
            errors[f"{name}->load"] = relative_error(enc.forward_ids(ids, mask), ref)
    return errors
