"""Exposure scans during a sweep: each chunk file of `exposure.chunks` streamed once by a Ray task on CPUs,
every probe sequence's occurrences counted (sweep/exposures/kernel.py, exact), the counts landed in the output.

What is missing is what gets scanned. A scan counts the probe sequences of some probe chunks (the chunks the
sweep scores) in one chunk file; the ledger remembers, per chunk file, which probe chunks it has counted. So a
chunk file is scanned for the probe chunks it has not counted yet: every scored chunk on a fresh output, only the
new ones when a sweep is extended, none after a kill that landed its scan. Files that need the same probe chunks
share one probe index, put once into Ray's object store.

Scans need the probe sets of every scored chunk, so they start once the probe supply has settled (all probe sets
built, landed or failed), which is after the first cells are handed out: they never delay scoring. They run beside
the GPU actors, `limit` at a time (`exposure.concurrent_scans`, or what the scheduler paces for `auto` so that they
end with the GPUs: sweep/run/pacing.py), `exposure.cpus_per_scan` Ray CPUs each, spread over the nodes; each
streams its file (local or Hub) with bounded memory and stores nothing of it. A file that cannot be described,
read or parsed fails its scan only, with one line (`failures/scan-chunk=<j>.json`); the next run tries again.
Scanned files are pinned by content (sha256) like probe sets.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import ray
from ray.exceptions import RayError, RayTaskError

from actors.protocol import ProbeBatch, one_line
from sweep.data.probe_supply import ProbeSupply
from sweep.data.probes import check_streamed, open_chunk
from sweep.data.stream_chunks import StreamChunk, describe_spec_chunks, open_stream
from sweep.landed.schema import tokens_array
from sweep.data.sources import ChunkFile
from sweep.spec import SweepSpec
from sweep.landed.store import PinMismatchError, ResultStore

if TYPE_CHECKING:
    from sweep.exposures.kernel import ChunkExposure

log = logging.getLogger("memsweep")

# The kernel (sweep/exposures/kernel.py) is imported by the tasks below, on the workers that run them, never by the
# driver: numba and LLVM would cost the driver ~100 MB of resident memory for code it never runs.


def scan_chunk_file(chunk_file: ChunkFile | StreamChunk, index) -> tuple[ChunkExposure, float]:
    """Stream one chunk file (or the items of one stream chunk) through the scan kernel; (counts, CPU seconds).
    Raises if a file's bytes are not what `chunk_file` says (sha256, size)."""
    from sweep.exposures.kernel import scan_chunk

    if isinstance(chunk_file, StreamChunk):
        return scan_stream_chunk(chunk_file, index)
    began = time.process_time()
    reader = open_chunk(chunk_file)
    exposure = scan_chunk(reader.blocks(), index, reader.label)
    check_streamed(chunk_file, exposure.sha256, exposure.size, reader.label)
    return exposure, time.process_time() - began


def scan_stream_chunk(chunk: StreamChunk, index) -> tuple[ChunkExposure, float]:
    """Every item of one stream chunk through the binary kernel, read in the order its bytes lie (the index slice,
    then the items' bytes, all hashed: `sha256` pins what was scanned); (counts, CPU seconds)."""
    from sweep.exposures.kernel import ChunkExposure, count_items

    began, began_cpu = time.perf_counter(), time.process_time()
    stream = open_stream(chunk.stream)
    batches = ((batch.tokens, batch.offsets, batch.positions) for batch in stream.iter_items(chunk.start, chunk.stop))
    counts = count_items(batches, index)
    exposure = ChunkExposure(chunk.label, counts.probe, counts.window_count, counts.prompt_count, rows=counts.items,
                             tokens=counts.tokens, size=stream.bytes_read, sha256=stream.digest(),
                             seconds=time.perf_counter() - began, window_positions=counts.window_positions)
    return exposure, time.process_time() - began_cpu


_scan_task = ray.remote(scan_chunk_file)


@ray.remote(num_cpus=0)  # a second or two of one core, once per sweep: not worth a CPU the actors or scans hold
def _probe_index_task(prompt_len: int, *probe_sets: ProbeBatch | np.ndarray):
    """The probe index of some probe sets (each the ProbeBatch the actors score, resolved from the object store, or
    the int[n, k + l] tokens of one the driver read), built on a worker, not in the driver: the tokens (~90 MB as
    uint32 at 360,000 probes), the index's tables and the build's temporaries stay off the driver's memory, and the
    driver's loop stops for none of it."""
    from sweep.exposures.kernel import build_probe_index

    tokens = [np.asarray(getattr(probes, "tokens", probes)).astype(np.uint32) for probes in probe_sets]
    return build_probe_index(np.concatenate(tokens), prompt_len)


