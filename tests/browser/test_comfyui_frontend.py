"""What a user sees in ComfyUI's real frontend: templates, workflows, the face-box overlay, the
sampler's plan line and the demo from the Run button to a video (see conftest.py to run these)."""

from __future__ import annotations

import io
import math
import re
import wave
from pathlib import Path

import numpy as np
import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
UI_NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
DEMOS = ("echomimic_demo_tiny", "echomimic_demo_flash_tiny")
BLOCK_IMAGE = "echomimic_browser_block.png"  # 320 x 200, a red block at x 200-280, y 50-120
BLOCK = (200, 50, 280, 120)
LONGER_AUDIO = "echomimic_browser_4s.wav"


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV of a quiet tone, ``seconds`` long."""
    t = np.arange(int(round(seconds * rate))) / rate
    samples = (0.2 * np.sin(2 * math.pi * 220 * t) * 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def block_png() -> bytes:
    from PIL import Image

    image = np.zeros((200, 320, 3), np.uint8)
    image[...] = (0, 0, 255)
    x1, y1, x2, y2 = BLOCK
    image[y1:y2, x1:x2] = (255, 0, 0)
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def _bbox(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def overlay_on_screen(png: bytes) -> dict:
    """Where the block image and the green outline are in a screenshot of the Face Mask node."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    red = (r > 200) & (g < 90) & (b < 90)
    blue = (b > 200) & (r < 90) & (g < 90)
    image = _bbox(blue | red)
    if image is None:
        return {"image": None, "green": None, "green_pixels": 0}
    # green inside the drawn image only (the node's slot dots are green too)
    x0, y0, x1, y1 = image
    inside = np.zeros_like(red)
    inside[y0:y1, x0:x1] = True
    green = (g > 150) & (r < 110) & (b < 110) & inside
    return {"image": image, "green": _bbox(green), "green_pixels": int(green.sum())}


def test_templates_are_the_ui_workflows_with_thumbnails(canvas, comfyui, shots):
    from PIL import Image

    module = comfyui.pack_module()
    assert sorted(comfyui.get_json("/api/workflow_templates")[module]) == UI_NAMES
    for name in UI_NAMES:
        workflow = comfyui.template(name)
        assert isinstance(workflow.get("nodes"), list) and "version" in workflow, name  # a UI workflow
        thumbnail = Image.open(io.BytesIO(comfyui.get(f"/api/workflow_templates/{module}/{name}.jpg")))
        assert thumbnail.format == "JPEG", name

    # the Templates browser shows a card per workflow, each with its thumbnail loaded
    page = canvas.page
    page.get_by_text("Templates", exact=True).first.click()
    page.get_by_text(module, exact=True).first.click()
    page.wait_for_timeout(2000)
    page.screenshot(path=str(shots / "templates.png"))
    fetched = page.evaluate(
        "(m) => performance.getEntriesByType('resource').filter((e) => e.name.includes('/workflow_templates/' + m + '/')"
        " && e.name.endsWith('.jpg')).map((e) => [decodeURIComponent(e.name.split('/').pop()), e.responseStatus])",
        module,
    )
    assert sorted(fetched) == sorted([f"{n}.jpg", 200] for n in UI_NAMES)
    # the frontend shows them through blob: URLs; every card's image decoded
    widths = page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog img')).map((i) => i.naturalWidth)")
    assert len(widths) == len(UI_NAMES) and all(w > 0 for w in widths), widths


@pytest.mark.parametrize("name", UI_NAMES)
def test_every_ui_workflow_opens_whole(canvas, comfyui, shots, name):
    canvas.load(comfyui.template(name))
    canvas.page.screenshot(path=str(shots / f"{name}.png"))
    assert canvas.dialogs() == []  # no "missing nodes" or load error dialog
    problems = canvas.page.evaluate(
        """() => (window.app.graph.nodes ?? window.app.graph._nodes).flatMap((n) => {
            const out = [];
            if (n.type !== 'MarkdownNote' && !window.LiteGraph.registered_node_types[n.type]) out.push(`${n.type}: not installed`);
            const needed = n.computeSize?.();  // what the frontend needs to draw the node's widgets
            if (needed && needed[1] > n.size[1] + 1) out.push(`${n.type}: drawn ${needed[1]} tall, saved ${n.size[1]}`);
            return out;
        })"""
    )
    assert problems == []


def test_face_box_lands_on_the_named_region_at_any_size_and_zoom(canvas, comfyui, shots):
    from workflows.build import Node, Workflow, to_ui
    from workflows.validate import load_schemas

    name = comfyui.upload(BLOCK_IMAGE, block_png())
    x1, y1, x2, y2 = BLOCK
    workflow = Workflow(
        "overlay",
        "",
        [
            Node("image", "LoadImage", 0, 0, {"image": name}),
            Node("mask", "EchoMimicFaceMask", 1, 0, {"box": f"{y1}, {y2}, {x1}, {x2}"}, {"image": ("image", 0)}),
        ],
    )
    canvas.load(to_ui(workflow, load_schemas()))
    before = comfyui.history_ids()
    canvas.page.evaluate("() => window.app.queuePrompt(0, 1)")
    comfyui.wait_for_new_prompt(before, timeout=120)
    mask = canvas.node_id("EchoMimicFaceMask")
    canvas.page.wait_for_function(
        "(id) => window.app.graph.getNodeById(id).imgs?.[0]?.naturalWidth > 0", arg=mask, timeout=30_000
    )
    for label, size, scale in [
        ("as saved", None, 1.0),
        ("resized larger", [520, 760], 1.0),
        ("zoomed in", None, 1.6),
        ("resized smaller, zoomed out", [300, 430], 0.8),
    ]:
        if size is not None:
            canvas.node(mask, "node.setSize(arg);", size)
        canvas.show(mask, scale)
        png = canvas.page.screenshot(clip=canvas.screen_rect(mask))
        (shots / f"overlay {label}.png").write_bytes(png)
        found = overlay_on_screen(png)
        assert found["image"] is not None and found["green"] is not None, label
        ix0, iy0, ix1, iy1 = found["image"]
        sx, sy = (ix1 - ix0) / 320, (iy1 - iy0) / 200
        expected = (ix0 + x1 * sx, iy0 + y1 * sy, ix0 + x2 * sx, iy0 + y2 * sy)
        assert all(abs(a - b) <= 2 for a, b in zip(found["green"], expected)), (label, found, expected)
        width, height = expected[2] - expected[0], expected[3] - expected[1]
        assert found["green_pixels"] >= 2 * (width + height), (label, found)  # the whole outline is drawn


