"""The pack's __init__.py loads the way ComfyUI loads a custom node folder."""

import importlib.util
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_comfyui_style_import_registers_nodes_and_model_folder(monkeypatch, tmp_path):
    # ComfyUI's own top-level ``nodes`` module is already imported when packs load: ours must not use it.
    monkeypatch.setitem(sys.modules, "nodes", types.ModuleType("nodes"))
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}
    fp.get_filename_list = lambda folder: ["m.safetensors"] if folder == "echomimic" else []
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    for name in [m for m in sys.modules if m.startswith("echomimic_pack")]:
        monkeypatch.delitem(sys.modules, name)

    spec = importlib.util.spec_from_file_location(
        "echomimic_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "echomimic_pack", pack)
    spec.loader.exec_module(pack)

    assert pack.WEB_DIRECTORY == "./web" and (REPO / "web" / "echomimic.js").is_file()
    mappings = pack.NODE_CLASS_MAPPINGS
    assert "EchoMimicModelLoader" in mappings and set(mappings) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for cls in mappings.values():
        assert cls.CATEGORY == "EchoMimicV3" and callable(getattr(cls, cls.FUNCTION))
        assert isinstance(cls.INPUT_TYPES(), dict) and isinstance(cls.RETURN_TYPES, tuple)
    assert mappings["EchoMimicModelLoader"].INPUT_TYPES()["required"]["model"][0] == ["m.safetensors"]
    paths, extensions = fp.folder_names_and_paths["echomimic"]
    assert paths == [str(tmp_path / "models" / "echomimic")] and ".safetensors" in extensions
