"""The shipped workflows: current with the nodes, valid against ComfyUI's schemas, readable, and the
demo API workflow executes end to end on the tiny demo models."""

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes import NODE_CLASS_MAPPINGS
from nodes import comfy_services as cs
from nodes.demo_models import main as demo_models_main
from workflows import build
from workflows import validate as v

HERE = Path(build.__file__).resolve().parent
NAMES = [w.name for w in build.workflows()]


@pytest.fixture(scope="module")
def schemas(object_info_path):
    return v.load_schemas(object_info_path)


def test_files_are_current_with_the_nodes(schemas):
    files = build.rendered(schemas)
    assert len(files) == 2 * len(NAMES) >= 14
    stale = [name for name, text in files.items() if (HERE / name).read_text(encoding="utf-8") != text]
    assert not stale, f"run `python -m workflows.build`: {stale}"
    assert build.main(["--check"]) == 0  # thumbnails included


def test_templates_folder_holds_ui_workflows_only_each_with_a_thumbnail():
    # ComfyUI offers every workflows/*.json as a template and opens it as a UI workflow
    from PIL import Image

    top = sorted(p.stem for p in HERE.glob("*.json"))
    assert top == sorted(NAMES)
    for name in top:
        ui = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
        assert isinstance(ui.get("nodes"), list) and "version" in ui, name
        thumb = Image.open(HERE / f"{name}.jpg")
        assert thumb.format == "JPEG" and thumb.size == (512, 512)
    assert sorted(p.stem for p in (HERE / build.API_DIR).glob("*.json")) == sorted(NAMES)


def test_a_stale_thumbnail_is_reported(tmp_path):
    from workflows.thumbnail import is_current, thumbnail_jpeg

    jpeg = thumbnail_jpeg("lipsync", "Lip-sync a video")
    assert is_current(jpeg, "lipsync", "Lip-sync a video")
    assert not is_current(jpeg, "lipsync", "Lip-sync")  # the title changed
    assert not is_current(b"not a jpeg", "lipsync", "Lip-sync a video")
    with pytest.raises(ValueError, match="scene must be one of"):
        thumbnail_jpeg("dance", "x")


@pytest.mark.parametrize("name", [f"{prefix}{n}.json" for n in NAMES for prefix in ("", "api/")])
def test_every_workflow_validates(schemas, name):
    issues = v.validate_file(HERE / name, schemas)
    assert [str(i) for i in issues if i.error] == []


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflows_are_readable(name):
    ui = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], f"nodes overlap: {a} {b}"
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and (".safetensors" in notes[0]["widgets_values"][0] or "demo_models" in notes[0]["widgets_values"][0])
    assert {g["title"] for g in ui["groups"]} >= {"Models", "Generate", "Output"}
    # every group holds its nodes whole (title bar above pos included)
    for node in ui["nodes"]:
        if node["type"] != "MarkdownNote":
            x, y = node["pos"]
            w, h = node["size"]
            assert any(
                gx <= x and gy <= y - 30 and x + w <= gx + gw and y + h <= gy + gh
                for gx, gy, gw, gh in (g["bounding"] for g in ui["groups"])
            ), f"{name}: {node['type']} sticks out of its group"
    # what the frontend draws below the widgets is in the node's height (1.35 draws Load Audio 136 tall)
    for node in ui["nodes"]:
        if node["type"] == "LoadAudio":
            assert node["size"][1] >= 136


def test_native_files_and_settings_users_have(schemas):
    api = json.loads((HERE / "api" / "echomimic_preview_talking_head.json").read_text(encoding="utf-8"))
    by_type = {n["class_type"]: n["inputs"] for n in api.values()}
    assert by_type["CLIPLoader"]["type"] == "wan" and "CLIPVisionLoader" in by_type
    # ComfyUI's CLIP Vision Encode resizes with antialiasing + 8-bit rounding (not upstream's CLIP input):
    # every example encodes ComfyUI's CLIP vision model with the pack's node instead.
    for path in sorted((HERE / "api").glob("*.json")):
        types = {n["class_type"] for n in json.loads(path.read_text(encoding="utf-8")).values()}
        assert "CLIPVisionEncode" not in types and "EchoMimicCLIPVisionEncode" in types, path.name
    assert by_type["VAELoader"]["vae_name"] == "wan_2.1_vae.safetensors"
    flash = json.loads((HERE / "api" / "echomimic_flash_8step.json").read_text(encoding="utf-8"))
    sampler = next(n["inputs"] for n in flash.values() if n["class_type"] == "EchoMimicSampler")
    from nodes.sampler import resolve_settings

    settings = resolve_settings("flash", sampler)
    assert (settings.sampler, settings.steps) == ("Flow_Unipc", 8)


