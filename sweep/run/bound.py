"""The bound: the makespan each resource allows a sweep on its own, which one binds, and the concurrency of the
CPU and network work (exposure scans, probe-set builds) that keeps them from binding. Pure: no Ray, no files.

A sweep uses four kinds of hardware at once, and any of them can decide when it ends:

- **GPUs**: every cell's scoring and every checkpoint's load, shared by the actors, after each actor's first
  download (which nothing can hide: an actor has nothing to score before its first checkpoint is on its node);
- **checkpoint downloads**: every checkpoint crosses a node's network link once, each actor downloads one at a
  time (its disk holds the checkpoint loading and the next one), at most one stream's rate each;
- **probe-set streaming**: every chunk file the sweep samples is streamed once (`data.concurrent_builds` at a time);
- **exposure scans** on the CPUs: every chunk file of `exposure.chunks` streamed once more and hashed by one core,
  after the probe sets exist (a scan counts every probe sequence).

Each bound is a lower bound under the model below (`Cluster`, `Work`), so a schedule can reach the largest one but
never beat it; `memsweep plan` prints them all (`Bound.describe`) and the run's summary prints the makespan it
reached against the largest (sweep/run/driver.py). The concurrency of scans and builds is chosen here too
(`scan_concurrency`, `build_concurrency`), so that they end with the GPUs without taking what the actors need.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from sweep.run.cost import (AMBER_BYTES_PER_TOKEN, BINARY_SCAN_TOKENS_PER_CORE_S, COMPUTE_BOUND_RATE,
                            SCAN_TOKENS_PER_CORE_S, CostEstimate)
from sweep.run.releases import AMBER, AMBER_CHUNK_ROWS
from sweep.run.plan import Plan
from sweep.spec import SweepSpec

NETWORK_BYTES_PER_S = 2e9  # one node's link to the Hub (16 Gbit/s), shared by its downloads and streams
STREAM_BYTES_PER_S = 250e6  # one Hub download or chunk stream on its own (a 27 GB checkpoint: 108 s)
GPUS_PER_NODE = 8
CPUS_PER_NODE = 96
ASSUMED_LOAD_S = 40.0  # a 27 GB fp32 checkpoint from local disk, cast to bf16, onto the GPU (BENCHMARKS.md)
ASSUMED_EFFICIENCY = {"extractable": 0.75, "greedy": 0.5}  # of the compute bound, before anything is measured
SCAN_BYTES_PER_CORE_S = SCAN_TOKENS_PER_CORE_S * AMBER_BYTES_PER_TOKEN  # one core hashing a chunk file (~300 MB/s)


def scan_bytes_per_core_s(binary: bool, bytes_per_token: float | None = None) -> float:
    """What one core's scan kernel gets through of a chunk's bytes per second: a JSONL chunk file at the text kernel's
    rate (SCAN_BYTES_PER_CORE_S, ~300 MB/s of JSON); a binary stream's items at the binary kernel's tokens per second
    times `bytes_per_token` (2 for uint16 ids: ~140 MB/s, slower per byte than JSON, which spends ~6 bytes a token)."""
    if not binary:
        return SCAN_BYTES_PER_CORE_S
    return BINARY_SCAN_TOKENS_PER_CORE_S * (bytes_per_token or 2.0)


@dataclass(frozen=True)
class Cluster:
    """The hardware, as the bound sees it: `nodes` alike, each with its GPUs, CPUs and one network link."""

    nodes: int
    gpus_per_node: float
    cpus_per_node: float
    network_bytes_per_s: float = NETWORK_BYTES_PER_S  # per node
    stream_bytes_per_s: float = STREAM_BYTES_PER_S  # one transfer alone

    @property
    def gpus(self) -> float:
        return self.nodes * self.gpus_per_node

    @property
    def link_streams(self) -> int:
        """Transfers the node links carry at full stream rate, over the cluster."""
        return self.nodes * max(1, int(self.network_bytes_per_s // self.stream_bytes_per_s))

    def describe(self) -> str:
        return (f"{self.gpus:g} GPUs on {self.nodes} nodes ({self.gpus_per_node:g} GPUs, {self.cpus_per_node:g} CPUs "
                f"and {self.network_bytes_per_s / 1e9:g} GB/s of network each; one transfer at most "
                f"{self.stream_bytes_per_s / 1e6:g} MB/s)")


@dataclass(frozen=True)
class Work:
    """What a sweep still has to do, and what each piece costs: seconds on one GPU actor, bytes on the network."""

    cells: tuple[int, ...]  # cells per checkpoint still to score
    cell_s: float  # one cell (all of a chunk's probe sequences) on one actor
    load_s: float  # one checkpoint from the node's disk into the actor
    checkpoint_bytes: float  # one checkpoint's download (the largest)
    probe_bytes: tuple[float, ...] = ()  # chunk files to stream for probe sets
    scan_bytes: tuple[float, ...] = ()  # chunk files to stream for exposure scans
    scan_bytes_per_core_s: float = SCAN_BYTES_PER_CORE_S
    download_s: float | None = None  # one checkpoint's download as measured (else from its bytes and the network)

    @property
    def checkpoints(self) -> int:
        return len(self.cells)

    def scan_seconds(self, stream_bytes_per_s: float) -> float:
        """Task-seconds of every scan: each streams its file at one stream's rate or hashes it on one core, whichever
        is slower (the two overlap)."""
        rate = min(stream_bytes_per_s, self.scan_bytes_per_core_s)
        return sum(self.scan_bytes) / rate


@dataclass(frozen=True)
class ResourceBound:
    name: str
    seconds: float
    why: str  # the numbers behind it, for a person


@dataclass
class Bound:
    """Every resource's own makespan (`resources`, in seconds) and the concurrency chosen for scans and builds."""

    resources: list[ResourceBound] = field(default_factory=list)
    actors: int = 0
    scans: int = 0  # exposure scans at once (0: none to do)
    builds: int = 0  # probe-set builds at once (0: none to do)
    notes: list[str] = field(default_factory=list)  # what was assumed, the cluster, the concurrency chosen

    @property
    def binding(self) -> ResourceBound:
        return max(self.resources, key=lambda r: r.seconds)

    @property
    def seconds(self) -> float:
        return self.binding.seconds

    def describe(self) -> str:
        lines = [*self.notes, f"bound: the makespan each resource allows on its own, with {self.actors} actors:"]
        lines += [f"  {r.name}: {_duration(r.seconds)} ({r.why})" for r in self.resources]
        lines.append(f"binding: {self.binding.name}; the sweep cannot end before {_duration(self.seconds)}")
        return "\n".join(lines)


