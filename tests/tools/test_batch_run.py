"""tools.batch_run against a stand-in ComfyUI server (aiohttp, 127.0.0.1, random port, in-process)."""

import asyncio
import csv
import json
import threading
import uuid

import pytest
from aiohttp import web

from tools import batch_run as br
from workflows.validate import validate_api

NODES = ("LoadImage", "LoadAudio", "CreateVideo", "SaveVideo", "PrimitiveInt", "PrimitiveString")
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "Reference image"}},
    "2": {"class_type": "LoadAudio", "inputs": {"audio": "example.wav"}},
    "3": {"class_type": "PrimitiveInt", "inputs": {"value": 0}, "_meta": {"title": "Seed"}},
    "4": {"class_type": "PrimitiveString", "inputs": {"value": ""}, "_meta": {"title": "Prompt"}},
    "5": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 25.0, "audio": ["2", 0]}},
    "6": {
        "class_type": "SaveVideo",
        "inputs": {"video": ["5", 0], "filename_prefix": "video/echo", "format": "mp4", "codec": "h264"},
    },
}


class StandIn:
    """Speaks the slice of ComfyUI 0.8's protocol the batch runner uses (ecosystem.md A8).

    A prompt whose reference image is named bad*.png fails in CreateVideo; the saved "video" holds
    the row's image, audio, seed and prompt so tests can tell outputs apart.
    """

    def __init__(self, schemas):
        self.schemas = schemas
        self.uploads, self.history, self.files, self.sockets = {}, {}, {}, {}
        self.queued = []  # (prompt_id, prompt)
        self.html_errors = 0  # answer this many POST /prompt with an HTML error page
        self.url = None
        self.seconds = 0.0  # how long a prompt runs
        self.fail_images = set()  # images whose prompts fail on this server only
        self.die_on_prompt = None  # the server goes away while running its n-th prompt (1-based)
        self.running = self.most_running = 0
        self.runner = None

    def app(self):
        app = web.Application()
        app.add_routes(
            [
                web.get("/object_info", self.object_info),
                web.post("/upload/image", self.upload),
                web.post("/prompt", self.prompt),
                web.get("/history/{id}", self.get_history),
                web.get("/view", self.view),
                web.get("/ws", self.ws),
            ]
        )
        return app

    async def object_info(self, request):
        return web.json_response(self.schemas)

    async def upload(self, request):
        form = await request.post()
        part = form["image"]
        self.uploads[part.filename] = part.file.read()
        return web.json_response({"name": part.filename, "subfolder": "", "type": form.get("type", "input")})

    async def prompt(self, request):
        if self.html_errors:  # as a reverse proxy in front of a restarting server answers
            self.html_errors -= 1
            return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")
        body = await request.json()
        prompt = body["prompt"]
        node_errors = {}
        for issue in validate_api(prompt, self.schemas):
            node_errors.setdefault(
                issue.node, {"errors": [], "dependent_outputs": [], "class_type": prompt[issue.node]["class_type"]}
            )
            node_errors[issue.node]["errors"].append({"type": "invalid", "message": issue.message, "details": ""})
        for node_id, node in prompt.items():  # like ComfyUI: a file combo must name an input file
            name = node["inputs"].get("image") or node["inputs"].get("audio")
            if node["class_type"] in ("LoadImage", "LoadAudio") and name not in self.uploads:
                node_errors[node_id] = {
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name} not in input files",
                        }
                    ],
                    "dependent_outputs": [],
                    "class_type": node["class_type"],
                }
        if node_errors:
            return web.json_response(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                    },
                    "node_errors": node_errors,
                },
                status=400,
            )
        prompt_id = str(uuid.uuid4())
        self.queued.append((prompt_id, prompt))
        asyncio.get_running_loop().create_task(self.execute(prompt_id, prompt, body.get("client_id")))
        return web.json_response({"prompt_id": prompt_id, "number": len(self.queued), "node_errors": {}})

    async def execute(self, prompt_id, prompt, client_id):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self._execute(prompt_id, prompt, client_id)
        finally:
            self.running -= 1

    async def die(self):
        """Go away as a crashed server does: sockets closed, the port refusing connections."""
        for socket in list(self.sockets.values()):
            await socket.close()
        await self.runner.cleanup()

    async def _execute(self, prompt_id, prompt, client_id):
        ws = self.sockets.get(client_id)

        async def send(kind, **data):
            if ws is not None and not ws.closed:
                await ws.send_json({"type": kind, "data": {**data, "prompt_id": prompt_id}})

        if prompt["1"]["inputs"]["image"].startswith("drop") and ws is not None:
            await ws.close()  # the client must notice, reconnect and find the result in /history
            ws = None
        await send("execution_start", timestamp=0)
        if ws is not None:
            await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x01jpeg")  # a preview frame, ignored
        await send("executing", node="5", display_node="5")
        for step in (1, 2):
            await send("progress", value=step, max=2, node="5")
        if len(self.queued) == self.die_on_prompt and self.queued[-1][0] == prompt_id:
            await self.die()
            return
        await asyncio.sleep(self.seconds)
        image = prompt["1"]["inputs"]["image"]
        if image.startswith("bad") or image in self.fail_images:
            error = {
                "node_id": "5",
                "node_type": "CreateVideo",
                "exception_type": "RuntimeError",
                "exception_message": "CUDA out of memory",
                "executed": [],
            }
            await send("execution_error", **error)
            self.history[prompt_id] = {
                "prompt": [],
                "outputs": {},
                "status": {"status_str": "error", "completed": False, "messages": [["execution_error", error]]},
            }
        else:
            name = f"echo_{sum(k[0] == 'video' for k in self.files) + 1:05}_.mp4"
            self.files[("video", name)] = json.dumps(
                [image, prompt["2"]["inputs"]["audio"], prompt["3"]["inputs"]["value"], prompt["4"]["inputs"]["value"]]
            ).encode()
            self.files[("", "preview.png")] = b"png"
            outputs = {
                "6": {"images": [{"filename": name, "subfolder": "video", "type": "output"}], "animated": [True]},
                "7": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]},
            }
            await send("executed", node="6", display_node="6", output=outputs["6"])
            self.history[prompt_id] = {
                "prompt": [],
                "outputs": outputs,
                "status": {"status_str": "success", "completed": True, "messages": []},
            }
            await send("execution_success", timestamp=1)
        await send("executing", node=None)

    async def get_history(self, request):
        prompt_id = request.match_info["id"]
        return web.json_response({prompt_id: self.history[prompt_id]} if prompt_id in self.history else {})

    async def view(self, request):
        key = (request.query.get("subfolder", ""), request.query["filename"])
        if key not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[key])

    async def ws(self, request):
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self.sockets[request.query["clientId"]] = socket
        await socket.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
        async for _ in socket:
            pass
        return socket