@dataclass(frozen=True)
class _ProbeGroup:
    """The probe sequences of some probe chunks, as one index: what a scan of a chunk file counts."""

    probe_chunks: tuple[int, ...]
    keys: pl.DataFrame  # chunk, row of each probe, in the index's order
    index_ref: ray.ObjectRef


@dataclass
class ScanStats:
    """What the scans did, for the sweep's summary."""

    scanned: int = 0  # chunk files scanned (and landed) in this run
    failed: dict[int, str] = field(default_factory=dict)  # chunk file -> why its scan failed
    tokens: int = 0
    seconds: float = 0.0  # summed over scan tasks
    file_bytes: list[int] = field(default_factory=list)  # each scanned file's size
    wall_seconds: list[float] = field(default_factory=list)  # each scan from its start to its result, as the driver saw
    last_landed_at: float | None = None  # time.perf_counter() of the last scan landed

    @property
    def bytes(self) -> int:
        return sum(self.file_bytes)


class ExposureScans:
    """The exposure scans a sweep still needs, as background work beside the scheduler (pump, refs, collect)."""

    def __init__(self, spec: SweepSpec, store: ResultStore, supply: ProbeSupply, environment: dict[str, str]):
        self.spec, self.store, self.supply = spec, store, supply
        self.stats = ScanStats()
        self.targets = list(spec.exposure.chunks) if spec.exposure is not None else []
        self.task = _scan_task.options(num_cpus=spec.exposure.cpus_per_scan, scheduling_strategy="SPREAD",
                                       runtime_env={"env_vars": environment}) if spec.exposure is not None else None
        self.index_task = _probe_index_task.options(runtime_env={"env_vars": environment})
        scans = spec.exposure.concurrent_scans if spec.exposure is not None else 1
        self.limit = scans if scans != "auto" else 1  # scans at once; the scheduler paces `auto`
        self.planned = False  # the scans to do are known (once the probe supply settled)
        self.waiting: deque[tuple[int, ChunkFile | StreamChunk, _ProbeGroup]] = deque()
        self.in_flight: dict[ray.ObjectRef, tuple[int, ChunkFile | StreamChunk, _ProbeGroup]] = {}
        self.started_at: dict[ray.ObjectRef, float] = {}  # perf_counter when each scan in flight started

    @property
    def done(self) -> bool:
        return not self.targets or (self.planned and not self.waiting and not self.in_flight)

    @property
    def left(self) -> list[ChunkFile]:
        """The chunk files still to scan, waiting or under way (known once the scans are planned)."""
        return [chunk_file for _, chunk_file, _ in [*self.waiting, *self.in_flight.values()]]

    def refs(self) -> list[ray.ObjectRef]:
        return list(self.in_flight)

    def owns(self, ref: ray.ObjectRef) -> bool:
        return ref in self.in_flight

    def pump(self) -> None:
        """Plan the scans once the probe sets exist; start scans while fewer than `limit` run."""
        if not self.targets:
            return
        if not self.planned:
            if not self.supply.done:
                return
            self._plan()
            self.planned = True
        while self.waiting and len(self.in_flight) < self.limit:
            seen_chunk, chunk_file, group = self.waiting.popleft()
            ref = self.task.remote(chunk_file, group.index_ref)
            self.in_flight[ref] = (seen_chunk, chunk_file, group)
            self.started_at[ref] = time.perf_counter()

    def collect(self, ref: ray.ObjectRef) -> None:
        seen_chunk, chunk_file, group = self.in_flight.pop(ref)
        self.stats.wall_seconds.append(time.perf_counter() - self.started_at.pop(ref))
        try:
            exposure, cpu_seconds = ray.get(ref)
        except RayTaskError as error:
            self._fail(seen_chunk, one_line(error.cause) if error.cause is not None else one_line(error, "last"))
            return
        except RayError as error:
            self._fail(seen_chunk, f"{chunk_file.label}: scan task lost ({one_line(error)})")
            return
        counts = group.keys[exposure.probe].with_columns(
            window_count=pl.Series(exposure.window_count, dtype=pl.Int64),
            prompt_count=pl.Series(exposure.prompt_count, dtype=pl.Int64))
        if exposure.window_positions is not None:  # a stream chunk: where each occurrence lies on the timeline
            counts = counts.with_columns(window_index=pl.Series([where.tolist() for where in exposure.window_positions],
                                                                dtype=pl.List(pl.Int64)))
        stats = {"probes": group.keys.height, "rows": exposure.rows, "tokens": exposure.tokens,
                 "bytes": exposure.size, "seconds": exposure.seconds, "cpu_seconds": cpu_seconds}
        scanned = chunk_file.with_sha256(exposure.sha256)
        try:
            self.store.write_exposure_scan(seen_chunk, scanned.to_dict(), list(group.probe_chunks), counts, stats)
        except PinMismatchError as error:  # the file changed since this output pinned it
            self._fail(seen_chunk, one_line(error))
            return
        if isinstance(scanned, ChunkFile):
            self.supply.memo.remember(scanned)
        self.stats.scanned += 1
        self.stats.tokens += exposure.tokens
        self.stats.seconds += exposure.seconds
        self.stats.file_bytes.append(exposure.size)
        self.stats.last_landed_at = time.perf_counter()
        log.info("chunk %d scanned: %d rows, %.2fM tokens in %.1f s", seen_chunk, exposure.rows,
                 exposure.tokens / 1e6, exposure.seconds)

    def _plan(self) -> None:
        """Which chunk files to scan for which probe chunks, and one probe index per distinct set of them."""
        ledgers = self.store.ledgers
        sampled = set(ledgers.sampled_chunks())
        available = sorted(chunk for chunk in self.spec.chunks if chunk in sampled)
        needs = {seen: tuple(c for c in available if c not in ledgers.scanned_probe_chunks(seen))
                 for seen in self.targets}
        needs = {seen: chunks for seen, chunks in needs.items() if chunks}
        if not needs:
            return
        data = self.spec.data
        try:
            described, _ = describe_spec_chunks(self.spec, list(needs))
        except Exception as error:  # noqa: BLE001 - the dataset itself is unreachable: every scan fails
            described = {seen: RuntimeError(f"data source {data.source!r} (revision {data.revision!r}): "
                                            f"{one_line(error)}") for seen in needs}
        groups: dict[tuple[int, ...], _ProbeGroup] = {}
        for seen, probe_chunks in needs.items():
            chunk_file = described[seen]
            if isinstance(chunk_file, Exception):
                self._fail(seen, one_line(chunk_file))
                continue
            if probe_chunks not in groups:
                groups[probe_chunks] = self._group(probe_chunks)
            sha256 = self.supply.memo.lookup(chunk_file) if isinstance(chunk_file, ChunkFile) else None
            self.waiting.append((seen, chunk_file.with_sha256(sha256) if sha256 else chunk_file, groups[probe_chunks]))

    def _group(self, probe_chunks: tuple[int, ...]) -> _ProbeGroup:
        """The probe sets of `probe_chunks` as one index, built by a task from the batches the supply put into the
        object store for the actors: the driver reads none of them (reading all 360 Amber probe sets stopped its
        loop for seconds, every actor waiting). A probe set landed by an earlier run and not scored now is not in
        the object store (nor is a census chunk's, which the actors read themselves): that one is read here."""
        width = self.spec.memorization.prompt_len + self.spec.memorization.continuation_len
        keys, probe_sets = [], []
        for chunk in probe_chunks:
            ready = self.supply.ready.get(chunk)
            if ready is not None and ready.frame is not None:  # its frame holds the batch's rows, in its order
                keys.append(ready.frame.select("chunk", "row"))
                probe_sets.append(ready.batch_ref)
            else:
                frame = self.store.read_probe_set(chunk)
                keys.append(frame.select("chunk", "row"))
                probe_sets.append(tokens_array(frame, width).astype(np.uint32))
        index = self.index_task.remote(self.spec.memorization.prompt_len, *probe_sets)
        return _ProbeGroup(probe_chunks, pl.concat(keys), index)

    def _fail(self, seen_chunk: int, reason: str) -> None:
        self.stats.failed[seen_chunk] = reason
        self.store.record_scan_failure(seen_chunk, reason)
        log.error("exposure scan of chunk %d failed: %s", seen_chunk, reason)
