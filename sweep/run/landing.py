"""Scored cells on their way into the store: they wait in the driver's memory per checkpoint and land in batches.

A checkpoint's results land as one pair of files (sweep/landed/store.py `write_cells`) once LAND_BATCH_CELLS of them
(or LAND_BATCH_ROWS sequences: a census cell lands as soon as it is scored) are there, the oldest has waited
LAND_MAX_WAIT_S, or they are all the checkpoint still needs. A landing costs a
few milliseconds of driver time whatever its size (two Parquet files, a ledger, six fsyncs) and many GPUs finish
many cells a second, one checkpoint each, so landing every cell alone would keep the driver busy
(BENCHMARKS.md, "The control plane at 129,600 cells"). What waits is lost if the driver is killed (at most
LAND_MAX_WAIT_S of GPU time per actor, recomputed on resume); on Ctrl-C or an error it lands before the driver
exits, a batch whose landing the Ctrl-C interrupted included (the store lets a landing that has begun writing
finish its commit, sweep/landed/uninterrupted.py; one interrupted before puts its cells back to wait).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from actors.protocol import CellOutput, one_line
from sweep.landed.schema import CellProvenance, null_series, score_columns
from sweep.landed.store import PinMismatchError, ResultStore, ScoredCell
from sweep.timeline import Timeline

LAND_BATCH_CELLS = 32  # a checkpoint's waiting results land once this many are there ...
LAND_BATCH_ROWS = 262_144  # ... or this many sequences (a census cell of Pythia's holds 1,024,000: it lands alone) ...
LAND_MAX_WAIT_S = 10.0  # ... or the oldest has waited this long (or they finish the checkpoint)


def scored_cell(output: CellOutput, attempts: int, probes: pl.DataFrame | None, data_file: str,
                data_sha256: str | None, continuation_len: int, timeline: Timeline = Timeline(),
                index_start: int | None = None) -> ScoredCell:
    """An actor's output joined with its probe set (`chunk`, `row`, `index`, `source`, in sample order) as a
    ScoredCell; each sequence's `seen` and the cell's seen fraction are the timeline's. A census cell (`probes`
    None) brings its rows back itself (`index` = `index_start` + row for a stream, the digest of what it read)."""
    if probes is None:
        probes = census_rows(output, index_start)
        data_sha256 = output.data_sha256 or data_sha256
    loaded = output.loaded
    provenance = CellProvenance(
        seconds=output.seconds, device=output.device, dtype=output.dtype, batch_size=output.batch_size,
        attempts=attempts, model_revision=loaded.target.revision, model_commit=loaded.target.commit,
        weights_fingerprint=loaded.weights_fingerprint, stored_dtype=loaded.stored_dtype, data_file=data_file,
        data_sha256=data_sha256)
    ckpt = loaded.target.ckpt
    seen = timeline.sequences_seen(ckpt, output.chunk, probes["index"].to_numpy())
    # built from Series, not with select/with_columns, which run Polars' query engine: 0.19 ms a 1000-row cell
    # against 0.47, side by side in one process, and the engine's share grew on a busy node (BENCHMARKS.md, "The
    # whole job at its bound")
    columns = [probes[name] for name in ("chunk", "row", "index", "source")]
    sequences = pl.DataFrame([*columns, pl.Series("seen", seen, dtype=pl.Boolean),
                              *score_columns(output.scores, continuation_len)])
    return ScoredCell(output.chunk, sequences, provenance, timeline.seen_fraction(ckpt, output.chunk))


def census_rows(output: CellOutput, index_start: int | None) -> pl.DataFrame:
    """A census cell's `chunk`, `row`, `index`, `source` columns, from the rows (and labels) its actor read."""
    rows = output.rows
    return pl.DataFrame({
        "chunk": pl.repeat(output.chunk, len(rows), dtype=pl.Int32, eager=True),
        "row": pl.Series(rows, dtype=pl.Int64),
        "index": (pl.Series(rows + index_start, dtype=pl.Int64) if index_start is not None
                  else null_series("index", pl.Int64, len(rows))),
        "source": (pl.Series(output.sources, dtype=pl.String) if output.sources is not None
                   else null_series("source", pl.String, len(rows))),
    })


