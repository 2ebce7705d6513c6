"""End to end the way a cluster user works, following the README: `ray start --head` from the venv (token
authentication on, as Ray 2.60 sets up a new cluster), the README's `ray job submit` of the demo and its
`memsweep query`, copied from the README; the head is stopped afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep.landed.reader import open_output

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RayHead:
    """A local Ray head with 2 logical GPUs, started from the venv (its jobs find `memsweep` on PATH)."""

    def __init__(self, folder: Path):
        self.folder, self.process, self.client_env, self.starts = folder, None, {}, 0

    def answering(self) -> dict[str, str]:
        """The environment of a job client of this head, once it answers `ray job list`. A head that has exited
        since is started again, with its log kept beside the first one's: on this machine, shared by several
        suites, one stopped answering between its start and the first submit under a load of ~30 (what ended it is
        not known)."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        deadline = time.monotonic() + 600  # a guard against a head that never answers; the wait is for its answer
        while time.monotonic() < deadline:
            probe = subprocess.run([str(BIN / "ray"), "job", "list"], env=self.client_env, capture_output=True,
                                   text=True)
            if probe.returncode == 0:
                return self.client_env
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(1)  # how often to ask, not how long to wait
        pytest.fail(f"Ray head did not answer: {probe.stderr[-2000:]}")

    def _start(self) -> None:
        self.starts += 1
        self.log = self.folder / f"head-{self.starts}.log"
        dashboard = free_port()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2", "--num-gpus=2",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"],
            env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.client_env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}", "RAY_AUTH_MODE": "token"}

    def stop(self) -> None:
        """Stop this head (only it): `ray start --block` stops the processes it started gracefully in ~30 s, so after
        5 s its process group (all of them) is killed."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """The module's Ray head (stopped when the module ends); each test asks it for a client environment, which
    waits until it answers."""
    head = RayHead(tmp_path_factory.mktemp("head"))
    head.answering()
    yield head
    head.stop()


def readme_commands(starting: str) -> list[str]:
    """The README's cluster commands that start with `starting`, joined across backslash continuations and
    without their comments: what a user copies."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Running on a Ray cluster"):]
    block = section[section.index("```sh") + 5: section.index("```", section.index("```sh") + 5)]
    commands = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split("  #")[0].split()) for line in commands if line.startswith(starting)]


def test_the_demo_submitted_the_readme_way_lands_its_64_cells(ray_head, tmp_path):
    """After `make demo`, the README's `ray job submit` of configs/demo.yaml and its query, copied as written,
    from a clone: the demo world is gitignored (not uploaded), so the README names it by absolute paths."""
    from sweep.demo.world import DemoWorldConfig, ensure_demo_world

    clone = tmp_path / "clone"  # what `ray job submit --working-dir .` uploads: the tracked files
    shutil.copytree(REPO / "configs", clone / "configs")
    # `make demo` built the default world here; a small one of the same shape (8 checkpoints x 8 chunks) stands in
    small = DemoWorldConfig(rows_per_chunk=16, row_len=72, vocab_size=320, hidden_size=16, intermediate_size=32,
                            num_layers=1, num_heads=2, epochs_per_chunk=1)
    ensure_demo_world(small, clone / "demo-world" / "model", clone / "demo-world" / "data", progress=False)
    (clone / ".gitignore").write_text((REPO / ".gitignore").read_text())
    [submit] = readme_commands("ray job submit")
    [query] = readme_commands("memsweep query")
    submitted = subprocess.run(["bash", "-c", submit + " --no-progress"], cwd=clone, env=ray_head.answering(),
                               capture_output=True, text=True, timeout=400)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout.lower(), submitted.stdout[-3000:]
    queried = subprocess.run(["bash", "-c", query], cwd=clone, env=ray_head.answering(), capture_output=True,
                             text=True, timeout=120)
    assert queried.returncode == 0, queried.stderr
    assert re.search(r"│\s*64\s*│", queried.stdout), queried.stdout

    landed = open_output(clone / "results" / "demo-cluster")
    cells = landed.cells().select("ckpt", "chunk", "n").collect().sort("ckpt", "chunk")
    assert cells.select("ckpt", "chunk").rows() == [(c, j) for c in range(8) for j in range(8)]
    lines = [len((clone / "demo-world" / "data" / "train" / f"train_{j:03d}.jsonl").read_text().splitlines())
             for j in range(8)]
    assert cells["n"].to_list() == [min(128, lines[j]) for _ in range(8) for j in range(8)]  # the demo samples 128
    assert landed.manifest["runs"][0]["ray_address"], "the job ran on the submitted cluster"
    assert landed.exposure_scans().height == 8  # the demo scans its own chunk files


def test_a_relative_source_in_a_job_is_refused_naming_the_key_and_why(ray_head, tmp_path):
    """The same submit without the absolute sources: the job's copy has no demo-world/, and memsweep says so."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "memsweep", "run", "configs/demo.yaml",
         "--output", str(tmp_path / "out")], cwd=clone, env=ray_head.answering(), capture_output=True, text=True,
        timeout=300)
    assert submitted.returncode != 0
    [line] = {line for line in submitted.stdout.splitlines() if line.startswith("memsweep: error: ")}  # one line, however often the log is shown
    assert "model.source: " in line and "/demo-world/model does not exist (this runs inside a Ray job" in line
    assert "are not uploaded" in line and not (tmp_path / "out").exists()