# ------------------------------------------------------------------------------------------------
# A tiny executor: runs an API prompt against our nodes plus stand-ins for ComfyUI's loaders
# ------------------------------------------------------------------------------------------------
class LoadImage:
    FUNCTION = "load"

    def load(self, image):
        from PIL import Image

        array = np.asarray(Image.open(cs.input_dir() / image).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(array)[None], torch.zeros(1, *array.shape[:2])


class LoadAudio:
    FUNCTION = "load"

    def load(self, audio):
        from echomimic_core.media import load_audio

        waveform, rate = load_audio(cs.input_dir() / audio)
        return ({"waveform": waveform[None], "sample_rate": rate},)


def run_prompt(prompt: dict, classes: dict) -> dict:
    """Execute every output node's inputs (depth first), as ComfyUI does; returns node id -> outputs/ui."""
    results, ui = {}, {}

    def output(node_id):
        if node_id not in results:
            node = prompt[node_id]
            cls = classes[node["class_type"]]
            kwargs = {k: (output(x[0])[x[1]] if v._is_link(x) else x) for k, x in node["inputs"].items()}
            check = getattr(cls, "VALIDATE_INPUTS", None)
            if check is not None:
                names = inspect.signature(check).parameters
                assert check(**{k: x for k, x in node["inputs"].items() if k in names and not v._is_link(x)}) is True
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                ui[node_id], out = out.get("ui"), out["result"]
            results[node_id] = out
        return results[node_id]

    for node_id, node in prompt.items():
        if getattr(classes[node["class_type"]], "OUTPUT_NODE", False):
            output(node_id)
    return {"results": results, "ui": ui}


@pytest.mark.slow
@pytest.mark.parametrize("name,frames", [("echomimic_demo_tiny", 60), ("echomimic_demo_flash_tiny", 60)])
def test_demo_workflow_executes_on_the_demo_files(name, frames, monkeypatch, tmp_path, capsys, caplog, comfy_vae):
    for module in ("folder_paths", "comfy.utils", "comfy.model_management"):
        monkeypatch.setattr(cs, "_missing", cs._missing | {module})
    comfy = tmp_path / "ComfyUI"
    monkeypatch.setenv("ECHOMIMIC_MODELS_DIR", str(comfy / "models" / "echomimic"))
    monkeypatch.setenv("ECHOMIMIC_INPUT_DIR", str(comfy / "input"))
    monkeypatch.setenv("ECHOMIMIC_OUTPUT_DIR", str(comfy / "output"))
    # the pack command writes the models and the demo inputs where ComfyUI looks for them
    assert demo_models_main([str(comfy / "models")]) == 0
    assert "echomimic_demo_tiny.json" in capsys.readouterr().out

    class VAELoader:  # ComfyUI's Load VAE on the demo file: the demo VAE has the layout it builds
        FUNCTION = "load"

        def load(self, vae_name):
            from echomimic_core.vae import load_vae

            return (comfy_vae(load_vae(comfy / "models" / "vae" / vae_name)),)

    prompt = json.loads((HERE / "api" / f"{name}.json").read_text(encoding="utf-8"))
    classes = {**NODE_CLASS_MAPPINGS, "LoadImage": LoadImage, "LoadAudio": LoadAudio, "VAELoader": VAELoader}
    with caplog.at_level("WARNING"):
        run = run_prompt(prompt, classes)
    assert "no face found" not in caplog.text  # the preview demo gives its cartoon face's box
    sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "EchoMimicSampler")
    images, audio, fps, *_ = run["results"][sampler_id]
    assert images.shape == (frames, 96, 96, 3) and fps == 25.0  # 2.4 s of speech at 25 fps
    assert audio["waveform"].shape[-1] == round(frames / 25 * 16000) and audio["sample_rate"] == 16000
    save_id = next(k for k, n in prompt.items() if n["class_type"] == "EchoMimicSaveVideo")
    (path,) = run["results"][save_id]
    item = run["ui"][save_id]["images"][0]
    assert Path(path).is_file() and Path(path).parent == comfy / "output" / item["subfolder"]

    from echomimic_core.media import load_video

    video = load_video(path)
    assert len(video.frames) == frames and video.audio is not None


def test_batch_run_columns_documented_in_docs_resolve_on_the_example_workflows():
    from tools.batch_run import resolve_columns

    api = json.loads((HERE / "api" / "echomimic_preview_talking_head.json").read_text(encoding="utf-8"))
    bindings = resolve_columns(api, ["image", "audio", "seed", "Prompt.text", "prompt"], {"prompt": "Prompt.text"})
    types = {column: api[node]["class_type"] for column, (node, _) in bindings.items()}
    assert types == {
        "image": "LoadImage",
        "audio": "LoadAudio",
        "seed": "EchoMimicSampler",
        "Prompt.text": "CLIPTextEncode",
        "prompt": "CLIPTextEncode",
    }
    assert api[bindings["prompt"][0]]["_meta"]["title"] == "Prompt"
