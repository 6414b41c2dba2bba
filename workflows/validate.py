"""Check ComfyUI workflow files against the node schemas they will run with.

    python -m workflows.validate workflows/*.json [--object-info FILE] [--no-pack-nodes]

Works on both formats ComfyUI saves: the UI workflow (``nodes`` + ``links``, positional
``widgets_values``) and the API prompt (``{id: {class_type, inputs}}``). Schemas are ComfyUI's
``GET /object_info`` answer (default: ``ECHOMIMIC_OBJECT_INFO`` or the ComfyUI 0.8 core nodes
shipped in ``workflows/schemas/comfyui_0.8_core.json``) plus this pack's nodes, generated from
``NODE_CLASS_MAPPINGS`` at run time so they cannot drift from the code.

Checked: every node type exists; input names exist; every link joins an existing output to an
input of a compatible type (ComfyUI's rule: equal, ``*`` on either side, or overlapping
comma-separated unions; combo inputs take ``COMBO``); required inputs are linked or given;
literal values fit their widget (type, min/max, combo options when the list is known); UI
workflows carry as many ``widgets_values`` as the node has widgets (plus the
``control_after_generate`` value after seeds). Exit status 1 when any error is found.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workflows.comfy_rules import range_problem, types_match

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OBJECT_INFO = REPO / "workflows" / "schemas" / "comfyui_0.8_core.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Frontend-only nodes: they never reach the server (folded into links/values when queueing).
VIRTUAL_NODES = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
UPLOAD_FLAGS = ("image_upload", "audio_upload", "video_upload", "animated_image_upload", "3d_upload")
BYPASSED_MODES = {2, 4}  # "never" (muted) and "bypass"


@dataclass(frozen=True)
class Issue:
    node: str  # node id ("" for the whole file)
    message: str
    error: bool = True

    def __str__(self) -> str:
        where = f"node {self.node}: " if self.node else ""
        return f"{'error' if self.error else 'warning'}: {where}{self.message}"


# ------------------------------------------------------------------------------------------------
# Schemas
# ------------------------------------------------------------------------------------------------
def node_schema(cls: type) -> dict:
    """A classic (V1) node class described the way ``/object_info`` describes it."""
    inputs = cls.INPUT_TYPES()
    returns = list(getattr(cls, "RETURN_TYPES", ()))
    return {
        "input": {
            section: dict(inputs.get(section, {}))
            for section in ("required", "optional", "hidden")
            if section in inputs
        },
        "input_order": {
            section: list(inputs[section]) for section in ("required", "optional", "hidden") if section in inputs
        },
        "output": returns,
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or returns),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "category": getattr(cls, "CATEGORY", "sd"),
    }


def pack_schemas() -> dict[str, dict]:
    """Schemas of this pack's nodes, from NODE_CLASS_MAPPINGS."""
    from nodes import NODE_CLASS_MAPPINGS

    return {name: node_schema(cls) for name, cls in NODE_CLASS_MAPPINGS.items()}


def load_schemas(object_info: str | os.PathLike | None = None, with_pack: bool = True) -> dict[str, dict]:
    path = Path(object_info or os.environ.get("ECHOMIMIC_OBJECT_INFO") or DEFAULT_OBJECT_INFO)
    if not path.is_file():
        raise FileNotFoundError(
            f"ComfyUI node schemas not found at {path}. Save a server's GET /object_info answer to a "
            "file and pass it with --object-info (or set ECHOMIMIC_OBJECT_INFO)."
        )
    schemas = json.loads(path.read_text(encoding="utf-8"))
    if with_pack:
        schemas.update(pack_schemas())
    return schemas


# ------------------------------------------------------------------------------------------------
# Input specs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for combos
    options: dict
    required: bool
    choices: tuple | None = None  # combo options (None: not a combo; () : unknown, e.g. model lists)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        # The frontend adds the "control after generate" widget when asked, and by name for seeds.
        if self.type == "INT" and self.name in ("seed", "noise_seed"):
            return self.options.get("control_after_generate", True) is not False
        return self.type in ("INT", "COMBO") and bool(self.options.get("control_after_generate"))

    @property
    def is_upload(self) -> bool:
        return any(self.options.get(flag) for flag in UPLOAD_FLAGS)