@dataclass
class Landed:
    """What one call to `Landing.land` did: the cells that landed, and those refused (with why and tries)."""

    cells: list[tuple[int, ScoredCell]] = field(default_factory=list)  # (ckpt, cell)
    refused: list[tuple[int, int, str, int]] = field(default_factory=list)  # (ckpt, chunk, error, attempts)


class Landing:
    """The waiting results of every checkpoint, and when they land (see the module docstring)."""

    def __init__(self, store: ResultStore):
        self.store = store
        self.waiting: dict[int, list[ScoredCell]] = {}
        self.waiting_since: dict[int, float] = {}
        self.waiting_rows: dict[int, int] = {}  # sequences waiting per checkpoint (`due` asks at every pass)

    def add(self, ckpt: int, cell: ScoredCell) -> None:
        self.waiting.setdefault(ckpt, []).append(cell)
        self.waiting_since.setdefault(ckpt, time.perf_counter())
        self.waiting_rows[ckpt] = self.waiting_rows.get(ckpt, 0) + cell.sequences.height

    @property
    def cells_waiting(self) -> int:
        return sum(map(len, self.waiting.values()))

    def due(self, remaining: Mapping[int, int], everything: bool = False) -> list[int]:
        """The checkpoints whose waiting cells are due to land, oldest first; `remaining`: ckpt -> cells not yet
        settled."""
        now = time.perf_counter()
        due = [ckpt for ckpt, cells in self.waiting.items()
               if everything or len(cells) >= min(LAND_BATCH_CELLS, remaining[ckpt])
               or self.waiting_rows[ckpt] >= LAND_BATCH_ROWS
               or now - self.waiting_since[ckpt] >= LAND_MAX_WAIT_S]
        return sorted(due, key=self.waiting_since.__getitem__)

    def land(self, remaining: Mapping[int, int], everything: bool = False, deadline: float | None = None) -> Landed:
        """Land the waiting cells of every checkpoint that is due (sooner stopped at `deadline`, perf_counter, once
        one checkpoint's landed: the rest stay due); `remaining`: ckpt -> cells not yet settled."""
        landed = Landed()
        for index, ckpt in enumerate(self.due(remaining, everything)):
            if index and deadline is not None and time.perf_counter() > deadline:
                break
            cells = self.waiting.pop(ckpt)
            since, rows = self.waiting_since.pop(ckpt), self.waiting_rows.pop(ckpt)
            try:
                self._land_checkpoint(ckpt, cells, landed)
            except KeyboardInterrupt:
                # Ctrl-C: the cells wait again, for the landing of everything waiting that follows (the store skips
                # any of them that landed before the interrupt was delivered: nothing lands twice).
                self.waiting[ckpt], self.waiting_since[ckpt] = cells + self.waiting.get(ckpt, []), since
                self.waiting_rows[ckpt] = rows + self.waiting_rows.get(ckpt, 0)
                raise
        return landed

    def _land_checkpoint(self, ckpt: int, cells: list[ScoredCell], landed: Landed) -> None:
        try:
            self.store.write_cells(ckpt, cells)
            landed.cells += [(ckpt, cell) for cell in cells]
        except PinMismatchError:  # one cell disagrees with the checkpoint's pin: land the others alone
            for cell in cells:
                try:
                    self.store.write_cells(ckpt, [cell])
                    landed.cells.append((ckpt, cell))
                except PinMismatchError as error:
                    landed.refused.append((ckpt, cell.chunk, one_line(error), cell.provenance.attempts))

    def finish(self, ckpt: int) -> None:
        """Every cell of `ckpt` has settled (landed or failed): let the store compact its files."""
        self.store.write_cells(ckpt, [], finishes_checkpoint=True)
