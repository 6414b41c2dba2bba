"""The real-browser tier: Chromium driven by playwright against a running ComfyUI that has this pack
and the demo models.

    ECHOMIMIC_COMFYUI_URL=http://127.0.0.1:8188 python -m pytest tests/browser

Every test here is skipped, with that reason, when ECHOMIMIC_COMFYUI_URL is unset (CI has no
ComfyUI), and when playwright or a Chromium binary is missing. docs/COMFYUI.md ("Browser tests")
shows how to start a ComfyUI for it. ECHOMIMIC_CHROMIUM names the browser binary (default: chromium
on PATH); ECHOMIMIC_BROWSER_SHOTS a folder that keeps each test's screenshots for a look.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

URL = os.environ.get("ECHOMIMIC_COMFYUI_URL", "").rstrip("/")
SKIP_REASON = (
    "the browser tier needs a running ComfyUI with this pack and the demo models: set "
    "ECHOMIMIC_COMFYUI_URL=http://127.0.0.1:8188 (docs/COMFYUI.md, 'Browser tests')"
)


class ComfyUI:
    """The server under test, over its HTTP API."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return answer.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def upload(self, name: str, data: bytes) -> str:
        """Put a file in the server's input folder (ComfyUI's /upload/image takes any file)."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'
            f"--{boundary}--\r\n".encode()
        )
        request = urllib.request.Request(
            self.url + "/api/upload/image",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())["name"]

    def template(self, name: str) -> dict:
        """A UI workflow as the Templates browser fetches it."""
        return self.get_json(f"/api/workflow_templates/{urllib.parse.quote(self.pack_module())}/{name}.json")

    def pack_module(self) -> str:
        """The pack's folder name under custom_nodes/, as the templates API names it."""
        for module, names in self.get_json("/api/workflow_templates").items():
            if "echomimic_demo_tiny" in names:
                return module
        raise AssertionError("the server offers no EchoMimicV3 templates: is the pack installed?")

    def history_ids(self) -> set[str]:
        return set(self.get_json("/api/history?max_items=200"))

    def wait_for_new_prompt(self, before: set[str], timeout: float) -> dict:
        """The first prompt not in ``before`` once it finished (its history entry)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for prompt_id, entry in self.get_json("/api/history?max_items=200").items():
                if prompt_id not in before and entry.get("status", {}).get("completed") is not None:
                    return entry
            time.sleep(1.0)
        raise AssertionError(f"no prompt finished within {timeout:.0f} s")


@pytest.fixture(scope="session")
def comfyui() -> ComfyUI:
    if not URL:
        pytest.skip(SKIP_REASON)
    server = ComfyUI(URL)
    try:
        server.get("/api/system_stats")
    except (urllib.error.URLError, OSError) as e:
        pytest.fail(f"ECHOMIMIC_COMFYUI_URL={URL} does not answer ({e}); start ComfyUI first (docs/COMFYUI.md).")
    return server


@pytest.fixture(scope="session")
def browser(comfyui):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (its browser download is not needed)"
    )
    executable = os.environ.get("ECHOMIMIC_CHROMIUM") or next(
        (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
    )
    if executable is None:
        pytest.skip("no Chromium found: apt-get install chromium, or set ECHOMIMIC_CHROMIUM")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def shots(request, tmp_path) -> Path:
    """Where a test's screenshots go: ECHOMIMIC_BROWSER_SHOTS/<test> if set, else a temporary folder."""
    keep = os.environ.get("ECHOMIMIC_BROWSER_SHOTS")
    folder = Path(keep) / request.node.name if keep else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Canvas:
    """One ComfyUI page: loading workflows, finding nodes, where they are on screen."""

    def __init__(self, page):
        self.page = page

    def load(self, workflow: dict) -> None:
        self.page.evaluate("(wf) => window.app.loadGraphData(wf)", workflow)
        self.settle()

    def settle(self, seconds: float = 0.5) -> None:
        """Let the frontend finish its async work (image loads, deferred drawing) and redraw."""
        self.page.evaluate("() => window.app.graph.setDirtyCanvas(true, true)")
        self.page.wait_for_timeout(seconds * 1000)

    def dialogs(self) -> list[str]:
        return self.page.evaluate(
            "() => Array.from(document.querySelectorAll('.p-dialog')).filter((d) => d.offsetParent !== null)"
            ".map((d) => d.innerText.slice(0, 200))"
        )

    def node_id(self, type_: str) -> int:
        return self.page.evaluate(
            "(t) => (window.app.graph.nodes ?? window.app.graph._nodes).find((n) => n.type === t).id", type_
        )

    def node(self, node_id: int, script: str, arg=None):
        """Evaluate ``script`` (a function body seeing ``node`` and ``arg``) on a node."""
        return self.page.evaluate(
            f"([id, arg]) => {{ const node = window.app.graph.getNodeById(id); {script} }}", [node_id, arg]
        )

    def screen_rect(self, node_id: int) -> dict:
        """The node's box on the page (title bar included), in CSS pixels."""
        return self.node(
            node_id,
            "const ds = window.app.canvas.ds; const r = window.app.canvas.canvas.getBoundingClientRect();"
            "const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;"
            "return {x: r.left + (node.pos[0] + ds.offset[0]) * ds.scale,"
            " y: r.top + (node.pos[1] - title + ds.offset[1]) * ds.scale,"
            " width: node.size[0] * ds.scale, height: (node.size[1] + title) * ds.scale};",
        )

    def show(self, node_id: int, scale: float) -> None:
        """Zoom to ``scale`` with the node in the top left part of the canvas."""
        self.node(
            node_id,
            "const ds = window.app.canvas.ds; ds.scale = arg;"
            "ds.offset[0] = 120 / arg - node.pos[0]; ds.offset[1] = 120 / arg - node.pos[1];"
            "window.app.graph.setDirtyCanvas(true, true);",
            scale,
        )
        # off the node (a hovered preview is drawn brighter) and off the tab bar (its hover card)
        self.page.mouse.move(self.page.viewport_size["width"] - 40, self.page.viewport_size["height"] // 2)
        self.settle()


@pytest.fixture
def canvas(browser, comfyui):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(comfyui.url)
    page.wait_for_function("() => window.app && window.app.graph && window.app.vueAppReady", timeout=60_000)
    page.wait_for_timeout(1000)
    page.keyboard.press("Escape")  # the first-visit Templates dialog
    page.wait_for_timeout(300)
    yield Canvas(page)
    page.close()
