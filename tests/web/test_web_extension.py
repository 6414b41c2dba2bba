"""Runs the frontend extension's node:test suite (web/tests/) and syntax-checks the entry file."""
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_test_suite_passes():
    result = subprocess.run([NODE, "--test", str(WEB / "tests")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_every_web_module_parses():
    # ComfyUI loads every *.js under web/ as an extension, so none may be broken.
    for path in sorted(WEB.rglob("*.js")):
        result = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{path}: {result.stderr}"


def test_no_test_file_is_served_as_an_extension():
    # Test files import node:test, which a browser cannot load; they must not match ComfyUI's *.js glob.
    assert not list((WEB / "tests").rglob("*.js"))
