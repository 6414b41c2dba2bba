"""nodes.demo_models finds the ComfyUI it is installed in, also through a symlinked pack folder."""

from pathlib import Path

import pytest

from nodes import demo_models

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def comfy(tmp_path):
    (tmp_path / "ComfyUI" / "custom_nodes").mkdir(parents=True)
    (tmp_path / "ComfyUI" / "models").mkdir()
    return tmp_path / "ComfyUI"


def test_symlinked_pack_finds_its_comfyui_from_the_logical_working_dir(comfy, monkeypatch):
    link = comfy / "custom_nodes" / "echomimic"
    try:
        link.symlink_to(REPO, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks are not available here")
    # What a shell sets after `cd ComfyUI/custom_nodes/echomimic` (os.getcwd() is /work/... already).
    monkeypatch.setenv("PWD", str(link / "nodes"))
    assert demo_models.comfyui_root() == comfy


def test_outside_comfyui_gives_none_and_the_command_asks_for_the_folder(tmp_path, monkeypatch, capsys):
    if REPO.parent.name == "custom_nodes":
        pytest.skip("this checkout is installed inside a ComfyUI")
    monkeypatch.setenv("PWD", str(tmp_path))
    assert demo_models.comfyui_root() is None  # the repository itself is not inside custom_nodes/
    with pytest.raises(SystemExit):
        demo_models.main([])
    assert "give ComfyUI's models folder" in capsys.readouterr().err


def test_demo_files_land_in_the_found_comfyui(comfy, monkeypatch):
    monkeypatch.setattr(demo_models, "comfyui_root", lambda: comfy)
    assert demo_models.main([]) == 0
    assert (comfy / "models" / "diffusion_models" / "echomimicv3_demo_tiny.safetensors").is_file()
    assert (comfy / "input" / demo_models.DEMO_IMAGE).is_file() and (comfy / "input" / demo_models.DEMO_AUDIO).is_file()
