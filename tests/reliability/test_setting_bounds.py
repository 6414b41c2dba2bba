"""Settings at and beyond their bounds: NaN and infinity never slip through a comparison, the largest
seed works everywhere a seed is used (issue 10)."""

import math

import pytest
import torch

from echomimic_core.pipeline import redo_seed
from nodes.common import out_of_range

UINT64_MAX = 2**64 - 1


def test_redo_seeds_stay_in_torchs_seed_range():
    assert redo_seed(43, 0) == 43 + 1_000_003  # unchanged for ordinary seeds: earlier runs repeat
    for seed in (0, UINT64_MAX - 5, UINT64_MAX):
        for index in (0, 7):
            value = redo_seed(seed, index)
            assert 0 <= value <= UINT64_MAX
            torch.Generator("cpu").manual_seed(value)  # "Overflow when unpacking long long" before


def test_dpo_candidate_seeds_wrap_and_pairs_refuses_a_seed_out_of_range_before_loading(tmp_path, capsys):
    from echomimic_core.settings import offset_seed
    from training import pairs

    assert [offset_seed(UINT64_MAX - 1, k) for k in range(3)] == [UINT64_MAX - 1, UINT64_MAX, 0]
    assert offset_seed(43, 3) == 46  # ordinary seeds: candidate k keeps seed + k, earlier runs repeat
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"id": "a", "image": "a.png", "audio": "a.wav"}\n')
    for seed in ("-1", str(UINT64_MAX + 1)):
        with pytest.raises(SystemExit) as e:
            pairs.main(["generate", str(refs), "--out", str(tmp_path / "out"), "--demo", "--seed", seed])
        assert e.value.code == 2 and f"--seed must be in [0, {UINT64_MAX}], got {seed}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before the demo models were written


class Widgets:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scale": ("FLOAT", {"min": 0.0, "max": 30.0}), "free": ("FLOAT", {})}}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, 30.5])
def test_widget_range_check_refuses_nan_and_infinity(value):
    # ComfyUI's own check (`value < min`) lets NaN through; the nodes' repeat of it must not
    problem = out_of_range(Widgets, {"scale": value})
    assert (
        problem is not None
        and problem.startswith(f"scale={value!r} is ")
        and problem.endswith("change the widget's value.")
    )
    if value != value:
        assert "is not a number; expected one in [0.0, 30.0]" in problem


def test_widget_range_check_accepts_the_range():
    assert out_of_range(Widgets, {"scale": 0.0}) is None and out_of_range(Widgets, {"scale": 30.0}) is None
    assert out_of_range(Widgets, {"free": 1e9}) is None  # no bounds declared: nothing to check


# --- the settings table (settings.py field metadata): one set of bounds for the CLI and the nodes ---

BAD_FLAGS = [
    # (flag, value, what the message must show): each gave a black video / no guidance, or failed
    # after the models loaded ("Overflow when unpacking long long")
    ("--guidance-scale", "nan", "nan"),
    ("--guidance-scale", "inf", "inf"),
    ("--audio-guidance-scale", "nan", "nan"),
    ("--audio-guidance-scale", "inf", "inf"),
    ("--audio-scale", "nan", "nan"),
    ("--audio-scale", "-inf", "-inf"),
    ("--seed", str(2**64), str(2**64)),
    ("--seed", "-1", "-1"),
    ("--fps", "0", "0"),
    ("--fps", "nan", "nan"),
    ("--fps", "1e9", "1000000000"),
    ("--steps", "0", "0"),
    ("--steps", "201", "201"),
    ("--shift", "nan", "nan"),
    ("--cfg-skip-ratio", "nan", "nan"),
]


