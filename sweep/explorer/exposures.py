"""The explorer's reads of exposure counts (asked for by `ExplorerData`, never by a page): a cell's sequences'
exposures, one training row's exposures file by file, and the heatmap's exposure metrics, with what the counts
cover.

Reading every count and probe key takes about a second at full size and the heatmap's exposure grids one pass over
every checkpoint (BENCHMARKS.md), so both are kept in memory and read again only when the output's ledgers say
something new landed (`ExposureCache`): a page asked for while a sweep lands sees the counts as they are then.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np
import polars as pl

from sweep.exposures.analyses import seen_per_sequence
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import LandedOutput

# A cell's sequences gain these columns once counts have landed (ExposureHistory.exposures_at's names): exposures by
# the cell's checkpoint, and occurrences in every scanned chunk file.
CELL_EXPOSURE_COLUMNS = ("exposures", "window_count")
EXPOSURE_SORTS = CELL_EXPOSURE_COLUMNS
TOTAL_COLUMNS = ("window_count", "prompt_count", "first_chunk", "last_chunk", "chunks_scanned")


@dataclass(frozen=True)
class RowExposures:
    """One training row's exposure counts: its totals, and each scanned chunk file that holds its window or prompt."""

    covered: bool  # its own chunk file was scanned for it (else its counts are unknown)
    totals: dict  # TOTAL_COLUMNS (empty when not covered)
    files: list[dict]  # per chunk file with an occurrence, by chunk: seen_chunk, window_count, prompt_count
    coverage: str  # ExposureCoverage.describe()

    def as_record(self) -> dict:
        return {"covered": self.covered, **self.totals, "files": self.files, "coverage": self.coverage}


class ExposureCache:
    """The output's ExposureHistory and the heatmap's exposure grids, kept while the ledgers they were read from
    have not changed. Thread-safe: pages are served from a thread pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._history: tuple[str, ExposureHistory] | None = None
        self._seen: tuple[str, pl.DataFrame] | None = None

    def history(self, reader: LandedOutput) -> ExposureHistory | None:
        """The history, or None when no count has landed."""
        if not reader.ledgers.scan_files():
            return None
        state = _state(reader.ledgers.exposures, reader.ledgers.probes)
        with self._lock:
            if self._history is None or self._history[0] != state:
                self._history = (state, ExposureHistory.read(reader))
            return self._history[1]

    def seen_cells(self, reader: LandedOutput) -> pl.DataFrame | None:
        """seen_per_sequence of every landed cell, with `seen_share` (n_seen / n); None when no count has landed."""
        history = self.history(reader)
        if history is None:
            return None
        state = _state(reader.ledgers.exposures, reader.ledgers.probes, reader.ledgers.checkpoints)
        with self._lock:
            if self._seen is None or self._seen[0] != state:
                seen = seen_per_sequence(reader.sequences(), history)
                self._seen = (state, seen.with_columns((pl.col("n_seen") / pl.col("n")).alias("seen_share")))
            return self._seen[1]


def _state(*ledgers: dict) -> str:
    """What the given ledgers say has landed, as one hash: a change means something new to read."""
    return hashlib.sha256(json.dumps(ledgers, sort_keys=True, default=str).encode()).hexdigest()


def grids(cells: pl.DataFrame, columns: list[str], ckpts: list[int], chunks: list[int]) -> dict[str, np.ndarray]:
    """Per column of `cells` (one row per (ckpt, chunk)), a float32[len(ckpts), len(chunks)] grid over the given
    axes (which hold every cell's ckpt and chunk), NaN where no cell or no value."""
    rows = np.searchsorted(ckpts, cells["ckpt"].to_numpy())
    places = np.searchsorted(chunks, cells["chunk"].to_numpy())
    out = {}
    for column in columns:
        grid = np.full((len(ckpts), len(chunks)), np.nan, dtype=np.float32)
        grid[rows, places] = cells[column].cast(pl.Float32).fill_null(np.nan).to_numpy()
        out[column] = grid
    return out


def cell_exposures(history: ExposureHistory, ckpt: int, chunk: int) -> pl.DataFrame:
    """`chunk, row` and CELL_EXPOSURE_COLUMNS of a cell's covered sequences."""
    return history.exposures_at(ckpt, chunk).select("chunk", "row", *CELL_EXPOSURE_COLUMNS)


def cell_seen_summary(history: ExposureHistory, sequences: pl.DataFrame) -> dict:
    """A cell's sequences (`ckpt, chunk, row, full_match, score`) split into seen by its checkpoint and never seen,
    as seen_per_sequence splits every cell: `covered` (sequences with known exposures), `n_seen`,
    `full_match_rate_seen`, `full_match_rate_never_seen`."""
    split = seen_per_sequence(sequences, history)
    if split.height == 0:
        return {"covered": 0, "n_seen": 0, "full_match_rate_seen": None, "full_match_rate_never_seen": None}
    cell = split.row(0, named=True)
    return {"covered": cell["n"], "n_seen": cell["n_seen"], "full_match_rate_seen": cell["full_match_rate_seen"],
            "full_match_rate_never_seen": cell["full_match_rate_never_seen"]}


def row_exposures(history: ExposureHistory, chunk: int, row: int) -> RowExposures:
    """One training row's counts: its totals, and every scanned file holding its window or prompt."""
    totals = history.sequence_totals(chunk, row)
    coverage = history.coverage.describe()
    if totals is None:
        return RowExposures(False, {}, [], coverage)
    return RowExposures(True, totals, history.files(chunk, row).to_dicts(), coverage)
