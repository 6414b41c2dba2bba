"""batch_run: tables and arguments that used to truncate silently or end in a traceback (issue 10)."""

import json
import logging

import pytest

from tools import batch_run as br

WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "PrimitiveString", "inputs": {"value": ""}, "_meta": {"title": "Prompt"}},
}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    return tmp_path


def main(files, table, *extra, server="http://127.0.0.1:9"):
    """batch_run's exit status; port 9 (discard) has no ComfyUI, so a run that got past the table
    and the arguments fails with 'cannot reach' (exit 2) without queueing anything."""
    return br.main(
        [str(files / "wf.json"), "--inputs", str(table), "--server", server, "--out", str(files / "o"), *extra]
    )


def test_extra_cells_warn_naming_the_line(files, caplog):
    table = files / "rows.csv"
    table.write_text('name,Prompt.value\na,"hello, world"\nb,hello, world\n')
    with caplog.at_level(logging.WARNING, logger="tools.batch_run"):
        rows = br.load_rows(table)
    assert [r.values["Prompt.value"] for r in rows] == ["hello, world", "hello"]
    assert "rows.csv line 3: 1 cells more than the header's 2 columns; ignoring [' world']" in caplog.text
    assert "Quote cells" in caplog.text


def test_utf16_table_with_bom_is_read(files):
    table = files / "rows.csv"
    table.write_bytes("name,Prompt.value\nä,grüß dich\n".encode("utf-16"))
    rows = br.load_rows(table)
    assert rows[0].name == "ä" and rows[0].values == {"Prompt.value": "grüß dich"}


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"name\n\xff\xfa\xfb\n", b"name\na\x00b\n"])
def test_binary_table_is_refused_naming_the_file(files, capsys, data):
    table = files / "rows.csv"
    table.write_bytes(data)
    assert main(files, table) == 2
    err = capsys.readouterr().err
    assert "rows.csv" in err and ("not a text table" in err or "binary data" in err) and "Traceback" not in err


def test_malformed_json_table_names_the_place(files, capsys):
    table = files / "rows.json"
    table.write_text('[{"name": "a",}]')
    assert main(files, table) == 2
    err = capsys.readouterr().err
    assert "rows.json: not valid JSON (line 1, column 15" in err and "Traceback" not in err


def test_out_that_is_a_file_is_refused_before_any_row(files, capsys, monkeypatch):
    table = files / "rows.csv"
    table.write_text("name,Prompt.value\na,hi\n")
    (files / "o").write_text("not a folder")
    monkeypatch.setattr(br, "load_rows", lambda *a: pytest.fail("rows were read before --out was checked"))
    assert main(files, table) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err


def test_server_without_scheme_is_read_as_http():
    assert br.server_url("127.0.0.1:8188") == "http://127.0.0.1:8188"
    assert br.server_url("localhost:8188/") == "http://localhost:8188"
    assert br.server_url("https://box:443") == "https://box:443"
    with pytest.raises(br.BatchError, match="expected an http:// or https:// address"):
        br.server_url("ftp://box")
