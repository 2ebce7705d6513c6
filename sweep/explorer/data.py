"""Every read the explorer makes of a landed output, in one place.

The pages never open a file: they ask `ExplorerData`, which reads through the one reader
(`sweep.landed.reader.open_output`: `cells`, `sequences`, `probes`, `failures`, `manifest`, `checkpoint_pin`), and
selects, orders and decodes a cell's sequences as `memsweep show` does (`sweep.analysis.selection.select_sequences`;
`sweep.analysis.examples`: `find_examples`, `TokenDecoder`). Swapping the reader is a change
to `open_reader` here. Nothing here writes, locks or recovers, so the server can run while a sweep lands: each
call opens the reader afresh and sees the ledgers as they are at that moment.

Once exposure counts have landed (how often a training row occurs in the chunk files scanned; read by
sweep/explorer/exposures.py), a cell's sequences gain `exposures` (by the cell's checkpoint) and `window_count` (in
every scanned file) to show, sort and filter by, the sequence page its counts file by file, and the heatmap metrics
that split each cell into seen and never-seen sequences; every view that shows them says what the counts cover.
Until then they are absent, never invented.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from sweep.analysis.examples import Example, TokenDecoder, find_examples
from sweep.analysis.labels import METRIC_LABELS, run_facts
from sweep.analysis.selection import SequenceSelection, filter_sequences, select_sequences
from sweep.explorer.exposures import (EXPOSURE_SORTS, ExposureCache, RowExposures, cell_exposures, cell_seen_summary,
                                      grids, row_exposures)
from sweep.errors import MemsweepError
from sweep.timeline import Timeline
from sweep.landed.reader import LandedOutput, open_output

DECODERS_KEPT = 16  # tokenizers held in memory (one per checkpoint viewed; a few MB each)
SEQUENCE_COLUMNS = ("ckpt", "chunk", "row", "source", "matches", "score", "full_match", "prefix_match", "nll",
                    "tf_accuracy")
# What the sequence page reads at every checkpoint (match_mask: which positions were right, 4 bytes at l = 32).
HISTORY_COLUMNS = ("ckpt", "matches", "score", "full_match", "prefix_match", "match_mask")


@dataclass(frozen=True)
class Metric:
    """A cell column the heatmap can show."""

    column: str
    label: str
    lower_is_memorized: bool = False  # NLL: lower means better recalled; the colour scale is flipped for it


CELL_METRICS = (
    Metric("score", METRIC_LABELS["score"]),
    Metric("full_match_rate", METRIC_LABELS["full_match_rate"]),
    Metric("mean_prefix_match", METRIC_LABELS["mean_prefix_match"]),
    Metric("nll", METRIC_LABELS["nll"], lower_is_memorized=True),
    Metric("tf_accuracy", METRIC_LABELS["tf_accuracy"]),
)
# Per cell, from exposure counts (seen_per_sequence, with seen_share = n_seen / n); loaded apart from the cell metrics,
# since they take one pass over every checkpoint (kept in memory after).
EXPOSURE_METRICS = (
    Metric("seen_share", "share of the cell's sequences seen by its checkpoint (exposures >= 1)"),
    Metric("full_match_rate_never_seen", "full-match rate of the cell's sequences not seen by its checkpoint"),
    Metric("full_match_rate_seen", "full-match rate of the cell's sequences seen by its checkpoint"),
)
# How a cell's sequences can be ordered (sweep/analysis/selection.py): "memorized" is `memsweep show`'s order (full
# matches, then the longest exact prefix, then the most matched tokens); the others are one column, ties most
# memorized first (EXPOSURE_SORTS too once counts landed).
SEQUENCE_SORTS = ("memorized", "row", "source", "score", "matches", "prefix_match", "nll", "tf_accuracy")


class NotLanded(LookupError):
    """The asked-for cell or sequence is not in the output (yet); the message says which, on one line."""


class BadQuery(ValueError):
    """A query the output cannot answer as asked (an exposure filter before exposures landed, an unknown sort)."""


@dataclass(frozen=True)
class SequenceQuery(SequenceSelection):
    """Which of a cell's sequences to show, in what order (sweep/analysis/selection.py: `memsweep show`'s filters and
    order), and which page of them (validated by the caller)."""

    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class DecodedSequence:
    """One sequence at one checkpoint: its numbers and its text as `memsweep show` prints it."""

    numbers: dict  # SEQUENCE_COLUMNS (+ exposures.CELL_EXPOSURE_COLUMNS once counts landed)
    prompt: str
    truth: list[tuple[str, bool]]  # runs of (text, the model got these positions right)
    model: list[tuple[str, bool]] | None  # None without generated tokens (extractable mode, keep_generated off)

    def as_record(self) -> dict:
        return {**self.numbers, "prompt": self.prompt, "truth": "".join(text for text, _ in self.truth),
                "model": None if self.model is None else "".join(text for text, _ in self.model),
                "truth_spans": self.truth, "model_spans": self.model}


@dataclass(frozen=True)
class Decoding:
    """Which tokenizer decoded a page's text, or why token ids are shown instead."""

    ckpt: int
    tokenizer: bool
    why_not: str | None

    def as_record(self) -> dict:
        return {"ckpt": self.ckpt, "tokenizer": self.tokenizer, "why_not": self.why_not}


