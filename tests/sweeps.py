"""Helpers for the tests that run whole sweeps (not a test module): the shared spec, Ray and landed tables.

Fixtures built on these live in tests/conftest.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import polars as pl
import ray
import yaml

from sweep.landed.reader import open_output

K = L = 32
WORLD_KNOBS = {"chunks": 3, "rows_per_chunk": 96}  # the session's demo world (conftest.py `world`)
SAMPLES = 96  # lines of each chunk file of the session's world (conftest.py), which holds 768
TIMING = ["seconds", "sequences_per_s", "finished_at", "attempts", "device", "batch_size"]


def start_local_ray() -> None:
    """A private local Ray with two logical GPUs (two actors on this CPU machine), quiet."""
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)


@contextmanager
def ray_of_its_own(num_cpus: int, num_gpus: int) -> Iterator[None]:
    """A private local Ray of this shape for the block, whatever ran before. A process holds one Ray at a time: the one
    it is connected to (the session's, tests/conftest.py `local_ray`, a `start_local_ray`) is shut down for the block
    and started again after it, so the tests after this one find what they left."""
    connected = ray.is_initialized()
    if connected:
        ray.shutdown()
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if connected:
            start_local_ray()


def write_spec(tmp_path: Path, world: Path, output: Path, **extra) -> Path:
    """A spec over `world` (a demo world's model/ and data/) into `output`; `extra` overrides sections."""
    spec = {
        "name": "t",
        "model": {"source": str(world / "model"), "dtype": "float32", **extra.pop("model", {})},
        "data": {"source": str(world / "data"), "samples_per_chunk": SAMPLES, "seed": 42,
                 "cache_dir": str(tmp_path / "probe-cache"), **extra.pop("data", {})},
        "checkpoints": "0-2",
        "chunks": "0-2",
        "memorization": {"prompt_len": K, "continuation_len": L, "nll": True, **extra.pop("memorization", {})},
        "resources": {"batch_size": 8, "max_attempts": 2, **extra.pop("resources", {})},
        "output": str(output),
        **extra,
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def landed(output: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(sequences, cells without the timing columns) of an output, sorted: what two equal runs share exactly."""
    tables = open_output(output)
    sequences = tables.sequences().collect().sort("ckpt", "chunk", "row")
    cells = tables.cells().collect().drop(TIMING).sort("ckpt", "chunk")
    return sequences, cells
