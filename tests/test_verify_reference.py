"""`python -m echomimic_core.verify_reference DIR` over the upstream fixtures, and its failure modes."""

import shutil

import pytest
from safetensors.torch import load_file, save_file

from echomimic_core import verify_reference


@pytest.mark.slow
def test_every_shipped_fixture_passes(reference_dir, capsys):
    assert verify_reference.main([str(reference_dir)]) == 0
    out = capsys.readouterr().out
    for family in ("preview_tiny", "flash_tiny", "vae_tiny", "umt5_tiny", "clip_vision_tiny", "samplers", "task_masks"):
        assert family in out
    assert "FAIL" not in out and "ERROR" not in out


def test_a_wrong_reference_fails_and_a_missing_meta_errors(reference_dir, tmp_path, capsys):
    data = load_file(str(reference_dir / "preview_tiny.safetensors"))
    data["output"] = data["output"] * 1.001  # a 1e-3 discrepancy must not pass
    save_file(data, str(tmp_path / "preview_seed7.safetensors"))
    shutil.copy(reference_dir / "tiny_meta.json", tmp_path)
    assert verify_reference.main([str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out
    (tmp_path / "tiny_meta.json").unlink()
    assert verify_reference.main([str(tmp_path)]) == 2
    assert "no meta file" in capsys.readouterr().out
