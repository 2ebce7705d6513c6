"""The probe sets a sweep needs, delivered as a stream while the GPUs work.

For every chunk the plan needs, in the order the plan needs them, the first of these that applies:

1. the output already holds its probe set (`probes/`, pinned to the chunk file's content identity): use it.
   If the file has changed since (Hub: another LFS sha256; local: another size or mtime), say so once:
   this output keeps the rows it sampled then, so its cells never mix two versions of a chunk;
2. the driver's cache holds a probe set for this content (sha256, seed, n, k, l): land it;
3. else a Ray task builds it (sweep/data/probes.py: one streaming pass unless the cache has the line index, then
   range reads of the chosen rows), at most `limit` at a time (`data.concurrent_builds`, or what the scheduler
   paces for `auto`: sweep/run/pacing.py), spread over the nodes so that the streams share every node's link;
   the driver caches the line index and the probe set and lands it in the output.

A census (`data.samples_per_chunk: all`) builds no probe set: each chunk is ready at once as a `CensusChunk`
(sweep/data/census.py) that the actor reads itself, a piece at a time; the output pins its source with an empty probe
set, and a source that changed since fails the chunk's cells.

A chunk that cannot be described, fetched or parsed is `failed` with a one-line reason; the scheduler fails
its cells and goes on. What the supply did (built, reused, warnings) is in `stats`, for the sweep's summary.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import ray
from ray.exceptions import RayError, RayTaskError

from actors.protocol import ProbeBatch, one_line
from sweep.data.census import census_chunk
from sweep.data.probes import ProbeBuild, ProbeCache, ProbeSetError, build_probe_set_from, check_vocab
from sweep.data.stream_chunks import StreamChunk, describe_spec_chunks, pinned_source
from sweep.data.stream_probes import build_stream_probe_set
from sweep.landed.schema import PROBE_SCHEMA, conform, probe_frame, tokens_array
from sweep.data.sources import ChunkFile, IdentityMemo
from sweep.spec import SweepSpec
from sweep.landed.store import PinMismatchError, ResultStore

log = logging.getLogger("memsweep")


@dataclass(frozen=True)
class ReadyProbeSet:
    frame: pl.DataFrame | None  # chunk, row, index, source (tokens dropped on the driver); None for a census chunk
    batch_ref: ray.ObjectRef  # ProbeBatch (a census: CensusChunk) in the object store, shared by every actor
    data_file: str
    sha256: str | None
    index_start: int | None = None  # a census chunk of a stream: the stream position of its row 0


@ray.remote(num_cpus=0)  # network/disk-bound; concurrency is capped by `ProbeSupply.limit`, not by CPUs
def _build_probe_set_task(chunk_file: ChunkFile | StreamChunk, chunk: int, n: int, seed: int, k: int, l: int,
                          vocab_size: int | None, line_lengths: np.ndarray | None) -> ProbeBuild:
    if isinstance(chunk_file, StreamChunk):
        return build_stream_probe_set(chunk_file, n, seed, k, l, vocab_size)
    return build_probe_set_from(chunk_file, chunk, n, seed, k, l, vocab_size, line_lengths)


@dataclass
class SupplyStats:
    """What the supply did, for the sweep's summary."""

    built: int = 0
    built_bytes: list[int] = field(default_factory=list)  # each chunk file streamed for a build
    reused: int = 0  # from the output or the cache
    bytes_read: int = 0  # by the builds of binary-stream probe sets (JSONL builds stream their chunk file)
    requests: int = 0
    last_ready_at: float | None = None  # seconds after the sweep started that the last one was ready or failed
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)