def first_download_s(work: Work, cluster: Cluster, actors: int) -> float:
    """Each actor's first checkpoint, fetched while every busy actor on its node fetches one too (or as measured)."""
    if work.download_s is not None:
        return work.download_s
    at_once = max(1, math.ceil(min(actors, work.checkpoints) / cluster.nodes))
    rate = min(cluster.stream_bytes_per_s, cluster.network_bytes_per_s / max(1, at_once))
    return work.checkpoint_bytes / rate


def gpu_bound(work: Work, actors: int, first_download: float) -> float:
    """Cells and loads shared by `actors`, after the first download. Every checkpoint is loaded at least once and
    every actor that scores loads at least once, so loads >= max(checkpoints, actors used). With fewer checkpoints
    than actors, a checkpoint's cells are split among the actors scoring it, so some actor scores at least the
    largest share of the most even split (`largest_share`); an actor that took a second checkpoint instead would
    wait for a second download."""
    cells = sum(work.cells)
    if not cells:
        return 0.0
    used = min(actors, cells)
    shared = (cells * work.cell_s + max(work.checkpoints, used) * work.load_s) / used
    one_share = work.load_s + largest_share(work.cells, actors) * work.cell_s
    second_download = first_download + work.load_s + work.cell_s
    return first_download + max(shared, min(one_share, second_download))


def largest_share(cells: tuple[int, ...], actors: int) -> int:
    """The cells of the largest share when `actors` each take one share of one checkpoint, split as evenly as
    possible (more actors to the checkpoints with the largest shares). With more checkpoints than actors: 1."""
    if len(cells) > actors or not cells:
        return 1
    heap = [(-n, n, 1) for n in cells if n]  # (-largest share, cells, actors on it)
    heapq.heapify(heap)
    for _ in range(actors - len(heap)):
        _, n, k = heapq.heappop(heap)
        if n <= k:  # one cell each already
            heapq.heappush(heap, (-1, n, k))
            break
        heapq.heappush(heap, (-math.ceil(n / (k + 1)), n, k + 1))
    return -heap[0][0]


