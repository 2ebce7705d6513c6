"""Fixtures shared by the explorer's API tests and its browser tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from explorer_world import build_explorer_output

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def explorer_output(tmp_path_factory) -> Path:
    """A tiny landed output with planted markup in its text (tests/explorer_world.py)."""
    return build_explorer_output(tmp_path_factory.mktemp("explorer"))


@pytest.fixture(scope="session")
def served_explorer(explorer_output, tmp_path_factory):
    """`memsweep serve` on a free port, as a user starts it; yields (its URL without the trailing slash, the line
    it printed, the log file its stderr goes to)."""
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    command = [sys.executable, "-m", "sweep", "serve", str(explorer_output), "--port", "0"]
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    line = process.stdout.readline()  # the command's first line names its URL once it listens
    if "http://" not in line:
        process.kill()
        pytest.fail(f"memsweep serve printed {line!r} (stderr: {log.read_text()[-2000:]})")
    url = next(word for word in line.split() if word.startswith("http://")).rstrip("/")
    yield url, line, log
    process.terminate()
    process.wait(timeout=10)
