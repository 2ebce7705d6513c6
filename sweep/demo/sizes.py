"""The demo's second model size: a smaller LLaMA trained on the demo world's own training stream (the same chunk
files, in the same order, with the same recipe), so that the two sweeps probe the same sequences and Biderman et
al.'s predictability across sizes can be read off them (`memsweep demo --smaller`, configs/demo-small.yaml).

Pythia trained every size on one stream in one order; here too only the model's width differs (SMALLER_MODEL:
half the hidden and MLP width of DemoWorldConfig's default, the same depth and heads), so the smaller model's
checkpoint i has trained on exactly the lines the larger one's has. It is built only when asked: `make demo`
(and every test that builds a demo world) pays nothing for it; what it costs is in BENCHMARKS.md ("The demo").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sweep.demo.config import DemoWorldConfig
from sweep.demo.world import build_checkpoints, is_built
from sweep.errors import MemsweepError

SMALLER_MODEL = {"hidden_size": 64, "intermediate_size": 256}


def smaller_config(config: DemoWorldConfig) -> DemoWorldConfig:
    """`config` with the smaller model: the same world (data, recipe, seed), a narrower network."""
    return replace(config, **SMALLER_MODEL)


def ensure_smaller_model(config: DemoWorldConfig, model_dir: Path, data_dir: Path, progress: bool = True) -> None:
    """Train the smaller model through the chunk files of the demo world built for `config` in ``data_dir`` into
    ``model_dir``, once (a no-op when its ``world.json`` marker says it is there; MemsweepError naming the directory
    when it holds another world, or when ``data_dir`` holds no demo world of `config`)."""
    model_dir, data_dir = Path(model_dir).expanduser(), Path(data_dir).expanduser()
    if not is_built(data_dir, config, "data"):
        raise MemsweepError(f"{data_dir}: no demo world here yet; build it first (memsweep demo)")
    smaller = smaller_config(config)
    if is_built(model_dir, smaller, "model"):
        return
    build_checkpoints(smaller, model_dir, data_dir, progress)
