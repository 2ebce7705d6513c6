"""Fixtures shared by the test modules: the small demo world and a local Ray (helpers: tests/sweeps.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from tests.sweeps import start_local_ray


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A demo world of 3 checkpoints trained through 3 chunks of 96 rows (built once per session, ~20 s)."""
    from sweep.demo import DemoWorldConfig, ensure_demo_world

    root = tmp_path_factory.mktemp("world")
    ensure_demo_world(DemoWorldConfig(chunks=3, rows_per_chunk=96), root / "model", root / "data", progress=False)
    return root


@pytest.fixture(scope="session")
def local_ray():
    """A private local Ray for the whole session."""
    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def module_ray():
    """A local Ray for one module, unless this process is connected already (the session's), in which case it is
    used and left running."""
    started = not ray.is_initialized()
    if started:
        start_local_ray()
    yield
    if started:
        ray.shutdown()
