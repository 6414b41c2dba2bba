"""Audio encoders: wav2vec2-base-960h (preview), chinese-wav2vec2-base (flash), Whisper (paper).

All three run on transformers' own modules (``Wav2Vec2Model``, ``WhisperEncoder``); this module
adds the feature paths EchoMimicV3 uses and the loading of every file layout users have.

Feature paths (``AudioEncoder.features_for_video``), waveform = mono 16 kHz:

* ``preview``: feature-extractor normalisation (``do_normalize=True``: zero mean, unit variance
  over the whole clip), ``last_hidden_state`` at 50 Hz of the whole clip, then two tokens per
  video frame (``audio_alignment.tokens_for_frames``) -> ``[1, 2F, D]``.
* ``flash``: loudness normalised to -23 LUFS (pyloudnorm, switchable), trimmed / padded to the
  video's span, no waveform normalisation, CNN features linearly interpolated to ``F`` steps
  *before* the projection and transformer layers, the outputs of every transformer layer
  stacked ``[F, layers, D]``, then the 5-frame centred windows -> ``[1, F, 5, layers, D]``.
* ``whisper``: log-mel (``WhisperFeatureExtractor``) of 30 s chunks, encoder
  ``last_hidden_state`` at 50 Hz with each chunk's padding dropped, then two tokens per frame
  like preview -> ``[1, 2F, D]``.

Pad / trim rules: preview and whisper encode the whole clip (upstream preview encodes the whole
file; later audio changes earlier wav2vec2 features, so trimming first would not reproduce it)
and pad it with trailing silence only when it is too short to give the last frame's tokens;
flash trims to the video span exactly as upstream does (``floor(F / fps * 16000)`` samples) and
pads with silence when short.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .. import audio_alignment as align
from ..checkpoints.files import CheckpointError, load_state_dict
from ..config import AUDIO_KINDS
from ..media import prepare_audio
from .keymap import assign_weights, guess_family

log = logging.getLogger(__name__)

_KIND_ALIASES = {"whisper_tiny": "whisper"}  # the transformer preset's name for the paper's variant
LOUDNESS_TARGET_LUFS = -23.0
WHISPER_HOP = 160  # mel hop; the encoder's two convolutions halve 100 Hz mel to 50 Hz states
WAV2VEC2_HOP = 320  # samples per 50 Hz feature (product of the CNN strides)
WAV2VEC2_RECEPTIVE_FIELD = 400  # samples the first CNN feature needs

# ---------------------------------------------------------------------------------------------
# key layouts (data): what to strip, drop and rename to reach transformers' module names

# wav2vec2: HF Wav2Vec2Model (bare), Wav2Vec2ForCTC / ForPreTraining (``wav2vec2.`` + heads),
# ComfyUI audio_encoders files (bare or ``wav2vec2.``), old weight_norm names.
WAV2VEC2_PREFIXES = ("wav2vec2.", "model.", "audio_encoder.")
WAV2VEC2_HEAD_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "dropout_features.")
WAV2VEC2_RENAMES = (
    ("encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
)
WAV2VEC2_OPTIONAL = ("masked_spec_embed",)  # training-only mask embedding; absent from some files
# Whisper: WhisperForConditionalGeneration / WhisperModel (``model.encoder.``), ComfyUI
# (``encoder.``), or an encoder-only file (bare). Only the encoder is kept.
WHISPER_PREFIXES = ("model.encoder.", "encoder.", "")
WHISPER_SIGN = "conv1.weight"
WAV2VEC2_SIGN = "feature_projection.projection.weight"


def normalize_kind(kind: str | None) -> str | None:
    if kind is None:
        return None
    kind = _KIND_ALIASES.get(kind, kind)
    if kind not in AUDIO_KINDS:
        raise ValueError(f"audio encoder kind must be one of {AUDIO_KINDS} (or None to detect), got {kind!r}.")
    return kind


def detect_family(state: dict[str, torch.Tensor]) -> str:
    """``"wav2vec2"`` or ``"whisper"`` from the tensor names; a clear error for anything else."""
    for key in state:
        if key.endswith(WAV2VEC2_SIGN):
            return "wav2vec2"
    for key in state:
        if key.endswith("embed_positions.weight") and any(k.endswith(WHISPER_SIGN) for k in state):
            return "whisper"
    raise CheckpointError(
        f"expected a wav2vec2 or Whisper audio encoder, found {guess_family(state.keys())}. "
        "Pick the audio encoder file (e.g. chinese-wav2vec2-base, wav2vec2-base-960h, whisper-tiny)."
    )


def wav2vec2_state(state: dict[str, torch.Tensor], target_keys=None) -> dict[str, torch.Tensor]:
    """Any wav2vec2 checkpoint -> transformers ``Wav2Vec2Model`` names (heads dropped).

    ``target_keys`` (the model's own names) picks between the two spellings of the positional
    convolution's weight norm when the installed transformers still uses the old one.
    """
    prefix = next((p for p in WAV2VEC2_PREFIXES if any(k.startswith(p + WAV2VEC2_SIGN) for k in state)), "")
    out = {}
    for key, value in state.items():
        if prefix and key.startswith(prefix):
            key = key[len(prefix) :]
        elif prefix:
            continue  # heads beside the prefixed encoder (lm_head, quantizer, ...)
        if key.startswith(WAV2VEC2_HEAD_PREFIXES):
            continue
        out[key] = value
    renames = WAV2VEC2_RENAMES
    if target_keys is not None and not any("parametrizations" in k for k in target_keys):
        renames = tuple((b, a) for a, b in WAV2VEC2_RENAMES)
    for old, new in renames:
        if old in out:
            out[new] = out.pop(old)
    return out


def whisper_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any Whisper checkpoint -> transformers ``WhisperEncoder`` names (decoder dropped)."""
    for prefix in WHISPER_PREFIXES:
        if prefix + WHISPER_SIGN in state:
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    raise CheckpointError("no Whisper encoder weights (conv1.weight) found in the checkpoint.")


def _layer_count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in state for m in [rx.match(k)] if m}
    return max(idx) + 1 if idx else 0


