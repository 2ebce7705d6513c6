"""The Ray driver: plans the cells still to do, streams probe sets, schedules checkpoint actors, lands results.

Flow: spec -> writer lock, store.open (identity check, crash recovery), landed files verified -> plan (cells
not yet landed) -> probe sets (sweep/probe_supply.py: landed, cached or built by Ray tasks while the GPUs
work) -> checkpoint actors (one checkpoint at a time, every pending chunk of it) -> store.write_cells per
batch of finished cells -> compaction per finished checkpoint.

Scheduling (sweep/scheduler.py) keeps every actor busy with the checkpoint it holds, tells the same actor to
prefetch the checkpoint it will load next, and at the tail splits the largest remaining checkpoint when an
idle actor can finish half of it sooner than the holder alone.

Failures: a cell whose actor died (process killed, node lost) or that raised is re-queued, up to
`resources.max_attempts` tries; then it is recorded in `failures/` and the sweep goes on. A checkpoint that
cannot be fetched or loaded max_attempts times fails all its cells at once; a chunk whose probe set cannot be
built fails its cells and nothing else.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import ray

from actors.scorer_actor import CheckpointScorer
from sweep.plan import make_plan
from sweep.preflight import check_before_ray, refuse_damaged_output, resolved_spec
from sweep.probe_supply import ProbeSupply
from sweep.scheduler import Scheduler
from sweep.spec import SweepSpec
from sweep.store import ResultStore
from sweep.writer_lock import writer_lock

log = logging.getLogger("memsweep")


@dataclass
class SweepSummary:
    output: Path
    cells_total: int
    cells_done_before: int
    cells_scored: int = 0
    sequences_scored: int = 0
    seconds: float = 0.0
    failed: list[dict] = field(default_factory=list)
    loads: Counter = field(default_factory=Counter)  # ckpt -> times loaded in this run
    warnings: list[str] = field(default_factory=list)
    probe_sets_built: int = 0
    probe_sets_reused: int = 0  # from the output or the cache
    prefetched_elsewhere: int = 0  # reservations loaded by another actor by accident (a bug if ever > 0)
    reservations_taken: int = 0  # reservations an idle actor took on purpose at the tail (holder's copy discarded)
    first_cell_landed_at: float | None = None  # seconds after the sweep started
    probe_sets_ready_at_first_cell: int | None = None  # how many existed when the first cell was handed out
    last_probe_set_at: float | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)

    def describe(self) -> str:
        rate = self.sequences_scored / self.seconds if self.seconds else 0.0
        lines = [
            f"output: {self.output}",
            f"cells: {self.cells_total} in the spec, {self.cells_done_before} already landed, "
            f"{self.cells_scored} scored now, {len(self.failed)} failed",
            f"sequences scored: {self.sequences_scored:,} in {self.seconds:.1f} s ({rate:,.1f}/s)",
        ]
        lines += [f"WARNING {warning}" for warning in self.warnings]
        for failure in self.failed:
            lines.append(
                f"FAILED cell ckpt {failure['ckpt']} x chunk {failure['chunk']} "
                f"after {failure['attempts']} tries: {failure['error']}"
            )
        return "\n".join(lines)


def check_cluster(spec: SweepSpec) -> None:
    """Fail within seconds, naming the key, if the cluster can never place an actor (Ray would wait forever)."""
    resources = spec.resources
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if resources.device == "cuda" and cluster_gpus == 0:
        raise ValueError("resources.device: cuda, but this Ray cluster has no GPU")
    gpus = gpus_per_actor(spec)
    cpus = float(resources.cpus_per_actor)
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if not any(node.get("GPU", 0) >= gpus and node.get("CPU", 0) >= cpus for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        key = "resources.gpus_per_actor" if gpus and not any(n.get("GPU", 0) >= gpus for n in nodes) \
            else "resources.cpus_per_actor"
        raise ValueError(f"{key}: an actor needs {gpus:g} GPU and {cpus:g} CPU, but no node of this Ray cluster has "
                         f"that ({len(nodes)} nodes; the largest has {largest.get('GPU', 0):g} GPU and "
                         f"{largest.get('CPU', 0):g} CPU)")


def gpus_per_actor(spec: SweepSpec) -> float:
    wanted = spec.resources.gpus_per_actor
    if wanted == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(wanted)


def run_sweep(spec: SweepSpec, progress: bool = True, scorer=CheckpointScorer) -> SweepSummary:
    """Score every cell of `spec` not yet in its output. Ray must be initialised (see `connect`).

    `scorer` is the actor class (a cost-model stand-in in benchmarks/control_plane.py).
    """
    started = time.perf_counter()
    spec = resolved_spec(spec)
    check_before_ray(spec)
    check_cluster(spec)
    store = ResultStore(Path(spec.output))
    with writer_lock(Path(spec.output)):
        store.open(spec.identity(), spec.model_dump(mode="json"), _run_info())
        refuse_damaged_output(store)
        plan = make_plan(spec, store.done_cells())
        summary = SweepSummary(Path(spec.output), plan.total_cells, plan.done_cells)
        log.info("plan: %d cells, %d landed, %d to do", plan.total_cells, plan.done_cells, plan.cells_to_do)
        if plan.work:
            supply = ProbeSupply(spec, store, plan, summary, started, _forwarded_environment())
            Scheduler(spec, plan, store, supply, summary, started, progress, scorer,
                      gpus_per_actor(spec), _forwarded_environment()).run()
        for ckpt in _finished_checkpoints(spec, store.done_cells()):
            store.compact_checkpoint(ckpt)
        store.record_pins_in_manifest()
        summary.failed = store.failures()
        summary.seconds = time.perf_counter() - started
        return summary


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join a cluster (`address`, else RAY_ADDRESS, which `ray job submit` sets) or start a private local Ray.

    `address="auto"` joins a cluster already started on this machine with `ray start`.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True)


def _finished_checkpoints(spec: SweepSpec, done: set[tuple[int, int]]) -> list[int]:
    wanted: dict[int, set[int]] = {}
    for ckpt, chunk in spec.cell_list():
        wanted.setdefault(ckpt, set()).add(chunk)
    return [ckpt for ckpt, chunks in wanted.items() if all((ckpt, c) in done for c in chunks)]


def _forwarded_environment() -> dict[str, str]:
    """Hub settings (endpoint, token, cache) and memsweep's own variables reach actors and probe-set tasks on
    every node. Safetensors auto-conversion (a background Hub call transformers starts on an online `.bin`
    load) is switched off everywhere: loads are from local folders, and nothing may call outside HF_ENDPOINT."""
    prefixes = ("HF_", "HUGGING_FACE_", "MEMSWEEP_")
    forwarded = {key: value for key, value in os.environ.items() if key.startswith(prefixes)}
    forwarded["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    return forwarded


def _run_info() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "versions": {name: version(name) for name in ("memsweep", "torch", "transformers", "ray", "polars",
                                                      "huggingface_hub")},
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }
