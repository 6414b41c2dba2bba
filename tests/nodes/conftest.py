"""Node tests run without ComfyUI: model/output folders point at a temporary directory."""

import pytest

from nodes import comfy_services as cs


@pytest.fixture
def folders(monkeypatch, tmp_path):
    for name in ("folder_paths", "comfy.utils", "comfy.model_management"):
        monkeypatch.setattr(cs, "_missing", cs._missing | {name})
    monkeypatch.setenv("ECHOMIMIC_MODELS_DIR", str(tmp_path / "models" / "echomimic"))
    monkeypatch.setenv("ECHOMIMIC_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("ECHOMIMIC_TEMP_DIR", str(tmp_path / "temp"))
    return tmp_path
