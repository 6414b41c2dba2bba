import pytest

from training.config import load_config


def test_yaml_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 7\ndpo:\n  beta: 123.0\nflow:\n  phase_boundaries: [300, 700]\n")
    cfg = load_config(path)
    assert cfg.seed == 7 and cfg.dpo.beta == 123.0 and cfg.dpo.every_n_steps == 4
    assert cfg.flow.phase_boundaries == (300, 700)


@pytest.mark.parametrize(
    "text, message",
    [
        ("dpo:\n  betta: 1\n", "unknown keys"),
        ("flow:\n  phase_boundaries: [700, 300]\n", "phase_boundaries"),
        ("drop:\n  cfg_text: 1.5\n", "probability"),
        ("data:\n  batch_size: 0\n", "at least 1"),
    ],
)
def test_bad_configs_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)