def bound(work: Work, cluster: Cluster, actors: int, cpus_per_actor: float = 1.0, cpus_per_scan: float = 1.0,
          scans: int | None = None, builds: int | None = None) -> Bound:
    """The makespan each resource allows (see the module docstring). `scans`, `builds`: the concurrency the spec
    names, or None for auto (chosen here)."""
    result = Bound(actors=actors)
    if not sum(work.cells) and not work.scan_bytes:
        return result
    stream, links = cluster.stream_bytes_per_s, cluster.nodes * cluster.network_bytes_per_s
    first = first_download_s(work, cluster, actors)
    gpus = gpu_bound(work, actors, first) if sum(work.cells) else 0.0
    result.resources.append(ResourceBound(
        "GPUs", gpus, f"{sum(work.cells):,} cells x {work.cell_s:.3g} s + {work.checkpoints} loads x "
                      f"{work.load_s:.3g} s on {actors} actors, after a first download of {first:.0f} s"))

    after_last = work.load_s + work.cell_s  # what follows the last checkpoint's download
    one_download = work.download_s if work.download_s is not None else work.checkpoint_bytes / stream
    per_actor = math.ceil(work.checkpoints / max(1, actors)) * one_download + after_last
    over_links = work.checkpoints * work.checkpoint_bytes / links + after_last
    if work.checkpoints:
        result.resources.append(ResourceBound(
            "checkpoint downloads", max(per_actor, over_links),
            f"{work.checkpoints} x {work.checkpoint_bytes / 1e9:.1f} GB: {math.ceil(work.checkpoints / actors)} in a "
            f"row on the busiest actor at {stream / 1e6:g} MB/s, or all over {cluster.nodes} node links"))

    ramp = 0.0  # when the last probe set can exist
    if work.probe_bytes:
        result.builds = builds if builds is not None else build_concurrency(cluster, len(work.probe_bytes), 0)
        ramp = sum(work.probe_bytes) / min(result.builds * stream, links)
        result.resources.append(ResourceBound(
            "probe-set streaming", ramp + work.cell_s,
            f"{len(work.probe_bytes)} chunk files, {sum(work.probe_bytes) / 1e9:,.1f} GB, "
            f"{'auto: up to ' if builds is None else ''}{result.builds} at once"))

    if work.scan_bytes:
        scan_s = work.scan_seconds(stream)
        cpu_slots = int(max(0.0, cluster.nodes * cluster.cpus_per_node - actors * cpus_per_actor) // cpus_per_scan)
        result.scans = scans if scans is not None else scan_concurrency(scan_s, max(gpus, ramp) - ramp, cpu_slots,
                                                                       cluster.link_streams)
        at_once = min(result.scans, len(work.scan_bytes))
        result.resources.append(ResourceBound(
            "exposure scans", ramp + max(scan_s / at_once, work.scan_bytes[0] / min(stream, work.scan_bytes_per_core_s)),
            f"{len(work.scan_bytes)} chunk files, {sum(work.scan_bytes) / 1e9:,.1f} GB, "
            f"{'auto: ' if scans is None else ''}{result.scans} at once on {cpus_per_scan:g} CPU each, after the "
            "probe sets"))

    moved = work.checkpoints * work.checkpoint_bytes + sum(work.probe_bytes) + sum(work.scan_bytes)
    result.resources.append(ResourceBound(
        "node links, every transfer", moved / links,
        f"{moved / 1e12:,.2f} TB over {cluster.nodes} x {cluster.network_bytes_per_s / 1e9:g} GB/s"))
    return result


def scan_concurrency(scan_seconds: float, window_s: float, cpu_slots: int, link_streams: int) -> int:
    """Scans at once so that `scan_seconds` of scan tasks end within `window_s` (the GPUs' time left once the probe
    sets exist), on the CPUs the actors leave (`cpu_slots`) and at most half the node links' streams (the other half
    stays for checkpoint downloads and probe builds). At least one."""
    wanted = math.ceil(scan_seconds / window_s) if window_s > 0 else link_streams
    return max(1, min(wanted, cpu_slots, max(1, link_streams // 2)))


def build_concurrency(cluster: Cluster, builds: int, downloads_in_flight: int) -> int:
    """Probe-set builds at once: the streams the node links carry beside the checkpoint downloads in flight (the
    actors' first downloads at the start, prefetches later), counted on the busiest node (the builds spread evenly,
    the downloads may not), at least one, at most the builds left."""
    per_node = max(1, int(cluster.network_bytes_per_s // cluster.stream_bytes_per_s))
    busiest = math.ceil(downloads_in_flight / cluster.nodes)
    return max(1, min(builds, cluster.nodes * (per_node - busiest)))


# ---- from a spec ----------------------------------------------------------------------------------------


def assumed_cell_seconds(spec: SweepSpec, measured_rate: float | None = None,
                         parameters: float = AMBER.parameters) -> float:
    """One cell on one GPU actor: at the rate measured in this output, else at ASSUMED_EFFICIENCY of the compute
    bound of a forward (COMPUTE_BOUND_RATE for a 7B model and 64-token sequences; scaled to the model's `parameters`
    and to k + l, as sweep/run/cost.py scales it)."""
    tokens = spec.memorization.prompt_len + spec.memorization.continuation_len
    compute_bound = COMPUTE_BOUND_RATE * AMBER.parameters / parameters * 64 / tokens
    rate = measured_rate or compute_bound * ASSUMED_EFFICIENCY[spec.memorization.mode]
    return (spec.sequences_per_cell() or AMBER_CHUNK_ROWS) / rate  # a JSONL census: chunk files of Amber's size


def work_of(spec: SweepSpec, cells: list[int], estimate: CostEstimate, cell_s: float | None = None,
            load_s: float = ASSUMED_LOAD_S) -> Work:
    """The Work of a plan (`cells`: per checkpoint to load) priced by `estimate` (sweep/run/cost.py)."""
    binary = bool(estimate.scan_tokens)  # stream chunks: their bytes and tokens are both known
    per_token = sum(estimate.scan_bytes.values()) / sum(estimate.scan_tokens.values()) if binary else None
    return Work(cells=tuple(cells), cell_s=cell_s or assumed_cell_seconds(spec, estimate.measured_rate,
                                                                          estimate.parameters),
                load_s=load_s, checkpoint_bytes=estimate.largest_checkpoint,
                probe_bytes=tuple(estimate.chunk_bytes.values()), scan_bytes=tuple(estimate.scan_bytes.values()),
                scan_bytes_per_core_s=scan_bytes_per_core_s(binary, per_token))


def plan_bound(spec: SweepSpec, plan: Plan, estimate: CostEstimate, cluster: Cluster) -> Bound:
    """`memsweep plan`'s bound: the plan's cells on `cluster` (one actor per GPU unless the spec says otherwise), priced
    by `estimate`, with the concurrency the spec names or the one `auto` chooses, and what was assumed."""
    resources = spec.resources
    per_actor = 1.0 if resources.gpus_per_actor == "auto" else float(resources.gpus_per_actor)
    actors = int(cluster.gpus // per_actor) if per_actor else 1
    actors = max(1, min(actors if resources.actors == "auto" else int(resources.actors), plan.cells_to_do))
    work = work_of(spec, [len(w.chunks) for w in plan.work], estimate)
    scans = spec.exposure.concurrent_scans if spec.exposure is not None else "auto"
    builds = spec.data.concurrent_builds
    result = bound(work, cluster, actors, float(resources.cpus_per_actor),
                   spec.exposure.cpus_per_scan if spec.exposure is not None else 1.0,
                   scans=None if scans == "auto" else scans, builds=None if builds == "auto" else builds)
    compute_bound = COMPUTE_BOUND_RATE * AMBER.parameters / estimate.parameters
    rate = "measured here" if estimate.measured_rate else \
        f"{ASSUMED_EFFICIENCY[spec.memorization.mode]:.0%} of the ~{compute_bound:,.0f} seq/s compute bound"
    result.notes = [f"cluster: {cluster.describe()}",
                    f"assumed: a cell {work.cell_s:.3g} s ({rate}, {spec.memorization.mode}), a load "
                    f"{work.load_s:.0f} s, a checkpoint download {work.checkpoint_bytes / cluster.stream_bytes_per_s:.0f} s "
                    f"at one stream's rate"]
    if work.probe_bytes:
        result.notes.append(f"data.concurrent_builds: {builds}" + (
            f" (up to {result.builds} at once: the streams the node links carry beside the checkpoint downloads, one "
            "while every actor fetches its first checkpoint)" if builds == "auto" else ""))
    if work.scan_bytes:
        result.notes.append(f"exposure.concurrent_scans: {scans}" + (
            f" ({result.scans} at once, to end with the GPUs on the CPUs the actors leave)" if scans == "auto" else ""))
    return result


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
