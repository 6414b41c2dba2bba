"""One set of facts per setting: the CLI, GenerationSettings.validate and the nodes read the same
defaults and bounds (echomimic_core/settings.py)."""

import argparse

import pytest

from echomimic_core import __main__ as cli
from echomimic_core.settings import FIELDS, VARIANT_DEFAULTS, VARIANTS, GenerationSettings, value_type

# Every settings flag the CLI had when it was hand-written beside GenerationSettings; saved scripts use them.
FLAGS_BEFORE = (
    "--sampler --steps --shift --seed --guidance-scale --audio-guidance-scale --dynamic-cfg --no-dynamic-cfg "
    "--dynamic-acfg --no-dynamic-acfg --neg-scale --neg-steps --cfg-skip-ratio --audio-scale --negative-prompt "
    "--fps --width --height --max-frames --partial-video-length --overlap-video-length --long-video-mode "
    "--teacache-threshold --teacache-skip-start-steps --riflex-k --color-match --no-color-match --batch-guidance "
    "--no-batch-guidance --loudness-normalize --no-loudness-normalize --vae-tile-size --vae-tile-overlap --face-box "
    "--easycache-threshold --context-cache --no-context-cache "
    "--audio-context-seconds --seam-search-frames --reference-anchor --redo-identity-below --redo-sharpness-ratio"
).split()


def _generate_parser() -> argparse.ArgumentParser:
    return cli.build_parser()._subparsers._group_actions[0].choices["generate"]


def _parse(*flags):
    return _generate_parser().parse_args(["--out", "x.mp4", *flags])


def test_plan_command_refuses_what_generate_refuses(capsys):
    parser = cli.build_parser()
    for flags, message in ((["--steps", "500"], "--steps: must be in [1, 200], got 500"), (["--fps", "nan"], "--fps")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["plan", "--variant", "flash", "--seconds", "5", "--vram", "24", *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    args = parser.parse_args(["plan", "--variant", "flash", "--seconds", "5", "--vram", "24"])
    assert (args.fps, args.width) == (GenerationSettings().fps, 768)


def test_every_setting_has_one_flag_and_every_old_flag_remains():
    actions = [a for a in _generate_parser()._actions if a.dest in FIELDS]
    assert sorted(a.dest for a in actions) == sorted(FIELDS)
    assert set(FLAGS_BEFORE) <= {flag for a in actions for flag in a.option_strings}


def test_flags_parse_to_the_settings_types_and_unset_flags_keep_the_variant_default():
    args = _parse("--steps", "12", "--shift", "3", "--no-dynamic-cfg", "--face-box", "1", "9", "2", "8")
    assert (args.steps, args.shift, args.use_dynamic_cfg, args.face_box) == (12, 3.0, False, [1, 9, 2, 8])
    settings = cli._settings_from(args, "flash")
    assert settings.steps == 12 and settings.sampler == VARIANT_DEFAULTS["flash"]["sampler"]
    assert settings.face_box == (1, 9, 2, 8)


@pytest.mark.parametrize("name", [n for n in FIELDS if value_type(n) in (int, float)])
def test_cli_validate_and_sampler_node_share_each_numeric_bound(name, capsys):
    from nodes.sampler import EchoMimicSampler
    from nodes.setting_widgets import setting_widget

    bounds = GenerationSettings.bounds(name)
    flag = FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")
    step = 1 if value_type(name) is int else 0.5
    inside = {"width": 64, "height": 64, "vae_tile_size": 256}.get(name, bounds.max)
    assert getattr(_parse(flag, str(inside)), name) == inside
    for outside in (bounds.min - step, bounds.max + step):
        with pytest.raises(SystemExit) as exit_info:
            _parse(flag, str(outside))
        assert exit_info.value.code == 2
        assert f"{flag}: must be " in capsys.readouterr().err
        with pytest.raises(ValueError, match=f"^{name} must be "):
            GenerationSettings(**{name: outside}).validate()
    # the widget (on the sampler, or on the Audio Encode / Reference Image node) reaches the same
    # max; its min is the bound or the one value that means "auto" / "not set"
    spec, unset = setting_widget(name)
    declared = EchoMimicSampler.INPUT_TYPES()
    spec = {**declared["required"], **declared["optional"]}.get(name, spec)
    assert spec[1]["max"] == bounds.max
    assert spec[1]["min"] == (bounds.min if unset is None else unset)


def test_audio_and_reference_nodes_use_the_same_widgets():
    from nodes.audio import EchoMimicAudioEncode, EchoMimicAudioFrames
    from nodes.reference import EchoMimicReferenceImage

    for node in (EchoMimicAudioEncode, EchoMimicAudioFrames):
        inputs = node.INPUT_TYPES()["required"]
        assert {k: v[1]["max"] for k, v in inputs.items() if k in ("fps", "max_frames")} == {
            "fps": GenerationSettings.bounds("fps").max,
            "max_frames": GenerationSettings.bounds("max_frames").max,
        }
    reference = EchoMimicReferenceImage.INPUT_TYPES()["required"]
    assert reference["sample_area"][1]["default"] == FIELDS["sample_area"].default
    assert reference["width"][1]["max"] == GenerationSettings.bounds("width").max


def test_every_variant_default_differs_or_is_listed_once():
    assert set(VARIANT_DEFAULTS) == set(VARIANTS)
    assert set(VARIANT_DEFAULTS["preview"]) == set(VARIANT_DEFAULTS["flash"])
    for name, value in VARIANT_DEFAULTS["preview"].items():
        assert FIELDS[name].default == value  # the dataclass defaults are preview's
    assert all(VARIANT_DEFAULTS["preview"][n] != VARIANT_DEFAULTS["flash"][n] for n in VARIANT_DEFAULTS["flash"])


def test_guidance_defaults_are_previews():
    from echomimic_core.sampling.guidance import GuidanceConfig

    config = GuidanceConfig()
    for name in ("guidance_scale", "audio_guidance_scale", "use_dynamic_cfg", "use_dynamic_acfg", "neg_scale"):
        assert getattr(config, name) == VARIANT_DEFAULTS["preview"][name]


def test_tooltips_name_each_variants_default():
    from nodes.sampler import EchoMimicSampler

    optional = EchoMimicSampler.INPUT_TYPES()["optional"]
    assert "preview 0, flash 0.1" in optional["teacache_threshold"][1]["tooltip"]
    steps = EchoMimicSampler.INPUT_TYPES()["required"]["steps"][1]
    assert steps["default"] == 0 and "0 = the model variant's: preview 25, flash 8" in steps["tooltip"]
