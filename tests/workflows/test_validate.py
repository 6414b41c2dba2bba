"""workflows.validate on small good and broken workflows, against the real ComfyUI 0.8 schemas."""

import copy
import json

import pytest

import nodes
from workflows import validate as v


@pytest.fixture(scope="module")
def schemas(object_info_path):
    return v.load_schemas(object_info_path, with_pack=False)


API = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
    "2": {"class_type": "LoadAudio", "inputs": {"audio": "voice.wav"}},
    "3": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 25.0, "audio": ["2", 0]}},
    "4": {
        "class_type": "SaveVideo",
        "inputs": {"video": ["3", 0], "filename_prefix": "video/echo", "format": "mp4", "codec": "h264"},
    },
    "5": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
}


def _broken(**changes):
    prompt = copy.deepcopy(API)
    for path, value in changes.items():
        node, name = path.split("__")
        if value is None:
            del prompt[node]["inputs"][name]
        else:
            prompt[node]["inputs"][name] = value
    return prompt


def test_good_api_prompt_passes(schemas):
    assert v.validate(API, schemas) == []
    assert v.validate({"prompt": API, "client_id": "x"}, schemas) == []  # a /prompt body


@pytest.mark.parametrize(
    "prompt,expected",
    [
        (_broken(**{"3__images": ["2", 0]}), "expects IMAGE but node 2 (LoadAudio) output 0 is AUDIO"),
        (_broken(**{"3__images": ["1", 5]}), "which has 2 outputs"),
        (_broken(**{"3__images": ["9", 0]}), "missing node '9'"),
        (_broken(**{"3__images": None}), "required input 'images' is missing"),
        (_broken(**{"3__fps": 500.0}), "fps=500.0 is above its maximum 120.0"),
        (_broken(**{"3__frames": 3}), "CreateVideo has no input 'frames'"),
        (_broken(**{"4__format": "webm"}), "format='webm' is not one of 'auto', 'mp4'"),
        (_broken(**{"4__video": "clip.mp4"}), "must be linked"),
        (_broken(**{"5__value": 1.5}), "whole number"),
        (_broken(**{"4__filename_prefix": 3}), "should be a string"),
    ],
)
def test_broken_api_prompts_are_reported(schemas, prompt, expected):
    issues = v.validate(prompt, schemas)
    assert any(expected in str(i) for i in issues), issues


def test_unknown_node_type(schemas):
    prompt = {**API, "6": {"class_type": "NoSuchNode", "inputs": {}}}
    assert [str(i) for i in v.validate(prompt, schemas)] == [
        "error: node 6: unknown node type 'NoSuchNode': install the pack that provides it or update the workflow"
    ]


def test_link_type_rules():
    assert v.types_match("IMAGE", "IMAGE") and v.types_match("IMAGE", "*") and v.types_match("*", "LATENT")
    assert v.types_match("INT,FLOAT", "FLOAT") and v.types_match(["a", "b"], "COMBO")
    assert not v.types_match("IMAGE", "MASK") and not v.types_match("INT,FLOAT", "STRING")


