"""Run a saved API-format workflow once per row of a table against a ComfyUI server.

    python -m tools.batch_run WORKFLOW_API.json --inputs table.csv|table.json|folder/ \\
        [--server http://127.0.0.1:8188 [--server URL ...]] [--depth N] [--out DIR] [--retries N]
        [--restart] [--map COL=NODE.INPUT]

The workflow is ComfyUI's "Export (API)" file (the pack's examples: ``workflows/api/*.json``). Each row sets node inputs, uploads the local files it
names, queues the prompt, follows it on the websocket and downloads its outputs to ``OUT/<row>/``.

Mapping a column onto a node input
----------------------------------
* ``NODE.INPUT``: ``NODE`` is a node id (``"12"``), a node title (``_meta.title``, e.g.
  ``Reference image``) or a class_type used by exactly one node (``LoadAudio``); ``INPUT`` is
  the input name (``seed``, ``image``, ``text``...). Example header: ``Seed.value,LoadImage.image``.
* ``INPUT`` alone: the one node that has a literal input of that name (``seed``, ``audio``...);
  ambiguous or unknown names are an error listing the candidates.
* ``--map COLUMN=NODE.INPUT`` renames a column without editing the table.
* The ``name`` column names the row (output folder and state key); default ``row0001``...
* Empty cells keep the workflow's value. Text is converted to the type the workflow holds there
  (int, float, bool, text). A text value naming an existing file (relative to the table's folder,
  or absolute) is uploaded to the server's input folder (``/upload/image``, which ComfyUI uses for
  images, audio and video alike) and replaced by the uploaded name.

A folder as ``--inputs`` makes one row per image (``.png/.jpg/.jpeg/.webp``), with columns
``image`` (the file), ``audio`` (same stem, ``.wav/.mp3/.flac/.m4a/.ogg``) and ``prompt`` (same
stem ``.txt``), named after the stem; these plain names follow the mapping rules above.

Resuming: ``OUT/batch_state.json`` records each row's outcome and the workflow it ran. Running the
same command again skips the rows already done with the same values and the same workflow whose
downloaded outputs are still there, and runs the rest; ``--restart`` runs every row. A row cut off in
the middle of a long video resumes on the server at its first unfinished chunk when its sampler
writes a file (``output`` video_file: the file name is the run's fingerprint, and the finished
chunks wait beside it). Rows failing at run time are retried ``--retries`` times; a prompt the
server rejects (HTTP 400, node_errors) is reported at once, without retries.

A pool of servers
-----------------
``--server`` may be given several times (e.g. one ComfyUI per GPU). Every server keeps ``--depth``
rows in flight (default 1: a row is queued when the server's previous one finished, so no server
holds a backlog another could have run). A row that fails is retried on another server when there
is one; a server that stops answering is dropped, its rows move to the others without using up
their retries, and it is asked again every ``--server-recheck`` seconds. When no server answers,
the remaining rows are recorded as failed and running the command again picks them up. One state file
records which server ran each row.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import logging
import os
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("tools.batch_run")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg")
STATE_FILE = "batch_state.json"
DEFAULT_SERVER = "http://127.0.0.1:8188"
RESERVED_COLUMNS = ("name",)


class BatchError(Exception):
    """A problem with the workflow, the table or the server that stops the whole batch."""


class PromptRejected(Exception):
    """The server refused the prompt (HTTP 400): retrying the same prompt cannot help."""


class ExecutionFailed(Exception):
    """The prompt was queued but did not finish (node error, interrupt, lost connection, timeout)."""


# ------------------------------------------------------------------------------------------------
# Workflow, table, mapping
# ------------------------------------------------------------------------------------------------
def load_workflow(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BatchError(f"cannot read workflow {path}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise BatchError(
            f"{path} is a UI workflow; batch runs need the API format: in ComfyUI use "
            "Workflow > Export (API) and pass that file."
        )
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if (
        not isinstance(data, dict)
        or not data
        or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs", {}), dict) for n in data.values()
        )
    ):
        raise BatchError(
            f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}}); "
            "export it from ComfyUI with Export (API)."
        )
    return data


@dataclass
class Row:
    name: str
    values: dict[str, Any]  # column -> cell (empty cells dropped)
    base_dir: Path  # where relative file names are looked up

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _named_rows(records: list[dict], base_dir: Path) -> list[Row]:
    rows, seen = [], set()
    for index, record in enumerate(records, 1):
        values = {
            str(k).strip(): v
            for k, v in record.items()
            if k is not None and v is not None and not (isinstance(v, str) and v.strip() == "")
        }
        name = str(values.pop("name", f"row{index:04d}")).strip()
        if not name or name in seen or "/" in name or "\\" in name or name in (".", ".."):
            raise BatchError(f"row {index}: name {name!r} must be unique and usable as a folder name.")
        seen.add(name)
        rows.append(Row(name, values, base_dir))
    return rows


def load_rows(source: Path) -> list[Row]:
    """Rows of a CSV file, a JSON list of objects (or {"rows": [...]}), or an input folder."""
    if source.is_dir():
        records = []
        for image in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            record = {"name": image.stem, "image": image.name}
            audio = next((image.with_suffix(s) for s in AUDIO_SUFFIXES if image.with_suffix(s).is_file()), None)
            if audio is not None:
                record["audio"] = audio.name
            if image.with_suffix(".txt").is_file():
                record["prompt"] = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
            records.append(record)
        if not records:
            raise BatchError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in input folder {source}.")
        return _named_rows(records, source)
    text = read_table_text(source)
    if source.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BatchError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
        data = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BatchError(f'{source}: expected a JSON list of objects (one per row) or {{"rows": [...]}}.')
        return _named_rows(data, source.parent)
    return _named_rows(csv_records(text, source), source.parent)


def read_table_text(source: Path) -> str:
    """The table as text: UTF-8 (with or without BOM) or UTF-16 with its BOM, as spreadsheet programs
    save "Unicode text"; anything else that is not text is refused, naming the file."""
    try:
        data = source.read_bytes()
    except OSError as e:
        raise BatchError(f"cannot read inputs {source}: {e.strerror or e}.") from e
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise BatchError(
            f"{source}: not a text table (byte {e.start} is not {encoding.upper()} text); "
            "save it as CSV (UTF-8) or JSON."
        ) from None
    if "\x00" in text:
        raise BatchError(f"{source}: holds binary data (NUL characters); save the table as CSV (UTF-8) or JSON.")
    return text


def csv_records(text: str, source: Path) -> list[dict]:
    """CSV rows as dicts; a row with more cells than the header (an unquoted comma in a prompt
    splits it) is used without its extra cells, with a warning naming the line."""
    reader = csv.DictReader(text.splitlines())
    records = []
    for record in reader:
        extra = record.pop(None, None)
        if extra:
            log.warning(
                "%s line %d: %d cells more than the header's %d columns; ignoring %s. Quote cells that "
                'contain commas ("a, b").',
                source,
                reader.line_num,
                len(extra),
                len(reader.fieldnames),
                extra,
            )
        records.append(record)
    return records


def _find_node(workflow: dict, ref: str) -> str:
    if ref in workflow:
        return ref
    titled = [i for i, n in workflow.items() if n.get("_meta", {}).get("title") == ref]
    typed = [i for i, n in workflow.items() if n["class_type"] == ref]
    for found in (titled, typed):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise BatchError(
                f"{ref!r} matches nodes {', '.join(found)}; use a node id or give the nodes distinct titles."
            )
    raise BatchError(f"no node with id, title or type {ref!r} in the workflow.")


def resolve_columns(workflow: dict, columns: Iterable[str], renames: dict[str, str]) -> dict[str, tuple[str, str]]:
    """column -> (node id, input name), following the mapping rules in the module docstring."""
    bindings = {}
    for column in columns:
        target = renames.get(column, column)
        if "." in target:
            ref, _, input_name = target.rpartition(".")
            node_id = _find_node(workflow, ref)
        else:
            input_name = target
            owners = [
                i
                for i, n in workflow.items()
                if input_name in n.get("inputs", {}) and not isinstance(n["inputs"][input_name], list)
            ]
            if len(owners) != 1:
                what = f"nodes {', '.join(owners)} all have" if owners else "no node has"
                raise BatchError(
                    f"column {column!r}: {what} an input {input_name!r}; name the node as "
                    f"NODE.{input_name} (node id or title) or pass --map {column}=NODE.INPUT."
                )
            node_id = owners[0]
        inputs = workflow[node_id].get("inputs", {})
        if input_name not in inputs:
            raise BatchError(
                f"column {column!r}: node {node_id} ({workflow[node_id]['class_type']}) has no "
                f"input {input_name!r}; its inputs are: {', '.join(inputs)}."
            )
        if isinstance(inputs[input_name], list):
            raise BatchError(
                f"column {column!r}: input {input_name!r} of node {node_id} is linked to node "
                f"{inputs[input_name][0]}; map the column onto that node's input instead."
            )
        bindings[column] = (node_id, input_name)
    return bindings


def coerce(value: Any, like: Any, where: str) -> Any:
    """``value`` (often CSV text) converted to the type the workflow holds at that input."""
    if not isinstance(value, str) or isinstance(like, str) or like is None:
        return value
    text = value.strip()
    try:
        if isinstance(like, bool):
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
    except ValueError:
        raise BatchError(f"{where}: {value!r} is not a valid {type(like).__name__}.") from None
    return value


def local_file(value: Any, base_dir: Path) -> Path | None:
    if not isinstance(value, str) or not value or len(value) > 4096 or "\n" in value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------
class ComfyClient:
    """The slice of ComfyUI's HTTP + websocket protocol a batch needs."""

    def __init__(self, server: str, session: aiohttp.ClientSession, uploads: dict[Path, str] | None = None):
        self.server = server.rstrip("/")
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        # shared by the clients of one server: a file is uploaded to each server once
        self.uploads: dict[Path, str] = {} if uploads is None else uploads

    async def connect(self) -> None:
        url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        self.ws = await self.session.ws_connect(url, heartbeat=30)

    async def object_info(self) -> dict | None:
        async with self.session.get(f"{self.server}/object_info") as response:
            return await response.json() if response.status == 200 else None

    async def answers(self, timeout: float = 10.0) -> bool:
        """Whether the server is up (it answers an HTTP request within ``timeout`` seconds)."""
        try:
            async with self.session.get(f"{self.server}/object_info", timeout=aiohttp.ClientTimeout(total=timeout)):
                return True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def upload(self, path: Path) -> str:
        """Put ``path`` in the server's input folder; returns the name a combo widget uses."""
        path = path.resolve()
        if path not in self.uploads:
            # Unquoted: aiohttp would otherwise percent-encode the file name ("face b.png" ->
            # "face%20b.png"), and ComfyUI stores the upload under that literal name.
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("type", "input")
            # No "overwrite": ComfyUI then keeps identical files once and renames different ones.
            form.add_field("image", path.read_bytes(), filename=path.name)
            async with self.session.post(f"{self.server}/upload/image", data=form) as response:
                if response.status != 200:
                    raise ExecutionFailed(f"upload of {path} failed: HTTP {response.status} {await response.text()}")
                body = await response.json()
            self.uploads[path] = f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]
        return self.uploads[path]

    async def queue(self, prompt: dict) -> str:
        payload = {"prompt": prompt, "client_id": self.client_id}
        async with self.session.post(f"{self.server}/prompt", json=payload) as response:
            text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:  # a proxy's or a crashed server's HTML page: a run-time failure, retried
            body = text
        if response.status == 400:
            raise PromptRejected(describe_rejection(body))
        if response.status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ExecutionFailed(f"POST /prompt: HTTP {response.status} {text[:500]}")
        return body["prompt_id"]

    async def history(self, prompt_id: str) -> dict | None:
        async with self.session.get(f"{self.server}/history/{prompt_id}") as response:
            if response.status != 200:
                return None
            return (await response.json()).get(prompt_id)

    async def wait(self, prompt_id: str, timeout: float, poll: float = 5.0) -> dict:
        """Follow the prompt on the websocket until it ends; returns its history entry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            message = None
            if self.ws is not None and not self.ws.closed:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), min(poll, remaining))
                except asyncio.TimeoutError:
                    message = None
            else:  # lost the websocket: reconnect, and meanwhile rely on /history
                try:
                    await self.connect()
                except aiohttp.ClientError:
                    await asyncio.sleep(min(poll, remaining))
            if message is not None and message.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                data = event.get("data") or {}
                if data.get("prompt_id") != prompt_id:
                    continue
                kind = event.get("type")
                if kind == "progress":
                    log.info("  node %s: %s/%s", data.get("node"), data.get("value"), data.get("max"))
                elif kind == "execution_error":
                    raise ExecutionFailed(describe_execution_error(data))
                elif kind == "execution_interrupted":
                    raise ExecutionFailed(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
                elif not (kind == "executing" and data.get("node") is None):
                    continue
            elif message is not None and message.type in (
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
                aiohttp.WSMsgType.CLOSE,
            ):
                self.ws = None
                continue
            elif message is not None:
                continue  # binary preview frames
            entry = await self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed", True) is not False:
                return entry
            if entry is not None and entry.get("status", {}).get("status_str") == "error":
                raise ExecutionFailed(history_error(entry))
        raise ExecutionFailed(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    async def download(self, item: dict, dest_dir: Path) -> Path:
        params = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder", ""),
            "type": item.get("type", "output"),
        }
        async with self.session.get(f"{self.server}/view", params=params) as response:
            if response.status != 200:
                raise ExecutionFailed(f"download of {item['filename']} failed: HTTP {response.status}")
            data = await response.read()
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / Path(item["filename"]).name
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        os.replace(partial, target)  # never leave a half-written output that looks complete
        return target


def describe_rejection(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error", {})
    lines = [error.get("message", "prompt rejected") if isinstance(error, dict) else str(error)]
    for node_id, info in (body.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            lines.append(
                f"node {node_id} ({info.get('class_type')}): {e.get('message')} {e.get('details', '')}".strip()
            )
    return "; ".join(lines)


def describe_execution_error(data: dict) -> str:
    return (
        f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type', 'error')}: "
        f"{data.get('exception_message', '').strip()}"
    )


def history_error(entry: dict) -> str:
    for name, data in entry.get("status", {}).get("messages", []):
        if name == "execution_error":
            return describe_execution_error(data)
    return "the server reports the prompt as failed"


def output_items(entry: dict, include_temp: bool) -> list[dict]:
    """Files listed in a history entry's outputs ({node: {"images"/"videos"/...: [file, ...]}})."""
    items = []
    for ui in entry.get("outputs", {}).values():
        for values in ui.values():
            for item in values if isinstance(values, list) else []:
                if (
                    isinstance(item, dict)
                    and "filename" in item
                    and (include_temp or item.get("type", "output") == "output")
                ):
                    items.append(item)
    return items


