"""Each probe sequence's exposures as the output knows them, at any checkpoint, and what the counts cover.

A sequence's **exposures at checkpoint c** are the occurrences of its k + l window that checkpoint c has trained on,
in the chunks that were scanned. On Amber's chunk-indexed timeline those are the occurrences in chunk files <= c
(checkpoint c was saved after training on chunks 0..c); on a step-indexed one (sweep/timeline.py), the occurrences at
stream positions before the checkpoint's, which a scan of a binary stream records (`window_index`), so a checkpoint
inside a chunk counts exactly the copies before it. The
landed counts (`exposure_counts`: one row per nonzero (sequence, scanned file) pair) hold them file by file;
`ExposureHistory` orders them by file so that one pass over the checkpoints, in order, sees every sequence's
exposures and the chunk of its latest one grow (`ExposureCursor`), and `exposures_at(ckpt)` gives them for one
checkpoint (`exposures_by_checkpoint`: for one sequence at many). Its totals over every scanned file are the
reader's `exposures` table, computed once (sweep/landed/exposure_totals.py).

What the counts cover is part of every answer (`ExposureCoverage`). A scan counts the sequences of some probe
chunks in one chunk file, so each probe chunk has its own set of scanned files. A sequence is **covered** when its
own chunk file has been scanned for it: its exposures then include its own row, and "seen by checkpoint c" is
exactly "exposures at c >= 1". The analyses use covered sequences only. A listed file that was not scanned (not
yet, or its scan failed) is a count not made: exposures are then lower bounds, and every view that shows them says
how many of the listed files the counts cover.

Memory: the count rows (a few bytes each), and per covered sequence its row of totals and an int64 key; the probe
sets' tokens are never read. Costs at full size: BENCHMARKS.md, "Exposure analyses at full size".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from sweep.landed.exposure_totals import files_scanned, sequence_totals
from sweep.landed.partitions import SEQUENCE_KEY, key_array
from sweep.landed.reader import LandedOutput
from sweep.timeline import Timeline

NO_CHUNK = -1  # "no occurrence yet" in first / last chunk arrays


@dataclass(frozen=True)
class ExposureCoverage:
    """Which chunk files the counts cover, for which probe chunks, and which scans failed."""

    listed: tuple[int, ...]  # exposure.chunks: the chunk files the spec asks to scan
    scanned: dict[int, frozenset[int]]  # chunk file -> the probe chunks its landed scans counted
    failed: dict[int, str]  # chunk file -> why its latest scan failed
    probe_chunks: tuple[int, ...]  # the chunks with a landed probe set

    @classmethod
    def read(cls, landed: LandedOutput) -> ExposureCoverage:
        failed = {int(record["seen_chunk"]): " ".join(str(record.get("error")).split())
                  for record in landed.scan_failures()}
        probe_chunks = tuple(chunk for chunk, _ in landed.ledgers.probe_files())
        return cls(tuple(landed.exposure_chunks_listed()), landed.scanned_probe_chunks(), failed, probe_chunks)

    @property
    def has_counts(self) -> bool:
        return bool(self.scanned)

    @property
    def complete_files(self) -> list[int]:
        """Listed chunk files scanned for every probe chunk."""
        wanted = set(self.probe_chunks)
        return [seen for seen in self.listed if wanted <= self.scanned.get(seen, frozenset())]

    @property
    def covered_chunks(self) -> list[int]:
        """Probe chunks whose own chunk file has been scanned for them: the sequences the analyses use."""
        return [chunk for chunk in self.probe_chunks if chunk in self.scanned.get(chunk, frozenset())]

    @property
    def is_complete(self) -> bool:
        return bool(self.listed) and len(self.complete_files) == len(self.listed) and not self.failed

    def describe(self) -> str:
        """One sentence: how many of the listed files the counts cover, and what is missing or failed."""
        listed, complete = set(self.listed), set(self.complete_files)
        if not self.listed:
            return (f"exposure counts of {len(self.scanned)} chunk files (the spec lists none in exposure.chunks)"
                    if self.scanned else "no exposure counts (the spec lists no chunk files in exposure.chunks)")
        parts = [f"exposure counts cover {len(complete)} of the {len(listed)} chunk files listed in exposure.chunks"]
        partial = sorted(seen for seen in listed - complete if seen in self.scanned)
        missing = sorted(listed - complete - set(partial) - set(self.failed))
        if partial:
            parts.append(f"{len(partial)} counted for some probe chunks only ({_ids(partial)})")
        if missing:
            parts.append(f"{len(missing)} not scanned yet ({_ids(missing)})")
        if self.failed:
            failures = sorted(self.failed.items())
            parts.append("failed: " + "; ".join(f"chunk {seen}: {error}" for seen, error in failures))
        return "; ".join(parts)

    def describe_sequences(self) -> str:
        """Which sequences the analyses use."""
        covered = self.covered_chunks
        return (f"exposures are known for the sequences of {len(covered)} of the {len(self.probe_chunks)} probe "
                "chunks (those whose own chunk file was scanned)")


def _ids(values: list[int], shown: int = 8) -> str:
    text = ", ".join(str(value) for value in values[:shown])
    return text + (f", ... ({len(values) - shown} more)" if len(values) > shown else "")


class ExposureHistory:
    """The exposures of every covered sequence, file by file in chunk order (see the module docstring).

    `totals`: one row per covered sequence, sorted by (chunk, row): `chunk, row` and its totals over every scanned
    file, as the reader's `exposures` table has them (sweep/landed/exposure_totals.py: `window_count, prompt_count,
    first_chunk, last_chunk, chunks_scanned`). In the same order, for the analyses' folds: `keys` int64
    (partitions.SEQUENCE_KEY, sorted), `chunks` int32 and `first_chunk` int32 (NO_CHUNK: no scanned file holds the
    window). The count rows holding the window, ordered by file, feed the cursor: `_at` int64[m] (position in
    `keys`), `_seen` int32[m] (the chunk file), `_window` int64[m] (occurrences in it), `_when` (what the cursor
    advances over: the chunk file, or on a step-indexed timeline one row per occurrence at its stream position); every
    count row, ordered by sequence then file, answers `files`.
    """

    def __init__(self, totals: pl.DataFrame, counts: pl.DataFrame, coverage: ExposureCoverage,
                 timeline: Timeline = Timeline()):
        """`totals`: exposure_totals.sequence_totals of the covered sequences; `counts`: their count rows (`chunk,
        row, seen_chunk, window_count, prompt_count`, and on a step-indexed `timeline` `window_index`; rows of other
        sequences are ignored)."""
        self.totals = totals.sort("chunk", "row")
        self.coverage = coverage
        self.timeline = timeline
        self.keys = key_array(self.totals.select(SEQUENCE_KEY))
        self.chunks = self.totals["chunk"].to_numpy().astype(np.int32)
        self.first_chunk = self.totals["first_chunk"].fill_null(NO_CHUNK).to_numpy().astype(np.int32)
        at, found = self.locate(key_array(counts.select(SEQUENCE_KEY)))
        at = at[found]

        def column(name: str, dtype) -> np.ndarray:
            return counts[name].to_numpy()[found].astype(dtype)

        seen = column("seen_chunk", np.int32)
        window, prompt = column("window_count", np.int64), column("prompt_count", np.int64)
        by_sequence = np.lexsort((seen, at))
        self._rows = (at[by_sequence], seen[by_sequence], window[by_sequence], prompt[by_sequence])
        held = window > 0
        if timeline.step_indexed:  # one cursor row per occurrence, ordered by its stream position
            if "window_index" not in counts.columns:
                raise ValueError("a step-indexed history needs each count row's window positions (window_index)")
            positions = [p for p, keep in zip(counts["window_index"].to_list(), found) if keep]
            self._row_positions = [positions[int(i)] for i in by_sequence]
            lengths = np.array([0 if p is None else len(p) for p in positions], dtype=np.int64)
            when = np.concatenate([np.zeros(0, dtype=np.int64)] + [np.asarray(p, dtype=np.int64) for p in positions
                                                                   if p is not None and len(p)])
            order = np.argsort(when, kind="stable")
            self._at, self._seen = np.repeat(at, lengths)[order], np.repeat(seen, lengths)[order]
            self._window, self._when = np.ones(len(when), dtype=np.int64), when[order]
        else:  # one cursor row per (sequence, chunk file), ordered by chunk
            order = np.argsort(seen[held], kind="stable")
            self._at, self._seen, self._window = at[held][order], seen[held][order], window[held][order]
            self._when = self._seen

    @classmethod
    def read(cls, landed: LandedOutput) -> ExposureHistory:
        """The history of `landed`'s covered sequences (empty when nothing was scanned), on the output's timeline."""
        coverage = ExposureCoverage.read(landed)
        timeline = Timeline.from_spec_dict(landed.spec)
        covered = pl.col("chunk").is_in(coverage.covered_chunks)
        # Filtering by chunk first lets Polars skip the other chunks' probe files by their statistics.
        sequences = landed.probes().filter(covered).select("chunk", "row")
        columns = ["chunk", "row", "seen_chunk", "window_count", "prompt_count"]
        counts = landed.exposure_counts().select(*columns, *(["window_index"] if timeline.step_indexed else []))
        counts = counts.filter(covered).collect() if coverage.covered_chunks else counts.head(0).collect()
        totals = sequence_totals(sequences, counts.lazy().select(columns), files_scanned(coverage.scanned).lazy())
        return cls(totals.collect(), counts, coverage, timeline)

    def __len__(self) -> int:
        return int(self.keys.size)

    @property
    def max_chunk(self) -> int:
        """The largest chunk id a sequence or a scanned file has (-1 when empty)."""
        return int(max(self.chunks.max(initial=-1), self._seen.max(initial=-1)))

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found): where each of `keys` (SEQUENCE_KEY values) sits in this history; found is False
        for sequences that are not covered (their position is then meaningless)."""
        at = np.searchsorted(self.keys, keys)
        found = at < self.keys.size
        found[found] = self.keys[at[found]] == keys[found]
        return at, found

    def cursor(self) -> ExposureCursor:
        return ExposureCursor(self)

    def _position(self, chunk: int, row: int) -> int | None:
        """Where sequence (chunk, row) sits in this history, or None when it is not covered."""
        key = key_array(pl.DataFrame({"chunk": [chunk], "row": [row]}).select(SEQUENCE_KEY))
        at, found = self.locate(key)
        return int(at[0]) if found[0] else None

    def files(self, chunk: int, row: int) -> pl.DataFrame | None:
        """One covered sequence's count rows (`seen_chunk, window_count, prompt_count`, by chunk file: every scanned
        file holding its window or its prompt), or None when it is not covered."""
        at = self._position(chunk, row)
        return None if at is None else self._files_at(at)

    def _files_at(self, at: int) -> pl.DataFrame:
        positions, seen, window, prompt = self._rows
        rows = slice(*np.searchsorted(positions, [at, at + 1]))
        files = pl.DataFrame({"seen_chunk": pl.Series(seen[rows], dtype=pl.Int32),
                              "window_count": pl.Series(window[rows], dtype=pl.Int64),
                              "prompt_count": pl.Series(prompt[rows], dtype=pl.Int64)})
        if self.timeline.step_indexed:
            files = files.with_columns(window_index=pl.Series(self._row_positions[rows], dtype=pl.List(pl.Int64)))
        return files

    def sequence_totals(self, chunk: int, row: int) -> dict | None:
        """One covered sequence's row of `totals` (without chunk and row), or None when it is not covered."""
        at = self._position(chunk, row)
        return None if at is None else self.totals.drop("chunk", "row").row(at, named=True)

    def exposures_by_checkpoint(self, chunk: int, row: int, ckpts: list[int]) -> list[int] | None:
        """One covered sequence's exposures at each of `ckpts` (ascending), counted as `exposures_at` counts every
        sequence's (a cursor over its own count rows), or None when it is not covered."""
        at = self._position(chunk, row)
        if at is None:
            return None
        own = self._files_at(at).select(pl.lit(chunk, pl.Int32).alias("chunk"), pl.lit(row, pl.Int64).alias("row"),
                                        pl.all())
        cursor = ExposureHistory(self.totals.slice(at, 1), own, self.coverage, self.timeline).cursor()
        exposures = []
        for ckpt in ckpts:
            cursor.advance(ckpt)
            exposures.append(int(cursor.exposures[0]))
        return exposures

    def exposures_at(self, ckpt: int, chunk: int | None = None) -> pl.DataFrame:
        """Per covered sequence (of `chunk` alone if given), sorted: `chunk, row`, `exposures` (occurrences the
        checkpoint has trained on, in the scanned chunks), `last_exposure_chunk` (the latest of those holding one;
        null: none), then its `totals` over every scanned file: `window_count, prompt_count, first_chunk, last_chunk,
        chunks_scanned`."""
        cursor = self.cursor()
        cursor.advance(ckpt)
        start, end = (0, len(self)) if chunk is None else np.searchsorted(self.chunks, [chunk, chunk + 1])
        totals = self.totals.slice(int(start), int(end - start))
        at_ckpt = pl.DataFrame({
            "exposures": pl.Series(cursor.exposures[start:end], dtype=pl.Int64),
            "last_exposure_chunk": pl.Series(cursor.last_chunk[start:end], dtype=pl.Int32),
        }).with_columns(pl.when(pl.col("last_exposure_chunk") != NO_CHUNK).then(pl.col("last_exposure_chunk"))
                        .alias("last_exposure_chunk"))
        return pl.concat([totals.select("chunk", "row"), at_ckpt, totals.drop("chunk", "row")], how="horizontal")


class ExposureCursor:
    """Every covered sequence's exposures and latest exposed chunk as of a checkpoint, advanced in order."""

    def __init__(self, history: ExposureHistory):
        self.history = history
        self.exposures = np.zeros(len(history), dtype=np.int64)  # indexed like history.keys
        self.bins = np.zeros(len(history), dtype=np.int32)  # exposure_bin(exposures), kept up to date
        self.last_chunk = np.full(len(history), NO_CHUNK, dtype=np.int32)
        self.ckpt = None
        self._next = 0  # the first count row not added yet

    def advance(self, ckpt: int) -> None:
        """Add the occurrences checkpoint `ckpt` has trained on not added yet (ckpt must not go down): those in chunk
        files <= ckpt, or on a step-indexed timeline those at positions before it."""
        if self.ckpt is not None and ckpt < self.ckpt:
            raise ValueError(f"an exposure cursor moves forward only (at {self.ckpt}, asked for {ckpt})")
        history = self.history
        timeline = history.timeline
        if timeline.step_indexed:
            end = int(np.searchsorted(history._when, timeline.trained(ckpt), side="left"))
        else:
            end = int(np.searchsorted(history._when, ckpt, side="right"))
        rows = slice(self._next, end)
        np.add.at(self.exposures, history._at[rows], history._window[rows])
        np.maximum.at(self.last_chunk, history._at[rows], history._seen[rows])
        touched = history._at[rows]
        self.bins[touched] = exposure_bin(self.exposures[touched])
        self._next, self.ckpt = end, ckpt


def exposure_bin(exposures: np.ndarray) -> np.ndarray:
    """int32 bin of each count: 0 for 0, 1 for 1, 2 for 2, then 3 for 3-4, 4 for 5-8, ... (1 + ceil(log2(e)))."""
    exposures = np.asarray(exposures, dtype=np.int64)
    bins = np.zeros(exposures.shape, dtype=np.int32)
    seen = exposures > 0
    bins[seen] = 1 + np.frexp(exposures[seen] - 1)[1]  # frexp's exponent of e - 1 is its bit length: ceil(log2(e))
    return bins
