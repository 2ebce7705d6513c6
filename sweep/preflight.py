"""Checks and normalisations of a spec that need neither Ray nor torch: what `memsweep run` can refuse in a
second, before a cluster is joined or started (a local Ray start costs 10-20 s)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from sweep.sources import is_local
from sweep.spec import SweepSpec
from sweep.store import DamagedOutputError, ResultStore

DEFAULT_PROBE_CACHE = Path("~/.cache/memsweep/probes")
log = logging.getLogger("memsweep")


def resolved_spec(spec: SweepSpec) -> SweepSpec:
    """Local sources, the output and the cache as absolute paths, so Ray workers (other cwd) find them."""

    def absolute(source: str) -> str:
        return str(Path(source).expanduser().resolve()) if is_local(source) else source

    model = spec.model.model_copy(update={"source": absolute(spec.model.source)})
    cache = str(Path(spec.data.cache_dir or DEFAULT_PROBE_CACHE).expanduser().resolve())
    data = spec.data.model_copy(update={"source": absolute(spec.data.source), "cache_dir": cache})
    output = str(Path(spec.output).expanduser().resolve())
    return spec.model_copy(update={"model": model, "data": data, "output": output})


def check_before_ray(spec: SweepSpec) -> None:
    """What can be known wrong before Ray starts: the output path, the cache, a CUDA request on a machine that
    will run the actors itself. Raises ValueError with one line naming the key."""
    output = Path(spec.output).expanduser()
    if output.exists() and not output.is_dir():
        raise ValueError(f"output {output} is a file, not a directory")
    parent = next((p for p in [output, *output.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"output {output}: cannot be created, {parent} is a file")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ValueError(f"output {output}: {parent} is not writable")
    from sweep.probes import ProbeCache

    ProbeCache(spec.data.cache_dir or DEFAULT_PROBE_CACHE).check_writable()
    resources = spec.resources
    if resources.device == "cuda" and resources.gpus_per_actor == 0:
        raise ValueError("resources.device: cuda needs GPUs, but resources.gpus_per_actor is 0")


def check_local_cuda(spec: SweepSpec) -> None:
    """`resources.device: cuda` on a machine without CUDA, when this machine is the cluster (no Ray address)."""
    if spec.resources.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("resources.device: cuda, but this machine has no CUDA device (and no Ray cluster address "
                         "was given: the actors would run here)")


def refuse_damaged_output(store: ResultStore, deep: bool = True) -> None:
    """`run` skips landed cells, so it first checks that what it relies on is intact (sha256 of every file)."""
    began = time.perf_counter()
    problems = store.check_landed(deep=deep)
    log.info("verified %d landed files in %.1f s", len(store.landed_files()), time.perf_counter() - began)
    if problems:
        named = "; ".join(f"{record.path}: {problem}" for record, problem in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DamagedOutputError(f"{store.output}: {len(problems)} landed files are damaged: {named}{more}; run "
                                 f"`memsweep verify {store.output} --repair` to remove them and recompute their cells")