@pytest.fixture
def start_server(object_info_path):
    """Starts stand-in servers (each on its own thread and port); all stop at the end of the test."""
    info = json.loads(object_info_path.read_text())
    running = []

    def start():
        standin = StandIn({name: info[name] for name in NODES})
        loop = asyncio.new_event_loop()
        standin.runner = runner = web.AppRunner(standin.app())
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
            standin.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert ready.wait(10), "stand-in server did not start"
        running.append((runner, loop, thread))
        return standin

    yield start
    for runner, loop, thread in running:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.fixture
def batch(tmp_path):
    """A workflow file and a CSV table of three rows (one of which fails at run time)."""
    for name in ("a.png", "b.png", "bad.png", "a.wav", "b.wav"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    rows = [
        {"name": "alice", "image": "a.png", "audio": "a.wav", "Seed.value": "1", "Prompt.value": "hi"},
        {"name": "bob", "image": "b.png", "audio": "b.wav", "Seed.value": "2", "Prompt.value": ""},
        {"name": "broken", "image": "bad.png", "audio": "a.wav", "Seed.value": "3", "Prompt.value": "x"},
    ]
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def _run(batch, server, *extra):
    return br.main(
        [
            str(batch / "wf.json"),
            "--inputs",
            str(batch / "rows.csv"),
            "--server",
            server.url,
            "--out",
            str(batch / "out"),
            "--retry-delay",
            "0",
            *extra,
        ]
    )


def test_rows_run_outputs_download_failures_retry_and_resume(batch, server, capsys):
    assert _run(batch, server, "--retries", "2") == 1
    out = batch / "out"
    assert json.loads((out / "alice" / "echo_00001_.mp4").read_bytes()) == ["a.png", "a.wav", 1, "hi"]
    # an empty cell keeps the workflow's value
    assert json.loads((out / "bob" / "echo_00002_.mp4").read_bytes()) == ["b.png", "b.wav", 2, ""]
    assert not (out / "alice" / "preview.png").exists()  # temp previews are not downloaded by default
    assert sorted(server.uploads) == ["a.png", "a.wav", "b.png", "b.wav", "bad.png"]
    images = [p["1"]["inputs"]["image"] for _, p in server.queued]
    assert images == ["a.png", "b.png", "bad.png", "bad.png", "bad.png"]  # 1 try + 2 retries
    state = json.loads((out / "batch_state.json").read_text())["rows"]
    assert state["alice"]["status"] == "done" and state["broken"]["status"] == "failed"
    assert state["broken"]["attempts"] == 3 and "CUDA out of memory" in state["broken"]["error"]
    table = capsys.readouterr().out
    assert "broken  failed" in table and "2/3 rows done" in table

    assert _run(batch, server, "--resume", "--retries", "0") == 1
    images = [p["1"]["inputs"]["image"] for _, p in server.queued]
    assert images[5:] == ["bad.png"]  # finished rows are skipped
    assert "skipped" in capsys.readouterr().out
    state = json.loads((out / "batch_state.json").read_text())["rows"]
    assert state["alice"]["status"] == "done"  # still done for the next resume


def test_resume_reruns_a_changed_row(batch, server):
    assert _run(batch, server, "--retries", "0") == 1
    text = (batch / "rows.csv").read_text().replace("a.png,a.wav,1,hi", "a.png,a.wav,5,hi")
    (batch / "rows.csv").write_text(text.replace("bad.png", "b.png"))
    assert _run(batch, server, "--resume") == 0
    assert [p["3"]["inputs"]["value"] for _, p in server.queued][3:] == [5, 3]


def test_rejected_prompt_is_reported_without_retry(batch, server):
    (batch / "rows.csv").write_text("name,image,audio\nx,a.png,not-uploaded.wav\n")
    assert _run(batch, server, "--retries", "3") == 1
    state = json.loads((batch / "out" / "batch_state.json").read_text())["rows"]["x"]
    assert state["attempts"] == 1 and "Value not in list" in state["error"] and server.queued == []


@pytest.mark.parametrize(
    "workflow,table,expected",
    [
        (
            {**WORKFLOW, "5": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 25.0, "frames": 3}}},
            "image\na.png\n",
            "CreateVideo has no input 'frames'",
        ),
        ({"nodes": [], "links": []}, "image\na.png\n", "Export (API)"),
        (WORKFLOW, "Nobody.value\n1\n", "no node with id, title or type 'Nobody'"),
        (WORKFLOW, "value\n1\n", "nodes 3, 4 all have an input 'value'"),
        (WORKFLOW, "5.images\na.png\n", "is linked to node 1"),
        (WORKFLOW, "Seed.value\nseven\n", "'seven' is not a valid int"),
    ],
)
def test_bad_workflow_or_table_stops_before_any_upload(batch, server, capsys, workflow, table, expected):
    (batch / "wf.json").write_text(json.dumps(workflow))
    (batch / "rows.csv").write_text(table)
    assert _run(batch, server) == 2
    assert expected in capsys.readouterr().err
    assert server.uploads == {} and server.queued == []


