"""web/lib/facts.js is generated from the Python definitions and must match them."""

from tools.web_facts import FACTS_JS, main, render


def test_committed_facts_js_is_what_the_python_tables_generate():
    assert FACTS_JS.read_text(encoding="utf-8") == render(), "run `python -m tools.web_facts` and commit the file"
    assert main(["--check"]) == 0


def test_facts_carry_the_variant_defaults_the_python_side_uses():
    from echomimic_core.settings import GenerationSettings

    text = render()
    for variant in ("preview", "flash"):
        partial = GenerationSettings.for_variant(variant).partial_video_length
        assert f'"partial_video_length": {partial}' in text


def test_facts_carry_every_settings_default_and_bounds():
    from echomimic_core.settings import FIELDS, GenerationSettings
    from tools.web_facts import facts

    settings = facts()["SETTINGS"]
    assert list(settings) == list(FIELDS)  # the long-video and step-cache settings too
    assert settings["partial_video_length"]["min"] == GenerationSettings.bounds("partial_video_length").min == 5
    assert settings["reference_anchor"] == {"default": "colour", "choices": ("off", "colour", "keyframe")}
    assert settings["fps"]["default"] == GenerationSettings().fps
