"""Loss logging through accelerate's tracker API: tensorboard when installed, plus a JSONL file.

The JSONL file (``<output_dir>/logs/metrics.jsonl``, one ``{"step": .., name: value}`` object a
line) is always written so a run can be inspected without any logging package.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from accelerate.tracking import GeneralTracker


class JSONLTracker(GeneralTracker):
    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / run_name / "metrics.jsonl"
        self._file = None  # the folder is made on the first write (train --overwrite may clear logs/ first)

    @property
    def tracker(self):
        return self._file

    def _open(self):
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1)  # line-buffered: a kill loses no line
        return self._file

    def store_init_configuration(self, values: dict):
        self._open().write(json.dumps({"config": values}) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs):
        self._open().write(json.dumps({"step": step, **values}) + "\n")

    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def resolve_trackers(names: list[str], logging_dir: str | Path, run_name: str = "train") -> list:
    """The ``log_with`` list for ``Accelerator``: "auto" -> tensorboard if installed; always JSONL."""
    out: list = []
    for name in names:
        if name == "auto":
            if importlib.util.find_spec("tensorboard") is not None:
                out.append("tensorboard")
        elif name != "jsonl":
            out.append(name)
    out.append(JSONLTracker(run_name, logging_dir))
    return out


def read_metrics(path: str | Path) -> list[dict]:
    """Logged rows (config rows skipped), for tests and quick inspection."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "config" not in r]