# ------------------------------------------------------------------------------------------------
# Batch
# ------------------------------------------------------------------------------------------------
@dataclass
class RowResult:
    name: str
    status: str = "pending"  # done | failed | skipped
    attempts: int = 0
    seconds: float = 0.0
    prompt_id: str | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    digest: str = ""
    server: str | None = None  # the server of the last attempt


def _read_state(out: Path, workflow_digest: str) -> dict[str, RowResult]:
    """The rows an earlier run of this workflow recorded (none when the workflow changed since)."""
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        known = set(RowResult.__dataclass_fields__)
        rows = {name: RowResult(**{k: v for k, v in row.items() if k in known}) for name, row in state["rows"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring unreadable state file %s; all rows will run", path)
        return {}
    if state.get("workflow") != workflow_digest:
        log.info("the workflow changed since %s was written; every row runs again", path)
        return {}
    return rows


def _still_done(done: RowResult | None, row: Row, out: Path) -> bool:
    """Whether ``row`` finished earlier with the same values and its downloads are still there."""
    if done is None or done.status != "done" or done.digest != row.digest():
        return False
    missing = [f for f in done.outputs if not (out / f).is_file()]
    if missing:
        log.info("%s: done before, but %s is gone; running it again", row.name, missing[0])
    return not missing


def _write_state(out: Path, workflow_digest: str, results: dict[str, RowResult]) -> None:
    """Atomically record every row's outcome (a skipped row stays recorded as done)."""
    rows = {name: {**asdict(r), "status": "done" if r.status == "skipped" else r.status} for name, r in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps({"workflow": workflow_digest, "rows": rows}, indent=1), encoding="utf-8")
    os.replace(tmp, out / STATE_FILE)


async def _run_row(
    client: ComfyClient,
    workflow: dict,
    bindings: dict,
    row: Row,
    out: Path,
    timeout: float,
    include_temp: bool,
    poll: float,
) -> tuple[str, list[str]]:
    prompt = json.loads(json.dumps(workflow))
    for column, value in row.values.items():
        node_id, input_name = bindings[column]
        current = prompt[node_id]["inputs"][input_name]
        path = local_file(value, row.base_dir) if isinstance(current, str) else None
        prompt[node_id]["inputs"][input_name] = await client.upload(path) if path else value
    prompt_id = await client.queue(prompt)
    log.info("%s: queued as %s", row.name, prompt_id)
    entry = await client.wait(prompt_id, timeout, poll)
    files = [await client.download(item, out / row.name) for item in output_items(entry, include_temp)]
    return prompt_id, [str(f.relative_to(out)) for f in files]


# run-time failures that say nothing about the row: the server may be gone (asked before moving on)
CONNECTION_ERRORS = (aiohttp.ClientConnectionError, ConnectionError)
RUN_TIME_ERRORS = (ExecutionFailed, aiohttp.ClientError, asyncio.TimeoutError)


@dataclass(eq=False)
class _Server:
    """One server of the pool; ``down`` says why it was dropped (None while it answers)."""

    url: str
    uploads: dict[Path, str] = field(default_factory=dict)
    down: str | None = None


@dataclass(eq=False)
class _Job:
    """A row on its way through the pool."""

    row: Row
    result: RowResult
    started: float
    failures: int = 0  # run-time failures, bounded by --retries
    lost: int = 0  # attempts cut short by a server that disappeared (they use up no retry)
    failed_on: str | None = None  # server of the last failed attempt: the retry prefers another


class _Pool:
    """Hands rows to the servers' slots (``depth`` slots per server, one row each).

    A row that failed on a server is handed to a slot of another answering server if there is one
    (after ``retry_delay``); a row whose server disappeared is handed out again at once. When no
    server answers, the rows not yet done fail. ``on_done(result)`` is called once per row.
    """

    def __init__(
        self,
        jobs: list[_Job],
        servers: list[_Server],
        retries: int,
        retry_delay: float,
        on_done: Callable[[RowResult], None],
    ):
        self.pending: deque[_Job] = deque(jobs)
        self.servers = servers
        self.retries, self.retry_delay, self.on_done = retries, retry_delay, on_done
        self.busy = 0  # rows held by a slot or waiting out their retry delay
        self.changed = asyncio.Condition()
        self._timers: set[asyncio.Task] = set()

    @property
    def finished(self) -> bool:
        return not self.pending and self.busy == 0

    def _others_answer(self, server: _Server) -> bool:
        return any(s.down is None and s is not server for s in self.servers)

    async def take(self, server: _Server) -> _Job | None:
        """The next row for a slot of ``server``; None when the batch is over or the server is down."""
        async with self.changed:
            while not self.finished and server.down is None:
                others = self._others_answer(server)
                job = next((j for j in self.pending if j.failed_on != server.url or not others), None)
                if job is not None:
                    self.pending.remove(job)
                    self.busy += 1
                    return job
                await self.changed.wait()
            return None

    async def wait_while_down(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less if the batch ends); False once the batch is over."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.finished), seconds)
            except asyncio.TimeoutError:
                pass
            return not self.finished

    async def back(self, server: _Server) -> None:
        log.info("%s answers again; it takes rows again", server.url)
        async with self.changed:
            server.down = None
            self.changed.notify_all()

    def _finish(self, job: _Job, status: str, error: str | None = None) -> None:
        job.result.status, job.result.error = status, error
        job.result.seconds = round(time.monotonic() - job.started, 2)
        self.busy -= 1
        self.on_done(job.result)

    def _no_server_left(self) -> str | None:
        if any(s.down is None for s in self.servers):
            return None
        return "no server answers: " + "; ".join(f"{s.url} ({s.down})" for s in self.servers)

    async def done(self, job: _Job, status: str = "done", error: str | None = None) -> None:
        async with self.changed:
            self._finish(job, status, error)
            self.changed.notify_all()

    async def failed(self, job: _Job, server: _Server, error: str) -> None:
        """A run-time failure: retried (preferably elsewhere) while retries are left."""
        log.warning("%s: attempt %d on %s failed: %s", job.row.name, job.result.attempts, server.url, error)
        async with self.changed:
            job.failures += 1
            job.failed_on = server.url
            if job.failures > self.retries:
                self._finish(job, "failed", error)
            else:
                timer = asyncio.get_running_loop().create_task(self._requeue_later(job, error))
                self._timers.add(timer)
                timer.add_done_callback(self._timers.discard)
            self.changed.notify_all()

    async def _requeue_later(self, job: _Job, error: str) -> None:
        await asyncio.sleep(self.retry_delay)
        async with self.changed:
            gone = self._no_server_left()
            if gone:
                self._finish(job, "failed", f"{error}; {gone}")
            else:
                self.busy -= 1
                self.pending.append(job)
            self.changed.notify_all()

    async def lost(self, job: _Job, server: _Server, error: str) -> None:
        """``server`` stopped answering during ``job``: drop the server, hand the row to another."""
        async with self.changed:
            if server.down is None:
                log.warning("%s stopped answering (%s); its rows move to the other servers", server.url, error)
                server.down = error
            job.lost += 1
            if job.lost > len(self.servers):  # servers that keep vanishing: count it as the row's failure
                job.failed_on = server.url
                job.failures += 1
            gone = self._no_server_left()
            if gone or job.failures > self.retries:
                self._finish(job, "failed", f"{error}; {gone}" if gone else error)
            else:
                self.busy -= 1
                self.pending.appendleft(job)  # it was started first: it goes first
            if gone:
                while self.pending:
                    left = self.pending.popleft()
                    self.busy += 1
                    self._finish(left, "failed", gone)
            self.changed.notify_all()


async def _slot(
    pool: _Pool,
    server: _Server,
    client: ComfyClient,
    run: Callable[[ComfyClient, Row], Awaitable[tuple[str, list[str]]]],
    recheck: float,
) -> None:
    """One row at a time on ``server`` until the batch is over; while it is down, ask every ``recheck`` s."""
    try:
        while True:
            if server.down is not None:
                if not await pool.wait_while_down(recheck):
                    return
                if server.down is not None and await client.answers():
                    await pool.back(server)
                continue
            job = await pool.take(server)
            if job is None:
                if pool.finished:
                    return
                continue
            job.result.attempts += 1
            job.result.server = server.url
            try:
                job.result.prompt_id, job.result.outputs = await run(client, job.row)
            except PromptRejected as e:
                await pool.done(job, "failed", f"rejected: {e}")
            except CONNECTION_ERRORS as e:
                error = str(e) or type(e).__name__
                if await client.answers():
                    await pool.failed(job, server, error)
                else:
                    await pool.lost(job, server, error)
            except RUN_TIME_ERRORS as e:
                await pool.failed(job, server, str(e) or type(e).__name__)
            else:
                await pool.done(job)
    finally:
        await client.close()


async def run_batch(
    workflow: dict,
    rows: list[Row],
    servers: str | Sequence[str],
    out: Path,
    renames: dict[str, str] | None = None,
    retries: int = 1,
    resume: bool = False,
    timeout: float = 3600.0,
    retry_delay: float = 2.0,
    include_temp: bool = False,
    check_schemas: bool = True,
    poll: float = 5.0,
    depth: int = 1,
    recheck: float = 30.0,
) -> list[RowResult]:
    """Run every row over the ``servers`` (one URL or several); returns one result per row, in row
    order (also recorded in ``out/batch_state.json``). ``depth``: rows in flight per server;
    ``recheck``: seconds between checks of a server that stopped answering."""
    if depth < 1:
        raise BatchError(f"depth (rows in flight per server) must be at least 1, got {depth}.")
    check_out_dir(out)
    urls = [server_url(u) for u in ([servers] if isinstance(servers, str) else servers)]
    if not urls:
        raise BatchError("no server given; pass at least one --server URL.")
    pool_servers = [_Server(url) for url in dict.fromkeys(urls)]
    columns = sorted({c for row in rows for c in row.values})
    bindings = resolve_columns(workflow, columns, renames or {})
    # type errors surface now, before anything is uploaded or queued; the caller's rows stay as given
    rows = [
        replace(
            row,
            values={
                column: coerce(
                    value,
                    workflow[bindings[column][0]]["inputs"][bindings[column][1]],
                    f"row {row.name!r}, column {column!r}",
                )
                for column, value in row.values.items()
            },
        )
        for row in rows
    ]
    workflow_digest = hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()[:16]
    previous = _read_state(out, workflow_digest) if resume else {}
    results: dict[str, RowResult] = {}

    def record(result: RowResult) -> None:
        results[result.name] = result
        _write_state(out, workflow_digest, {**previous, **results})

    async def run(client: ComfyClient, row: Row) -> tuple[str, list[str]]:
        return await _run_row(client, workflow, bindings, row, out, timeout, include_temp, poll)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as session:
        clients = {s.url: [ComfyClient(s.url, session, s.uploads) for _ in range(depth)] for s in pool_servers}
        for server in pool_servers:
            await _check_server(server, clients[server.url], workflow, check_schemas, len(pool_servers) > 1)
        if all(s.down is not None for s in pool_servers):
            if len(pool_servers) == 1:
                raise BatchError(
                    f"cannot reach the ComfyUI server at {pool_servers[0].url} ({pool_servers[0].down}); "
                    "is it running? Pass its address with --server."
                )
            raise BatchError(
                "cannot reach any ComfyUI server: "
                + "; ".join(f"{s.url} ({s.down})" for s in pool_servers)
                + ". Are they running? Check the --server addresses."
            )
        jobs = []
        for row in rows:
            done = previous.get(row.name)
            if _still_done(done, row, out):
                results[row.name] = RowResult(**{**asdict(done), "status": "skipped"})
                log.info("%s: already done, skipped", row.name)
                continue
            jobs.append(_Job(row, RowResult(row.name, digest=row.digest()), time.monotonic()))
        pool = _Pool(jobs, pool_servers, retries, retry_delay, record)
        await asyncio.gather(
            *(_slot(pool, s, c, run, recheck) for s in pool_servers for c in clients[s.url]),
        )
    _write_state(out, workflow_digest, {**previous, **results})
    return [results[row.name] for row in rows]


async def _check_server(
    server: _Server, clients: list[ComfyClient], workflow: dict, check_schemas: bool, pooled: bool
) -> None:
    """Connect ``server``'s clients and check the workflow against its nodes. A server that does not
    answer is marked down (the pool asks again later); one whose nodes do not fit stops the batch."""
    try:
        schemas = await clients[0].object_info() if check_schemas else None
        for client in clients:
            await client.connect()
    except (aiohttp.ClientError, OSError) as e:
        server.down = str(e) or type(e).__name__
        if pooled:
            log.warning("cannot reach %s (%s); continuing with the other servers", server.url, server.down)
        return
    if schemas:
        from workflows.validate import validate_api

        errors = [str(i) for i in validate_api(workflow, schemas) if i.error]
        if errors:
            where = f" on {server.url}" if pooled else ""
            raise BatchError(f"the workflow does not fit the server's nodes{where}:\n  " + "\n  ".join(errors))


def summary_table(results: list[RowResult]) -> str:
    pooled = len({r.server for r in results if r.server}) > 1  # name the server only when there were several
    header = ("row", "status", "tries", "secs", *(("server",) if pooled else ()), "outputs / error")
    lines = [
        (
            r.name,
            r.status,
            str(r.attempts),
            f"{r.seconds:.1f}",
            *((r.server or "-",) if pooled else ()),
            r.error if r.error else ", ".join(r.outputs) or "-",
        )
        for r in results
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header) - 1)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths) + "  {}"
    done = sum(r.status in ("done", "skipped") for r in results)
    return "\n".join([fmt.format(*header), *(fmt.format(*line) for line in lines), f"{done}/{len(results)} rows done"])


