"""Write the example workflows, UI format and API format, and the UI ones' template thumbnails,
from one description each.

    python -m workflows.build            # (re)write workflows/*.json, *.jpg and workflows/api/*.json
    python -m workflows.build --check    # exit 1 when a file differs from what the code describes

Each workflow is a list of :class:`Node` (type, widget values by name, links by input name, a column
and a y position) plus a note. Widget order, outputs and link types come from the node schemas
(ComfyUI's ``object_info.json`` + this pack's nodes), so the files follow the nodes when they change;
``tests/workflows`` checks the files are current and valid.

ComfyUI offers every ``custom_nodes/<pack>/workflows/*.json`` (that folder only, not below it) in its
Templates browser and loads it as a UI workflow; its thumbnail is ``<name>.jpg`` beside it. So only
UI workflows live there; the API-format twins (for scripts and ``tools.batch_run``) are in
``workflows/api/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from echomimic_core.demo import demo_face_box, demo_files
from nodes.demo_models import DEMO_AUDIO, DEMO_IMAGE
from workflows.thumbnail import is_current, thumbnail_jpeg
from workflows.validate import input_specs, load_schemas

HERE = Path(__file__).resolve().parent
API_DIR = "api"  # API-format twins: not offered as templates
COLUMN_X, COLUMN_WIDTH, NODE_WIDTH, TOP, GAP = 40, 420, 360, 100, 70
GROUP_COLOURS = {
    "Models": "#3f789e",
    "Inputs": "#8A8",
    "Conditioning": "#b58b2a",
    "Generate": "#a1309b",
    "Output": "#88A",
}
VIRTUAL = {"Note": ["text"], "MarkdownNote": ["text"]}
UPLOAD_VALUES = {"LoadImage": ["image"], "LoadAudio": [None, None], "LoadVideo": ["image"]}
# what the frontend draws below the widgets (image previews, the audio player), in canvas pixels
PREVIEW_HEIGHT = {
    "LoadImage": 280,
    "PreviewImage": 280,
    "LoadVideo": 280,
    "EchoMimicFaceMask": 280,
    "EchoMimicSaveVideo": 280,  # the video player after a run
    "SaveVideo": 280,
    "LoadAudio": 50,
}


@dataclass
class Node:
    key: str
    type: str
    column: int
    y: int  # order within the column (positions are stacked)
    values: dict = field(default_factory=dict)  # widget name -> value (others: the schema default)
    links: dict = field(default_factory=dict)  # input name -> (node key, output index)
    title: str | None = None
    group: str | None = None


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list[Node]
    title: str = ""  # on the template thumbnail
    scene: str = "talking_head"  # what the thumbnail draws (workflows.thumbnail.SCENES)


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
PREVIEW_FILES = """**Model files** (ComfyUI `models/` folder):
- `echomimic/echomimicv3_preview.safetensors`: EchoMimicV3 preview transformer (Hugging Face BadToBest/EchoMimicV3, `transformer/diffusion_pytorch_model.safetensors`, renamed)
- `vae/wan_2.1_vae.safetensors` (Comfy-Org Wan 2.1 repackaged)
- `text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` (Load CLIP, type **wan**)
- `clip_vision/clip_vision_h.safetensors` (Load CLIP Vision -> EchoMimicV3 CLIP Vision Encode: upstream's resize)
- `audio_encoders/wav2vec2-base-960h/` (facebook/wav2vec2-base-960h: `model.safetensors` + its json files)"""

FLASH_FILES = """**Model files** (ComfyUI `models/` folder):
- `echomimic/echomimicv3_flash_pro.safetensors`: EchoMimicV3-Flash (Hugging Face BadToBest/EchoMimicV3, `echomimicv3-flash-pro/diffusion_pytorch_model.safetensors`, renamed)
- `vae/wan_2.1_vae.safetensors`, `text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` (type **wan**), `clip_vision/clip_vision_h.safetensors`
- `audio_encoders/wav2vec2-chinese-base_fp16.safetensors` (Comfy-Org repackaged; or the TencentGameMate/chinese-wav2vec2-base folder)"""

SAMPLER_NOTE = (
    "Sampler widgets left at **auto** / 0 / -1 take the model variant's upstream defaults "
    "(preview: Flow, 25 steps, CFG 4.0 / audio 2.9; flash: UniPC, 8 steps, audio CFG 3.0, TeaCache 0.1)."
)


def native_models(transformer: str, audio_encoder: str) -> list[Node]:
    """Our transformer + audio encoder loaders, ComfyUI's own VAE / umT5 / CLIP vision loaders."""
    return [
        Node("model", "EchoMimicModelLoader", 0, 0, {"model": transformer}, group="Models"),
        Node("vae", "VAELoader", 0, 250, {"vae_name": "wan_2.1_vae.safetensors"}, group="Models"),
        Node(
            "clip",
            "CLIPLoader",
            0,
            370,
            {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"},
            group="Models",
        ),
        Node("clip_vision", "CLIPVisionLoader", 0, 530, {"clip_name": "clip_vision_h.safetensors"}, group="Models"),
        Node("audio_encoder", "EchoMimicAudioEncoderLoader", 0, 650, {"audio_encoder": audio_encoder}, group="Models"),
    ]


def native_conditioning(
    prompt: str,
    negative: str | None,
    image_key: str = "reference",
    image_slot: int = 0,
    audio_key: str = "audio",
    fps_link=None,
) -> list[Node]:
    audio_links = {"audio_encoder": ("audio_encoder", 0), "audio": (audio_key, 0)}
    if fps_link:  # e.g. the source video's frame rate for lip-sync
        audio_links["fps"] = fps_link
    nodes = [
        Node(
            "positive", "CLIPTextEncode", 2, 0, {"text": prompt}, {"clip": ("clip", 0)}, "Prompt", group="Conditioning"
        ),
        # Not ComfyUI's CLIP Vision Encode: it resizes with antialiasing and 8-bit rounding, upstream does not.
        Node(
            "clip_encode",
            "EchoMimicCLIPVisionEncode",
            2,
            440,
            {},
            {"clip_vision": ("clip_vision", 0), "image": (image_key, image_slot)},
            group="Conditioning",
        ),
        Node(
            "audio_encode",
            "EchoMimicAudioEncode",
            2,
            580,
            {"fps": 25.0, "max_frames": 0},
            audio_links,
            group="Conditioning",
        ),
    ]
    if negative is not None:
        nodes.append(
            Node(
                "negative",
                "CLIPTextEncode",
                2,
                220,
                {"text": negative},
                {"clip": ("clip", 0)},
                "Negative prompt",
                group="Conditioning",
            )
        )
    return nodes


def sampler(
    values: dict | None = None,
    task: bool = False,
    negative: bool = True,
    image: tuple | None = ("reference", 0),
    y: int = 0,
) -> Node:
    links = {
        "model": ("model", 0),
        "vae": ("vae", 0),
        "positive": ("positive", 0),
        "clip_vision_output": ("clip_encode", 0),
        "audio_embeds": ("audio_encode", 0),
    }
    if negative:
        links["negative"] = ("negative", 0)
    if image:
        links["image"] = image
    if task:
        links["task"] = ("task", 0)
    return Node("sampler", "EchoMimicSampler", 3, y, values or {}, links, group="Generate")


def native_output(prefix: str) -> list[Node]:
    return [
        Node(
            "create_video",
            "CreateVideo",
            4,
            0,
            {"fps": 25.0},
            {"images": ("sampler", 0), "audio": ("sampler", 1), "fps": ("sampler", 2)},
            group="Output",
        ),
        Node(
            "save_video",
            "SaveVideo",
            4,
            200,
            {"filename_prefix": prefix, "format": "mp4", "codec": "h264"},
            {"video": ("create_video", 0)},
            group="Output",
        ),
    ]


def streamed_output(prefix: str) -> list[Node]:
    """The sampler's VIDEO (output video_file: written chunk by chunk) straight into core Save Video,
    which copies its streams without decoding a frame."""
    return [
        Node(
            "save_video",
            "SaveVideo",
            4,
            0,
            {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
            {"video": ("sampler", 3)},
            group="Output",
        ),
    ]


def note(text: str, y: int = -1, column: int = 0) -> Node:
    return Node("note", "MarkdownNote", column, y, {"text": text}, title="Read me")


def reference(source: tuple = ("image", 0), y: int = 200, values: dict | None = None) -> Node:
    """The reference at the generation size: what upstream's CLIP sees, and the sampler's image."""
    return Node("reference", "EchoMimicReferenceImage", 1, y, values or {}, {"image": source}, group="Inputs")


def inputs(image: str = "portrait.png", audio: str = "speech.wav", values: dict | None = None) -> list[Node]:
    return [
        Node("image", "LoadImage", 1, 0, {"image": image}, title="Reference image", group="Inputs"),
        reference(values=values),
        Node("audio", "LoadAudio", 1, 400, {"audio": audio}, title="Speech", group="Inputs"),
    ]


def _demo(slot: str, variant: str = "preview") -> str:
    """A demo model file's name as the loader's combo lists it (inside its models/ sub-folder)."""
    return demo_files(variant)[slot].split("/", 1)[1]


DEMO_NOTE = (
    "Run `python -m nodes.demo_models` from the pack folder: it writes tiny random model files into "
    "ComfyUI's models folders and a demo face and speech clip into its input folder. The video is noise "
    "(the weights are random) but every step of the real path runs, on a CPU too.\n\n"
    "The demo VAE has the real Wan2.1 VAE's layout, so it loads in ComfyUI's **Load VAE** like the real "
    "file. ComfyUI's **Load CLIP** (umT5-XXL) and **Load CLIP Vision** (CLIP ViT-H) build fixed full-size "
    "models, so the tiny text and image encoders load only in the EchoMimicV3 loaders used here; the "
    "other workflows take ComfyUI's loaders with the real files."
)


def demo_models(variant: str) -> list[Node]:
    """The pack's loaders for the tiny transformer and encoders; ComfyUI's Load VAE for the VAE."""
    return [
        Node(
            "model",
            "EchoMimicModelLoader",
            0,
            0,
            {"model": _demo("transformer", variant), "precision": "fp32"},
            group="Models",
        ),
        Node("vae", "VAELoader", 0, 250, {"vae_name": _demo("vae")}, group="Models"),
        Node(
            "text_encoder",
            "EchoMimicTextEncoderLoader",
            0,
            380,
            {"text_encoder": _demo("text_encoder"), "precision": "fp32"},
            group="Models",
        ),
        Node(
            "clip_vision",
            "EchoMimicCLIPVisionLoader",
            0,
            510,
            {"clip_vision": _demo("image_encoder"), "precision": "fp32"},
            group="Models",
        ),
        Node(
            "audio_encoder",
            "EchoMimicAudioEncoderLoader",
            0,
            640,
            {"audio_encoder": _demo("audio_encoder", variant)},
            group="Models",
        ),
    ]


def demo_conditioning() -> list[Node]:
    return [
        Node(
            "text",
            "EchoMimicTextEncode",
            2,
            0,
            {"prompt": "a person is talking to the camera"},
            {"text_encoder": ("text_encoder", 0)},
            group="Conditioning",
        ),
        Node(
            "clip_encode",
            "EchoMimicCLIPVisionEncode",
            2,
            300,
            {},
            {"clip_vision": ("clip_vision", 0), "image": ("reference", 0)},
            group="Conditioning",
        ),
        Node(
            "audio_encode",
            "EchoMimicAudioEncode",
            2,
            440,
            {"fps": 25.0, "max_frames": 0},
            {"audio_encoder": ("audio_encoder", 0), "audio": ("audio", 0)},
            group="Conditioning",
        ),
    ]


def demo_output() -> Node:
    return Node(
        "save",
        "EchoMimicSaveVideo",
        4,
        0,
        {"filename_prefix": "echomimic/demo"},
        {"images": ("sampler", 0), "audio": ("sampler", 1), "fps": ("sampler", 2)},
        group="Output",
    )


def _box_text(box) -> str:
    """A box (top, bottom, left, right) as the Face Mask / Task box widgets read it."""
    return ", ".join(str(v) for v in box)


PROMPT = "A person is talking to the camera, natural expression, clear lip movements, studio lighting."
NEGATIVE = (
    "Gesture is bad. Gesture is unclear. Strange and twisted hands. Bad hands. Bad fingers. Unclear and "
    "blurry hands. 手部快速摆动, 手指频繁抽搐, 夸张手势, 重复机械性动作."
)


def workflows() -> list[Workflow]:
    preview = native_models("echomimicv3_preview.safetensors", "wav2vec2-base-960h/model.safetensors")
    flash = native_models("echomimicv3_flash_pro.safetensors", "wav2vec2-chinese-base_fp16.safetensors")
    return [
        Workflow(
            "echomimic_preview_talking_head",
            "Talking head from one image and a speech clip (preview model).",
            [
                *preview,
                *inputs(),
                *native_conditioning(PROMPT, NEGATIVE),
                sampler(),
                *native_output("echomimic/talking_head"),
                note(
                    f"# EchoMimicV3 preview: talking head\n{PREVIEW_FILES}\n\nPut a portrait and a speech clip "
                    f"in the Load nodes; the video lasts as long as the audio. {SAMPLER_NOTE}"
                ),
            ],
            title="Talking head · preview",
        ),
        Workflow(
            "echomimic_flash_8step",
            "EchoMimicV3-Flash: 8-step UniPC, audio-only CFG.",
            [
                *flash,
                *inputs(),
                *native_conditioning(PROMPT, None),
                sampler(negative=False),
                *native_output("echomimic/flash"),
                note(
                    f"# EchoMimicV3-Flash: 8 steps\n{FLASH_FILES}\n\nFlash guides on audio only, so no negative "
                    f"prompt is needed. Upstream renders one 81-frame window: set Audio Encode's max_frames to 81 "
                    f"to reproduce it; longer audio is rendered in 81-frame chunks. {SAMPLER_NOTE}"
                ),
            ],
            title="Talking head · flash, 8 steps",
            scene="flash",
        ),
        Workflow(
            "echomimic_first_last_frame",
            "The reference opens the video and a second image closes it.",
            [
                *preview,
                *inputs(),
                Node("end_image", "LoadImage", 1, 800, {"image": "last_frame.png"}, title="Last frame", group="Inputs"),
                *native_conditioning(PROMPT, NEGATIVE),
                Node(
                    "task",
                    "EchoMimicTask",
                    3,
                    0,
                    {"task": "first_last"},
                    {"image": ("reference", 0), "end_image": ("end_image", 0)},
                    group="Generate",
                ),
                Node(
                    "task_preview",
                    "PreviewImage",
                    3,
                    420,
                    {},
                    {"images": ("task", 1)},
                    title="Kept frames",
                    group="Generate",
                ),
                sampler(task=True, y=700),
                *native_output("echomimic/first_last"),
                note(
                    f"# First + last frame\n{PREVIEW_FILES}\n\nThe last frame must have the reference's size. "
                    f"{SAMPLER_NOTE}"
                ),
            ],
            title="First + last frame",
            scene="first_last",
        ),
        Workflow(
            "echomimic_lipsync_video",
            "Re-drive the mouth of an existing video with new speech.",
            [
                *preview,
                Node("video", "LoadVideo", 1, 0, {"file": "source.mp4"}, title="Source video", group="Inputs"),
                Node("components", "GetVideoComponents", 1, 380, {}, {"video": ("video", 0)}, group="Inputs"),
                Node("audio", "LoadAudio", 1, 540, {"audio": "speech.wav"}, title="New speech", group="Inputs"),
                Node(
                    "first_frame",
                    "ImageFromBatch",
                    1,
                    940,
                    {"batch_index": 0, "length": 1},
                    {"image": ("components", 0)},
                    group="Inputs",
                ),
                reference(("first_frame", 0), y=1000),
                *native_conditioning(PROMPT, NEGATIVE, fps_link=("components", 2)),
                Node(
                    "task",
                    "EchoMimicTask",
                    3,
                    0,
                    {"task": "lipsync", "mouth_box": ""},
                    {"source_video": ("components", 0)},
                    group="Generate",
                ),
                Node(
                    "task_preview",
                    "PreviewImage",
                    3,
                    420,
                    {},
                    {"images": ("task", 1)},
                    title="Mouth region",
                    group="Generate",
                ),
                sampler(task=True, image=None, y=700),
                *native_output("echomimic/lipsync"),
                note(
                    f"# Lip-sync a video\n{PREVIEW_FILES}\n\nEverything but the mouth region is kept from the source "
                    "video: the lower half of the detected face, or type a box (top, bottom, left, right in video pixels) or "
                    "connect a mask. The audio is encoded at the video's frame rate; the output stops with the "
                    f"shorter of video and audio. {SAMPLER_NOTE}"
                ),
            ],
            title="Lip-sync a video",
            scene="lipsync",
        ),
        Workflow(
            "echomimic_long_audio",
            "Minutes of speech: chunked long video with blended overlaps.",
            [
                *preview,
                *inputs(audio="long_speech.wav"),
                *native_conditioning(PROMPT, NEGATIVE),
                sampler(
                    {
                        "partial_video_length": 113,
                        "overlap_video_length": 8,
                        "long_video_mode": "chunks",
                        "vae_tile_size": 256,
                        "output": "video_file",
                        "filename_prefix": "echomimic/long_parts",
                    }
                ),
                *streamed_output("echomimic/long"),
                note(
                    f"# Long audio\n{PREVIEW_FILES}\n\nThe audio is cut into chunks of partial_video_length frames "
                    "that overlap by overlap_video_length frames (blended); each chunk starts from the previous "
                    "one's last frames (colour-matched to the reference: reference_anchor), and seams move to "
                    "pauses in the speech (seam_search_frames). With output video_file the sampler writes each "
                    "chunk to output/echomimic/long_parts_<run>.mp4 as it finishes, so memory stays flat for "
                    "minutes of audio and a cancelled run queued again resumes; its video output goes to Save "
                    "Video (the images output holds only the first frame). Connect a CLIP vision model to "
                    "clip_vision for the identity proxy in the drift report. Lower partial_video_length (e.g. "
                    "65) when GPU memory runs out; tiled VAE (vae_tile_size) keeps decoding light. "
                    f"long_video_mode 'sliding' is upstream's long-video CFG. {SAMPLER_NOTE}"
                ),
            ],
            title="Long audio · chunks",
            scene="long_audio",
        ),
        Workflow(
            "echomimic_demo_tiny",
            "Runs on the tiny random demo models (python -m nodes.demo_models).",
            [
                *demo_models("preview"),
                *inputs(DEMO_IMAGE, DEMO_AUDIO, {"width": 96, "height": 96}),
                *demo_conditioning(),
                # the demo face is a cartoon the detector does not find: its box, shown over the image
                Node(
                    "face_mask",
                    "EchoMimicFaceMask",
                    2,
                    600,
                    {"box": _box_text(demo_face_box(96))},
                    {"image": ("reference", 0)},
                    title="Face region",
                    group="Conditioning",
                ),
                Node(
                    "task",
                    "EchoMimicTask",
                    2,
                    900,
                    {"task": "first_frame"},
                    {"image": ("reference", 0), "face_mask": ("face_mask", 0)},
                    group="Conditioning",
                ),
                Node(
                    "sampler",
                    "EchoMimicSampler",
                    3,
                    0,
                    # 33-frame chunks sharing 4 frames, as the CLI demo: long-video stitching and the seam
                    # search run too (the 2.4 s clip: 2 chunks at fixed seams, 3 with the seams in its pauses)
                    {"steps": 4, "partial_video_length": 33, "overlap_video_length": 4},
                    {
                        "model": ("model", 0),
                        "vae": ("vae", 0),
                        "positive": ("text", 0),
                        "negative": ("text", 1),
                        "clip_vision_output": ("clip_encode", 0),
                        "audio_embeds": ("audio_encode", 0),
                        "image": ("reference", 0),
                        "task": ("task", 0),
                    },
                    group="Generate",
                ),
                demo_output(),
                note(
                    "# Demo on tiny random models (preview)\n" + DEMO_NOTE + "\n\nThe sampler renders the 2.4 s "
                    "clip in 33-frame chunks whose seams it moves into the speech's pauses (3 chunks; its line "
                    "shows 2–3 before the run), so long-video stitching runs too."
                ),
            ],
            title="Demo · tiny models",
            scene="demo",
        ),
        Workflow(
            "echomimic_demo_flash_tiny",
            "EchoMimicV3-Flash on the tiny random demo models (python -m nodes.demo_models).",
            [
                *demo_models("flash"),
                *inputs(DEMO_IMAGE, DEMO_AUDIO, {"width": 96, "height": 96}),
                *demo_conditioning(),
                Node(
                    "sampler",
                    "EchoMimicSampler",
                    3,
                    0,
                    {},
                    {
                        "model": ("model", 0),
                        "vae": ("vae", 0),
                        "positive": ("text", 0),
                        "clip_vision_output": ("clip_encode", 0),
                        "audio_embeds": ("audio_encode", 0),
                        "image": ("reference", 0),
                    },
                    group="Generate",
                ),
                demo_output(),
                note(
                    "# Demo on tiny random models (flash)\n" + DEMO_NOTE + "\n\nThe flash demo model takes the "
                    "chinese-wav2vec2 demo encoder (all its hidden layers, as flash does) and the sampler's auto "
                    "settings: 8-step UniPC, audio-only CFG, no negative prompt, no face region."
                ),
            ],
            title="Demo · tiny flash",
            scene="demo_flash",
        ),
    ]


# ------------------------------------------------------------------------------------------------
# Rendering to the two formats
# ------------------------------------------------------------------------------------------------
def _widget_defaults(spec) -> object:
    if spec.type == "COMBO":
        if "default" in spec.options:
            return spec.options["default"]
        return spec.choices[0] if spec.choices else ""
    return spec.options.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec.type])


def _check(workflow: Workflow, schemas: dict) -> None:
    keys = [n.key for n in workflow.nodes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{workflow.name}: node keys repeat")
    for node in workflow.nodes:
        if node.type in VIRTUAL:
            continue
        names = {s.name for s in input_specs(schemas[node.type])}
        unknown = (set(node.values) | set(node.links)) - names
        if unknown:
            raise ValueError(f"{workflow.name}: {node.type} has no inputs {sorted(unknown)}")


def _height(node: Node, slots: int, widget_specs: list, outputs: int) -> int:
    """Roughly what the frontend draws: slot rows, widget rows (multiline text boxes taller), previews."""
    if node.type in VIRTUAL:
        return 260
    extra = PREVIEW_HEIGHT.get(node.type, 0)
    rows = sum(110 if s.type == "STRING" and s.options.get("multiline") else 26 for s in widget_specs)
    return 46 + 22 * max(slots, outputs) + rows + extra


def _stack(workflow: Workflow, ui_nodes: list) -> None:
    """Place each column's nodes top to bottom (ordered by their y hint) with a gap between them."""
    columns: dict[int, list] = {}
    for node, entry in zip(workflow.nodes, ui_nodes):
        columns.setdefault(node.column, []).append((node.y, entry))
    for column, members in columns.items():
        y = TOP
        for _, entry in sorted(members, key=lambda m: m[0]):
            entry["pos"] = [COLUMN_X + column * COLUMN_WIDTH, y]
            y += entry["size"][1] + GAP


def to_ui(workflow: Workflow, schemas: dict) -> dict:
    _check(workflow, schemas)
    ids = {n.key: i + 1 for i, n in enumerate(workflow.nodes)}
    ui_nodes = []
    link_ids: dict[tuple[str, str], int] = {}  # (node key, input name) -> link id
    out_links: dict[tuple[str, int], list[int]] = {}  # (node key, output slot) -> link ids
    for node in workflow.nodes:  # number the links first: outputs list the links leaving them
        for name, (src, slot) in node.links.items():
            link_ids[node.key, name] = len(link_ids) + 1
            out_links.setdefault((src, slot), []).append(link_ids[node.key, name])
    for order, node in enumerate(workflow.nodes):
        entry = {
            "id": ids[node.key],
            "type": node.type,
            "pos": [0, 0],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "properties": {"Node name for S&R": node.type},
        }
        if node.title:
            entry["title"] = node.title
        if node.type in VIRTUAL:
            entry["widgets_values"] = [node.values["text"]]
            entry["size"] = [NODE_WIDTH, _height(node, 0, [], 0)]
            entry["color"], entry["bgcolor"] = "#432", "#653"
            ui_nodes.append(entry)
            continue
        schema = schemas[node.type]
        specs = input_specs(schema)
        widgets = []
        for spec in specs:
            link = link_ids.get((node.key, spec.name))
            if spec.is_widget:
                widgets.append(node.values.get(spec.name, _widget_defaults(spec)))
                if spec.has_control:
                    widgets.append("fixed")
                if spec.is_upload:  # the frontend saves its upload button's value(s) too
                    widgets += UPLOAD_VALUES.get(node.type, ["image"])
                if link:
                    entry["inputs"].append(
                        {"name": spec.name, "type": spec.type, "widget": {"name": spec.name}, "link": link}
                    )
            else:
                entry["inputs"].append({"name": spec.name, "type": spec.type, "link": link})
        for slot, (kind, name) in enumerate(zip(schema["output"], schema.get("output_name", schema["output"]))):
            entry["outputs"].append(
                {"name": name, "type": kind, "links": out_links.get((node.key, slot), []), "slot_index": slot}
            )
        entry["widgets_values"] = widgets
        entry["size"] = [
            NODE_WIDTH,
            _height(node, len(entry["inputs"]), [w for w in specs if w.is_widget], len(entry["outputs"])),
        ]
        ui_nodes.append(entry)
    _stack(workflow, ui_nodes)
    links = []
    for node in workflow.nodes:
        for name, (src, slot) in node.links.items():
            kind = schemas[workflow_node(workflow, src).type]["output"][slot]
            links.append(
                [
                    link_ids[node.key, name],
                    ids[src],
                    slot,
                    ids[node.key],
                    _slot_index(ui_nodes, ids[node.key], name),
                    kind,
                ]
            )
    return {
        "last_node_id": len(ui_nodes),
        "last_link_id": len(link_ids),
        "nodes": ui_nodes,
        "links": sorted(links),
        "groups": _groups(workflow, ui_nodes),
        "config": {},
        # the offset keeps the first column clear of the frontend's side bar
        "extra": {"ds": {"scale": 0.75, "offset": [80, 40]}, "echomimic": workflow.description},
        "version": 0.4,
    }


def workflow_node(workflow: Workflow, key: str) -> Node:
    return next(n for n in workflow.nodes if n.key == key)


def _slot_index(ui_nodes: list, node_id: int, name: str) -> int:
    node = next(n for n in ui_nodes if n["id"] == node_id)
    return next(i for i, slot in enumerate(node["inputs"]) if slot["name"] == name)


def _groups(workflow: Workflow, ui_nodes: list) -> list:
    groups = []
    by_id = {n["id"]: n for n in ui_nodes}
    for title, colour in GROUP_COLOURS.items():
        members = [by_id[i + 1] for i, n in enumerate(workflow.nodes) if n.group == title]
        if not members:
            continue
        x0 = min(n["pos"][0] for n in members) - 20
        y0 = min(n["pos"][1] for n in members) - 60
        x1 = max(n["pos"][0] + n["size"][0] for n in members) + 20
        y1 = max(n["pos"][1] + n["size"][1] for n in members) + 20
        groups.append(
            {"title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": colour, "font_size": 24, "flags": {}}
        )
    return groups


def to_api(workflow: Workflow, schemas: dict) -> dict:
    _check(workflow, schemas)
    ids = {n.key: str(i + 1) for i, n in enumerate(workflow.nodes)}
    prompt = {}
    for node in workflow.nodes:
        if node.type in VIRTUAL:
            continue
        inputs = {}
        for spec in input_specs(schemas[node.type]):
            if spec.name in node.links:
                src, slot = node.links[spec.name]
                inputs[spec.name] = [ids[src], slot]
            elif spec.is_widget:
                inputs[spec.name] = node.values.get(spec.name, _widget_defaults(spec))
        prompt[ids[node.key]] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title or node.type}}
    return prompt


