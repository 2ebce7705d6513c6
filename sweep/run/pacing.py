"""Pacing the work that shares the network and the CPUs with the actors: when a reserved checkpoint's prefetch is
sent, how many probe-set builds and exposure scans run at once, from the unit costs measured so far. Pure: the
scheduler (sweep/run/scheduler.py) asks, and does what it is told.

- **Prefetch** when it is due: once the actor's current checkpoint has less work left than PREFETCH_LEAD downloads
  take, or PREFETCH_LEAD_WHILE_BUILDING while probe-set builds are still to finish. Checkpoints shorter than that
  (a single-chunk sweep, the diagonal) prefetch as soon as they are reserved, so an actor's downloads follow each
  other with no gap (the actor starts a prefetch once its first load has its files: actors/prefetch.py). Longer
  ones leave the node's link to the probe builds and scans until then: while builds are left, the cells need each
  probe set before the actor needs its next checkpoint, so the prefetch goes as late as it safely can (the full
  matrix's first round needs all 360 probe sets, 7.5 TB, while the links also carry the second round's 1.7 TB).
- **Probe-set builds** (`data.concurrent_builds: auto`): as many streams as the node links carry beside the
  downloads of checkpoints actors wait for: one while every actor fetches its first checkpoint, every free stream
  after (the prefetches of next checkpoints share the links with them: the cells need the probe sets first).
- **Exposure scans** (`exposure.concurrent_scans: auto`): enough to end with the GPUs (the plan's makespan), on the
  CPUs the actors leave, at most half the node links' streams (sweep/run/bound.py `scan_concurrency`), and no more
  than the links carry beside the checkpoint downloads in flight.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sweep.data.sources import ChunkFile
from sweep.data.stream_chunks import StreamChunk
from sweep.run.bound import Cluster, build_concurrency, scan_bytes_per_core_s, scan_concurrency
from sweep.spec import SweepSpec

ESTIMATE_WINDOW = 256  # the estimates are medians of the latest cells and loads (a full history's median is
# recomputed at every plan: ~2 ms each at 129,600 cells)
PREFETCH_LEAD = 2.0  # prefetch once the current checkpoint has less left than this many downloads take
PREFETCH_LEAD_WHILE_BUILDING = 1.5  # ... while probe sets are still being built: late enough that the builds the
# cells wait for have the links first, early enough that a download sharing its link with the last builds ends in time


@dataclass
class UnitCosts:
    """What a cell, a load and a download cost, in seconds on one actor: medians of the latest ESTIMATE_WINDOW
    measurements, and the guesses until the first arrive."""

    cell_guess: float
    load_guess: float
    download_guess: float
    cells: deque = field(default_factory=lambda: deque(maxlen=ESTIMATE_WINDOW))
    loads: deque = field(default_factory=lambda: deque(maxlen=ESTIMATE_WINDOW))  # the load alone, files on disk
    downloads: deque = field(default_factory=lambda: deque(maxlen=ESTIMATE_WINDOW))  # one checkpoint's download
    measured_cells: int = 0
    checkpoint_bytes: int = 0  # the largest download a load reported
    _medians: dict = field(default_factory=dict)  # the medians, kept until a measurement changes them

    def add_cell(self, seconds: float) -> None:
        self.cells.append(seconds)
        self.measured_cells += 1
        self._medians.pop("cells", None)

    def add_load(self, seconds: float, checkout_seconds: float, downloaded_bytes: int = 0) -> None:
        """A load of `seconds`, of which `checkout_seconds` waited for the files."""
        self.checkpoint_bytes = max(self.checkpoint_bytes, downloaded_bytes)
        self.loads.append(max(0.0, seconds - checkout_seconds))
        self._medians.pop("loads", None)

    def add_download(self, seconds: float) -> None:
        self.downloads.append(seconds)
        self._medians.pop("slowest download", None)

    @property
    def cell_s(self) -> float:
        return self._median("cells", self.cell_guess)

    @property
    def load_s(self) -> float:
        return self._median("loads", self.load_guess)

    def _median(self, name: str, guess: float) -> float:
        """The median of the measurements `name`, computed once per change (the scheduler asks at every wake-up)."""
        if name not in self._medians:
            values = getattr(self, name)
            self._medians[name] = float(np.median(values)) if values else guess
        return self._medians[name]

    @property
    def download_s(self) -> float:
        """The slowest recent download: prefetches are timed for the worst the links gave."""
        if "slowest download" not in self._medians:
            self._medians["slowest download"] = float(max(self.downloads)) if self.downloads else self.download_guess
        return self._medians["slowest download"]

    @property
    def handover_s(self) -> float:
        """What starting a checkpoint costs an actor that did not prefetch it: the price of a tail hand-off."""
        return self.download_s + self.load_s


class Pacing:
    """The concurrency of builds and scans and the timing of prefetches for a sweep on `cluster` with `actors`."""

    def __init__(self, spec: SweepSpec, cluster: Cluster, actors: int, cpus_per_actor: float):
        self.spec, self.cluster = spec, cluster
        self.cpus_left = cluster.nodes * cluster.cpus_per_node - actors * cpus_per_actor

    def prefetch_due(self, current_left_s: float, costs: UnitCosts, builds_left: int = 0) -> bool:
        """Whether an actor whose current checkpoint has `current_left_s` of work left should fetch its next one
        now, with `builds_left` probe-set builds not yet finished."""
        lead = PREFETCH_LEAD_WHILE_BUILDING if builds_left else PREFETCH_LEAD
        return current_left_s <= lead * costs.download_s

    def builds(self, builds_left: int, downloads_in_flight: int) -> int:
        wanted = self.spec.data.concurrent_builds
        return wanted if wanted != "auto" else build_concurrency(self.cluster, builds_left, downloads_in_flight)

    def scans(self, scan_seconds_left: float, window_s: float, downloads_in_flight: int = 0) -> int:
        """Scans at once while the actors run, `window_s` before the plan ends; no more than the node links carry
        beside the checkpoint downloads in flight (the scans have until the GPUs end, the downloads do not)."""
        exposure = self.spec.exposure
        if exposure is None:
            return 0
        if exposure.concurrent_scans != "auto":
            return exposure.concurrent_scans
        wanted = scan_concurrency(scan_seconds_left, window_s, int(max(0.0, self.cpus_left) // exposure.cpus_per_scan),
                                  self.cluster.link_streams)
        return min(wanted, build_concurrency(self.cluster, wanted, downloads_in_flight))


def scan_task_seconds(chunk_file: ChunkFile | StreamChunk, stream_length: int | None, stream_bytes_per_s: float) -> float:
    """One exposure scan's seconds before any was measured: its bytes streamed at one stream's rate or hashed by one
    core, whichever is slower. A JSONL file: its size, at the text kernel's rate. A stream chunk: its `size` counts
    items, not bytes; its bytes are its items' share of the stream's token data (`stream_length` items in all), at
    the binary kernel's rate."""
    if isinstance(chunk_file, StreamChunk):
        source = chunk_file.stream
        if source is None or not stream_length:
            return 0.0
        nbytes = chunk_file.size * source.token_bytes / stream_length
        rate = scan_bytes_per_core_s(True, source.token_width)
    else:
        nbytes, rate = chunk_file.size or 0, scan_bytes_per_core_s(False)
    return nbytes / min(stream_bytes_per_s, rate)