def test_uploaded_file_names_keep_spaces_and_non_ascii(batch, server):
    # ComfyUI saves an upload under the multipart file name as sent; aiohttp's default quoting made
    # "face b.png" arrive (and be stored) as "face%20b.png".
    (batch / "face b.png").write_bytes(b"f")
    (batch / "说话 1.wav").write_bytes(b"s")
    (batch / "rows.csv").write_text("name,image,audio\nx,face b.png,说话 1.wav\n", encoding="utf-8")
    assert _run(batch, server) == 0
    assert sorted(server.uploads) == ["face b.png", "说话 1.wav"]
    assert [(p["1"]["inputs"]["image"], p["2"]["inputs"]["audio"]) for _, p in server.queued] == [
        ("face b.png", "说话 1.wav")
    ]


def test_lost_websocket_falls_back_to_history(batch, server):
    (batch / "drop.png").write_bytes(b"d")
    (batch / "rows.csv").write_text("name,image,audio\nd,drop.png,a.wav\n")
    workflow = br.load_workflow(batch / "wf.json")
    rows = br.load_rows(batch / "rows.csv")
    results = asyncio.run(br.run_batch(workflow, rows, server.url, batch / "out", retries=0, poll=0.2, timeout=20))
    assert (results[0].status, results[0].error, results[0].outputs) == ("done", None, ["d/echo_00001_.mp4"])
    assert len(server.queued) == 1