def input_specs(schema: dict) -> list[InputSpec]:
    """Required then optional inputs, in the order the frontend creates widgets."""
    specs = []
    order = schema.get("input_order", {})
    for section in ("required", "optional"):
        table = schema.get("input", {}).get(section, {})
        for name in order.get(section, list(table)):
            if name not in table:
                continue
            spec = table[name]
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            choices = None
            if isinstance(kind, list):
                kind, choices = "COMBO", tuple(kind)
            elif kind == "COMBO":
                choices = tuple(options.get("options", ()))
            specs.append(InputSpec(name, kind, options, section == "required", choices))
    return specs


def is_dynamic(schema: dict) -> bool:
    """Nodes with V3 dynamic inputs (autogrow, dynamic combos): input names are not fixed."""
    return any(
        isinstance(s.type, str) and s.type.startswith("COMFY_") and s.type != "COMFY_MATCHTYPE_V3"
        for s in input_specs(schema)
    )


def _is_file_name(value: Any) -> bool:
    return isinstance(value, str) and "." in value.rsplit("/", 1)[-1]


def check_value(spec: InputSpec, value: Any) -> str | None:
    """Why ``value`` does not fit widget ``spec``, or None.

    File combos (uploads, model lists) depend on what the schema's server had on disk, so a
    file name missing from them is not judged here.
    """
    if spec.type == "COMBO":
        values = value if spec.options.get("multiselect") and isinstance(value, list) else [value]
        if spec.is_upload or all(_is_file_name(v) for v in values):
            return None
        if spec.choices:
            bad = [v for v in values if v not in spec.choices]
            if bad:
                shown = ", ".join(map(repr, spec.choices[:8])) + (" ..." if len(spec.choices) > 8 else "")
                return f"{spec.name}={bad[0]!r} is not one of {shown}"
        return None
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{spec.name}={value!r} should be true or false"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"{spec.name}={value!r} should be a string"
    if spec.type in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{spec.name}={value!r} should be a number"
        if spec.type == "INT" and isinstance(value, float) and not value.is_integer():
            return f"{spec.name}={value!r} should be a whole number"
        return range_problem(spec.name, value, spec.options)
    return None


# ------------------------------------------------------------------------------------------------
# API format
# ------------------------------------------------------------------------------------------------
def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def validate_api(prompt: dict, schemas: dict) -> list[Issue]:
    issues: list[Issue] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            issues.append(Issue(node_id, "is not a node (expected an object with class_type and inputs)"))
            continue
        kind = node["class_type"]
        schema = schemas.get(kind)
        if schema is None:
            issues.append(
                Issue(node_id, f"unknown node type {kind!r}: install the pack that provides it or update the workflow")
            )
            continue
        specs = {s.name: s for s in input_specs(schema)}
        dynamic = is_dynamic(schema)
        inputs = node.get("inputs", {})
        for name, value in inputs.items():
            spec = specs.get(name)
            if spec is None:
                if not dynamic:
                    issues.append(Issue(node_id, f"{kind} has no input {name!r} (inputs: {', '.join(specs)})"))
                continue
            if _is_link(value):
                source = prompt.get(value[0])
                if not isinstance(source, dict) or source.get("class_type") not in schemas:
                    if not isinstance(source, dict):
                        issues.append(Issue(node_id, f"input {name!r} is linked to missing node {value[0]!r}"))
                    continue
                outputs = schemas[source["class_type"]].get("output", [])
                if not 0 <= value[1] < len(outputs):
                    issues.append(
                        Issue(
                            node_id,
                            f"input {name!r} is linked to output {value[1]} of node "
                            f"{value[0]} ({source['class_type']}), which has {len(outputs)} outputs",
                        )
                    )
                elif not types_match(outputs[value[1]], spec.type):
                    issues.append(
                        Issue(
                            node_id,
                            f"input {name!r} expects {spec.type} but node {value[0]} "
                            f"({source['class_type']}) output {value[1]} is {outputs[value[1]]}",
                        )
                    )
            elif spec.is_widget:
                problem = check_value(spec, value)
                if problem:
                    issues.append(Issue(node_id, f"{kind}: {problem}"))
            else:
                issues.append(
                    Issue(
                        node_id,
                        f"input {name!r} ({spec.type}) must be linked to another node's "
                        f"output, found the value {value!r}",
                    )
                )
        for spec in specs.values():
            if spec.required and spec.name not in inputs and not dynamic:
                issues.append(Issue(node_id, f"{kind}: required input {spec.name!r} is missing"))
    return issues