def wav2vec2_config_from_state(state: dict[str, torch.Tensor]):
    """Infer a ``Wav2Vec2Config`` from tensor shapes (single-file checkpoints carry no config).

    Sizes come from shapes; what shapes cannot show follows the released models: CNN strides
    ``(5, 2, 2, 2, 2, 2, 2)``, 64-wide attention heads, and "layer"-normed CNNs (large / lv60 /
    XLS-R) use the stable (pre-norm) encoder, "group"-normed ones (base, large-960h) do not.
    """
    from transformers import Wav2Vec2Config

    hidden = state["encoder.layer_norm.weight"].shape[0]
    n_conv = _layer_count(state, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight")
    if n_conv != 7:
        raise CheckpointError(f"expected a wav2vec2 CNN of 7 convolution layers, found {n_conv}.")
    convs = [state[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(n_conv)]
    layer_norm_cnn = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    pos = state.get(
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        state.get("encoder.pos_conv_embed.conv.weight_v", state.get("encoder.pos_conv_embed.conv.weight")),
    )
    if pos is None:
        raise CheckpointError("wav2vec2 checkpoint has no positional convolution weight.")
    return Wav2Vec2Config(
        hidden_size=hidden,
        num_hidden_layers=_layer_count(state, r"encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=state["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        conv_dim=tuple(int(w.shape[0]) for w in convs),
        conv_kernel=tuple(int(w.shape[-1]) for w in convs),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias="feature_extractor.conv_layers.1.conv.bias" in state,
        feat_extract_norm="layer" if layer_norm_cnn else "group",
        do_stable_layer_norm=layer_norm_cnn,
        num_conv_pos_embeddings=int(pos.shape[-1]),
        num_conv_pos_embedding_groups=hidden // int(pos.shape[1]),
        mask_time_prob=0.05 if "masked_spec_embed" in state else 0.0,
    )


def whisper_config_from_state(state: dict[str, torch.Tensor]):
    """Infer a ``WhisperConfig`` (encoder part) from an encoder state dict's shapes."""
    from transformers import WhisperConfig

    positions, d_model = state["embed_positions.weight"].shape
    layers = _layer_count(state, r"layers\.(\d+)\.")
    return WhisperConfig(
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=1,
        encoder_attention_heads=max(1, d_model // 64),
        decoder_attention_heads=max(1, d_model // 64),
        encoder_ffn_dim=state["layers.0.fc1.weight"].shape[0],
        num_mel_bins=state["conv1.weight"].shape[1],
        max_source_positions=positions,
    )


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-download it or delete it.") from e


def _guess_wav2vec2_kind(path: Path, raw_keys, preprocessor: dict | None) -> str:
    if preprocessor is not None and "do_normalize" in preprocessor:
        return "preview" if preprocessor["do_normalize"] else "flash"
    name = path.name.lower()  # the file / folder itself, not the folders above it
    if "chinese" in name:
        return "flash"
    if "960h" in name or any(k.startswith("lm_head.") for k in raw_keys):
        return "preview"
    raise CheckpointError(
        f"{path}: a wav2vec2 encoder, but nothing tells whether it is preview's wav2vec2-base-960h "
        "or flash's chinese-wav2vec2-base (no preprocessor_config.json, no telling file name). "
        "Pass kind='preview' or kind='flash' to match the transformer you use."
    )


def _load_into(
    model: torch.nn.Module, state: dict[str, torch.Tensor], what: Path, optional: tuple[str, ...] = ()
) -> None:
    assign_weights(
        model,
        state,
        f"{what}: the audio encoder weights",
        "The file is probably a different model or its config.json belongs to another checkpoint.",
        optional,
    )
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{what}: tensors {still_meta[:5]} were not provided by the file.")


class AudioEncoder:
    """One audio encoder and the feature path of the EchoMimicV3 variant it feeds.

    Build with :meth:`load` (files) or directly from a transformers module (tests, training).
    """

    def __init__(self, model: torch.nn.Module, kind: str, feature_extractor=None, loudness_norm: bool | None = None):
        self.kind = normalize_kind(kind)
        self.model = model.eval().requires_grad_(False)
        if feature_extractor is None:
            feature_extractor = self.default_feature_extractor(self.kind, model.config)
        self.feature_extractor = feature_extractor
        self.loudness_norm = (self.kind == "flash") if loudness_norm is None else loudness_norm

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def default_feature_extractor(kind: str, config):
        """Upstream's preprocessors when a folder brings no preprocessor_config.json."""
        if kind == "whisper":
            from transformers import WhisperFeatureExtractor

            # the encoder's fixed input (max_source_positions states = 30 s for released models)
            seconds = config.max_source_positions * 2 * WHISPER_HOP // align.SAMPLE_RATE
            return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=seconds)
        from transformers import Wav2Vec2FeatureExtractor

        return Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=align.SAMPLE_RATE,
            padding_value=0.0,
            do_normalize=(kind == "preview"),
            return_attention_mask=False,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        kind: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        loudness_norm: bool | None = None,
    ) -> AudioEncoder:
        """Load a Hugging Face folder (config.json + weights, preprocessor_config.json optional) or a
        single file (e.g. ComfyUI ``audio_encoders/wav2vec2-chinese-base_fp16.safetensors``).

        ``kind``: "preview", "flash" or "whisper"; None detects it (Whisper from the tensor names;
        wav2vec2 from ``do_normalize`` in preprocessor_config.json, else the file name).
        """
        from transformers import (
            Wav2Vec2Config,
            Wav2Vec2FeatureExtractor,
            Wav2Vec2Model,
            WhisperConfig,
            WhisperFeatureExtractor,
        )
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        path = Path(path)
        kind = normalize_kind(kind)
        folder = path if path.is_dir() else None
        config_json = _read_json(folder / "config.json") if folder else None
        preprocessor = _read_json(folder / "preprocessor_config.json") if folder else None
        raw = load_state_dict(path)
        family = detect_family(raw)
        if family == "whisper":
            if kind not in (None, "whisper"):
                raise CheckpointError(
                    f"{path}: is a Whisper encoder, but kind={kind!r} needs a wav2vec2 "
                    "encoder. Pick the wav2vec2 file, or use kind='whisper'."
                )
            kind = "whisper"
            state = whisper_encoder_state(raw)
            config = WhisperConfig(**config_json) if config_json else whisper_config_from_state(state)
            with torch.device("meta"):
                model = WhisperEncoder(config)
            _load_into(model, state, path)
            fe = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True) if preprocessor else None
        else:
            if kind == "whisper":
                raise CheckpointError(
                    f"{path}: is a wav2vec2 encoder, but kind='whisper' was asked for. "
                    "Pick the Whisper file, or use kind='preview'/'flash'."
                )
            kind = kind or _guess_wav2vec2_kind(path, raw.keys(), preprocessor)
            state = wav2vec2_state(raw)
            config = Wav2Vec2Config(**config_json) if config_json else wav2vec2_config_from_state(state)
            with torch.device("meta"):
                model = Wav2Vec2Model(config)
            state = wav2vec2_state(raw, target_keys=model.state_dict().keys())
            _load_into(model, state, path, optional=WAV2VEC2_OPTIONAL)
            # A folder's own preprocessor settings win (upstream reads them with from_pretrained).
            fe = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True) if preprocessor else None
        del raw
        model = model.to(device=device, dtype=dtype)
        log.info(
            "loaded %s audio encoder from %s (%d layers, width %d)",
            kind,
            path,
            cls._layers_of(model),
            cls._width_of(model),
        )
        return cls(model, kind, feature_extractor=fe, loudness_norm=loudness_norm)

    @staticmethod
    def _layers_of(model) -> int:
        return len(model.layers) if hasattr(model, "layers") else len(model.encoder.layers)

    @staticmethod
    def _width_of(model) -> int:
        return model.config.d_model if hasattr(model.config, "d_model") else model.config.hidden_size

    # -- properties ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Feature width D (768 for wav2vec2-base, 384 for Whisper-Tiny)."""
        return self._width_of(self.model)

    @property
    def num_layers(self) -> int:
        return self._layers_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> AudioEncoder:
        """Move / cast the encoder (e.g. offload to the CPU between runs); returns self."""
        self.model.to(device=device, dtype=dtype)
        return self

    # -- feature paths ------------------------------------------------------------------------

    def _preprocess_wav2vec2(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[T]`` -> ``[1, T]`` model input through the (HF) feature extractor's normalisation."""
        values = self.feature_extractor(
            waveform.numpy().astype(np.float32), sampling_rate=align.SAMPLE_RATE
        ).input_values
        return torch.from_numpy(np.asarray(values[0], dtype=np.float32)).reshape(1, -1)

    def _run_encoder_layers(self, features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """CNN features ``[1, T, C]`` -> (last hidden state, each transformer layer's output).

        The outputs are read with forward hooks so the result does not depend on how a
        transformers version assembles ``hidden_states``; the last entry is the encoder output
        (after the final norm for pre-norm models), matching transformers 4.x ``hidden_states[1:]``.
        """
        layer_outputs: list[torch.Tensor] = []

        def grab(_module, _inputs, output):
            layer_outputs.append(output[0] if isinstance(output, tuple) else output)

        hidden, _ = self.model.feature_projection(features.to(self.dtype))
        hooks = [layer.register_forward_hook(grab) for layer in self.model.encoder.layers]
        try:
            last = self.model.encoder(hidden)[0]
        finally:
            for h in hooks:
                h.remove()
        layer_outputs[-1] = last
        return last, layer_outputs

    @torch.inference_mode()
    def wav2vec2_50hz(self, waveform: torch.Tensor) -> torch.Tensor:
        """preview path before alignment: ``[T]`` 16 kHz -> ``last_hidden_state [1, T50, D]``."""
        values = self._preprocess_wav2vec2(waveform).to(self.device, self.dtype)
        cnn = self.model.feature_extractor(values).transpose(1, 2)  # [1, T50, C]
        last, _ = self._run_encoder_layers(cnn)
        return last.float()

    @torch.inference_mode()
    def flash_per_frame(self, waveform: torch.Tensor, num_frames: int) -> torch.Tensor:
        """flash path before windows: ``[T]`` 16 kHz (already trimmed) -> ``[F, layers, D]``."""
        values = self._preprocess_wav2vec2(waveform).to(self.device, self.dtype)
        cnn = self.model.feature_extractor(values).transpose(1, 2)  # [1, T50, C]
        cnn = align.interpolate_to_length(cnn.float(), num_frames)  # [1, F, C]
        _, layers = self._run_encoder_layers(cnn)
        return torch.stack(layers, dim=2)[0].float()  # [F, layers, D]

    @torch.inference_mode()
    def whisper_50hz(self, waveform: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
        """Whisper path before alignment: ``[T]`` 16 kHz -> encoder states ``[1, T50, D]``.

        The encoder only takes fixed 30 s windows, so the clip is cut into 30 s chunks (each
        padded to 30 s by the feature extractor) and each chunk keeps ``ceil(samples / 320)``
        states (its padding's states are dropped).
        """
        chunk = self.feature_extractor.n_samples
        expected = self.model.config.max_source_positions * 2
        if self.feature_extractor.nb_max_frames != expected:
            raise ValueError(
                f"the Whisper feature extractor makes {self.feature_extractor.nb_max_frames} mel frames "
                f"per window but this encoder takes {expected}; its preprocessor_config.json "
                "belongs to another model."
            )
        pieces = [waveform[i : i + chunk] for i in range(0, max(1, waveform.shape[0]), chunk)]
        outs = []
        for b in range(0, len(pieces), batch_size):
            batch = pieces[b : b + batch_size]
            feats = self.feature_extractor(
                [p.numpy().astype(np.float32) for p in batch], sampling_rate=align.SAMPLE_RATE, return_tensors="pt"
            )
            states = self.model(feats.input_features.to(self.device, self.dtype)).last_hidden_state
            for p, s in zip(batch, states):
                outs.append(s[: max(1, math.ceil(p.shape[0] / WAV2VEC2_HOP))])
        return torch.cat(outs, dim=0).unsqueeze(0).float()

    def loudness_normalize(self, waveform: torch.Tensor) -> torch.Tensor:
        """-23 LUFS integrated loudness (upstream flash); silent or too-short clips pass through."""
        import pyloudnorm as pyln

        data = waveform.numpy().astype(np.float32)
        meter = pyln.Meter(align.SAMPLE_RATE)
        try:
            loudness = meter.integrated_loudness(data)
        except ValueError as e:  # shorter than one 400 ms gating block
            log.debug("loudness normalisation skipped: %s", e)
            return waveform
        if abs(loudness) > 100:  # digital silence measures -inf/-70: upstream leaves it alone
            return waveform
        with warnings.catch_warnings():
            # quiet clips gain above 1.0 peaks; upstream keeps them unclipped, and so do we
            warnings.filterwarnings("ignore", message="Possible clipped samples")
            out = pyln.normalize.loudness(data, loudness, LOUDNESS_TARGET_LUFS)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def _samples_for_tokens(self, num_frames: int, fps: float) -> int:
        """Fewest samples whose 50 Hz features reach the last token of ``num_frames`` frames.

        Shorter clips are padded with silence to this length, and only then: a clip that
        already reaches it is encoded untouched (as upstream does), so padding never shifts
        the waveform normalisation of a clip upstream could encode as is.
        """
        last = (
            Fraction(align.AUDIO_TOKENS_PER_FRAME * num_frames - 1)
            * align.FEATURE_RATE
            / (align.AUDIO_TOKENS_PER_FRAME * align.as_fraction(fps))
        )
        states = -(-last.numerator // last.denominator) + 1  # ceil(last) + 1 features
        if self.kind == "whisper":  # a chunk of n samples keeps ceil(n / 320) states
            return states * WAV2VEC2_HOP
        return WAV2VEC2_RECEPTIVE_FIELD + WAV2VEC2_HOP * (states - 1)  # CNN: floor((n-400)/320)+1

    def features_for_video(
        self,
        waveform: torch.Tensor,
        num_frames: int,
        fps: float,
        sample_rate: int = align.SAMPLE_RATE,
        loudness_norm: bool | None = None,
    ) -> torch.Tensor:
        """Audio -> the exact input the transformer consumes for ``num_frames`` frames at ``fps``.

        ``waveform``: ``[T]``, ``[C, T]`` or ``[B, C, T]`` at ``sample_rate`` (mono-mixed and
        resampled to 16 kHz here). Returns float32 on the encoder's device:
        preview / whisper ``[1, 2F, D]``, flash ``[1, F, 5, layers, D]`` (see the module doc
        for the pad / trim rules and ``audio_alignment.tokens_for_frames`` for other fps).
        ``loudness_norm``: flash's -23 LUFS normalisation for this call (None: the encoder's setting).
        """
        wav = self.prepared_waveform(waveform, num_frames, fps, sample_rate, loudness_norm)
        if self.kind == "flash":
            return align.flash_windows(self.flash_per_frame(wav, num_frames))
        feats = self.whisper_50hz(wav) if self.kind == "whisper" else self.wav2vec2_50hz(wav)
        return align.tokens_for_frames(feats, num_frames, fps)

    def prepared_waveform(
        self,
        waveform: torch.Tensor,
        num_frames: int,
        fps: float,
        sample_rate: int = align.SAMPLE_RATE,
        loudness_norm: bool | None = None,
    ) -> torch.Tensor:
        """The mono 16 kHz ``[T]`` clip :meth:`features_for_video` encodes for ``num_frames``
        frames: flash loudness-normalised and cut / padded to the video's span, preview and
        whisper padded with silence when too short (see the module docstring)."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
        wav = prepare_audio(waveform, sample_rate).cpu()
        if self.kind == "flash":
            if self.loudness_norm if loudness_norm is None else loudness_norm:
                wav = self.loudness_normalize(wav)
            return align.fit_audio(wav, align.samples_for_frames(num_frames, fps))
        return align.pad_audio_to(wav, self._samples_for_tokens(num_frames, fps))

    # -- pieces of the wav2vec2 / Whisper passes, for encoding in windows (audio_windows) ------

    def model_values(self, waveform: torch.Tensor) -> torch.Tensor:
        """wav2vec2: ``[T]`` -> the model input ``[T]`` (the feature extractor's whole-clip
        normalisation, when it has one); Whisper takes the waveform as it is."""
        if self.kind == "whisper":
            return waveform
        return self._preprocess_wav2vec2(waveform)[0]

    def cnn_geometry(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(kernels, strides) of the wav2vec2 feature extractor's convolutions."""
        layers = self.model.feature_extractor.conv_layers
        return tuple(layer.conv.kernel_size[0] for layer in layers), tuple(layer.conv.stride[0] for layer in layers)

    def cnn_length(self, samples: int) -> int:
        """50 Hz features the CNN makes from ``samples`` input samples (0 if too short)."""
        length = samples
        for kernel, stride in zip(*self.cnn_geometry()):
            length = (length - kernel) // stride + 1 if length >= kernel else 0
        return max(length, 0)

    def cnn_span(self, start: int, stop: int) -> tuple[int, int]:
        """Input samples [a, b) that exactly produce CNN features [start, stop)."""
        kernels, strides = self.cnn_geometry()
        hop, field = 1, 1
        for kernel, stride in zip(kernels, strides):
            field += (kernel - 1) * hop
            hop *= stride
        return start * hop, (stop - 1) * hop + field

    def _group_norm(self):
        """The first convolution's GroupNorm (base-size wav2vec2: per channel over the whole
        clip's time axis), or None for layer-normed CNNs, whose features are local."""
        norm = getattr(self.model.feature_extractor.conv_layers[0], "layer_norm", None)
        return norm if isinstance(norm, torch.nn.GroupNorm) else None

    @torch.inference_mode()
    def cnn_norm_stats(
        self, values: torch.Tensor, block: int = align.SAMPLE_RATE * 10
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel mean and (biased) variance of the first convolution's output over the whole
        clip, computed ``block`` samples at a time: what its GroupNorm would compute in one pass.
        None when the CNN has no GroupNorm."""
        norm = self._group_norm()
        if norm is None:
            return None
        conv = self.model.feature_extractor.conv_layers[0].conv
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        outputs = (values.shape[-1] - kernel) // stride + 1
        step = max(1, block // stride)
        total = torch.zeros(conv.out_channels, dtype=torch.float64)
        squares = torch.zeros(conv.out_channels, dtype=torch.float64)
        for u0 in range(0, outputs, step):
            u1 = min(outputs, u0 + step)
            piece = values[u0 * stride : (u1 - 1) * stride + kernel].to(self.device, self.dtype)
            # [C, u1 - u0]: 512 x 32,000 per 10 s for wav2vec2-base; sums in float64 without a float64 copy
            out = conv(piece.reshape(1, 1, -1))[0]
            total += out.sum(-1, dtype=torch.float64).cpu()
            squares += out.square().sum(-1, dtype=torch.float64).cpu()
        mean = total / outputs
        return mean, (squares / outputs - mean.square()).clamp_min(0)

    @torch.inference_mode()
    def cnn_features(self, values: torch.Tensor, start: int, stop: int, stats=None) -> torch.Tensor:
        """CNN features ``[1, stop - start, C]`` of the whole clip's model input ``values``, from
        only the samples they depend on. ``stats`` (:meth:`cnn_norm_stats` of the whole clip)
        replace the GroupNorm's statistics of this piece, so the features equal the whole-clip
        pass's."""
        a, b = self.cnn_span(start, stop)
        x = values[a:b].to(self.device, self.dtype).reshape(1, 1, -1)
        layers = self.model.feature_extractor.conv_layers
        norm = self._group_norm()
        for i, layer in enumerate(layers):
            if i == 0 and norm is not None:
                if stats is None:
                    raise ValueError("this wav2vec2's CNN normalises over the whole clip: pass cnn_norm_stats(values).")
                mean, var = (t.to(x.device, torch.float32).view(1, -1, 1) for t in stats)
                h = layer.conv(x).float()
                h = (h - mean) / torch.sqrt(var + norm.eps) * norm.weight.float().view(1, -1, 1)
                x = layer.activation((h + norm.bias.float().view(1, -1, 1)).to(self.dtype))
            else:
                x = layer(x)
        return x.transpose(1, 2)

    @torch.inference_mode()
    def encoder_states(self, cnn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN features ``[1, T, C]`` -> (last hidden state ``[1, T, D]``, every layer ``[T, layers, D]``)."""
        last, layers = self._run_encoder_layers(cnn)
        return last.float(), torch.stack(layers, dim=2)[0].float()

    @torch.inference_mode()
    def whisper_piece(self, waveform: torch.Tensor, index: int) -> torch.Tensor:
        """50 Hz states ``[n, D]`` of the ``index``-th 30 s piece of the clip, as :meth:`whisper_50hz`
        makes them (the pieces are encoded independently, so this is exact)."""
        chunk = self.feature_extractor.n_samples
        piece = waveform[index * chunk : (index + 1) * chunk]
        if index and piece.numel() == 0:
            raise ValueError(f"the clip has no Whisper piece {index}.")
        return self.whisper_50hz(piece)[0]


def verify_fixture(path: Path, meta: dict) -> dict[str, float]:
    """Parity with upstream's audio paths: ``audio_*`` fixtures hold a tiny wav2vec2
    (``weight.<HF key>``), ``input.waveform`` (16 kHz) and upstream's ``output.flash`` /
    ``output.preview`` for ``meta["num_frames"]`` frames at ``meta["fps"]``; meta["config"] is
    the Wav2Vec2Config. Returns the relative error of each path."""
    from safetensors.torch import load_file
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from ..verify_reference import relative_error

    path = Path(path)
    tensors = load_file(str(path))
    state = {k[len("weight.") :]: v.float() for k, v in tensors.items() if k.startswith("weight.")}
    with torch.device("meta"):
        model = Wav2Vec2Model(Wav2Vec2Config(**meta["config"]))
    _load_into(model, wav2vec2_state(state, model.state_dict().keys()), path, optional=WAV2VEC2_OPTIONAL)
    wav = tensors["input.waveform"]
    frames, fps = int(meta["num_frames"]), meta["fps"]
    rate = int(meta.get("sample_rate", align.SAMPLE_RATE))
    errors = {}
    if "output.flash" in tensors:
        flash = AudioEncoder(model, "flash", loudness_norm=meta.get("loudness_lufs") is not None)
        errors["flash"] = relative_error(flash.features_for_video(wav, frames, fps, rate), tensors["output.flash"])
    if "output.preview" in tensors:
        preview = AudioEncoder(model, "preview")
        errors["preview"] = relative_error(
            preview.features_for_video(wav, frames, fps, rate), tensors["output.preview"]
        )
    return errors