class ProbeSupply:
    """`spec.data.cache_dir` must be resolved (sweep/run/preflight.py resolved_spec)."""

    def __init__(self, spec: SweepSpec, store: ResultStore, chunk_order: list[int], started: float,
                 environment: dict[str, str]):
        self.spec, self.store, self.started = spec, store, started
        self.stats = SupplyStats()
        self.width = spec.memorization.prompt_len + spec.memorization.continuation_len
        self.cache = ProbeCache(spec.data.cache_dir)
        self.memo = IdentityMemo(self.cache.root)
        # SPREAD: a task that asks for no CPU would otherwise run where the driver is, every stream on one link
        self.task = _build_probe_set_task.options(scheduling_strategy="SPREAD",
                                                  **({"runtime_env": {"env_vars": environment}} if environment else {}))
        builds = spec.data.concurrent_builds
        self.limit = builds if builds != "auto" else 1  # builds at once; the scheduler paces `auto`
        self.ready: dict[int, ReadyProbeSet] = {}
        self.failed: dict[int, str] = {}
        self.waiting: deque[tuple[int, ChunkFile | StreamChunk, np.ndarray | None]] = deque()
        self.in_flight: dict[ray.ObjectRef, tuple[int, ChunkFile | StreamChunk]] = {}
        self.stream_length: int | None = None  # sequences in the stream (megatron, numpy), once described
        order = list(dict.fromkeys(chunk_order))
        self.total = len(order)
        try:
            sources, self.stream_length = describe_spec_chunks(spec, order)
        except Exception as error:  # noqa: BLE001 - the dataset itself is unreachable: every chunk fails
            sources = {chunk: RuntimeError(f"data source {spec.data.source!r} (revision {spec.data.revision!r}): "
                                           f"{one_line(error)}") for chunk in order}
        for chunk in order:
            self._start(chunk, sources[chunk])

    # ---- state the scheduler reads ------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every probe set the plan needs is ready or failed."""
        return not self.waiting and not self.in_flight

    @property
    def builds_left(self) -> int:
        return len(self.waiting) + len(self.in_flight)

    def refs(self) -> list[ray.ObjectRef]:
        return list(self.in_flight)

    def owns(self, ref: ray.ObjectRef) -> bool:
        return ref in self.in_flight

    # ---- work ---------------------------------------------------------------------------------

    def pump(self) -> None:
        """Start builds while fewer than `limit` run."""
        data, memorization = self.spec.data, self.spec.memorization
        while self.waiting and len(self.in_flight) < self.limit:
            chunk, chunk_file, lengths = self.waiting.popleft()
            ref = self.task.remote(chunk_file, chunk, data.samples_per_chunk, data.seed, memorization.prompt_len,
                                   memorization.continuation_len, data.vocab_size, lengths)
            self.in_flight[ref] = (chunk, chunk_file)

    def collect(self, ref: ray.ObjectRef) -> None:
        chunk, chunk_file = self.in_flight.pop(ref)
        try:
            build: ProbeBuild = ray.get(ref)
        except RayTaskError as error:
            self._fail(chunk, one_line(error.cause) if error.cause is not None else one_line(error))
            return
        except RayError as error:
            self._fail(chunk, f"{chunk_file.label}: probe-set task lost ({one_line(error)})")
            return
        built = build.chunk_file
        if isinstance(built, StreamChunk):  # a few MB read by ranges: nothing worth caching on the driver
            self.stats.bytes_read += built.bytes_read or 0
            self.stats.requests += built.requests or 0
            self._land(chunk, build.frame, built)
            self.stats.built += 1
            self.stats.built_bytes.append(built.bytes_read or 0)
            return
        if build.line_lengths is not None:
            self.cache.put_line_lengths(built.sha256, build.line_lengths)
        self.memo.remember(built)
        data, memorization = self.spec.data, self.spec.memorization
        self.cache.put_probe_set(built.sha256, data.seed, data.samples_per_chunk, memorization.prompt_len,
                                 memorization.continuation_len, build.frame)
        self._land(chunk, build.frame, built)
        self.stats.built += 1
        self.stats.built_bytes.append(built.size or 0)

    # ---- internals ----------------------------------------------------------------------------

    def _start(self, chunk: int, described: ChunkFile | StreamChunk | Exception) -> None:
        entry = self.store.ledgers.probes.get(chunk)
        pinned = pinned_source(entry.source) if entry else None
        if self.spec.data.census:
            self._start_census(chunk, described, pinned)
            return
        if entry and entry.file is not None:  # landed: the output needs nothing from the file any more
            if isinstance(described, Exception):
                self.stats.warn(f"chunk {chunk}: {one_line(described)}; this output keeps the rows it sampled before")
            elif not described.stat_matches(pinned) and (described.kind == "local" or described.sha256
                                                          or isinstance(described, StreamChunk)):
                self.stats.warn(f"chunk {chunk}: {described.label} changed since this output sampled it "
                                f"({_describe_change(pinned, described)}); the output keeps the rows it sampled "
                                "then; sweep into a new output to sample the new file")
            self._ready(chunk, self.store.read_probe_set(chunk), pinned)
            self.stats.reused += 1
            return
        if isinstance(described, Exception):
            self._fail(chunk, one_line(described))
            return
        if isinstance(described, StreamChunk):
            self.waiting.append((chunk, described, None))
            return
        chunk_file = described
        sha256 = self.memo.lookup(chunk_file)
        if sha256:
            chunk_file = chunk_file.with_sha256(sha256)
        if pinned and pinned.sha256 and sha256 and sha256 != pinned.sha256:
            self._fail(chunk, f"{chunk_file.label}: sha256 {sha256} differs from the {pinned.sha256} this output "
                              f"pinned for chunk {chunk}; sweep into a new output")
            return
        data, memorization = self.spec.data, self.spec.memorization
        cached = self.cache.probe_set(sha256, data.seed, data.samples_per_chunk, memorization.prompt_len,
                                      memorization.continuation_len)
        if cached is not None:
            try:
                check_vocab(cached, data.vocab_size, chunk_file.label)
            except ProbeSetError as error:
                self._fail(chunk, one_line(error))
                return
            self._land(chunk, cached, chunk_file)
            self.stats.reused += 1
            return
        self.waiting.append((chunk, chunk_file, self.cache.line_lengths(sha256)))

    def _start_census(self, chunk: int, described: ChunkFile | StreamChunk | Exception,
                      pinned: ChunkFile | StreamChunk | None) -> None:
        """A census chunk is ready at once: the actor reads its sequences (sweep/data/census.py). The output pins its
        source with an empty probe set (the first time), and a source that changed since fails the chunk: each cell
        reads it again, so one output would mix two versions of it."""
        if isinstance(described, Exception):
            self._fail(chunk, one_line(described))
            return
        if pinned is not None and not described.stat_matches(pinned):
            self._fail(chunk, f"chunk {chunk}: {described.label} changed since this output pinned it "
                              f"({_describe_change(pinned, described)}); a census reads it again for every cell, "
                              "so sweep into a new output")
            return
        if pinned is None or self.store.ledgers.probes[chunk].file is None:
            try:
                self.store.write_probe_set(chunk, probe_frame(chunk, np.zeros(0, dtype=np.int64), [],
                                                              np.zeros((0, self.width), dtype=np.int64)),
                                           described.to_dict())
            except PinMismatchError as error:
                self._fail(chunk, one_line(error))
                return
        memorization = self.spec.memorization
        census = census_chunk(chunk, described, memorization.prompt_len, memorization.continuation_len,
                              self.spec.data.vocab_size)
        self.ready[chunk] = ReadyProbeSet(None, ray.put(census), described.file, described.sha256,
                                          described.start if isinstance(described, StreamChunk) else None)
        self.stats.last_ready_at = time.perf_counter() - self.started

    def _land(self, chunk: int, frame: pl.DataFrame, chunk_file: ChunkFile | StreamChunk) -> None:
        try:
            self.store.write_probe_set(chunk, frame, chunk_file.to_dict())
        except PinMismatchError as error:  # the file changed since this output pinned it
            self._fail(chunk, one_line(error))
            return
        self._ready(chunk, frame, chunk_file)

    def _ready(self, chunk: int, frame: pl.DataFrame, chunk_file: ChunkFile | StreamChunk) -> None:
        frame = conform(frame, PROBE_SCHEMA)  # a probe set cached before `index` existed reads it as null
        batch = ProbeBatch(chunk=chunk, rows=frame["row"].to_numpy(), tokens=tokens_array(frame, self.width))
        self.ready[chunk] = ReadyProbeSet(frame.drop("tokens"), ray.put(batch), chunk_file.file, chunk_file.sha256)
        self.stats.last_ready_at = time.perf_counter() - self.started

    def _fail(self, chunk: int, reason: str) -> None:
        self.failed[chunk] = reason
        self.stats.last_ready_at = time.perf_counter() - self.started


def _describe_change(pinned: ChunkFile | StreamChunk, now: ChunkFile | StreamChunk) -> str:
    if isinstance(now, StreamChunk):
        if isinstance(pinned, StreamChunk) and (pinned.start, pinned.stop) != (now.start, now.stop):
            return f"stream positions [{pinned.start}, {pinned.stop}) -> [{now.start}, {now.stop})"
        return "the stream's files changed (their sizes, modification times or Hub sha256)"
    if now.kind == "local":
        return f"size {pinned.size} -> {now.size} bytes, mtime changed" if pinned.size != now.size else "mtime changed"
    return f"sha256 {(pinned.sha256 or '?')[:12]}.. -> {(now.sha256 or '?')[:12]}.."
