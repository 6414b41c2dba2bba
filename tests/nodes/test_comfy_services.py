"""comfy_services: ComfyUI services when present (stand-in modules), clean fallbacks when absent."""

import sys
import types

import pytest
import torch
from PIL import Image

from nodes import comfy_services as cs


@pytest.fixture
def no_comfy(monkeypatch, tmp_path):
    for name in ("folder_paths", "comfy.utils", "comfy.model_management", "latent_preview", "comfy.latent_formats"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(cs, "_missing", cs._missing | {name})
    monkeypatch.setenv("ECHOMIMIC_MODELS_DIR", str(tmp_path / "models" / "echomimic"))
    monkeypatch.setenv("ECHOMIMIC_OUTPUT_DIR", str(tmp_path / "out"))
    return tmp_path


@pytest.fixture
def fake_comfy(monkeypatch, tmp_path):
    """Stand-ins for the three ComfyUI modules, recording what the adapter calls."""
    calls = []
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    user_path = str(tmp_path / "elsewhere" / "echomimic")
    fp.folder_names_and_paths = {"echomimic": ([user_path], set())}
    fp.filename_list_cache = {"echomimic": "stale"}
    fp.get_filename_list = lambda folder: ["a.safetensors", "sub/b.pth"] if folder == "echomimic" else []
    fp.get_full_path_or_raise = lambda folder, name: f"/models/{folder}/{name}"
    fp.get_output_directory = lambda: str(tmp_path / "comfy_out")
    fp.get_temp_directory = lambda: str(tmp_path / "comfy_temp")
    fp.get_input_directory = lambda: str(tmp_path / "comfy_in")

    def get_save_image_path(prefix, out_dir, w=0, h=0):
        return str(tmp_path / "comfy_out" / "vid"), "clip", 7, "vid", prefix

    fp.get_save_image_path = get_save_image_path

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            calls.append(("bar", total, node_id))

        def update_absolute(self, value, total=None, preview=None):
            calls.append(("update", value, total, preview))

    utils.ProgressBar = ProgressBar
    mm = types.ModuleType("comfy.model_management")
    mm.flag = False

    class InterruptProcessingException(Exception):
        pass

    def throw():
        if mm.flag:
            mm.flag = False
            raise InterruptProcessingException()

    mm.InterruptProcessingException = InterruptProcessingException
    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: torch.device("meta")
    mm.unet_offload_device = lambda: torch.device("meta")
    mm.intermediate_device = lambda: torch.device("meta")
    mm.soft_empty_cache = lambda force=False: calls.append(("empty", force))
    preview = types.ModuleType("latent_preview")

    class Previewer:
        def decode_latent_to_preview_image(self, fmt, x0):
            calls.append(("decode", fmt, tuple(x0.shape)))
            return (fmt, "decoded", 512)

    preview.get_previewer = lambda device, latent_format: Previewer() if latent_format == "wan21" else None
    formats = types.ModuleType("comfy.latent_formats")
    formats.Wan21 = lambda: "wan21"
    for name, mod in (
        ("folder_paths", fp),
        ("comfy.utils", utils),
        ("comfy.model_management", mm),
        ("latent_preview", preview),
        ("comfy.latent_formats", formats),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(fp=fp, mm=mm, calls=calls, user_path=user_path)


def test_register_keeps_user_paths_and_filters_extensions(fake_comfy, tmp_path):
    cs.register_model_folder()
    paths, exts = fake_comfy.fp.folder_names_and_paths["echomimic"]
    assert paths == [str(tmp_path / "models" / "echomimic"), fake_comfy.user_path]
    assert ".safetensors" in exts and ".json" not in exts
    assert "echomimic" not in fake_comfy.fp.filename_list_cache
    assert (tmp_path / "models" / "echomimic").is_dir()
    cs.register_model_folder()  # idempotent: the default folder is not added twice
    assert fake_comfy.fp.folder_names_and_paths["echomimic"][0] == paths


def test_comfy_folders_and_devices_are_used(fake_comfy):
    assert cs.list_models() == ["a.safetensors", "sub/b.pth"]
    assert cs.model_path("a.safetensors").as_posix() == "/models/echomimic/a.safetensors"
    assert cs.output_dir().name == "comfy_out" and cs.temp_dir().name == "comfy_temp"
    path, subfolder, filename = cs.next_output_file("vid/clip", "mp4")
    assert (subfolder, filename) == ("vid", "clip_00007_.mp4") and path.parent.name == "vid"
    assert cs.torch_device().type == "meta" and cs.offload_device().type == "meta"
    assert cs.intermediate_device().type == "meta"
    cs.soft_empty_cache(True)
    assert ("empty", True) in fake_comfy.calls


def test_progress_forwards_steps_and_preview(fake_comfy):
    progress = cs.Progress(4, node_id="12")
    progress(1)
    progress(3, preview=torch.rand(1, 8, 6, 3))
    assert fake_comfy.calls[0] == ("bar", 4, "12")
    assert fake_comfy.calls[1] == ("update", 1, 4, None)
    kind, value, total, (fmt, image, size) = fake_comfy.calls[2]
    assert (value, total, fmt, size) == (3, 4, "JPEG", cs.PREVIEW_MAX_SIZE)
    assert isinstance(image, Image.Image) and image.size == (6, 8)
    progress(4, latents=torch.zeros(1, 16, 3, 4, 4))
    assert fake_comfy.calls[3:] == [("decode", "JPEG", (1, 16, 3, 4, 4)), ("update", 4, 4, ("JPEG", "decoded", 512))]


def test_interrupt_raises_once(fake_comfy):
    cs.check_interrupted()
    fake_comfy.mm.flag = True
    with pytest.raises(fake_comfy.mm.InterruptProcessingException):
        cs.check_interrupted()
    cs.check_interrupted()  # the flag is cleared: the next run is not cancelled


def test_fallback_model_folders(no_comfy):
    root = no_comfy / "models" / "echomimic"
    assert cs.list_models() == []
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "flash.safetensors").write_bytes(b"x")
    (root / "a.pth").write_bytes(b"x")
    (root / "notes.txt").write_text("not a model")
    assert cs.list_models() == ["a.pth", "sub/flash.safetensors"]
    assert cs.model_path("sub/flash.safetensors") == (root / "sub" / "flash.safetensors").resolve()
    (no_comfy / "models" / "vae").mkdir()
    (no_comfy / "models" / "vae" / "wan.safetensors").write_bytes(b"x")
    assert cs.list_models("vae") == ["wan.safetensors"]
    with pytest.raises(FileNotFoundError, match="ECHOMIMIC_MODELS_DIR"):
        cs.model_path("missing.safetensors")
    with pytest.raises(ValueError, match="outside"):
        cs.model_path("../vae/wan.safetensors")


def test_fallback_services(no_comfy):
    cs.register_model_folder()  # no ComfyUI: nothing to do, no error
    first = cs.next_output_file("echomimic/clip", "mp4")
    assert first[1:] == ("echomimic", "clip_00001_.mp4")
    first[0].write_bytes(b"x")
    assert cs.next_output_file("echomimic/clip", "mp4")[2] == "clip_00002_.mp4"
    with pytest.raises(ValueError, match="leaves the output folder"):
        cs.next_output_file("../../x", "mp4")
    progress = cs.Progress(3)
    progress(2)
    progress(3, latents=torch.zeros(1, 16, 1, 2, 2))  # no previewer outside ComfyUI: ignored
    assert progress.value == 3
    cs.check_interrupted()  # never cancelled outside ComfyUI
    assert cs.torch_device().type in ("cuda", "cpu") and cs.offload_device().type == "cpu"
    cs.soft_empty_cache()