def test_plan_follows_upstream_changes_with_one_fetch_per_file(canvas, comfyui, shots):
    from nodes.video_plan import plan_line, plan_video

    longer = comfyui.upload(LONGER_AUDIO, wav_bytes(4.0))
    canvas.page.reload()
    canvas.page.wait_for_function("() => window.app && window.app.graph && window.app.vueAppReady", timeout=60_000)
    canvas.page.keyboard.press("Escape")
    canvas.load(comfyui.template("echomimic_demo_tiny"))
    sampler = canvas.node_id("EchoMimicSampler")

    search = canvas.node(sampler, "return node.widgets.find((w) => w.name === 'seam_search_frames').value;")

    def expect(seconds, fps):  # the demo sampler: 33-frame chunks overlapping by 4, seams searched
        plan = plan_video(seconds, fps, 33, 4, seam_search_frames=search)
        return plan_line(plan.frames, fps, plan.latent_frames, len(plan.chunks), plan.most_chunks)

    def shows(text):
        canvas.page.wait_for_function(
            "([id, text]) => { window.app.graph.setDirtyCanvas(true, true);"
            " return window.app.graph.getNodeById(id).echomimicPlanText === text; }",
            arg=[sampler, text],
            timeout=20_000,
        )

    assert expect(2.4, 25) == "60 frames · 2.40 s · 16 latent · 2–3 chunks"
    shows(expect(2.4, 25))
    audio = canvas.node_id("LoadAudio")
    canvas.node(
        audio, "const w = node.widgets.find((w) => w.name === 'audio'); w.value = arg; w.callback?.(arg);", longer
    )
    shows(expect(4.0, 25))
    encode = canvas.node_id("EchoMimicAudioEncode")
    canvas.node(encode, "const w = node.widgets.find((w) => w.name === 'fps'); w.value = arg; w.callback?.(arg);", 30)
    shows(expect(4.0, 30))
    canvas.show(sampler, 0.7)
    canvas.page.screenshot(
        path=str(shots / "plan after the audio and fps changed.png"), clip=canvas.screen_rect(sampler)
    )
    # the extension asked the server for each audio file at most once
    fetched = canvas.page.evaluate(
        "() => performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((n) => n.includes('/view?filename=') && !n.includes('rand='))"
    )
    assert len(fetched) == len(set(fetched)) <= 2, fetched


@pytest.mark.parametrize("name", DEMOS)
def test_demo_runs_from_the_run_button_to_a_video(canvas, comfyui, shots, name):
    page = canvas.page
    canvas.load(comfyui.template(name))
    sampler = canvas.node_id("EchoMimicSampler")
    page.wait_for_function(
        "(id) => { window.app.graph.setDirtyCanvas(true, true);"
        " return /chunk/.test(window.app.graph.getNodeById(id).echomimicPlanText ?? ''); }",
        arg=sampler,
        timeout=20_000,
    )
    planned = canvas.node(sampler, "return node.echomimicPlanText;")
    page.evaluate(
        "() => { window.__progress = []; window.app.api.addEventListener('progress', (e) => window.__progress.push(e.detail)); }"
    )
    before = comfyui.history_ids()
    page.get_by_role("button", name="Run", exact=True).first.click()
    entry = comfyui.wait_for_new_prompt(before, timeout=900)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [
        item for out in entry["outputs"].values() for item in out.get("images", []) if item["filename"].endswith(".mp4")
    ]
    assert len(saved) == 1
    page.wait_for_function(
        "(file) => Array.from(document.querySelectorAll('video')).some((v) => v.src.includes(file))",
        arg=saved[0]["filename"],
        timeout=30_000,
    )
    save = canvas.node_id("EchoMimicSaveVideo")
    canvas.show(save, 1.0)
    page.screenshot(path=str(shots / f"{name} after the run.png"))
    # the bar moved through the VAE passes too: far more updates than denoising steps, all in order
    progress = [p for p in page.evaluate("() => window.__progress") if str(p.get("node")) == str(sampler)]
    values = [p["value"] for p in progress]
    assert len(progress) > 12 and values == sorted(values) and values[-1] == progress[-1]["max"], progress[:5]
    # after the run the line still counts the chunks (from the real plan)
    text = canvas.node(sampler, "return node.echomimicPlanText;")
    assert text.startswith("60 frames · 2.40 s · 16 latent · ") and "chunk" in text, text
    # ... one count, within the range the line promised before the run (seam search picks it)
    ran = int(re.search(r"latent · (\d+) chunks?", text).group(1))
    low, _, high = re.search(r"latent · ([\d–]+) chunk", planned).group(1).partition("–")
    assert int(low) <= ran <= int(high or low), (planned, text)