def test_folder_inputs(tmp_path):
    for name in ("x.png", "x.wav", "y.jpg"):
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "x.txt").write_text("a person talking\n")
    rows = br.load_rows(tmp_path)
    assert [(r.name, r.values) for r in rows] == [
        ("x", {"image": "x.png", "audio": "x.wav", "prompt": "a person talking"}),
        ("y", {"image": "y.jpg"}),
    ]
    bindings = br.resolve_columns(WORKFLOW, ["image", "prompt"], {"prompt": "Prompt.value"})
    assert bindings == {"image": ("1", "image"), "prompt": ("4", "value")}
    (tmp_path / "empty").mkdir()
    with pytest.raises(br.BatchError, match="no images"):
        br.load_rows(tmp_path / "empty")


def test_html_error_page_from_the_server_is_retried(batch, server):
    (batch / "rows.csv").write_text("name,image,audio\nx,a.png,a.wav\n")
    server.html_errors = 1
    assert _run(batch, server, "--retries", "1") == 0
    state = json.loads((batch / "out" / "batch_state.json").read_text())["rows"]["x"]
    assert state["attempts"] == 2 and state["status"] == "done" and len(server.queued) == 1


def _pool_table(batch, rows):
    (batch / "rows.csv").write_text(
        "name,image,audio,Seed.value\n" + "".join(f"{n},{img},a.wav,{i}\n" for i, (n, img) in enumerate(rows))
    )


def _ran(standin):
    return [p["3"]["inputs"]["value"] for _, p in standin.queued]


def test_pool_spreads_rows_and_finishes_a_dead_servers_row_elsewhere(batch, start_server, capsys):
    servers = [start_server() for _ in range(3)]
    for standin in servers:
        standin.seconds = 0.2  # rows overlap, so every server gets some
    dying = servers[2]
    dying.die_on_prompt = 2  # finishes one row, then goes away in the middle of the next
    _pool_table(batch, [(f"r{i}", "ab"[i % 2] + ".png") for i in range(8)])
    urls = [arg for s in servers for arg in ("--server", s.url)]
    # no retries: a row whose server disappeared moves on without using one up
    assert _run(batch, servers[0], *urls[2:], "--retries", "0", "--server-recheck", "0.2") == 0
    state = json.loads((batch / "out" / "batch_state.json").read_text())["rows"]
    assert all(row["status"] == "done" for row in state.values())
    ran_on = {name: row["server"] for name, row in state.items()}
    assert {s.url for s in servers[:2]} <= set(ran_on.values())
    assert sum(url == dying.url for url in ran_on.values()) == 1  # the row it finished before dying
    lost_seed = _ran(dying)[1]
    lost = state[f"r{lost_seed}"]
    assert lost["attempts"] == 2 and lost["server"] in (servers[0].url, servers[1].url)
    assert lost_seed in _ran(servers[0]) + _ran(servers[1])
    # every row ran to completion exactly once
    finished = sorted(seed for s in servers for seed in _ran(s))
    assert finished == sorted([*range(8), lost_seed])
    for name, row in state.items():
        assert json.loads((batch / "out" / name / row["outputs"][0].split("/")[1]).read_bytes())[2] == int(name[1:])
    table = capsys.readouterr().out
    assert "server" in table.splitlines()[0] and "8/8 rows done" in table