# ------------------------------------------------------------------------------------------------
# UI format
# ------------------------------------------------------------------------------------------------
def _widget_values(node: dict, schema: dict, kind: str) -> list[Issue]:
    node_id = str(node.get("id"))
    values = node.get("widgets_values")
    widgets = [s for s in input_specs(schema) if s.is_widget]
    if values is None:
        return []
    if isinstance(values, dict):  # some frontends/packs save widgets by name
        unknown = [k for k in values if k not in {w.name for w in widgets}]
        return [Issue(node_id, f"{kind}: widgets_values has unknown widget {k!r}", error=False) for k in unknown]
    expected = len(widgets) + sum(w.has_control for w in widgets)
    uploads = sum(w.is_upload for w in widgets)
    if not expected <= len(values) <= expected + 2 * uploads:
        names = ", ".join(w.name + (" (+control_after_generate)" if w.has_control else "") for w in widgets)
        return [
            Issue(
                node_id,
                f"{kind}: {len(values)} widgets_values but the node has {expected} "
                f"widget values ({names}); the workflow was saved with another version of "
                "the node: re-create it or fix its values",
            )
        ]
    if len(values) != expected:  # upload buttons add values whose position we cannot pin down
        return []
    issues, position = [], 0
    for widget in widgets:
        value = values[position]
        position += 1
        problem = check_value(widget, value)
        if problem:
            issues.append(Issue(node_id, f"{kind}: {problem}"))
        if widget.has_control:
            if values[position] not in CONTROL_VALUES:
                issues.append(
                    Issue(
                        node_id,
                        f"{kind}: value after {widget.name!r} should be one of "
                        f"{sorted(CONTROL_VALUES)}, found {values[position]!r}",
                    )
                )
            position += 1
    return issues


def validate_ui(workflow: dict, schemas: dict) -> list[Issue]:
    nodes = {str(n.get("id")): n for n in workflow.get("nodes", [])}
    links: dict[int, list] = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):  # newer serialisation
            link = [
                link.get("id"),
                link.get("origin_id"),
                link.get("origin_slot"),
                link.get("target_id"),
                link.get("target_slot"),
                link.get("type"),
            ]
        links[link[0]] = link
    subgraphs = {g.get("id") for g in workflow.get("definitions", {}).get("subgraphs", [])}
    checked: dict[str, dict] = {}
    issues = _ui_node_issues(nodes, schemas, subgraphs, checked)
    return issues + _ui_link_issues(nodes, links, checked)