@dataclass(frozen=True)
class CellView:
    cell: dict
    decoding: Decoding
    total: int  # sequences matching the filters
    sources: list[str]  # every source in the cell (for the filter)
    has_exposures: bool
    sequences: list[DecodedSequence]
    seen: dict | None = None  # cell_seen_summary of all its sequences, once counts landed
    coverage: str | None = None  # what the counts cover (ExposureCoverage.describe)


@dataclass(frozen=True)
class CheckpointPoint:
    """One training row at one checkpoint: its numbers, and the true continuation with that checkpoint's misses."""

    numbers: dict  # chunk, row and HISTORY_COLUMNS but the mask (+ exposures by that checkpoint, once counts landed)
    truth: list[tuple[str, bool]]

    def as_record(self) -> dict:
        return {**self.numbers, "truth_spans": self.truth}


@dataclass(frozen=True)
class SequenceView:
    chunk: int
    row: int
    source: str
    decoding: Decoding
    latest: DecodedSequence | None  # the text, and the model's continuation at the last checkpoint
    first_memorized: int | None
    last_memorized: int | None
    exposures: RowExposures | None  # None until counts have landed
    checkpoints: list[CheckpointPoint]  # one per landed checkpoint, ascending


@dataclass(frozen=True)
class CellMatrix:
    """The checkpoint x chunk grid: rows are checkpoints, columns chunks (the planned ones and any landed)."""

    ckpts: list[int]
    chunks: list[int]
    values: dict[str, np.ndarray]  # metric column -> float32[len(ckpts), len(chunks)], NaN where nothing landed
    landed: int
    metrics: list[Metric] = field(default_factory=list)  # those with a value somewhere
    staircase: list[float] = field(default_factory=list)  # per checkpoint: chunks of `chunks` it trained on (a share
    # for one it is inside; sweep/timeline.py), where the seen | unseen line crosses its row