def _ui(links=None, **overrides):
    wf = {
        "last_node_id": 4,
        "last_link_id": 3,
        "version": 0.4,
        "nodes": [
            {
                "id": 1,
                "type": "LoadImage",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
                "widgets_values": ["face.png", "image"],
            },
            {
                "id": 2,
                "type": "LoadAudio",
                "mode": 0,
                "inputs": [],
                "outputs": [{"name": "AUDIO", "type": "AUDIO", "links": [2]}],
                "widgets_values": ["voice.wav", None, None],
            },
            {
                "id": 3,
                "type": "CreateVideo",
                "mode": 0,
                "inputs": [
                    {"name": "images", "type": "IMAGE", "link": 1},
                    {"name": "audio", "type": "AUDIO", "link": 2},
                ],
                "outputs": [{"name": "VIDEO", "type": "VIDEO", "links": [3]}],
                "widgets_values": [25],
            },
            {
                "id": 4,
                "type": "SaveVideo",
                "mode": 0,
                "inputs": [{"name": "video", "type": "VIDEO", "link": 3}],
                "outputs": [],
                "widgets_values": ["video/echo", "auto", "auto"],
            },
            {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
            {
                "id": 6,
                "type": "PrimitiveInt",
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "widgets_values": [3, "randomize"],
            },
        ],
        "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "AUDIO"], [3, 3, 0, 4, 0, "VIDEO"]],
    }
    if links is not None:
        wf["links"] = links
    for key, value in overrides.items():
        node_id, field = key.split("__")
        next(n for n in wf["nodes"] if n["id"] == int(node_id))[field] = value
    return wf


def test_good_ui_workflow_passes(schemas):
    assert v.validate(_ui(), schemas) == []


@pytest.mark.parametrize(
    "workflow,expected",
    [
        (_ui(links=[[1, 2, 0, 3, 0, "AUDIO"], [3, 3, 0, 4, 0, "VIDEO"]]), "expects IMAGE but link 1 from node 2"),
        (_ui(links=[[3, 3, 0, 4, 0, "VIDEO"]], **{"3__inputs": []}), "required input 'images' is not connected"),
        (_ui(**{"3__widgets_values": [25, 1]}), "2 widgets_values but the node has 1"),
        (_ui(**{"4__widgets_values": ["video/echo", "gif", "auto"]}), "format='gif' is not one of"),
        (_ui(**{"6__widgets_values": [3]}), "1 widgets_values but the node has 2"),
        (_ui(**{"6__widgets_values": [3, "sometimes"]}), "value after 'value' should be one of"),
        (_ui(**{"3__type": "CreateVideoV2"}), "unknown node type 'CreateVideoV2'"),
        (_ui(links=[[1, 1, 4, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "AUDIO"], [3, 3, 0, 4, 0, "VIDEO"]]), "leaves output 4"),
        (_ui(links=[[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "AUDIO"], [3, 3, 0, 8, 0, "VIDEO"]]), "missing node 8"),
        (_ui(**{"4__inputs": [{"name": "clip", "type": "VIDEO", "link": 3}]}), "SaveVideo has no input 'clip'"),
    ],
)
def test_broken_ui_workflows_are_reported(schemas, workflow, expected):
    issues = v.validate(workflow, schemas)
    assert any(expected in str(i) for i in issues), issues


def test_bypassed_node_may_miss_inputs(schemas):
    assert v.validate(_ui(links=[[3, 3, 0, 4, 0, "VIDEO"]], **{"3__inputs": [], "3__mode": 4}), schemas) == []


def test_pack_nodes_are_described_like_object_info(monkeypatch, schemas):
    class EchoDemo:
        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    "image": ("IMAGE",),
                    "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 60.0}),
                    "seed": ("INT", {"default": 0, "min": 0}),
                },
                "optional": {"mode": (["a", "b"],)},
            }

        RETURN_TYPES = ("IMAGE", "AUDIO")
        FUNCTION = "run"

    monkeypatch.setattr(nodes, "NODE_CLASS_MAPPINGS", {"EchoDemo": EchoDemo})
    pack = v.pack_schemas()
    assert pack["EchoDemo"]["output"] == ["IMAGE", "AUDIO"]
    both = {**schemas, **pack}
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "EchoDemo", "inputs": {"image": ["1", 0], "fps": 25.0, "seed": 1, "mode": "c"}},
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 25.0, "audio": ["2", 1]}},
    }
    assert [i.message for i in v.validate(wf, both)] == ["EchoDemo: mode='c' is not one of 'a', 'b'"]
    ui = {
        "nodes": [{"id": 2, "type": "EchoDemo", "mode": 4, "inputs": [], "widgets_values": [25.0, 1, "fixed", "a"]}],
        "links": [],
    }
    assert v.validate(ui, both) == []  # the seed gets its control_after_generate value


def test_cli(tmp_path, object_info_path, capsys):
    good, bad, junk = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "junk.json"
    good.write_text(json.dumps(API))
    bad.write_text(json.dumps(_broken(**{"3__fps": 500.0})))
    junk.write_text(json.dumps({"hello": 1}))
    info = str(object_info_path)
    assert v.main([str(good), "--object-info", info]) == 0
    assert v.main([str(good), str(bad), str(junk), "--object-info", info]) == 1
    out = capsys.readouterr().out
    assert "good.json: OK" in out and "above its maximum" in out and "not a ComfyUI workflow" in out
    assert v.main([str(good), "--object-info", str(tmp_path / "none.json")]) == 2


SHIPPED = sorted((v.REPO / "workflows").glob("*.json"))


@pytest.mark.skipif(not SHIPPED, reason="no workflow files shipped yet")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_workflows_are_valid(path, object_info_path):
    schemas = v.load_schemas(object_info_path)
    errors = [str(i) for i in v.validate_file(path, schemas) if i.error]
    assert errors == []
