"""End to end the way a cluster user works: `ray start --head` (token authentication on, as Ray
2.60 sets up a new cluster), `ray job submit --working-dir <repo> -- python -m sweep run ...`, wait
for the job, query the landed Parquet with `memsweep query`; the head is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A local Ray head with 2 logical GPUs, stopped (only it) when the test ends."""
    dashboard = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--num-cpus=2", "--num-gpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    client_env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}", "RAY_AUTH_MODE": "token"}
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "list"], env=client_env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        assert head.poll() is None, (tmp_path / "head.log").read_text()
        time.sleep(1)
    else:
        pytest.fail(f"Ray head did not answer: {probe.stderr[-2000:]}")
    yield client_env
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops the processes it started
    head.wait(timeout=60)


def test_ray_job_submit_lands_queryable_parquet(ray_head, tmp_path):
    from sweep.demo import DemoWorldConfig, ensure_demo_world

    world = tmp_path / "world"
    ensure_demo_world(DemoWorldConfig(chunks=2, rows_per_chunk=32, epochs_per_chunk=2), world / "model",
                      world / "data", progress=False)
    spec = {
        "name": "job",
        "model": {"source": str(world / "model"), "dtype": "float32"},
        "data": {"source": str(world / "data"), "samples_per_chunk": 8, "cache_dir": str(tmp_path / "cache")},
        "checkpoints": "0-1",
        "chunks": "0-1",
        "output": "relative-is-overridden",
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    output = tmp_path / "out"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--",
         "python", "-m", "sweep", "run", str(spec_path), "--output", str(output), "--no-progress"],
        env=ray_head, capture_output=True, text=True, timeout=400,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout.lower(), submit.stdout[-3000:]

    query = subprocess.run(
        [str(BIN / "memsweep"), "query", str(output),
         "SELECT ckpt, chunk, n, score FROM cells ORDER BY ckpt, chunk", "--format", "json",
         "--out", str(tmp_path / "cells.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert query.returncode == 0, query.stderr
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert [(c["ckpt"], c["chunk"], c["n"]) for c in cells] == [(0, 0, 8), (0, 1, 8), (1, 0, 8), (1, 1, 8)]
    assert all(0.0 <= c["score"] <= 1.0 for c in cells)
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["runs"][0]["ray_address"], "the job ran on the submitted cluster"
