"""Fixtures shared by the test modules: the small demo world, a local Ray (helpers: tests/sweeps.py), the explorer's
tiny output and server (tests/explorer_world.py), and one training stream in three formats with the checkpoints
trained through it (tests/stream_world.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray

from tests.explorer_world import build_explorer_output
from tests.sweeps import WORLD_KNOBS, start_local_ray, write_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A demo world of 3 checkpoints trained through 3 chunks of 96 rows (built once per session, ~20 s)."""
    from sweep.demo.world import DemoWorldConfig, ensure_demo_world

    root = tmp_path_factory.mktemp("world")
    ensure_demo_world(DemoWorldConfig(**WORLD_KNOBS), root / "model", root / "data", progress=False)
    return root


@pytest.fixture(scope="session")
def clean_run(world, local_ray, tmp_path_factory):
    """One uninterrupted sweep of the session's world (3 checkpoints x 3 chunks): the reference every fault test of
    tests/test_sweep.py must reproduce exactly, and the larger model of tests/test_sizes.py. (spec, summary, output);
    read it, never write into it."""
    from sweep.run.driver import run_sweep
    from sweep.spec import load_spec

    tmp = tmp_path_factory.mktemp("clean")
    spec = load_spec(write_spec(tmp, world, tmp / "out"))
    summary = run_sweep(spec, progress=False)
    return spec, summary, tmp / "out"


@pytest.fixture(scope="session")
def local_ray():
    """A private local Ray for the whole session (tests/sweeps.py `start_local_ray`), shut down when it ends. Every
    module that needs a Ray shares it (`module_ray`): a start and a shutdown cost seconds each, and a dozen modules
    sweep. A test that needs a Ray of another shape or a cluster of its own (tests/sweeps.py `ray_of_its_own`,
    tests/test_node_failure.py) disconnects it for its block and starts it again afterwards."""
    if not ray.is_initialized():
        start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def module_ray(local_ray):
    """The session's local Ray for this module, connected again if a test before left this process without one."""
    if not ray.is_initialized():
        start_local_ray()
    yield


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
    try:
        process.wait(timeout=30)  # uvicorn stops gracefully in well under a second, unless the machine is loaded
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def stream_family(tmp_path_factory):
    """One token stream as JSONL chunk files, a sharded Megatron dataset and numpy files with an order file, and a
    family of checkpoints trained through it (tests/stream_world.py `build_stream_family`)."""
    from tests.stream_world import build_stream_family

    return build_stream_family(tmp_path_factory.mktemp("stream-family"))


@pytest.fixture(scope="session")
def stream_census(stream_family, tmp_path_factory):
    """The session's one census of the training stream (tests/test_census.py, tests/test_compare.py): its specs by
    name, swept once. `jsonl` (Amber's files, ckpt_000 and ckpt_002) and `megatron` (Pythia's layout, steps 4 and 12)
    score every sequence (`samples_per_chunk: all`); `sampled` is the Megatron stream sampled 12 a chunk; `numpy` is
    described but not swept (its reading is checked piece by piece). Uses the Ray this process is connected to (the
    session's), else starts one for the sweeps alone."""
    from sweep.run.driver import run_sweep
    from tests.census_world import census_specs

    specs = census_specs(stream_family, tmp_path_factory.mktemp("census"))
    started = not ray.is_initialized()
    if started:
        start_local_ray()
    try:
        for name in ("jsonl", "megatron", "sampled"):
            summary = run_sweep(specs[name], progress=False)
            assert summary.ok, summary.describe()
    finally:
        if started:
            ray.shutdown()
    return specs
