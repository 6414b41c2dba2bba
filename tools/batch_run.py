"""Run a saved API-format workflow once per row of a table against a ComfyUI server.

    python -m tools.batch_run WORKFLOW_API.json --inputs table.csv|table.json|folder/ \\
        [--server http://127.0.0.1:8188] [--out DIR] [--retries N] [--resume] [--map COL=NODE.INPUT]

The workflow is ComfyUI's "Export (API)" file. Each row sets node inputs, uploads the local files it
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

Resuming: ``OUT/batch_state.json`` records each row's outcome; with ``--resume`` rows already done
(with the same values) are skipped. Rows failing at run time are retried ``--retries`` times; a
prompt the server rejects (HTTP 400, node_errors) is reported at once, without retries.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger("tools.batch_run")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg")
STATE_FILE = "batch_state.json"
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
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise BatchError(f"cannot read inputs {source}: {e}") from e
    if source.suffix.lower() == ".json":
        data = json.loads(text)
        data = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BatchError(f'{source}: expected a JSON list of objects (one per row) or {{"rows": [...]}}.')
        return _named_rows(data, source.parent)
    return _named_rows(list(csv.DictReader(text.splitlines())), source.parent)


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

    def __init__(self, server: str, session: aiohttp.ClientSession):
        self.server = server.rstrip("/")
        self.session = session
        self.client_id = uuid.uuid4().hex
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.uploads: dict[Path, str] = {}

    async def connect(self) -> None:
        url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        self.ws = await self.session.ws_connect(url, heartbeat=30)

    async def object_info(self) -> dict | None:
        async with self.session.get(f"{self.server}/object_info") as response:
            return await response.json() if response.status == 200 else None

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


def _read_state(out: Path) -> dict[str, RowResult]:
    path = out / STATE_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
        known = set(RowResult.__dataclass_fields__)
        return {name: RowResult(**{k: v for k, v in row.items() if k in known}) for name, row in rows.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring unreadable state file %s; all rows will run", path)
        return {}


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


async def _attempt_row(row: Row, run, retries: int, retry_delay: float) -> RowResult:
    """``run()`` until it succeeds, at most ``retries`` extra times; a rejected prompt is not retried
    (the server refuses the same prompt again), run-time and connection failures are."""
    result = RowResult(row.name, digest=row.digest())
    started = time.monotonic()
    for attempt in range(1, retries + 2):
        result.attempts = attempt
        try:
            result.prompt_id, result.outputs = await run()
            result.status, result.error = "done", None
            break
        except PromptRejected as e:
            result.status, result.error = "failed", f"rejected: {e}"
            break
        except (ExecutionFailed, aiohttp.ClientError, asyncio.TimeoutError) as e:
            result.status, result.error = "failed", str(e) or type(e).__name__
            log.warning("%s: attempt %d failed: %s", row.name, attempt, result.error)
            if attempt <= retries:
                await asyncio.sleep(retry_delay)
    result.seconds = round(time.monotonic() - started, 2)
    return result


async def run_batch(
    workflow: dict,
    rows: list[Row],
    server: str,
    out: Path,
    renames: dict[str, str] | None = None,
    retries: int = 1,
    resume: bool = False,
    timeout: float = 3600.0,
    retry_delay: float = 2.0,
    include_temp: bool = False,
    check_schemas: bool = True,
    poll: float = 5.0,
) -> list[RowResult]:
    """Run every row; returns one result per row (also recorded in ``out/batch_state.json``)."""
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
    previous = _read_state(out) if resume else {}
    results: dict[str, RowResult] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as session:
        client = ComfyClient(server, session)
        try:
            schemas = await client.object_info() if check_schemas else None
            await client.connect()
        except aiohttp.ClientError as e:
            raise BatchError(
                f"cannot reach the ComfyUI server at {server} ({e}); is it running? Pass its address with --server."
            ) from e
        if schemas:
            from workflows.validate import validate_api

            errors = [str(i) for i in validate_api(workflow, schemas) if i.error]
            if errors:
                raise BatchError("the workflow does not fit the server's nodes:\n  " + "\n  ".join(errors))
        for row in rows:
            done = previous.get(row.name)
            if done is not None and done.status == "done" and done.digest == row.digest():
                results[row.name] = RowResult(**{**asdict(done), "status": "skipped"})
                log.info("%s: already done, skipped", row.name)
                continue
            results[row.name] = await _attempt_row(
                row,
                lambda row=row: _run_row(client, workflow, bindings, row, out, timeout, include_temp, poll),
                retries,
                retry_delay,
            )
            _write_state(out, workflow_digest, {**previous, **results})
        if client.ws is not None:
            await client.ws.close()
    _write_state(out, workflow_digest, {**previous, **results})
    return list(results.values())


def summary_table(results: list[RowResult]) -> str:
    header = ("row", "status", "tries", "secs", "outputs / error")
    lines = [
        (r.name, r.status, str(r.attempts), f"{r.seconds:.1f}", r.error if r.error else ", ".join(r.outputs) or "-")
        for r in results
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(4)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths) + "  {}"
    done = sum(r.status in ("done", "skipped") for r in results)
    return "\n".join([fmt.format(*header), *(fmt.format(*line) for line in lines), f"{done}/{len(results)} rows done"])


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.batch_run",
        description="Run an API-format ComfyUI workflow once per input row.",
        epilog="Column mapping: see the module docstring (python -m pydoc tools.batch_run).",
    )
    parser.add_argument("workflow", type=Path, help="workflow saved with Export (API)")
    parser.add_argument("--inputs", type=Path, required=True, help="CSV, JSON list of objects, or a folder of images")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--out", type=Path, default=Path("batch_output"))
    parser.add_argument("--retries", type=int, default=1, help="extra attempts for a row that fails at run time")
    parser.add_argument("--resume", action="store_true", help="skip rows recorded as done in OUT/batch_state.json")
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
        workflow = load_workflow(args.workflow)
        rows = load_rows(args.inputs)
        results = asyncio.run(
            run_batch(
                workflow,
                rows,
                args.server,
                args.out,
                renames,
                args.retries,
                args.resume,
                args.timeout,
                args.retry_delay,
                args.include_temp,
                not args.no_schema_check,
            )
        )
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(results))
    return 0 if all(r.status in ("done", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
