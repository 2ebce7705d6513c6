"""The whole job at full Amber scale: the real driver and store, the GPUs, the network and the scans simulated.

    python benchmarks/control_plane.py --shape full                 # 360 x 360 x 1000 + exposure scans, ~30 min
    python benchmarks/control_plane.py --shape diagonal             # every 10th checkpoint x every 10th chunk
    python benchmarks/control_plane.py --shape single-chunk         # 360 checkpoints x chunk 355
    python benchmarks/control_plane.py --checkpoints 0-35 --chunks 0-35 --exposure 0-35   # a quick check (~1 min)

`run_sweep` (sweep/run/driver.py) runs unchanged: plan, probe supply, exposure scans, scheduler, ResultStore
landing and compaction, on a local Ray with 64 logical GPUs. Three things are replaced by stand-ins that cost what
the hardware would and then do the real work on a tiny world, so the landed output has the real schema:

- the checkpoint actor, by `CostModelScorer`: CheckpointScorer's interface (`prefetch`, `discard`, `score_cell`,
  `release`; concurrency groups io and compute; the same prefetch protocol, actors/prefetch.py) without torch: it
  sleeps what a GPU would spend and returns synthetic scores (deterministic per cell);
- the network, by `SimulatedNetwork` (one async actor): every node has one link (--network-gb-s) shared equally by
  the transfers on it, each at most one stream's rate (--stream-mb-s); actors sit on nodes of 8 in the order they
  start, and two actors of one node fetching one checkpoint at once share one download, as the real download folder
  does (actors/checkpoint_files.py);
- the probe-set build and exposure-scan tasks, by methods of that actor: on the node SPREAD would pick (round
  robin), a build streams its 20.8 GB chunk file over the link, a scan streams it while one core hashes it (the
  slower of the two), then each runs the real code on the tiny chunk file.

The cost model (`CostModel`, real seconds; every duration divided by --time-scale so the run fits here):

- cell: 1000 sequences at a fraction of the compute bound. A 7B forward is ~2 x 6.7e9 FLOP per token, 64
  tokens a sequence (k = l = 32), so at 790 TFLOP/s (bf16, practical H200 matmul rate, ../shared/FACTS.md)
  ~921 sequences/s. Assumed: extractable (+ NLL; one teacher-forced pass of 64 tokens at batch ~1024, large
  GEMMs) reaches 75% of that, greedy (32 sequential decode steps) 50%;
- load: 40 s (27 GB of fp32 .bin shards read from local disk, cast to bf16, 13.5 GB copied to the GPU);
- a checkpoint: 27 GB; a chunk file: 20.8 GB; a scan hashes ~300 MB/s on one core (sweep/run/bound.py);
- the cluster: 8 GPUs, 96 CPUs and one 2 GB/s link per node, 250 MB/s per transfer (sweep/run/bound.py defaults).

The bound is sweep/run/bound.py's on that cluster at these costs (each actor's first download included): the
largest of what the GPUs, the checkpoint downloads, probe-set streaming, the exposure scans and the node links each
allow. Overhead = makespan / bound - 1, the makespan being the whole `run_sweep` (preflight, Ray's actor start-up,
the tail, every extra load and stall, the last scan). The old "ideal" (GPU work / actors, no download) is printed
too, for the earlier table.

Measured on the driver process: CPU seconds (user + system, Ray's threads in it included) per cell, peak
RSS (VmHWM, reset when the sweep starts); on the output: landed Parquet bytes (ledger records); on the
actors: seconds busy (load + scoring sleeps) / (makespan x actors), and what they waited for.

Memory: 64 Ray worker processes of ~60-80 MB each (numpy + ray, no torch), the network actor and the driver; a
watchdog stops the run if the machine's available memory drops below --min-available-gb.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import ray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # also when a test imports this file by path
from peak_memory import peak_rss_bytes, reset_peak_rss  # noqa: E402
from actors.prefetch import PrefetchingActor  # noqa: E402
from actors.protocol import (BatchScores, CellOutput, CheckpointTarget, LoadedCheckpoint,  # noqa: E402
                             ProbeBatch, ProbePieces, ScorerSettings, ScoringOptions)

# ---- the cost model ---------------------------------------------------------------------------

PARAMETERS = 6.7e9  # Amber (LLaMA-7B): FLOP per token ~ 2 x parameters
BF16_FLOPS = 790e12  # practical dense bf16 matmul rate of an H200 (FACTS.md)
CHECKPOINT_BYTES = 27.0e9  # an Amber ckpt_* revision: 3 fp32 .bin shards
CHUNK_BYTES = 20.8e9  # an AmberDatasets chunk file
ROWS_PER_CHUNK = 1_706_976  # rows of a real chunk (the landed `row` ids are drawn from this range)
AMBER_SOURCES = {"refinedweb": 536, "starcoderdata": 221, "c4": 163, "arxiv": 31, "book": 18,
                 "wikipedia": 18, "stackexchange": 13}  # per 1000 sampled rows (FACTS.md)
NETWORK_NAME = "simulated-network"
SHAPES = {  # issue 25's three shapes: (checkpoints, chunks, exposure chunks)
    "full": ("0-359", "0-359", "0-359"),
    "diagonal": ("0-359:10", "0-359:10", None),  # configs/amber-diagonal.yaml
    "single-chunk": ("0-359", "355", None),
}


def compute_bound_sequences_per_s(tokens_per_sequence: int) -> float:
    """Sequences/s of a 7B model at BF16_FLOPS: 790e12 / (2 x 6.7e9 x 64) = 921 for k = l = 32."""
    return BF16_FLOPS / (2 * PARAMETERS * tokens_per_sequence)


@dataclass(frozen=True)
class CostModel:
    """What the simulated hardware spends, in real seconds and bytes; every sleep is divided by `time_scale`."""

    cell_seconds: float  # scoring one cell (1000 sequences)
    load_seconds: float  # a checkpoint from local disk into GPU memory
    checkpoint_bytes: float = CHECKPOINT_BYTES  # one download from the Hub
    chunk_bytes: float = CHUNK_BYTES  # one chunk file streamed (a probe-set build, an exposure scan)
    scan_bytes_per_core_s: float = 0.0  # one core hashing a chunk file (0: free)
    time_scale: float = 1.0
    stats_dir: str | None = None  # where each actor writes its timeline when released

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.time_scale)


def default_cost_model(mode: str, samples: int, tokens_per_sequence: int, efficiency: float | None,
                       load_s: float, time_scale: float) -> CostModel:
    """The assumptions of the module docstring as numbers (efficiency: fraction of the compute bound)."""
    from sweep.run.bound import SCAN_BYTES_PER_CORE_S

    if efficiency is None:
        efficiency = 0.75 if mode == "extractable" else 0.5
    rate = compute_bound_sequences_per_s(tokens_per_sequence) * efficiency
    return CostModel(cell_seconds=samples / rate, load_seconds=load_s, scan_bytes_per_core_s=SCAN_BYTES_PER_CORE_S,
                     time_scale=time_scale)


# ---- the network ----------------------------------------------------------------------------------


@dataclass
class _Flow:
    bytes_left: float
    done: asyncio.Future
    key: object = None


class SimulatedNetwork:
    """Every node's link as a fluid: the transfers on a link share it equally, each at most one stream's rate, and
    the rates change whenever a transfer starts or ends. Time is simulated (real seconds x time_scale)."""

    def __init__(self, nodes: int, gpus_per_node: int, link_bytes_per_s: float, stream_bytes_per_s: float,
                 cost: CostModel):
        self.nodes, self.gpus_per_node = nodes, gpus_per_node
        self.link, self.stream, self.cost = link_bytes_per_s, stream_bytes_per_s, cost
        self.flows: list[list[_Flow]] = [[] for _ in range(nodes)]
        self.joined = 0
        self.spread = itertools.cycle(range(nodes))  # where SPREAD puts the next task
        self.began = time.monotonic()
        self.updated = 0.0  # simulated seconds at the last update
        self.moved: dict[str, float] = {}  # bytes per kind of transfer
        self.wake: asyncio.Event | None = None
        self.runner = None

    # ---- the fluid ----

    def _now(self) -> float:
        return (time.monotonic() - self.began) * self.cost.time_scale

    def _rate(self, node: int) -> float:
        count = len(self.flows[node])
        return min(self.stream, self.link / count) if count else 0.0

    def _advance(self) -> None:
        now = self._now()
        elapsed, self.updated = now - self.updated, now
        for node, flows in enumerate(self.flows):
            rate = self._rate(node)
            for flow in flows:
                flow.bytes_left -= rate * elapsed
            finished = [flow for flow in flows if flow.bytes_left <= rate * 1e-3]
            for flow in finished:
                flows.remove(flow)
                if not flow.done.done():
                    flow.done.set_result(None)

    async def _run(self) -> None:
        while True:
            self._advance()
            waits = [flow.bytes_left / self._rate(node) for node, flows in enumerate(self.flows) for flow in flows]
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), min(waits) / self.cost.time_scale if waits else None)
            except asyncio.TimeoutError:
                pass

    async def transfer(self, node: int, nbytes: float, kind: str, key=None) -> None:
        """Move `nbytes` over `node`'s link; a transfer of the same `key` under way on it is joined instead."""
        if self.runner is None:
            self.wake = asyncio.Event()
            self.runner = asyncio.get_running_loop().create_task(self._run())
        self._advance()
        shared = next((flow for flow in self.flows[node] if key is not None and flow.key == key), None)
        if shared is None:
            shared = _Flow(nbytes, asyncio.get_running_loop().create_future(), key)
            self.flows[node].append(shared)
            self.moved[kind] = self.moved.get(kind, 0.0) + nbytes
            self.wake.set()
        await asyncio.shield(shared.done)

    # ---- who sits where ----

    async def join(self) -> int:
        """The node of the next actor to start: 8 to a node, in order."""
        node = min(self.joined // self.gpus_per_node, self.nodes - 1)
        self.joined += 1
        return node

    async def moved_bytes(self) -> dict[str, float]:
        return dict(self.moved)

    # ---- the tasks that stream chunk files ----

    async def build(self, chunk_file, chunk, n, seed, k, l, vocab_size, line_lengths):
        """sweep.data.probe_supply's build task: the chunk streamed over a node's link, then the real build."""
        from sweep.data.probes import build_probe_set_from

        await self.transfer(next(self.spread), self.cost.chunk_bytes, "probe builds")
        return build_probe_set_from(chunk_file, chunk, n, seed, k, l, vocab_size, line_lengths)

    async def scan(self, chunk_file, index):
        """sweep.exposures.scans' scan task: the chunk streamed while one core hashes it, then the real scan."""
        from sweep.exposures.scans import scan_chunk_file

        hashing = self.cost.chunk_bytes / self.cost.scan_bytes_per_core_s if self.cost.scan_bytes_per_core_s else 0.0
        await asyncio.gather(self.transfer(next(self.spread), self.cost.chunk_bytes, "exposure scans"),
                             asyncio.sleep(hashing / self.cost.time_scale))
        return scan_chunk_file(chunk_file, index)

    async def warm(self) -> None:
        """Compile the scan kernel now (numba, a few seconds), not inside the first scan."""
        import numpy

        from sweep.exposures.kernel import build_probe_index, scan_chunk

        index = build_probe_index(numpy.arange(64, dtype=numpy.uint32).reshape(1, 64), 32)
        scan_chunk(iter([b'{"token_ids": [1, 2, 3]}\n']), index, "warm-up")


_network_handles: list = []  # a Ray actor lives while a handle does, named or not


def start_network(cluster, cost: CostModel):
    """The named network actor for `cluster` (sweep.run.bound.Cluster), alive until Ray shuts down."""
    _ship_by_value()
    actor = ray.remote(SimulatedNetwork).options(name=NETWORK_NAME, max_concurrency=10_000).remote(
        cluster.nodes, int(cluster.gpus_per_node), cluster.network_bytes_per_s, cluster.stream_bytes_per_s, cost)
    ray.get(actor.warm.remote())
    _network_handles[:] = [actor]
    return actor


class _TaskOnTheNetwork:
    """Stands in for a Ray remote function (`.options(...).remote(...)`) by calling a method of the network actor."""

    def __init__(self, method: str):
        self.method = method

    def options(self, **options):
        return self

    def remote(self, *args):
        return getattr(ray.get_actor(NETWORK_NAME), self.method).remote(*args)


@contextmanager
def simulated_chunk_streams():
    """Probe-set builds and exposure scans go through the network actor while this holds."""
    from sweep.data import probe_supply
    from sweep.exposures import scans

    real = probe_supply._build_probe_set_task, scans._scan_task
    probe_supply._build_probe_set_task, scans._scan_task = _TaskOnTheNetwork("build"), _TaskOnTheNetwork("scan")
    try:
        yield
    finally:
        probe_supply._build_probe_set_task, scans._scan_task = real


def _ship_by_value() -> None:
    module = sys.modules[CostModelScorer.__module__]
    if module.__name__ != "__main__":  # imported (a test): ship the classes by value, workers cannot import them
        ray.cloudpickle.register_pickle_by_value(module)


# ---- synthetic scores ---------------------------------------------------------------------------


def synthetic_scores(ckpt: int, chunk: int, n: int, options: ScoringOptions, keep_generated: bool,
                     checkpoints: int = 360) -> BatchScores:
    """Plausible per-sequence results for one cell, the same every time for (ckpt, chunk).

    A row's teacher-forced accuracy rises with training progress (and a little for seen chunks); its
    prefix match is geometric in that accuracy; a small share of rows is memorized outright (more of the
    seen ones), giving full-match rates of ~0.3-2% and mean scores of ~0.1-0.3 like the reference numbers.
    Cost: ~0.2 ms for 1000 rows.
    """
    rng = np.random.default_rng([ckpt, chunk, 20261127])
    length = options.continuation_len
    progress = min(1.0, (ckpt + 1) / checkpoints)
    seen = chunk <= ckpt
    mean_accuracy = 0.30 + 0.15 * progress + (0.03 if seen else 0.0)
    accuracy = rng.beta(8 * mean_accuracy, 8 * (1 - mean_accuracy), n)
    prefix = np.minimum(rng.geometric(1 - accuracy) - 1, length)
    memorized = rng.random(n) < (0.003 + (0.015 * progress if seen else 0.0))
    prefix[memorized] = length
    full_match = prefix == length
    tail_hits = rng.random((n, length)) < accuracy[:, None]
    positions = np.arange(length)
    teacher_forced_hits = np.where(positions < prefix[:, None], True, np.where(positions == prefix[:, None], False,
                                                                                 tail_hits))
    scores = BatchScores(matches=None, prefix_match=prefix.astype(np.int16), full_match=full_match,
                         match_mask=None, nll=None, tf_accuracy=None)
    if options.nll:
        scores.tf_accuracy = teacher_forced_hits.mean(axis=1).astype(np.float32)
        nll = rng.gamma(4.0, (2.8 - 1.0 * progress) / 4.0, n)
        scores.nll = np.where(memorized, nll * 0.05, nll).astype(np.float32)
    if options.mode == "greedy":
        # greedy decoding drifts after its first miss: fewer later hits than teacher forcing
        greedy_hits = np.where(positions < prefix[:, None], True,
                               np.where(positions == prefix[:, None], False, tail_hits & (rng.random((n, length)) < 0.5)))
        scores.matches = greedy_hits.sum(axis=1).astype(np.int16)
        scores.match_mask = np.packbits(greedy_hits, axis=1, bitorder="little")
        if keep_generated:
            scores.generated = rng.integers(3, 32000, (n, length), dtype=np.int64)
    return scores


# ---- the cost-model actor -----------------------------------------------------------------------


class CostModelScorer(PrefetchingActor):
    """CheckpointScorer's interface, concurrency and prefetch protocol (actors/prefetch.py, the same code), with
    sleeps for the GPU work and transfers over the simulated network for the downloads (see `cost_model_scorer`).

    A load waits for an in-flight prefetch of the same target, else fetches it itself, then loads; a checkpoint
    stays loaded until another is asked for. Every wait is recorded (kind, start, end; wall clock) and the
    timeline is written to `cost.stats_dir` on `release` (kinds: download, stall-download, wait, load, cell).
    """

    cost: CostModel  # bound by cost_model_scorer

    def __init__(self, settings: ScorerSettings):
        super().__init__()
        self.settings = settings
        self.loaded: LoadedCheckpoint | None = None
        self.timeline: list[tuple[str, float, float]] = []  # (kind, start, end): download/load/cell/wait
        self.host = socket.gethostname()
        self.network = ray.get_actor(NETWORK_NAME)
        self.node = ray.get(self.network.join.remote())

    def _fetch(self, target: CheckpointTarget, prefetch: bool) -> CheckpointTarget:
        # not prefetched (each actor's first checkpoint, or a reservation taken over): the GPU waits for it
        start = time.time()
        ray.get(self.network.transfer.remote(self.node, self.cost.checkpoint_bytes, "checkpoint downloads",
                                             key=(target.ckpt, target.revision)))
        self.timeline.append(("download" if prefetch else "stall-download", start, time.time()))
        return target

    def _evict(self, fetched: CheckpointTarget) -> int:
        return int(self.cost.checkpoint_bytes)

    def _wait_for_prefetch(self, target: CheckpointTarget) -> None:
        if target in self.fetching:
            waited = time.time()
            super()._wait_for_prefetch(target)
            self.timeline.append(("wait", waited, time.time()))

    @ray.method(concurrency_group="compute")
    def score_cell(self, target: CheckpointTarget, probes: ProbeBatch | ProbePieces) -> CellOutput:
        # CheckpointScorer's signature (a census chunk's pieces too); the cost model scores probe sets only
        loaded_now = False
        if self.loaded is None or self.loaded.target != target:
            self._load(target)
            loaded_now = True
        start = time.time()
        self.cost.sleep(self.cost.cell_seconds)
        scores = synthetic_scores(target.ckpt, probes.chunk, len(probes.rows), self.settings.options,
                                  self.settings.keep_generated)
        end = time.time()
        self.timeline.append(("cell", start, end))
        return CellOutput(ckpt=target.ckpt, chunk=probes.chunk, scores=scores, seconds=end - start,
                          loaded=self.loaded, loaded_now=loaded_now, device="cost-model",
                          dtype=self.settings.dtype, batch_size=1024, host=self.host)

    @ray.method(concurrency_group="compute")
    def release(self) -> None:
        self.loaded = None
        self._evict_all()
        if self.cost.stats_dir:
            path = Path(self.cost.stats_dir) / f"actor-{os.getpid()}-{id(self)}.json"
            path.write_text(json.dumps(self.timeline))

    def _load(self, target: CheckpointTarget) -> None:
        start = time.time()
        self.loaded = None
        self._checkout(target)
        self._timed("load", self.cost.load_seconds)
        fingerprint = hashlib.sha256(f"cost-model {target.ckpt} {target.revision}".encode()).hexdigest()[:16]
        self.loaded = LoadedCheckpoint(target=target, weights_fingerprint=fingerprint, stored_dtype="float32",
                                       vocab_size=32000, load_seconds=time.time() - start,
                                       downloaded_bytes=int(self.cost.checkpoint_bytes), host=self.host,
                                       checkout_seconds=self.checkout_seconds)

    def _timed(self, kind: str, seconds: float) -> None:
        start = time.time()
        self.cost.sleep(seconds)
        self.timeline.append((kind, start, time.time()))


def cost_model_scorer(cost: CostModel):
    """A Ray actor class for `run_sweep(..., scorer=...)` with `cost` bound (same groups as CheckpointScorer). The
    network actor (`start_network`) must be running."""
    _ship_by_value()
    bound = type("CostModelScorer", (CostModelScorer,), {"cost": cost})
    return ray.remote(concurrency_groups={"io": 1, "compute": 1})(bound)


# ---- the actors, started before the sweep's clock -------------------------------------------------------


class StartedActors:
    """Stands in for the actor class passed to `run_sweep(scorer=...)`: `options(...).remote(settings)` hands out
    actors started (and ready) before the sweep, in order, then starts new ones (a dead actor's replacement). They
    start one after the other, so actor i sits on node i // 8 (`SimulatedNetwork.join`), as Ray tends to place
    actors started in order on nodes of 8 GPUs.

    64 actor processes starting at once on this 2-core VM took one to two minutes (Ray starts as many at a time as
    the node has CPUs), a cost of the simulation, not of a cluster, where each node starts its own 8 in parallel; so
    the sweep's clock starts with them up, and `seconds` says what starting them took here."""

    def __init__(self, actor_class, count: int, settings, options: dict):
        began = time.perf_counter()
        self.actor_class, self.options_ = actor_class, options
        self.ready = []
        for _ in range(count):
            self.ready.append(actor_class.options(**options).remote(settings))
            ray.get(self.ready[-1].__ray_ready__.remote())  # it has joined its node
        self.seconds = time.perf_counter() - began

    def options(self, **options):
        return self

    def remote(self, settings):
        return self.ready.pop(0) if self.ready else self.actor_class.options(**self.options_).remote(settings)


# ---- the world ------------------------------------------------------------------------------------


def build_world(root: Path, checkpoints: list[int], chunks: list[int], rows: int, row_tokens: int = 64) -> None:
    """`root/model/ckpt_NNN/` (empty: the cost model never reads them) and `root/data/train/train_NNN.jsonl`
    (raw Amber format, `rows` rows of `row_tokens` ids; ~350 bytes a row). Existing files are kept."""
    for ckpt in checkpoints:
        (root / "model" / f"ckpt_{ckpt:03d}").mkdir(parents=True, exist_ok=True)
    folder = root / "data" / "train"
    folder.mkdir(parents=True, exist_ok=True)
    names = list(AMBER_SOURCES)
    weights = np.array(list(AMBER_SOURCES.values()), dtype=float)
    for chunk in chunks:
        path = folder / f"train_{chunk:03d}.jsonl"
        if path.exists():
            continue
        rng = np.random.default_rng(chunk)
        ids = rng.integers(3, 32000, (rows, row_tokens))
        sources = rng.choice(len(names), rows, p=weights / weights.sum())
        lines = [f'{{"token_ids": [{",".join(map(str, row))}], "source": "{names[s]}"}}\n'
                 for row, s in zip(ids.tolist(), sources)]
        temp = path.with_suffix(".tmp")
        temp.write_text("".join(lines))
        os.replace(temp, path)


def make_spec(world: Path, output: Path, cache: Path, checkpoints: str, chunks: str, samples: int, mode: str,
              actors: int, exposure: str | None = None, concurrent_builds="auto", concurrent_scans="auto"):
    from sweep.spec import SweepSpec

    return SweepSpec.model_validate({
        "name": "control-plane",
        "model": {"source": str(world / "model"), "revision": "ckpt_{ckpt:03d}", "dtype": "bfloat16"},
        "data": {"source": str(world / "data"), "file": "train/train_{chunk:03d}.jsonl",
                 "samples_per_chunk": samples, "seed": 42, "vocab_size": 32000, "cache_dir": str(cache),
                 "concurrent_builds": concurrent_builds},
        "checkpoints": checkpoints,
        "chunks": chunks,
        "memorization": {"prompt_len": 32, "continuation_len": 32, "mode": mode, "nll": True},
        "resources": {"gpus_per_actor": 1, "actors": actors, "cpus_per_actor": 0.01, "batch_size": "auto",
                      "max_attempts": 3},
        **({"exposure": {"chunks": exposure, "concurrent_scans": concurrent_scans}} if exposure else {}),
        "output": str(output),
    })


def prebuild_probe_sets(spec, cost: CostModel) -> float:
    """Fill the probe cache through the real path: a throw-away sweep of one checkpoint on one free actor."""
    from sweep.run.driver import run_sweep

    began = time.perf_counter()
    output = Path(spec.output).with_name("prebuild")
    shutil.rmtree(output, ignore_errors=True)
    warm = spec.model_copy(update={"checkpoints": spec.checkpoints[:1], "output": str(output), "exposure": None,
                                   "resources": spec.resources.model_copy(update={"actors": 1})})
    free = replace(cost, cell_seconds=0, load_seconds=0, checkpoint_bytes=0, stats_dir=None)
    summary = run_sweep(warm, progress=False, scorer=cost_model_scorer(free))
    shutil.rmtree(output, ignore_errors=True)
    if not summary.ok:
        raise RuntimeError(f"pre-building probe sets failed: {summary.describe()}")
    return time.perf_counter() - began


# ---- measuring ------------------------------------------------------------------------------------


@dataclass
class Measurement:
    cells: int
    checkpoints: int
    chunks: int
    actors: int
    time_scale: float
    cost: dict
    probe_builds: str  # "pre-built" or "simulated"
    shape: str = ""
    scans: int = 0  # chunk files of exposure.chunks
    worker_niceness: int = 15
    makespan_s: float = 0.0
    ideal_s: float = 0.0  # the earlier table's: (cells x cell + checkpoints x load) / actors, no download
    bound_s: float = 0.0  # sweep/run/bound.py at the cost model's costs (scaled seconds)
    actor_start_s: float | None = None  # starting the actors before the sweep's clock (None: started inside it)
    binding: str = ""
    bound_lines: str = ""
    summary_line: str = ""  # the run's own "makespan ... against a bound" line (measured costs)
    moved_bytes: dict = field(default_factory=dict)  # per kind of transfer, over the simulated network
    scans_scanned: int = 0
    last_scan_at_s: float | None = None
    splits: int = 0  # tail-policy splits beyond the plan
    reservations_taken: int = 0
    loaded_shares: int = 0  # cells an idle actor took at no load from its partner on the checkpoint both hold
    plans: int = 0
    driver_cpu_s: float = 0.0
    driver_peak_rss_mb: float = 0.0
    ray_processes_cpu_s: float = 0.0  # raylet, GCS, workers (the actors' own CPU competes with the driver here)
    sequences_parquet_bytes: int = 0
    cells_parquet_bytes: int = 0
    probes_parquet_bytes: int = 0
    actor_busy_s: float = 0.0  # load + cell sleeps, summed over actors
    actor_download_stall_s: float = 0.0  # downloads inside a load (not prefetched) + waits for a prefetch
    actor_time: dict = field(default_factory=dict)  # actor_time_budget
    idle_by_tenth: list = field(default_factory=list)  # idle_by_tenth
    timelines: list = field(default_factory=list)  # per actor: (kind, start, end) from the sweep's start (--json only)
    steady_driver_ms_per_cell: float | None = None  # driver CPU per cell while the middle 80% of cells landed
    loads: int = 0
    cells_landed: int = 0
    failed: int = 0
    first_cell_landed_at_s: float | None = None
    last_probe_set_at_s: float | None = None
    first_actor_work_at_s: float | None = None  # when the first actor started its first sleep (start-up before)
    last_actor_started_at_s: float | None = None  # when the last actor started its first sleep
    last_actor_work_at_s: float | None = None
    loadavg_before: tuple = ()
    loadavg_during: list = field(default_factory=list)
    min_available_gb: float | None = None

    @property
    def overhead(self) -> float:
        return self.makespan_s / self.bound_s - 1

    @property
    def over_ideal(self) -> float:
        return self.makespan_s / self.ideal_s - 1

    @property
    def busy_fraction(self) -> float:
        return self.actor_busy_s / (self.makespan_s * self.actors)

    @property
    def driver_ms_per_cell(self) -> float:
        return 1000 * self.driver_cpu_s / max(1, self.cells_landed)

    def describe(self) -> str:
        scale = self.time_scale
        c = self.cost
        lines = [
            f"shape {self.shape}: {self.cells:,} cells ({self.checkpoints} checkpoints x {self.chunks} chunks x "
            f"{c['samples']} rows), {self.scans} chunk files to scan, {self.actors} actors (nice "
            f"{self.worker_niceness}), time scale {scale:g} (sleeps are real seconds / {scale:g})",
            f"cost model (real seconds): cell {c['cell_seconds']:.3f} ({c['mode']}, {c['sequences_per_s']:.0f} seq/s), "
            f"load {c['load_seconds']:g}, checkpoint {c['checkpoint_bytes'] / 1e9:g} GB, chunk file "
            f"{c['chunk_bytes'] / 1e9:g} GB, a scan hashes {c['scan_bytes_per_core_s'] / 1e6:.0f} MB/s; probe sets "
            f"{self.probe_builds}, data.concurrent_builds {c['concurrent_builds']}, exposure.concurrent_scans "
            f"{c['concurrent_scans']}",
            self.bound_lines,
            f"landed: {self.cells_landed:,} cells, {self.failed} failed, {self.loads} checkpoint loads, "
            f"{self.scans_scanned} scans; {self.plans} plans, {self.splits} tail splits, {self.reservations_taken} "
            f"reservations taken, {self.loaded_shares} shares evened out at no load",
            f"makespan: {self.makespan_s:.1f} s (x{scale:g} = {self.makespan_s * scale / 60:.1f} min real); "
            + (f"the {self.actors} actors were started before it, in {self.actor_start_s:.1f} s"
               if self.actor_start_s is not None else "the actors started inside it"),
            f"bound: {self.bound_s:.1f} s (x{scale:g} = {self.bound_s * scale / 60:.1f} min real), binding: "
            f"{self.binding}; **overhead over the bound: {100 * self.overhead:.1f}%**",
            f"the earlier table's ideal (cells x cell + checkpoints x load) / actors: {self.ideal_s:.1f} s; over it "
            f"{100 * self.over_ideal:.1f}%",
            f"the run's summary: {self.summary_line}",
            "moved over the simulated network: " + ", ".join(f"{kind} {moved / 1e12:.2f} TB"
                                                             for kind, moved in sorted(self.moved_bytes.items())),
            f"actors busy: {100 * self.busy_fraction:.1f}% of makespan x actors; download stalls "
            f"{self.actor_download_stall_s / self.actors:.1f} s per actor; first actor work at "
            f"{self.first_actor_work_at_s:.1f} s, every actor working by {self.last_actor_started_at_s:.1f} s, last "
            f"work ends at {self.last_actor_work_at_s:.1f} s",
            "actor time: " + ", ".join(f"{name} {100 * seconds / (self.makespan_s * self.actors):.1f}%"
                                       for name, seconds in self.actor_time.items()),
            "actors neither busy nor downloading, by tenth of the makespan: "
            + " ".join(f"{100 * share:.0f}%" for share in self.idle_by_tenth),
            f"first cell landed at {self.first_cell_landed_at_s or float('nan'):.1f} s; last probe set ready at "
            f"{self.last_probe_set_at_s or float('nan'):.1f} s; last scan landed at "
            f"{self.last_scan_at_s or float('nan'):.1f} s",
            f"driver CPU: {self.driver_cpu_s:.1f} s = {self.driver_ms_per_cell:.2f} ms per cell "
            f"({100 * self.driver_cpu_s / self.makespan_s:.0f}% of one core over the makespan); "
            f"{self.steady_driver_ms_per_cell or float('nan'):.2f} ms per cell while the middle 80% landed",
            f"Ray processes (raylet, GCS, actor workers, the network actor) CPU: {self.ray_processes_cpu_s:.1f} s "
            f"({1000 * self.ray_processes_cpu_s / max(1, self.cells_landed):.2f} ms per cell)",
            f"peak driver RSS: {self.driver_peak_rss_mb:.0f} MB",
            f"landed Parquet: sequences {self.sequences_parquet_bytes / 1e6:,.1f} MB "
            f"({self.sequences_parquet_bytes / max(1, self.cells_landed * c['samples']):.2f} bytes/row), "
            f"cells {self.cells_parquet_bytes / 1e6:,.2f} MB, probes {self.probes_parquet_bytes / 1e6:,.1f} MB",
            f"load average before: {' '.join(f'{x:.2f}' for x in self.loadavg_before)}; during (1-min, sampled): "
            f"min {min(self.loadavg_during, default=0):.1f}, max {max(self.loadavg_during, default=0):.1f}; "
            f"lowest available memory {self.min_available_gb:.1f} GB",
        ]
        return "\n".join(lines)


class _Watch:
    """Samples load average, available memory and the driver's CPU time every few seconds; interrupts the run
    below a memory floor."""

    def __init__(self, min_available_gb: float, every_s: float = 5.0):
        import psutil

        self.psutil, self.floor, self.every = psutil, min_available_gb, every_s
        self.loadavg: list[float] = []
        self.cpu: list[tuple[float, float]] = []  # (wall clock, driver process CPU seconds)
        self.lowest = math.inf
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        process = self.psutil.Process()
        while not self.stop.wait(self.every):
            times = process.cpu_times()
            self.cpu.append((time.time(), times.user + times.system))
            self.loadavg.append(os.getloadavg()[0])
            available = self.psutil.virtual_memory().available / 1e9
            self.lowest = min(self.lowest, available)
            if available < self.floor:
                print(f"\nmemory guard: {available:.1f} GB available < {self.floor} GB; interrupting",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGINT)
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _descendants_cpu_s() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def measure(spec, cost: CostModel, cluster, samples: int, probe_builds: str, progress: bool,
            min_available_gb: float, shape: str = "", cold_actors: bool = False) -> Measurement:
    """One sweep of `spec` into an empty output on `cluster` (sweep.run.bound.Cluster, real rates), measured (see
    the module docstring). The network actor must be running. Unless `cold_actors`, the actors are started before
    the sweep's clock (`StartedActors`)."""
    import psutil

    from sweep.run.driver import _forwarded_environment, run_sweep
    from sweep.run.scorer_settings import scorer_settings
    from sweep.run.scheduler import actor_options
    from sweep.landed.reader import open_output

    stats = Path(spec.output).with_name(Path(spec.output).name + "-actors")
    shutil.rmtree(stats, ignore_errors=True)
    stats.mkdir(parents=True)
    cost = replace(cost, stats_dir=str(stats))
    cells = len(spec.cell_list())
    options = spec.memorization
    sequences_per_s = samples / cost.cell_seconds
    scans = len(spec.exposure.chunks) if spec.exposure is not None else 0
    result = Measurement(
        cells=cells, checkpoints=len(spec.checkpoints), chunks=len(spec.chunks), actors=int(spec.resources.actors),
        time_scale=cost.time_scale, probe_builds=probe_builds, shape=shape, scans=scans,
        cost={**{k: v for k, v in asdict(cost).items() if k != "stats_dir"}, "samples": samples,
              "mode": options.mode, "sequences_per_s": sequences_per_s,
              "concurrent_builds": spec.data.concurrent_builds,
              "concurrent_scans": spec.exposure.concurrent_scans if spec.exposure is not None else None})
    result.ideal_s = (cells * cost.cell_seconds + len(spec.checkpoints) * cost.load_seconds) \
        / cost.time_scale / result.actors
    hardware = the_bound(spec, cost, cluster, result.actors, probe_builds == "simulated")
    result.bound_s, result.binding = hardware.seconds / cost.time_scale, hardware.binding.name
    result.bound_lines = hardware.describe()
    scaled = replace(cluster, network_bytes_per_s=cluster.network_bytes_per_s * cost.time_scale,
                     stream_bytes_per_s=cluster.stream_bytes_per_s * cost.time_scale)  # what the driver sees
    result.loadavg_before = os.getloadavg()
    process = psutil.Process()
    ray_cpu_before = _descendants_cpu_s()
    cpu_before = process.cpu_times()
    scorer = cost_model_scorer(cost)
    if not cold_actors:
        resources = spec.resources
        scorer = StartedActors(scorer, result.actors, scorer_settings(spec, 1.0),
                               actor_options(1.0, float(resources.cpus_per_actor), _forwarded_environment()))
        result.actor_start_s = scorer.seconds
    reset_peak_rss()
    with _Watch(min_available_gb) as watch:
        wall_start = time.time()
        began = time.perf_counter()
        with simulated_chunk_streams():
            summary = run_sweep(spec, progress=progress, scorer=scorer, cluster=scaled)
        result.makespan_s = time.perf_counter() - began
    cpu_after = process.cpu_times()
    result.driver_peak_rss_mb = peak_rss_bytes() / 1e6
    result.driver_cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    result.ray_processes_cpu_s = _descendants_cpu_s() - ray_cpu_before  # actors still alive: counted
    result.loadavg_during, result.min_available_gb = watch.loadavg, watch.lowest
    result.cells_landed, result.failed = summary.schedule.cells_scored, len(summary.failed) + len(summary.failed_scans)
    result.loads = sum(summary.schedule.loads.values())
    result.first_cell_landed_at_s = summary.schedule.first_cell_landed_at
    result.last_probe_set_at_s = summary.supply.last_ready_at
    result.scans_scanned = summary.scans.scanned
    if summary.scans.last_landed_at is not None:
        result.last_scan_at_s = summary.scans.last_landed_at - began
    result.splits, result.reservations_taken = summary.schedule.splits, summary.schedule.reservations_taken
    result.loaded_shares = summary.schedule.loaded_shares
    result.plans = summary.schedule.plans
    result.summary_line = next((line for line in summary.describe().splitlines() if line.startswith("makespan")), "")
    result.moved_bytes = ray.get(ray.get_actor(NETWORK_NAME).moved_bytes.remote())

    store = open_output(Path(spec.output))
    for record in store.ledgers.landed_files():
        if record.path.startswith("sequences/"):
            result.sequences_parquet_bytes += record.bytes
        elif record.path.startswith("cells/"):
            result.cells_parquet_bytes += record.bytes
        elif record.path.startswith("probes/"):
            result.probes_parquet_bytes += record.bytes
    _check_landed(store, spec, result)
    result.steady_driver_ms_per_cell = steady_cpu_per_cell(store, watch.cpu)

    deadline = time.time() + 60  # the actors write their timelines on release; the last may lag a moment
    while len(list(stats.glob("*.json"))) < result.actors and time.time() < deadline:
        time.sleep(0.5)
    timelines = [json.loads(path.read_text()) for path in stats.glob("*.json")]
    result.actor_time = actor_time_budget(timelines, wall_start, wall_start + result.makespan_s)
    result.idle_by_tenth = idle_by_tenth(timelines, wall_start, wall_start + result.makespan_s)
    result.timelines = [[(kind, round(start - wall_start, 3), round(end - wall_start, 3)) for kind, start, end in t]
                        for t in timelines]
    result.actor_busy_s = result.actor_time["busy"]
    result.actor_download_stall_s = result.actor_time["download stalls"]
    compute = [(start, end) for timeline in timelines for kind, start, end in timeline if kind in COMPUTE_KINDS]
    if compute:
        result.first_actor_work_at_s = min(start for start, _ in compute) - wall_start
        result.last_actor_work_at_s = max(end for _, end in compute) - wall_start
        result.last_actor_started_at_s = max(min(start for kind, start, _ in timeline if kind in COMPUTE_KINDS)
                                             for timeline in timelines if timeline) - wall_start
    shutil.rmtree(stats, ignore_errors=True)
    return result


def the_bound(spec, cost: CostModel, cluster, actors: int, builds_probe_sets: bool):
    """sweep/run/bound.py's bound of this sweep at the cost model's costs (real seconds)."""
    from sweep.run.bound import Work, bound

    cells = [sum(1 for c, _ in spec.cell_list() if c == ckpt) for ckpt in spec.checkpoints]
    exposure = spec.exposure
    work = Work(cells=tuple(cells), cell_s=cost.cell_seconds, load_s=cost.load_seconds,
                checkpoint_bytes=cost.checkpoint_bytes,
                probe_bytes=(cost.chunk_bytes,) * len(spec.chunks) if builds_probe_sets else (),
                scan_bytes=(cost.chunk_bytes,) * (len(exposure.chunks) if exposure is not None else 0),
                scan_bytes_per_core_s=cost.scan_bytes_per_core_s or float("inf"))
    scans = exposure.concurrent_scans if exposure is not None else "auto"
    builds = spec.data.concurrent_builds
    return bound(work, cluster, actors, float(spec.resources.cpus_per_actor),
                 exposure.cpus_per_scan if exposure is not None else 1.0,
                 scans=None if scans == "auto" else scans, builds=None if builds == "auto" else builds)


def steady_cpu_per_cell(store, cpu_samples: list[tuple[float, float]]) -> float | None:
    """Driver CPU ms per cell between the moments 10% and 90% of the cells had landed (each cell's `finished_at`
    is its landing time, to the second): start-up, the first loads and the tail left out."""
    import polars as pl

    landed = store.cells().select(pl.col("finished_at").str.to_datetime(time_zone="UTC")).collect()
    times = np.sort(landed["finished_at"].dt.epoch("ms").to_numpy() / 1000.0)
    if len(times) < 100 or len(cpu_samples) < 4:
        return None
    first, last = times[len(times) // 10], times[len(times) * 9 // 10]
    clock, cpu = (np.array(values) for values in zip(*cpu_samples))
    if last - first < 3 * (clock[1] - clock[0]):
        return None
    cells = np.searchsorted(times, last, side="right") - np.searchsorted(times, first, side="left")
    return 1000 * float(np.interp(last, clock, cpu) - np.interp(first, clock, cpu)) / cells


COMPUTE_KINDS = ("stall-download", "wait", "load", "cell")  # what the compute group (the GPU) does, in order
# ("download" is the io group's: a prefetch, which the GPU waits for only when it has nothing else to do)


def actor_time_budget(timelines: list[list], began: float, ended: float) -> dict[str, float]:
    """Where the actors' time went, summed over actors (seconds; the parts add up to actors x makespan).

    busy: load + scoring (the simulated GPU work);
    download stalls: the GPU had nothing to do while a checkpoint it was about to load downloaded (its first one,
    one handed over, a prefetch that came late), or waited in a load for a prefetch to end;
    before first call: the rest of the time before the actor's first work (the driver's start-up, probe sets);
    gaps between calls: the rest of the time between two works (no probe set was ready, the driver was late);
    after last call: its last work ended to the sweep's end (the tail, final compaction, release).
    """
    budget = dict.fromkeys(("before first call", "download stalls", "busy", "gaps between calls",
                            "after last call"), 0.0)
    for timeline in timelines:
        work = sorted((start, end, kind) for kind, start, end in timeline if kind in COMPUTE_KINDS)
        downloads = [(start, end) for kind, start, end in timeline if kind in ("download", "stall-download")]
        if not work:
            budget["after last call"] += ended - began
            continue
        budget["after last call"] += ended - work[-1][1]
        idle = [("before first call", began, work[0][0])]
        for index, (start, end, kind) in enumerate(work):
            budget["busy" if kind in ("load", "cell") else "download stalls"] += end - start
            if index:
                idle.append(("gaps between calls", work[index - 1][1], start))
        for name, start, end in idle:
            if end <= start:
                continue
            stalled = sum(max(0.0, min(end, d_end) - max(start, d_start)) for d_start, d_end in downloads)
            budget["download stalls"] += min(stalled, end - start)
            budget[name] += end - start - min(stalled, end - start)
    return budget


def idle_by_tenth(timelines: list[list], began: float, ended: float) -> list[float]:
    """For each tenth of the makespan, the share of actor time neither busy (load, cell) nor downloading: where the
    gaps and the tail are."""
    merged = []  # per actor, the union of its intervals of any kind
    for timeline in timelines:
        union: list[list[float]] = []
        for start, end in sorted((start, end) for _, start, end in timeline):
            if union and start <= union[-1][1]:
                union[-1][1] = max(union[-1][1], end)
            else:
                union.append([start, end])
        merged.append(union)
    edges = np.linspace(began, ended, 11)
    idle = []
    for low, high in zip(edges[:-1], edges[1:]):
        occupied = sum(max(0.0, min(high, end) - max(low, start)) for union in merged for start, end in union)
        idle.append(1 - occupied / ((high - low) * max(1, len(timelines))))
    return idle


def _check_landed(store, spec, result: Measurement) -> None:
    """Every cell landed once, and a sample cell holds exactly the cost model's synthetic scores."""
    import polars as pl

    cells = store.cells().select("ckpt", "chunk").collect()
    if cells.height != result.cells or cells.unique().height != result.cells:
        raise RuntimeError(f"{spec.output}: {cells.height} cell rows ({cells.unique().height} distinct), "
                           f"expected {result.cells}")
    ckpt, chunk = spec.checkpoints[-1], spec.chunks[len(spec.chunks) // 2]
    landed = store.sequences().filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk)).collect()
    probes = store.probes().filter(pl.col("chunk") == chunk).collect()
    order = {row: i for i, row in enumerate(probes["row"].to_list())}  # the actor scored rows in sample order
    options = ScoringOptions(prompt_len=32, continuation_len=32, mode=spec.memorization.mode, nll=True)
    expected = synthetic_scores(ckpt, chunk, probes.height, options, False)
    positions = [order[row] for row in landed["row"].to_list()]
    if landed["prefix_match"].to_list() != expected.prefix_match[positions].tolist():
        raise RuntimeError(f"ckpt {ckpt} x chunk {chunk}: landed prefix_match differs from the cost model's")


# ---- the command line ---------------------------------------------------------------------------------


def main() -> None:
    from sweep.run.bound import CPUS_PER_NODE, GPUS_PER_NODE, Cluster
    from sweep.spec import parse_id_list

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=Path("/tmp/memsweep-control-plane"),
                        help="where the chunk files, model folders, probe cache and output live")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="one of issue 25's shapes (sets the three below)")
    parser.add_argument("--checkpoints", default="0-359", help="checkpoint ids (spec syntax, default 0-359)")
    parser.add_argument("--chunks", default="0-359", help="chunk ids (default 0-359)")
    parser.add_argument("--exposure", default=None, help="exposure.chunks to scan (default: none)")
    parser.add_argument("--samples", type=int, default=1000, help="rows per chunk file and per probe set")
    parser.add_argument("--actors", type=int, default=64, help="logical GPUs = checkpoint actors, 8 to a node")
    parser.add_argument("--mode", choices=("extractable", "greedy"), default="extractable",
                        help="the cell cost's memorization.mode (the full-matrix config uses extractable)")
    parser.add_argument("--efficiency", type=float, default=None,
                        help="fraction of the 921 seq/s compute bound (default 0.75 extractable, 0.5 greedy)")
    parser.add_argument("--load-s", type=float, default=40.0, help="checkpoint load, disk to GPU (default 40 s)")
    parser.add_argument("--network-gb-s", type=float, default=2.0, help="each node's link (default 2 GB/s)")
    parser.add_argument("--stream-mb-s", type=float, default=250.0, help="one transfer at most (default 250 MB/s)")
    parser.add_argument("--concurrent-builds", default="auto", help="data.concurrent_builds (default auto)")
    parser.add_argument("--concurrent-scans", default="auto", help="exposure.concurrent_scans (default auto)")
    parser.add_argument("--prebuilt-probe-sets", action="store_true",
                        help="build the probe sets before the sweep, free (the earlier table's setting); by default "
                             "they are built during it, streamed over the simulated network (a cold cache)")
    parser.add_argument("--time-scale", type=float, default=2.0,
                        help="divide every simulated duration by this (default 2: the full run takes ~30 min)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of the Ray workers (Ray's default 15 lets other users' processes on a shared "
                             "machine starve the simulated GPUs; default 0, like the driver)")
    parser.add_argument("--cold-actors", action="store_true",
                        help="start the actors inside the sweep, as `memsweep run` does (the earlier table's setting: "
                             "on this 2-core VM, 64 take one to two minutes to start)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (`memsweep run` shows one)")
    parser.add_argument("--min-available-gb", type=float, default=4.0, help="memory guard (default 4 GB)")
    parser.add_argument("--json", type=Path, help="also write the measurement here")
    parser.add_argument("--keep-output", action="store_true", help="keep the landed output (GBs at full size)")
    args = parser.parse_args()
    if args.shape:
        args.checkpoints, args.chunks, args.exposure = SHAPES[args.shape]

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    world = args.world.expanduser().resolve()
    began = time.perf_counter()
    checkpoints, chunks = parse_id_list(args.checkpoints), parse_id_list(args.chunks)
    scanned = parse_id_list(args.exposure) if args.exposure else []
    build_world(world, checkpoints, sorted(set(chunks) | set(scanned)), args.samples)
    print(f"world ready in {time.perf_counter() - began:.1f} s: {world}", flush=True)
    cost = default_cost_model(args.mode, args.samples, 64, args.efficiency, args.load_s, args.time_scale)
    cluster = Cluster(nodes=math.ceil(args.actors / GPUS_PER_NODE), gpus_per_node=GPUS_PER_NODE,
                      cpus_per_node=CPUS_PER_NODE, network_bytes_per_s=args.network_gb_s * 1e9,
                      stream_bytes_per_s=args.stream_mb_s * 1e6)
    label = args.shape or f"{len(checkpoints)}x{len(chunks)}"
    cache = world / ("probe-cache" if args.prebuilt_probe_sets else f"probe-cache-cold-{os.getpid()}")
    output = world / "runs" / f"{label}-{args.mode}-s{args.time_scale:g}"
    shutil.rmtree(output, ignore_errors=True)
    auto_or_int = lambda text: text if text == "auto" else int(text)  # noqa: E731
    spec = make_spec(world, output, cache, args.checkpoints, args.chunks, args.samples, args.mode, args.actors,
                     args.exposure, auto_or_int(args.concurrent_builds), auto_or_int(args.concurrent_scans))

    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read by the raylet ray.init starts
    ray.init(address="local", num_cpus=2, num_gpus=args.actors, include_dashboard=False, log_to_driver=False,
             object_store_memory=2 * 1024**3)
    try:
        start_network(cluster, cost)
        if args.prebuilt_probe_sets:
            print(f"probe sets pre-built (or found) in the cache in {prebuild_probe_sets(spec, cost):.1f} s",
                  flush=True)
            probe_builds = "pre-built"
        else:
            shutil.rmtree(cache, ignore_errors=True)
            probe_builds = "simulated"
        result = measure(spec, cost, cluster, args.samples, probe_builds, not args.no_progress, args.min_available_gb,
                         label, args.cold_actors)
        result.worker_niceness = args.worker_niceness
    finally:
        ray.shutdown()
        if not args.prebuilt_probe_sets:
            shutil.rmtree(cache, ignore_errors=True)
        if not args.keep_output:
            shutil.rmtree(output, ignore_errors=True)
    print(result.describe(), flush=True)
    if args.json:
        payload = {**asdict(result), "overhead": result.overhead, "over_ideal": result.over_ideal,
                   "busy_fraction": result.busy_fraction, "driver_ms_per_cell": result.driver_ms_per_cell,
                   "host_cpus": os.cpu_count()}
        args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