def test_a_failed_row_is_retried_on_another_server(batch, start_server):
    first, second = start_server(), start_server()
    first.fail_images = {"a.png"}
    _pool_table(batch, [("x", "a.png")])
    assert _run(batch, first, "--server", second.url, "--retries", "1") == 0
    state = json.loads((batch / "out" / "batch_state.json").read_text())["rows"]["x"]
    assert (state["status"], state["attempts"], state["server"]) == ("done", 2, second.url)
    assert (_ran(first), _ran(second)) == ([0], [0])


def test_depth_keeps_several_rows_in_flight_per_server(batch, server):
    server.seconds = 0.2
    _pool_table(batch, [(f"r{i}", "a.png") for i in range(4)])
    assert _run(batch, server, "--depth", "2") == 0
    assert server.most_running == 2 and sorted(_ran(server)) == [0, 1, 2, 3]


def test_when_no_server_answers_the_rows_left_fail_and_resume_later(batch, start_server, capsys):
    dying = start_server()
    dying.die_on_prompt = 1
    _pool_table(batch, [("x", "a.png"), ("y", "b.png")])
    assert _run(batch, dying, "--retries", "3") == 1
    state = json.loads((batch / "out" / "batch_state.json").read_text())["rows"]
    assert [state[n]["status"] for n in "xy"] == ["failed", "failed"]
    assert all("no server answers" in state[n]["error"] for n in "xy") and len(dying.queued) == 1
    capsys.readouterr()
    revived = start_server()
    assert _run(batch, revived, "--resume") == 0
    assert sorted(_ran(revived)) == [0, 1]


def test_unreachable_servers_are_reported_before_anything_runs(batch, server, capsys):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens there
    assert _run(batch, server, "--server", dead) == 1  # the reachable one runs the batch (one row fails)
    assert {row["server"] for row in _state(batch).values()} == {server.url}
    out = batch / "other"
    code = br.main([str(batch / "wf.json"), "--inputs", str(batch / "rows.csv"), "--server", dead, "--out", str(out)])
    assert code == 2 and "cannot reach the ComfyUI server at http://127.0.0.1:9" in capsys.readouterr().err


def _state(batch):
    return json.loads((batch / "out" / "batch_state.json").read_text())["rows"]


def test_server_address_without_http_is_accepted(batch, server):
    # "127.0.0.1:8188" used to fail with "is it running?" while it was
    (batch / "rows.csv").write_text("name,image,audio\nx,a.png,a.wav\n")
    address = server.url.removeprefix("http://")
    assert _run(batch, server, "--server", address) == 0
    assert len(server.queued) == 1


def test_running_again_resumes_unless_the_workflow_outputs_or_restart_say_otherwise(batch, server):
    assert _run(batch, server, "--retries", "0") == 1  # alice, bob done; broken failed
    assert len(server.queued) == 3
    assert _run(batch, server, "--retries", "0") == 1  # the same command: only the failed row again
    assert [p["1"]["inputs"]["image"] for _, p in server.queued][3:] == ["bad.png"]
    bob = _state(batch)["bob"]["outputs"][0]
    (batch / "out" / bob).unlink()  # a deleted download: bob runs again
    assert _run(batch, server, "--retries", "0") == 1
    assert [p["1"]["inputs"]["image"] for _, p in server.queued][4:] == ["b.png", "bad.png"]
    assert _run(batch, server, "--retries", "0", "--restart") == 1
    assert sorted(p["1"]["inputs"]["image"] for _, p in server.queued[6:]) == ["a.png", "b.png", "bad.png"]
    workflow = json.loads((batch / "wf.json").read_text())
    workflow["3"]["inputs"]["value"] = 99  # another workflow: every row again
    (batch / "wf.json").write_text(json.dumps(workflow))
    assert _run(batch, server, "--retries", "0") == 1
    assert len(server.queued) == 12