def server_url(server: str) -> str:
    """``host:port`` as ``http://host:port``; a scheme other than http(s) is an error."""
    server = server.strip().rstrip("/")
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", server):
        return f"http://{server}"
    if not server.lower().startswith(("http://", "https://")):
        raise BatchError(f"--server {server}: expected an http:// or https:// address, e.g. http://127.0.0.1:8188.")
    return server


def check_out_dir(out: Path) -> None:
    """The output folder is a folder (or can be made one): checked before any row runs."""
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out {out}: is a file; give a folder for the outputs (it is created if missing).")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BatchError(f"--out {out}: {parent} is a file, so the output folder cannot be made there.")


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.batch_run",
        description="Run an API-format ComfyUI workflow once per input row.",
        epilog="Column mapping: see the module docstring (python -m pydoc tools.batch_run).",
    )
    parser.add_argument("workflow", type=Path, help="workflow saved with Export (API)")
    parser.add_argument("--inputs", type=Path, required=True, help="CSV, JSON list of objects, or a folder of images")
    parser.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help=f"ComfyUI server (host:port means http://); repeat for a pool, e.g. one server per GPU "
        f"(default {DEFAULT_SERVER})",
    )
    parser.add_argument("--depth", type=int, default=1, help="rows in flight per server")
    parser.add_argument(
        "--server-recheck",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often a server that stopped answering is asked again",
    )
    parser.add_argument("--out", type=Path, default=Path("batch_output"), help="output folder (made if missing)")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts for a row that fails at run time")
    parser.add_argument(
        "--resume",
        action="store_true",
        default=True,
        help="skip rows recorded as done in OUT/batch_state.json (the default; kept for old scripts)",
    )
    parser.add_argument("--restart", action="store_true", help="run every row again, done or not")
    parser.add_argument("--map", action="append", default=[], metavar="COLUMN=NODE.INPUT")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one row may run")
    parser.add_argument("--retry-delay", type=float, default=2.0)
    parser.add_argument("--include-temp", action="store_true", help="also download preview (temp) files")
    parser.add_argument("--no-schema-check", action="store_true", help="do not check the workflow against /object_info")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        renames = {}
        for item in args.map:
            column, sep, target = item.partition("=")
            if not sep or not column or not target:
                raise BatchError(f"--map {item!r}: expected COLUMN=NODE.INPUT.")
            renames[column.strip()] = target.strip()
        servers = [server_url(url) for url in args.server or [DEFAULT_SERVER]]
        check_out_dir(args.out)
        workflow = load_workflow(args.workflow)
        rows = load_rows(args.inputs)
        results = asyncio.run(
            run_batch(
                workflow,
                rows,
                servers,
                args.out,
                renames,
                args.retries,
                args.resume and not args.restart,
                args.timeout,
                args.retry_delay,
                args.include_temp,
                not args.no_schema_check,
                depth=args.depth,
                recheck=args.server_recheck,
            )
        )
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(results))
    return 0 if all(r.status in ("done", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
