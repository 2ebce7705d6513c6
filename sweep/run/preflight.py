"""What `memsweep run` and `memsweep plan` can refuse before Ray starts (a local Ray start costs 10-20 s): one pass,
each check once.

`resolved_spec` makes local sources, the output and the cache absolute (Ray workers run elsewhere);
`check_before_ray` refuses, in one line naming the key or path, an output that cannot be written, a cache that
cannot be written, a local source that does not exist (saying why when this runs as a Ray job in a copy of its
working directory), and a CUDA request on a machine that has none when the actors would run on it. Needs neither
Ray nor (unless CUDA is asked for) torch. An output holding another sweep's results is refused by the store, once:
`run` holding the writer lock (sweep/run/driver.py), `plan` on what it reads (`landed_for_plan`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from actors.checkpoint_files import is_local
from sweep.data.probes import ProbeCache
from sweep.errors import MemsweepError
from sweep.landed.ledger import OutputLayout
from sweep.landed.reader import LandedOutput, open_output
from sweep.landed.store import refuse_other_identity
from sweep.spec import SweepSpec

DEFAULT_PROBE_CACHE = Path("~/.cache/memsweep/probes")


class RefusedError(MemsweepError):
    """A spec that cannot run here, found before Ray starts; the message names the key or path."""


def resolved_spec(spec: SweepSpec) -> SweepSpec:
    """Local sources, the output and the cache as absolute paths, so Ray workers (other cwd) find them."""

    def absolute(source: str) -> str:
        return str(Path(source).expanduser().resolve()) if is_local(source) else source

    model = spec.model.model_copy(update={"source": absolute(spec.model.source)})
    cache = str(Path(spec.data.cache_dir or DEFAULT_PROBE_CACHE).expanduser().resolve())
    data = spec.data.model_copy(update={"source": absolute(spec.data.source), "cache_dir": cache})
    output = str(Path(spec.output).expanduser().resolve())
    return spec.model_copy(update={"model": model, "data": data, "output": output})


def check_before_ray(spec: SweepSpec, actors_run_here: bool) -> None:
    """Everything that can be known wrong about a resolved spec before Ray starts; raises a one-line MemsweepError.

    `actors_run_here`: no cluster address was given, so a local Ray will run the actors on this machine.
    """
    OutputLayout(Path(spec.output)).check_writable()
    ProbeCache(spec.data.cache_dir).check_writable()
    for key, source in (("model.source", spec.model.source), ("data.source", spec.data.source)):
        if is_local(source) and not Path(source).is_dir():
            raise RefusedError(f"{key}: {source} does not exist{_ray_job_hint(key, source)}")
    resources = spec.resources
    if resources.device == "cuda" and resources.gpus_per_actor == 0:
        raise RefusedError("resources.device: cuda needs GPUs, but resources.gpus_per_actor is 0")
    if resources.device == "cuda" and actors_run_here:
        import torch

        if not torch.cuda.is_available():
            raise RefusedError("resources.device: cuda, but this machine has no CUDA device (and no Ray cluster "
                               "address was given: the actors would run here)")


def landed_for_plan(spec: SweepSpec) -> LandedOutput | None:
    """What `memsweep plan` plans against: the output of a resolved `spec` as landed, read once (None when it has no
    manifest yet), refused as `run` would refuse it when it holds another sweep's results."""
    output = Path(spec.output)
    if not OutputLayout(output).manifest.exists():
        return None
    landed = open_output(output)
    refuse_other_identity(output, landed.manifest, landed.ledgers, spec.identity())
    return landed


def _ray_job_hint(key: str, source: str) -> str:
    """Why a local path is missing when this process is a `ray job submit` entrypoint: it runs in the job's copy of
    --working-dir, where relative paths resolve and where Ray did not upload what .gitignore lists."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return ""
    if not (job.get("runtime_env") or {}).get("working_dir"):
        return ""
    folder = Path(source).name
    return (f" (this runs inside a Ray job, in its copy of --working-dir ({Path.cwd()}): relative paths resolve "
            f"there, and files .gitignore lists, such as demo-world/, are not uploaded; give an absolute path "
            f"the cluster can read, e.g. --set {key}=/abs/path/to/{folder})")
