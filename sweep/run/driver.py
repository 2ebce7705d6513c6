"""One sweep, start to end: spec -> preflight -> writer lock -> Ray -> plan -> probe sets + scheduling -> summary.

    summary = run_sweep(load_spec("configs/demo.yaml"))

1. Preflight (sweep/run/preflight.py), before Ray starts: paths, cache, sources, CUDA.
2. The writer lock (sweep/landed/writer_lock.py); holding it, the output's identity is checked (once) and the landed
   files it holds are verified in full (their cells will be skipped, so they must be intact); then Ray is joined or
   started.
3. The store opens (recovering whatever a killed run left), the plan lists the cells not yet landed, the probe
   supply (sweep/data/probe_supply.py) delivers probe sets while the scheduler (sweep/run/scheduler.py) keeps every actor
   busy; results land through sweep/run/landing.py.
4. The summary says what happened: cells scored, failures (also in `failures/`), warnings, and the makespan
   against the bound (sweep/run/bound.py) computed from the unit costs this run measured.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import ray

from sweep.errors import MemsweepError
from sweep.run.bound import (ASSUMED_LOAD_S, NETWORK_BYTES_PER_S, STREAM_BYTES_PER_S, Bound, Cluster, Work,
                             assumed_cell_seconds, bound, scan_bytes_per_core_s)
from sweep.run.cost import measured_gpu_rate
from sweep.run.releases import AMBER, published_release
from sweep.run.pacing import UnitCosts
from sweep.run.plan import Plan, make_plan
from sweep.run.preflight import check_before_ray, resolved_spec
from sweep.data.probe_supply import ProbeSupply, SupplyStats
from sweep.exposures.scans import ExposureScans, ScanStats
from sweep.run.scheduler import Scheduler, ScheduleStats, drain
from sweep.run.scorer_settings import scorer_settings
from sweep.spec import SweepSpec
from sweep.landed.store import ResultStore
from sweep.landed.verify import refuse_damaged_output
from sweep.landed.writer_lock import writer_lock

log = logging.getLogger("memsweep")


class ClusterError(MemsweepError):
    """The Ray cluster can never place what the spec asks for; the message names the key."""


@dataclass
class SweepSummary:
    output: Path
    cells_total: int
    cells_done_before: int
    schedule: ScheduleStats = field(default_factory=ScheduleStats)
    supply: SupplyStats = field(default_factory=SupplyStats)
    scans: ScanStats = field(default_factory=ScanStats)
    seconds: float = 0.0
    makespan_s: float = 0.0  # from the first actor started to the last scan landed
    bound: Bound | None = None  # what the hardware allowed, at the unit costs this run measured
    failed: list[dict] = field(default_factory=list)
    failed_scans: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.failed_scans

    @property
    def warnings(self) -> list[str]:
        return self.supply.warnings + self.schedule.warnings

    def describe(self) -> str:
        scored = self.schedule.sequences_scored
        rate = scored / self.seconds if self.seconds else 0.0
        lines = [
            f"output: {self.output}",
            f"cells: {self.cells_total} in the spec, {self.cells_done_before} already landed, "
            f"{self.schedule.cells_scored} scored now, {len(self.failed)} failed",
            f"sequences scored: {scored:,} in {self.seconds:.1f} s ({rate:,.1f}/s)",
        ]
        if self.supply.bytes_read:
            lines.append(f"probe sets read from the stream: {self.supply.bytes_read / 1e6:,.2f} MB in "
                         f"{self.supply.requests:,} reads ({self.supply.built} built)")
        if self.scans.scanned or self.failed_scans:
            lines.append(f"exposure scans: {self.scans.scanned} chunk files scanned now "
                         f"({self.scans.tokens / 1e6:,.1f}M tokens in {self.scans.seconds:.1f} task-seconds), "
                         f"{len(self.failed_scans)} failed")
        if self.bound is not None and self.bound.resources:
            over = self.makespan_s / self.bound.seconds - 1 if self.bound.seconds else 0.0
            lines.append(f"makespan: {self.makespan_s:,.1f} s against a bound of {self.bound.seconds:,.1f} s "
                         f"({over:+.1%}; binding: {self.bound.binding.name}: {self.bound.binding.why})")
        lines += [f"WARNING {warning}" for warning in self.warnings]
        for failure in self.failed:
            lines.append(
                f"FAILED cell ckpt {failure['ckpt']} x chunk {failure['chunk']} "
                f"after {failure['attempts']} tries: {failure['error']}"
            )
        lines += [f"FAILED exposure scan of chunk {failure['seen_chunk']}: {failure['error']}"
                  for failure in self.failed_scans]
        return "\n".join(lines)


def run_sweep(spec: SweepSpec, progress: bool = True, scorer=None, address: str | None = None,
              num_cpus: int | None = None, num_gpus: int | None = None, cluster: Cluster | None = None,
              network_bytes_per_s: float = NETWORK_BYTES_PER_S,
              stream_bytes_per_s: float = STREAM_BYTES_PER_S) -> SweepSummary:
    """Score every cell of `spec` not yet in its output; returns the summary.

    Joins the Ray cluster at `address` (else RAY_ADDRESS), or the one this process is connected to already,
    else starts a private local Ray (`num_cpus`, `num_gpus`). `scorer` is the actor class (default
    actors/scorer_actor.py CheckpointScorer; a cost-model stand-in in benchmarks/control_plane.py). `cluster`:
    the hardware the pacing and the bound assume (default: the nodes Ray reports, with `network_bytes_per_s` per
    node and `stream_bytes_per_s` per transfer, which Ray cannot know).
    """
    started = time.perf_counter()
    spec = resolved_spec(spec)
    actors_run_here = not (ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"))
    check_before_ray(spec, actors_run_here)
    store = ResultStore(Path(spec.output))
    with writer_lock(Path(spec.output)):
        store.check_identity(spec.identity())  # the one check: `open` below goes by it
        if store.layout.manifest.exists():
            refuse_damaged_output(store)
        connect(address, num_cpus, num_gpus)
        check_cluster(spec)
        if scorer is None:
            from actors.scorer_actor import CheckpointScorer as scorer  # torch: only once the spec passed
        store.open(spec.identity(), spec.model_dump(mode="json"), _run_info())
        plan = make_plan(spec, store.ledgers.done_cells())
        summary = SweepSummary(Path(spec.output), plan.total_cells, plan.done_cells)
        log.info("plan: %d cells, %d landed, %d to do", plan.total_cells, plan.done_cells, plan.cells_to_do)
        cluster = cluster or cluster_from_ray(network_bytes_per_s, stream_bytes_per_s)
        swept = time.perf_counter()
        # the chunks still to score, then any whose probe set `verify --repair` removed after their cells had landed
        # (the output keeps every probe set it sampled: `show`, the explorer and exposure scans read them)
        probes = store.ledgers.probes
        forgotten = [chunk for chunk in spec.chunks if chunk in probes and probes[chunk].file is None]
        supply = ProbeSupply(spec, store, [chunk for work in plan.work for chunk in work.chunks] + forgotten, started,
                             _forwarded_environment())  # the supply keeps each chunk's first place in the order
        plan = _fail_cells_known_to_fail(spec, plan, store, supply)
        scans = ExposureScans(spec, store, supply, _forwarded_environment())
        summary.supply, summary.scans = supply.stats, scans.stats
        release = published_release(spec.model.source)
        costs = UnitCosts(cell_guess=assumed_cell_seconds(spec, measured_gpu_rate(store.reader()),
                                                          (release or AMBER).parameters),
                          load_guess=ASSUMED_LOAD_S,
                          download_guess=(release or AMBER).checkpoint_bytes / cluster.stream_bytes_per_s)
        if plan.work:
            settings = scorer_settings(spec, gpus_per_actor(spec))
            summary.schedule = Scheduler(spec, plan, store, supply, started, progress, scorer, settings,
                                         _forwarded_environment(), cluster, costs, background=[scans],
                                         scans=scans).run()
        _pace_after_the_cells(spec, cluster, supply, scans)
        drain([supply, scans])  # scans still running once the cells are done (their actors are released)
        summary.makespan_s = time.perf_counter() - swept
        for ckpt in plan.finished_checkpoints:  # finished by an earlier run that was killed before it compacted
            store.write_cells(ckpt, [], finishes_checkpoint=True)
        store.record_pins_in_manifest()
        landed = store.reader()
        summary.failed, summary.failed_scans = landed.failures(), landed.scan_failures()
        summary.bound = measured_bound(spec, plan, summary, cluster)
        summary.seconds = time.perf_counter() - started
        return summary


def cluster_from_ray(network_bytes_per_s: float = NETWORK_BYTES_PER_S,
                     stream_bytes_per_s: float = STREAM_BYTES_PER_S) -> Cluster:
    """The cluster Ray reports (its live nodes, their GPUs and CPUs averaged per node), with the network given."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")] or [{}]
    return Cluster(nodes=len(nodes), gpus_per_node=sum(n.get("GPU", 0) for n in nodes) / len(nodes),
                   cpus_per_node=sum(n.get("CPU", 0) for n in nodes) / len(nodes),
                   network_bytes_per_s=network_bytes_per_s, stream_bytes_per_s=stream_bytes_per_s)