def _ui_node_issues(nodes: dict[str, dict], schemas: dict, subgraphs: set, checked: dict[str, dict]) -> list[Issue]:
    """Unknown nodes, inputs a node lacks, required inputs left open, widget values; fills ``checked``
    (node id -> schema) with the nodes whose links can be type-checked."""
    issues: list[Issue] = []
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in VIRTUAL_NODES:
            continue
        if kind in subgraphs:
            issues.append(Issue(node_id, f"subgraph node {kind!r} is not checked inside", error=False))
            continue
        schema = schemas.get(kind)
        if schema is None:
            issues.append(
                Issue(node_id, f"unknown node type {kind!r}: install the pack that provides it or update the workflow")
            )
            continue
        checked[node_id] = schema
        specs = {s.name: s for s in input_specs(schema)}
        dynamic = is_dynamic(schema)
        for slot in node.get("inputs", []):
            if slot.get("name") not in specs and not dynamic:
                issues.append(Issue(node_id, f"{kind} has no input {slot.get('name')!r}"))
        if node.get("mode") not in BYPASSED_MODES and not dynamic:
            linked = {s.get("name") for s in node.get("inputs", []) if s.get("link") is not None}
            for spec in specs.values():
                if spec.required and not spec.is_widget and spec.name not in linked:
                    issues.append(Issue(node_id, f"{kind}: required input {spec.name!r} is not connected"))
        issues += _widget_values(node, schema, kind)
    return issues


def _ui_link_issues(nodes: dict[str, dict], links: dict[int, list], checked: dict[str, dict]) -> list[Issue]:
    """Links to missing nodes or slots, and links whose type the target input does not take."""
    issues: list[Issue] = []
    for link_id, (_, src, src_slot, dst, dst_slot, link_type) in links.items():
        src, dst = str(src), str(dst)
        if src not in nodes or dst not in nodes:
            issues.append(Issue("", f"link {link_id} joins missing node {src if src not in nodes else dst}"))
            continue
        source_type = None
        if src in checked:
            outputs = checked[src].get("output", [])
            if not 0 <= src_slot < len(outputs):
                issues.append(
                    Issue(
                        src,
                        f"link {link_id} leaves output {src_slot}, but "
                        f"{nodes[src].get('type')} has {len(outputs)} outputs",
                    )
                )
                continue
            source_type = outputs[src_slot]
        if dst in checked:
            slots = nodes[dst].get("inputs", [])
            if not 0 <= dst_slot < len(slots):
                issues.append(Issue(dst, f"link {link_id} enters input slot {dst_slot}, which does not exist"))
                continue
            spec = {s.name: s for s in input_specs(checked[dst])}.get(slots[dst_slot].get("name"))
            if spec is None:
                continue
            for got in (source_type, link_type):
                if got is not None and not types_match(got, spec.type):
                    issues.append(
                        Issue(
                            dst,
                            f"input {spec.name!r} expects {spec.type} but link {link_id} "
                            f"from node {src} ({nodes[src].get('type')}) carries {got}",
                        )
                    )
                    break
    return issues


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def workflow_format(data: Any) -> str:
    """ "ui", "api", or raise ValueError."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    raise ValueError(
        "not a ComfyUI workflow: expected a UI workflow (with 'nodes' and 'links') or an API "
        "prompt ({node id: {class_type, inputs}}); save it from ComfyUI with Save or Export (API)"
    )


def validate(data: Any, schemas: dict) -> list[Issue]:
    """All problems of one workflow (UI or API format; a /prompt body's "prompt" is unwrapped)."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "nodes" not in data:
        data = data["prompt"]
    if workflow_format(data) == "ui":
        return validate_ui(data, schemas)
    return validate_api(data, schemas)


def validate_file(path: str | os.PathLike, schemas: dict) -> list[Issue]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return [Issue("", f"cannot read JSON: {e}")]
    try:
        return validate(data, schemas)
    except ValueError as e:
        return [Issue("", str(e))]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.validate", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="workflow JSON files (UI or API format)")
    parser.add_argument("--object-info", help="ComfyUI GET /object_info answer saved as JSON")
    parser.add_argument("--no-pack-nodes", action="store_true", help="do not add this pack's nodes")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        schemas = load_schemas(args.object_info, with_pack=not args.no_pack_nodes)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = False
    for path in args.files:
        issues = validate_file(path, schemas)
        errors = [i for i in issues if i.error]
        failed |= bool(errors)
        print(f"{path}: {'OK' if not errors else f'{len(errors)} error(s)'}")
        for issue in issues:
            print(f"  {issue}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