class ExplorerData:
    """Read-only access to one output's tables, decoded text included."""

    def __init__(self, output: Path, open_reader: Callable[[Path], LandedOutput] = open_output):
        self.output = Path(output)
        self.open_reader = open_reader
        self._decoders: OrderedDict[int, TokenDecoder] = OrderedDict()
        self._decoders_lock = threading.Lock()  # pages are served from a thread pool
        self._exposures = ExposureCache()
        self.open_reader(self.output)  # not an output, or a damaged or foreign manifest: refused now, not on a page

    # ---- the run -------------------------------------------------------------------------------

    def manifest(self) -> dict:
        return self.open_reader(self.output).manifest

    def run_name(self) -> str:
        return self.open_reader(self.output).name

    def facts(self) -> list[tuple[str, str]]:
        """The report's run facts, how much of the planned grid has landed, and what exposure counts cover."""
        reader = self.open_reader(self.output)
        cells = reader.cells().collect()
        planned = len(reader.planned_cells())
        landed = f"{cells.height} of {planned} planned" if planned else str(cells.height)
        history = self._exposures.history(reader)
        counts = [("exposure counts", history.coverage.describe())] if history is not None else []
        if cells.height == 0:
            return [("run", reader.name), ("cells", landed), ("failed cells", str(len(reader.failures()))), *counts]
        facts = run_facts(reader, cells)
        return [(name, landed if name == "cells" else value) for name, value in facts] + counts

    def failures(self) -> list[dict]:
        return self.open_reader(self.output).failures()

    # ---- cells ---------------------------------------------------------------------------------

    def cells(self, ckpts: tuple[int, int] | None = None, chunks: tuple[int, int] | None = None) -> pl.DataFrame:
        """Every landed cell (`ckpt, chunk` and the cell columns), ordered by (ckpt, chunk); optionally only
        checkpoints and chunks within inclusive (low, high) ranges."""
        frame = self.open_reader(self.output).cells()
        for column, bounds in (("ckpt", ckpts), ("chunk", chunks)):
            if bounds is not None:
                frame = frame.filter(pl.col(column).is_between(*bounds))
        return frame.sort("ckpt", "chunk").collect()

    def cell(self, ckpt: int, chunk: int) -> dict:
        """One landed cell's record; NotLanded (saying whether it failed) when there is none."""
        return self._cell(self.open_reader(self.output), ckpt, chunk)

    def _cell(self, reader: LandedOutput, ckpt: int, chunk: int) -> dict:
        found = reader.cells(ckpt).filter(pl.col("chunk") == chunk).collect()
        if found.height:
            return found.row(0, named=True)
        failure = next((f for f in reader.failures() if (f.get("ckpt"), f.get("chunk")) == (ckpt, chunk)), None)
        if failure:
            raise NotLanded(f"cell (ckpt {ckpt}, chunk {chunk}) failed after {failure.get('attempts')} attempts: "
                            f"{' '.join(str(failure.get('error')).split())}")
        raise NotLanded(f"cell (ckpt {ckpt}, chunk {chunk}) has not landed in {self.output.name}")

    def matrix(self) -> CellMatrix:
        reader = self.open_reader(self.output)
        cells = reader.cells().collect()
        ckpts, chunks = self._axes(reader, cells)
        columns = [metric.column for metric in CELL_METRICS] + ["n"]
        shown = [metric for metric in CELL_METRICS if cells[metric.column].is_not_null().any()]
        return CellMatrix(ckpts, chunks, grids(cells, columns, ckpts, chunks), cells.height, shown,
                          self._staircase(reader, ckpts, chunks))

    def exposure_matrix(self) -> CellMatrix | None:
        """The heatmap's EXPOSURE_METRICS on matrix()'s axes, or None before counts land (one pass over every
        checkpoint the first time, kept until the ledgers change)."""
        reader = self.open_reader(self.output)
        seen = self._exposures.seen_cells(reader)
        if seen is None:
            return None
        ckpts, chunks = self._axes(reader, reader.cells().select("ckpt", "chunk").collect())
        seen = seen.filter(pl.col("ckpt").is_in(ckpts) & pl.col("chunk").is_in(chunks))
        columns = [metric.column for metric in EXPOSURE_METRICS]
        shown = [metric for metric in EXPOSURE_METRICS if seen[metric.column].is_not_null().any()]
        return CellMatrix(ckpts, chunks, grids(seen, columns, ckpts, chunks), seen.height, shown,
                          self._staircase(reader, ckpts, chunks))

    def timeline(self) -> Timeline:
        """Where the output's checkpoints and chunks lie on the training stream (its spec's timeline)."""
        return Timeline.from_spec_dict(self.open_reader(self.output).spec)

    @staticmethod
    def _staircase(reader: LandedOutput, ckpts: list[int], chunks: list[int]) -> list[float]:
        timeline = Timeline.from_spec_dict(reader.spec)
        return [timeline.staircase(ckpt, chunks) for ckpt in ckpts]

    def exposure_metric_names(self) -> list[str]:
        """The heatmap metrics exposure counts may add (a URL may name one before its grid is loaded)."""
        return [metric.column for metric in EXPOSURE_METRICS] if self.has_exposures() else []

    def _axes(self, reader: LandedOutput, cells: pl.DataFrame) -> tuple[list[int], list[int]]:
        """The heatmap's checkpoints and chunks: the planned ones and any landed."""
        planned = reader.planned_cells()
        return (sorted({c for c, _ in planned} | set(cells["ckpt"].to_list())),
                sorted({j for _, j in planned} | set(cells["chunk"].to_list())))

    # ---- a cell's sequences --------------------------------------------------------------------

    def cell_view(self, ckpt: int, chunk: int, query: SequenceQuery) -> CellView:
        """A cell's record and one page of its sequences, filtered, ordered and decoded."""
        reader = self.open_reader(self.output)
        cell = self._cell(reader, ckpt, chunk)
        # Lazy: a census cell holds 1,024,000 sequences, and a page shows a few dozen. Polars keeps the page's top
        # rows (offset + limit) while it reads, never the sorted cell.
        sequences = reader.sequences(ckpt).filter(pl.col("chunk") == chunk).select(SEQUENCE_COLUMNS)
        history = self._exposures.history(reader)
        sorts = SEQUENCE_SORTS + (EXPOSURE_SORTS if history is not None else ())
        if query.sort not in sorts:
            raise BadQuery(f"sort: {query.sort!r} is not one of {', '.join(sorts)}")
        if (query.min_exposures is not None or query.max_exposures is not None) and history is None:
            raise BadQuery("min_exposures, max_exposures: this output has no exposure counts yet")
        seen = None
        if history is not None:  # counts cover sampled cells (a chunk's exposures are per scanned row)
            sequences = sequences.collect().join(cell_exposures(history, ckpt, chunk), on=["chunk", "row"], how="left")
            seen = cell_seen_summary(history, sequences)
            sequences = sequences.lazy()
        chosen = select_sequences(sequences, query)
        sources, total, page = pl.collect_all([
            sequences.select(pl.col("source").unique().drop_nulls().sort()),
            filter_sequences(sequences, query).select(pl.len()),
            chosen.slice(query.offset, query.limit)], engine="streaming")
        sources, total = sources["source"].to_list(), total.item()
        decoder = self.decoder(ckpt, reader)
        examples = self._examples(reader, ckpt, list(page.select("chunk", "row").iter_rows()), chunk)
        decoded = [_decoded(numbers, examples.get((numbers["chunk"], numbers["row"])), decoder)
                   for numbers in page.iter_rows(named=True)]
        return CellView(cell, _decoding(ckpt, decoder), total, sources, history is not None, decoded, seen,
                        history.coverage.describe() if history is not None else None)

    @staticmethod
    def _examples(reader: LandedOutput, ckpt: int, keys: list[tuple[int, int]],
                  chunk: int | None = None) -> dict[tuple[int, int], Example]:
        """These (chunk, row)s at `ckpt` (all of `chunk`, if given: only its files are read) as `memsweep show` builds
        them (prompt, truth and the model's tokens)."""
        if not keys:
            return {}
        try:
            examples = find_examples(reader, ckpt, chunk, top=len(keys), rows=keys)
        except MemsweepError:  # probe sets not landed (an old output): numbers without text
            return {}
        return {(example.chunk, example.row): example for example in examples}

    # ---- one training row across checkpoints ---------------------------------------------------

    def sequence_view(self, chunk: int, row: int) -> SequenceView:
        """One training row at every landed checkpoint: its numbers and which positions each got right; its text,
        and the model's own continuation at the last checkpoint."""
        reader = self.open_reader(self.output)
        # Only narrow columns over every checkpoint: this read opens one file per checkpoint, and the wide ones
        # (nll, tf_accuracy, generated) would make it several times slower at 360 checkpoints (BENCHMARKS.md).
        history = (reader.sequences().filter((pl.col("chunk") == chunk) & (pl.col("row") == row))
                   .select(HISTORY_COLUMNS).sort("ckpt").collect())
        if history.height == 0:
            raise NotLanded(f"no landed sequence has chunk {chunk}, row {row}")
        last = int(history["ckpt"].max())
        decoder = self.decoder(last, reader)
        latest = self._examples(reader, last, [(chunk, row)], chunk).get((chunk, row))
        truth = latest.truth if latest else []
        spans: dict[tuple[bool, ...], list[tuple[str, bool]]] = {}  # many checkpoints share one pattern of hits
        checkpoints = []
        for numbers in history.iter_rows(named=True):
            hits = tuple(_hits(numbers.pop("match_mask"), numbers["prefix_match"], len(truth)))
            if hits not in spans:
                spans[hits] = decoder.spans(truth, list(hits))
            checkpoints.append(CheckpointPoint({"chunk": chunk, "row": row, **_plain_record(numbers)}, spans[hits]))
        counts = self._exposures.history(reader)
        exposures = None if counts is None else row_exposures(counts, chunk, row)
        if counts is not None:
            by_checkpoint = counts.exposures_by_checkpoint(chunk, row, [point.numbers["ckpt"] for point in checkpoints])
            for point, exposed in zip(checkpoints, by_checkpoint or [None] * len(checkpoints)):
                point.numbers["exposures"] = exposed
        memorized = history.filter(pl.col("full_match"))["ckpt"]
        return SequenceView(
            chunk=chunk, row=row, source=latest.source if latest else "", decoding=_decoding(last, decoder),
            latest=_decoded(checkpoints[-1].numbers, latest, decoder) if latest else None,
            first_memorized=int(memorized.min()) if len(memorized) else None,
            last_memorized=int(memorized.max()) if len(memorized) else None,
            exposures=exposures, checkpoints=checkpoints)

    def has_exposures(self) -> bool:
        """Whether any exposure count has landed (a cheap look at the ledgers)."""
        return bool(self.open_reader(self.output).ledgers.scan_files())

    # ---- decoding ------------------------------------------------------------------------------

    def decoder(self, ckpt: int, reader: LandedOutput | None = None) -> TokenDecoder:
        """Checkpoint `ckpt`'s tokenizer as `memsweep show` loads it (kept: loading costs ~0.1-1 s), or the
        reason there is none (then text shows as token ids)."""
        with self._decoders_lock:
            if ckpt in self._decoders:
                self._decoders.move_to_end(ckpt)
                return self._decoders[ckpt]
            decoder = TokenDecoder.for_checkpoint(reader or self.open_reader(self.output), ckpt)
            self._decoders[ckpt] = decoder
            while len(self._decoders) > DECODERS_KEPT:
                self._decoders.popitem(last=False)
            return decoder


def _decoded(numbers: dict, example: Example | None, decoder: TokenDecoder) -> DecodedSequence:
    numbers = _plain_record(numbers)
    if example is None:
        return DecodedSequence(numbers, "", [], None)
    hits = example.hits
    model = None if example.generated is None else decoder.spans(example.generated, hits)
    return DecodedSequence(numbers, decoder.text(example.prompt), decoder.spans(example.truth, hits), model)


def _hits(mask: bytes | None, prefix_match: int | None, length: int) -> list[bool]:
    """Per continuation position, right or wrong, from the landed bit mask (bit i = position i, little bit order);
    in extractable mode no mask lands and the exact prefix is all that is known (as Example.hits)."""
    if mask is not None:
        return np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")[:length].astype(bool).tolist()
    return [position < (prefix_match or 0) for position in range(length)]


def _plain_record(record: dict) -> dict:
    return {key: _plain(value) for key, value in record.items()}


def _plain(value):
    """NaN as None, so every JSON writer and template sees one 'missing'."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _decoding(ckpt: int, decoder: TokenDecoder) -> Decoding:
    return Decoding(ckpt, decoder.tokenizer is not None, decoder.why_not)