def rendered(schemas: dict | None = None) -> dict[str, str]:
    """Path under workflows/ -> JSON text of every example workflow: ``<name>.json`` (UI) and
    ``api/<name>.json`` (API)."""
    schemas = schemas or load_schemas()
    files = {}
    for workflow in workflows():
        files[f"{workflow.name}.json"] = json.dumps(to_ui(workflow, schemas), indent=1, ensure_ascii=False) + "\n"
        files[f"{API_DIR}/{workflow.name}.json"] = (
            json.dumps(to_api(workflow, schemas), indent=1, ensure_ascii=False) + "\n"
        )
    return files


def thumbnails() -> dict[str, tuple[str, str]]:
    """Path under workflows/ -> (scene, title) of each template thumbnail, ``<name>.jpg``."""
    return {f"{w.name}.jpg": (w.scene, w.title or w.name) for w in workflows()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    parser.add_argument("--object-info", help="ComfyUI GET /object_info answer saved as JSON")
    args = parser.parse_args(argv)
    stale = []
    files = rendered(load_schemas(args.object_info))
    for name, text in files.items():
        path = HERE / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    # a thumbnail is current when it was drawn from the scene and title as they are now (JPEG bytes
    # differ between Pillow builds, so they are not compared)
    for name, (scene, title) in thumbnails().items():
        path = HERE / name
        if path.is_file() and is_current(path.read_bytes(), scene, title):
            continue
        stale.append(name)
        if not args.check:
            path.write_bytes(thumbnail_jpeg(scene, title))
    for name in stale:
        print(f"{'out of date' if args.check else 'wrote'}: workflows/{name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