def _pace_after_the_cells(spec: SweepSpec, cluster: Cluster, supply: ProbeSupply, scans: ExposureScans) -> None:
    """Once the actors are gone, what is left of the probe builds and scans may use every stream and CPU."""
    if spec.data.concurrent_builds == "auto":
        supply.limit = max(1, cluster.link_streams)
    if spec.exposure is not None and spec.exposure.concurrent_scans == "auto":
        cpus = int(cluster.nodes * cluster.cpus_per_node // spec.exposure.cpus_per_scan)
        scans.limit = max(1, min(cpus, cluster.link_streams))


def measured_bound(spec: SweepSpec, plan: Plan, summary: SweepSummary, cluster: Cluster) -> Bound | None:
    """The bound of what this run did (sweep/run/bound.py), at the unit costs it measured: its cells and loads, its
    actors' downloads, the chunk files it streamed for probe sets and scans."""
    costs = summary.schedule.costs
    if costs is None or not costs.cells:
        return None
    work = Work(cells=tuple(len(w.chunks) for w in plan.work), cell_s=costs.cell_s, load_s=costs.load_s,
                checkpoint_bytes=float(costs.checkpoint_bytes),
                download_s=float(sorted(costs.downloads)[len(costs.downloads) // 2]) if costs.downloads else 0.0,
                probe_bytes=tuple(map(float, summary.supply.built_bytes)),
                scan_bytes=tuple(map(float, summary.scans.file_bytes)),
                scan_bytes_per_core_s=scan_bytes_per_core_s(
                    spec.data.is_stream, summary.scans.bytes / summary.scans.tokens if summary.scans.tokens else None))
    actors = max(1, summary.schedule.actors)
    scans = spec.exposure.concurrent_scans if spec.exposure is not None else None
    builds = spec.data.concurrent_builds
    return bound(work, cluster, actors, float(spec.resources.cpus_per_actor),
                 spec.exposure.cpus_per_scan if spec.exposure is not None else 1.0,
                 scans=None if scans == "auto" else scans, builds=None if builds == "auto" else builds)


def _fail_cells_known_to_fail(spec: SweepSpec, plan: Plan, store: ResultStore, supply: ProbeSupply) -> Plan:
    """Cells that cannot be scored, known before any actor starts, fail now (one line each, in `failures/`) and leave
    the plan, so no checkpoint is fetched for them: a chunk the supply could not describe (a missing file, a stream
    that cannot be read, a chunk past the end of the stream), and a checkpoint the timeline puts past the end of the
    stream (a step beyond the data: a wrong timeline.sequences_per_step, or the wrong dataset)."""
    timeline, length = spec.timeline_positions(), supply.stream_length
    beyond = set(timeline.check_within(length, [w.ckpt for w in plan.work], [])["checkpoints"]) if length else set()
    label = f"{spec.data.source}:{spec.data.file}"
    work = []
    for item in plan.work:
        if item.ckpt in beyond:
            reason = timeline.beyond_stream_message("checkpoint", [item.ckpt], length, label)
            log.error("%s", reason)
            failed = {chunk: reason for chunk in item.chunks}
        else:
            failed = {chunk: supply.failed[chunk] for chunk in item.chunks if chunk in supply.failed}
        for chunk, reason in failed.items():
            store.record_failure(item.ckpt, chunk, reason, attempts=1)
        chunks = tuple(chunk for chunk in item.chunks if chunk not in failed)
        if chunks:
            work.append(replace(item, chunks=chunks))
        else:  # every pending cell of it failed: it is settled, as the scheduler would have found it
            store.write_cells(item.ckpt, [], finishes_checkpoint=True)
    return replace(plan, work=work)


def check_cluster(spec: SweepSpec) -> None:
    """Fail within seconds, naming the key, if the cluster can never place an actor (Ray would wait forever)."""
    resources = spec.resources
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if resources.device == "cuda" and cluster_gpus == 0:
        raise ClusterError("resources.device: cuda, but this Ray cluster has no GPU")
    gpus = gpus_per_actor(spec)
    cpus = float(resources.cpus_per_actor)
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if not any(node.get("GPU", 0) >= gpus and node.get("CPU", 0) >= cpus for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        key = "resources.gpus_per_actor" if gpus and not any(n.get("GPU", 0) >= gpus for n in nodes) \
            else "resources.cpus_per_actor"
        raise ClusterError(f"{key}: an actor needs {gpus:g} GPU and {cpus:g} CPU, but no node of this Ray cluster "
                           f"has that ({len(nodes)} nodes; the largest has {largest.get('GPU', 0):g} GPU and "
                           f"{largest.get('CPU', 0):g} CPU)")


def gpus_per_actor(spec: SweepSpec) -> float:
    wanted = spec.resources.gpus_per_actor
    if wanted == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return float(wanted)


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join a cluster (`address`, else RAY_ADDRESS, which `ray job submit` sets) or start a private local Ray.

    `address="auto"` joins a cluster already started on this machine with `ray start`. A no-op when this
    process is connected already.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True)


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