@pytest.mark.parametrize("flag, value, shown", BAD_FLAGS)
def test_cli_refuses_out_of_bounds_settings_before_loading(
    demo_cache, model_loads, tmp_path, capsys, flag, value, shown
):
    from echomimic_core import __main__ as cli

    try:
        rc = cli.main(["generate", "--demo", f"{flag}={value}", "--out", str(tmp_path / "o.mp4")])
    except SystemExit as e:  # argparse: "argument --steps: must be in [1, 200], got 201"
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and f"got {shown}" in err, err
    assert "Traceback" not in err and "Overflow" not in err and not model_loads
    assert not (tmp_path / "o.mp4").exists()


def test_the_largest_seed_is_accepted():
    from echomimic_core.settings import GenerationSettings

    GenerationSettings(seed=UINT64_MAX).validate()
    torch.Generator("cpu").manual_seed(UINT64_MAX)  # the Denoiser's generator


def test_validate_refuses_nan_and_infinity_for_every_number_setting():
    # a NaN fails every `<` / `>`: the bounds must be written so that it fails the check instead
    from echomimic_core.settings import FIELDS, GenerationSettings, value_type

    numbers = [n for n in FIELDS if value_type(n) is float]
    assert {"guidance_scale", "audio_guidance_scale", "audio_scale", "fps", "shift"} <= set(numbers)
    for name in numbers:
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match=rf"^{name} .*got {bad}"):
                GenerationSettings(**{name: bad}).validate()


@pytest.mark.parametrize("fps", [math.nan, math.inf, 0.0, 500.0])
def test_audio_nodes_refuse_nan_fps_before_encoding(fps):
    from nodes.audio import EchoMimicAudioEncode, EchoMimicAudioFrames

    class Encoder:
        kind = "wav2vec2"

        def features_for_video(self, *args):
            raise AssertionError("encoded before the fps was checked")

    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    with pytest.raises(ValueError, match="fps"):
        EchoMimicAudioEncode().encode(Encoder(), audio, fps, 0)
    with pytest.raises(ValueError, match="context_seconds must be in .*got nan"):
        EchoMimicAudioEncode().encode(Encoder(), audio, 25.0, 0, context_seconds=math.nan)
    with pytest.raises(ValueError, match="fps"):
        EchoMimicAudioFrames().count(audio, fps, 0)


def _float_widgets(cls):
    inputs = cls.INPUT_TYPES()
    return sorted(
        name
        for section in ("required", "optional")
        for name, spec in inputs.get(section, {}).items()
        if spec[0] == "FLOAT" and len(spec) > 1 and ("min" in spec[1] or "max" in spec[1])
    )


def _nodes_with_float_widgets():
    from nodes import NODE_CLASS_MAPPINGS

    return [(name, widget) for name, cls in sorted(NODE_CLASS_MAPPINGS.items()) for widget in _float_widgets(cls)]


@pytest.mark.parametrize("node, widget", _nodes_with_float_widgets())
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_every_float_widget_refuses_nan_when_the_prompt_is_queued(node, widget, bad):
    # ComfyUI checks a widget's min/max with `value < min` (NaN passes) unless the node's
    # VALIDATE_INPUTS names the input; then the node must check it, and ours refuse NaN: the prompt
    # is refused when queued, before any model loads
    import inspect

    from nodes import NODE_CLASS_MAPPINGS

    cls = NODE_CLASS_MAPPINGS[node]
    assert hasattr(cls, "VALIDATE_INPUTS"), f"{node} has FLOAT widgets but no VALIDATE_INPUTS"
    parameters = inspect.signature(cls.VALIDATE_INPUTS).parameters
    assert widget in parameters, f"{node}.VALIDATE_INPUTS does not name {widget}, so ComfyUI lets NaN through"
    others = {n: "" for n, p in parameters.items() if p.default is inspect.Parameter.empty and n != widget}
    problem = cls.VALIDATE_INPUTS(**others, **{widget: bad})
    assert isinstance(problem, str) and problem.startswith(f"{widget}={bad!r} is ")
    if bad != bad:
        assert "is not a number" in problem
