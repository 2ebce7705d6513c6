"""Analyses of a landed memsweep dataset: each one a Polars function, tables in, DataFrame out.

The landed dataset (see docs/architecture.md) has two tables: `sequences`, one row per (ckpt, chunk, row), and
`cells`, one row per (ckpt, chunk). `load_tables` opens them through the one reader (sweep/landed/reader.py).
Every other function
takes those tables (LazyFrame or DataFrame) and returns a small, collected DataFrame. A sequence
is identified by (chunk, row); checkpoint c has seen chunk x when x <= c (Amber saved checkpoint
i after training on chunk i). "Memorized" means full_match: all l generated tokens are right.
The same analyses as Polars SQL are in docs/queries.md; those that use exposure counts are in
sweep/exposures/analyses.py.

Scale: at full Amber size (360 x 360 cells x 1000 rows = 129.6M sequence rows, 1-2 GB of
Parquet) nothing here holds the sequences table in memory. Whole-table analyses run on Polars'
streaming engine and only the columns they need; first_memorized, which needs each sequence's
history in checkpoint order, reads one checkpoint partition at a time (a filter on `ckpt` prunes
load_tables' scan to that partition's files). Measured costs: BENCHMARKS.md, "Report and queries
at full size".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sweep.errors import MemsweepError
from sweep.landed.reader import open_output
from sweep.landed.partitions import SEQUENCE_KEY, Frame, by_checkpoint, key_array
from sweep.landed.schema import CELL_METRICS

def load_tables(output: Path | str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Open a landed dataset as (sequences, cells) LazyFrames, each with `ckpt` Int32 first, through the one
    reader (sweep/landed/reader.py: only listed files, size-checked; columns a file lacks read as typed nulls).
    Nothing is read until a query collects."""
    landed = open_output(output)
    return landed.sequences(), landed.cells()


def _check_metric(metric: str) -> None:
    if metric not in CELL_METRICS:
        raise MemsweepError(f"unknown cell metric {metric!r}; choose one of {', '.join(CELL_METRICS)}")


def score_matrix(cells: Frame, metric: str = "score") -> pl.DataFrame:
    """The checkpoint x chunk matrix of one cell metric.

    Returns one row per checkpoint (`ckpt`, ascending) and one Float64 column per chunk, named
    str(chunk) in ascending chunk order; a cell not in the table is null. `metric` is a cell column:
    "score" (mean memorization score), "full_match_rate" (k-extractable rate), "mean_prefix_match",
    "nll" or "tf_accuracy".
    """
    _check_metric(metric)
    long = cells.lazy().select("ckpt", "chunk", pl.col(metric).cast(pl.Float64)).sort("chunk", "ckpt").collect()
    duplicates = long.filter(pl.struct("ckpt", "chunk").is_duplicated())
    if len(duplicates):
        first = duplicates.row(0, named=True)
        raise MemsweepError(f"cells table holds cell (ckpt={first['ckpt']}, chunk={first['chunk']}) more than once")
    chunk_names = [str(c) for c in long["chunk"].unique(maintain_order=True)]
    if not chunk_names:
        return pl.DataFrame(schema={"ckpt": pl.Int32()})
    wide = long.pivot(on="chunk", index="ckpt", values=metric).sort("ckpt")
    return wide.select("ckpt", *chunk_names)


def chunk_trajectories(cells: Frame, chunks: list[int], metric: str = "score") -> pl.DataFrame:
    """How one cell metric of the given chunks moves over checkpoints.

    Returns long rows (`chunk`, `ckpt`, `<metric>`, `seen`) sorted by chunk then checkpoint, for
    plotting one line per chunk. Raises MemsweepError naming any requested chunk with no cells.
    """
    _check_metric(metric)
    rows = (
        cells.lazy()
        .filter(pl.col("chunk").is_in(list(chunks)))
        .select("chunk", "ckpt", pl.col(metric).cast(pl.Float64), (pl.col("chunk") <= pl.col("ckpt")).alias("seen"))
        .sort("chunk", "ckpt")
        .collect()
    )
    missing = sorted(set(chunks) - set(rows["chunk"].to_list()))
    if missing:
        raise MemsweepError(f"chunks {missing} have no cells in the dataset")
    return rows


def score_distribution(sequences: Frame, ckpt: int | None = None, column: str = "score") -> pl.DataFrame:
    """Histogram of a per-sequence value at one checkpoint (default: the last one).

    The values are discrete (score = matches / l, prefix_match in tokens), so each distinct value
    is its own bin. Returns (`<column>`, `count`, `fraction`) sorted by value; nulls are left out
    (in extractable mode the score is null: use column="prefix_match"). On load_tables' scan it
    reads one checkpoint's partition (under a second at full Amber scale).
    """
    if column not in ("score", "matches", "prefix_match"):
        raise MemsweepError(f"unknown sequence column {column!r}; choose score, matches or prefix_match")
    sequences = sequences.lazy()
    if ckpt is None:
        ckpt = _last_ckpt(sequences)
    return (
        sequences.filter(pl.col("ckpt") == ckpt)
        .drop_nulls(column)
        .group_by(column)
        .agg(pl.len().alias("count"))
        .sort(column)
        .with_columns((pl.col("count") / pl.col("count").sum()).alias("fraction"))
        .collect(engine="streaming")
    )


def per_source(sequences: Frame) -> pl.DataFrame:
    """Memorization by data source (refinedweb, starcoderdata, ...) at each checkpoint.

    Returns (`ckpt`, `source`, `n`, `score` mean (null in extractable mode), `full_match_rate`,
    `mean_prefix_match` in tokens) sorted by checkpoint, then by n descending.

    Streams every row it is given: about 3 s and 0.2 GB for all of 360 x 360 x 1000 rows. For one
    checkpoint, filter first (`per_source(sequences.filter(pl.col("ckpt") == c))`): on
    load_tables' scan that reads only that checkpoint's partition.
    """
    return (
        sequences.lazy()
        .group_by("ckpt", "source")
        .agg(
            pl.len().alias("n"),
            pl.col("score").cast(pl.Float64).mean().alias("score"),
            pl.col("full_match").cast(pl.Float64).mean().alias("full_match_rate"),
            pl.col("prefix_match").cast(pl.Float64).mean().alias("mean_prefix_match"),
        )
        .sort(["ckpt", "n", "source"], descending=[False, True, False])
        .collect(engine="streaming")
    )


PREDICTABILITY_SCHEMA = {
    "ckpt": pl.Int32(),
    "final_ckpt": pl.Int32(),
    "n_sequences": pl.UInt32(),
    "n_memorized": pl.UInt32(),
    "n_memorized_final": pl.UInt32(),
    "n_both": pl.UInt32(),
    "precision": pl.Float64(),
    "recall": pl.Float64(),
}


def predictability(sequences: Frame, final_ckpt: int | None = None) -> pl.DataFrame:
    """How well an earlier checkpoint's memorized set predicts the final one's (Biderman et al. 2023).

    For each checkpoint c < final_ckpt (default: the last checkpoint), on the sequences both have
    seen and scored (chunk <= c, matched on (chunk, row); a null full_match on either side leaves
    the sequence out), with M_c = {full_match at c} and M_final = {full_match at final_ckpt}:

        n_sequences        the sequences compared
        n_memorized        |M_c|
        n_memorized_final  |M_final| on those sequences
        n_both             |M_c & M_final|
        precision          n_both / n_memorized        (null when n_memorized is 0)
        recall             n_both / n_memorized_final  (null when n_memorized_final is 0)

    One row per earlier checkpoint, ascending; empty (same columns) with a single checkpoint.
    Streams the seen rows of every checkpoint against the final set (a streaming join): about
    5 s and 0.3 GB at full Amber scale (360 x 360 x 1000 rows, half of them seen).
    """
    sequences = sequences.lazy()
    if final_ckpt is None:
        final_ckpt = _last_ckpt(sequences)
    elif sequences.filter(pl.col("ckpt") == final_ckpt).select(pl.len()).collect().item() == 0:
        raise MemsweepError(f"final_ckpt={final_ckpt} has no sequences in the dataset")
    final = sequences.filter(pl.col("ckpt") == final_ckpt).select(
        "chunk", "row", pl.col("full_match").alias("memorized_final")
    )
    earlier = sequences.filter((pl.col("ckpt") < final_ckpt) & (pl.col("chunk") <= pl.col("ckpt"))).select(
        "ckpt", "chunk", "row", pl.col("full_match").alias("memorized")
    )
    pairs = earlier.join(final, on=["chunk", "row"], how="inner").rename({"memorized_final": "memorized_target"})
    return (
        memorized_set_agreement(pairs, ["ckpt"])
        .rename({"n_memorized_target": "n_memorized_final"})
        .with_columns(pl.lit(final_ckpt, dtype=pl.Int32).alias("final_ckpt"))
        .select([pl.col(name).cast(dtype) for name, dtype in PREDICTABILITY_SCHEMA.items()])
        .sort("ckpt")
        .collect(engine="streaming")
    )


def memorized_set_agreement(pairs: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
    """How well one memorized set predicts another, per group of `by`: `pairs` holds one row per sequence compared,
    with `memorized` (in the predicting set) and `memorized_target` (in the predicted one); a null on either side
    leaves the sequence out. Returns `by`, then n_sequences, n_memorized, n_memorized_target, n_both, precision
    (n_both / n_memorized) and recall (n_both / n_memorized_target), each null when its denominator is 0; lazy."""
    both = pl.col("memorized") & pl.col("memorized_target")
    return (
        pairs.drop_nulls(["memorized", "memorized_target"])
        .group_by(by)
        .agg(
            pl.len().alias("n_sequences"),
            pl.col("memorized").sum().alias("n_memorized"),
            pl.col("memorized_target").sum().alias("n_memorized_target"),
            both.sum().alias("n_both"),
        )
        .with_columns(
            (pl.col("n_both") / pl.when(pl.col("n_memorized") > 0).then(pl.col("n_memorized"))).alias("precision"),
            (pl.col("n_both") / pl.when(pl.col("n_memorized_target") > 0).then(pl.col("n_memorized_target")))
            .alias("recall"),
        )
    )


FORGET_MIN_MISSES = 3  # consecutive scored misses after a first full match that count as forgetting

FIRST_MEMORIZED_SCHEMA = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),
    "source": pl.String(),
    "n_ckpts": pl.UInt32(),
    "n_memorized_ckpts": pl.UInt32(),
    "first_memorized_ckpt": pl.Int32(),
    "last_memorized_ckpt": pl.Int32(),
    "longest_miss_run": pl.UInt32(),
    "forgotten": pl.Boolean(),
    "memorized_at_last": pl.Boolean(),
    "memorized_before_seen": pl.Boolean(),
}


def first_memorized(sequences: Frame, min_misses: int = FORGET_MIN_MISSES,
                    memorized_only: bool = False) -> pl.DataFrame:
    """When each sequence was first memorized, and whether it was forgotten afterwards.

    One row per (chunk, row) with at least one non-null full_match, sorted by chunk then row:
        source                  the row's data source (as at the first checkpoint that scored it)
        n_ckpts                 checkpoints that scored it (non-null full_match)
        n_memorized_ckpts       of those, how many had it fully memorized
        first_memorized_ckpt    first checkpoint with full_match (null if never)
        last_memorized_ckpt     last checkpoint with full_match (null if never)
        longest_miss_run        the longest run of consecutive scoring checkpoints without a full
                                match after the first one with it (0 if never memorized)
        forgotten               longest_miss_run >= min_misses: after its first full match, it
                                was not reproduced at `min_misses` (default 3) checkpoints in a row
        memorized_at_last       full_match at the last checkpoint that scored it
        memorized_before_seen   first memorized at a checkpoint that had not trained on its chunk

    Why a run and not any later miss: a memorized sequence that misses one token at a single
    checkpoint (the greedy continuation flickers) is not counted as forgotten, because with 360
    checkpoints almost every memorized sequence misses somewhere (min_misses=1 gives that "any
    later miss" count). "Consecutive" counts the checkpoints that scored the sequence, whatever
    their spacing: with every 10th checkpoint scored, 3 misses span 30 checkpoints.

    `memorized_only`: keep state only for sequences fully memorized at some checkpoint, from their first full match
    on (the rows never memorized are left out, and `n_ckpts` is null: the checkpoints before the first full match are
    not counted). What the report uses: its state grows with the memorized sequences (Pythia 12B: 2.4M), not with a
    census's 146M sequences a checkpoint, and each checkpoint's partition is read streaming, filtered to those rows.

    Cost at full Amber scale (360 x 360 x 1000 = 129.6M rows): about 4 s and 0.3 GB of RSS on two
    cores (BENCHMARKS.md). Checkpoints are read in order, one partition each when `sequences` is
    load_tables' scan (a filter on `ckpt` prunes to that partition's files): one checkpoint's
    (key, full_match) in memory at a time, plus a few arrays of one entry per sequence (360k).
    """
    if min_misses < 1:
        raise MemsweepError(f"min_misses must be at least 1 (got {min_misses})")
    history = _SequenceHistory()
    for ckpt, part in by_checkpoint(sequences):
        part = part.drop_nulls("full_match")
        if memorized_only:  # this checkpoint's full matches, and the sequences memorized at an earlier one
            held = pl.Series("held", history.keys, dtype=pl.Int64)
            part = part.filter(pl.col("full_match") | SEQUENCE_KEY.is_in(held.implode()))
            scored = part.select(SEQUENCE_KEY, "full_match").collect(engine="streaming").sort("key")
        else:
            scored = part.select(SEQUENCE_KEY, "full_match").collect()
        if scored.height:
            # Sources are read only for checkpoints that bring sequences not seen before.
            engine = "streaming" if memorized_only else "auto"
            history.add(ckpt, scored, lambda part=part: part.select(SEQUENCE_KEY, "source").collect(engine=engine))
    table = history.frame(min_misses)
    return table.with_columns(pl.lit(None, FIRST_MEMORIZED_SCHEMA["n_ckpts"]).alias("n_ckpts")) if memorized_only \
        else table


class _SequenceHistory:
    """Per-sequence counters for first_memorized, updated one checkpoint at a time, in order.

    Sequences are keyed by SEQUENCE_KEY (int64, sorted = sorted by (chunk, row)); every state
    array is indexed like `keys`.
    """

    NONE = np.iinfo(np.int64).min  # "no checkpoint yet" in first/last

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.n_ckpts = np.empty(0, dtype=np.uint32)
        self.n_memorized = np.empty(0, dtype=np.uint32)
        self.first = np.empty(0, dtype=np.int64)
        self.last = np.empty(0, dtype=np.int64)
        self.at_last = np.empty(0, dtype=bool)
        self.miss_run = np.empty(0, dtype=np.uint32)  # consecutive misses since the first full match
        self.longest_miss_run = np.empty(0, dtype=np.uint32)
        self.sources: list[pl.DataFrame] = []
        self._previous: tuple[np.ndarray, np.ndarray | slice] | None = None  # (partition keys, positions)

    def add(self, ckpt: int, scored: pl.DataFrame, read_sources) -> None:
        """Fold in checkpoint `ckpt` (called in ascending order): `scored` has `key` and a non-null full_match."""
        at = self._positions(key_array(scored), read_sources)
        memorized = scored["full_match"].to_numpy()
        self.n_ckpts[at] += 1
        self.n_memorized[at] += memorized
        first = self.first[at]
        first[memorized & (first == self.NONE)] = ckpt
        self.first[at] = first
        last = self.last[at]
        last[memorized] = ckpt
        self.last[at] = last
        self.at_last[at] = memorized
        # Misses in a row since the first full match (0 before it and after every hit).
        run = self.miss_run[at] + 1
        run[memorized | (first == self.NONE)] = 0
        self.miss_run[at] = run
        self.longest_miss_run[at] = np.maximum(self.longest_miss_run[at], run)

    def _positions(self, keys: np.ndarray, read_sources) -> np.ndarray | slice:
        """Where each of `keys` sits in the state arrays (a slice when they are all of them, in order)."""
        # Most checkpoints score the same sequences in the same order: reuse the last lookup.
        if self._previous is not None and np.array_equal(self._previous[0], keys):
            return self._previous[1]
        positions = np.searchsorted(self.keys, keys)
        known = positions < self.keys.size
        known[known] = self.keys[positions[known]] == keys[known]
        if not known.all():
            fresh = keys[~known]
            # A compacted partition is sorted by (chunk, row): skip the sort np.unique would do.
            if fresh.size > 1 and not (np.diff(fresh) > 0).all():
                fresh = np.unique(fresh)
            self._grow(fresh)
            sources = read_sources()
            if not known.any():
                self.sources.append(sources)
            else:
                self.sources.append(sources.filter(pl.Series(np.isin(key_array(sources), fresh))))
            positions = np.searchsorted(self.keys, keys)
        if positions.size == self.keys.size and np.array_equal(positions, np.arange(positions.size)):
            positions = slice(None)
        self._previous = (keys, positions)
        return positions

    def _grow(self, new_keys: np.ndarray) -> None:
        """Add sorted, unique keys not held yet; existing state moves to the keys' new positions."""
        merged = np.union1d(self.keys, new_keys) if self.keys.size else new_keys
        old_at = np.searchsorted(merged, self.keys)
        for name, fill in (("n_ckpts", 0), ("n_memorized", 0), ("first", self.NONE), ("last", self.NONE),
                           ("at_last", False), ("miss_run", 0), ("longest_miss_run", 0)):
            old = getattr(self, name)
            grown = np.full(merged.size, fill, dtype=old.dtype)
            grown[old_at] = old
            setattr(self, name, grown)
        self.keys = merged

    def frame(self, min_misses: int) -> pl.DataFrame:
        """The first_memorized table (FIRST_MEMORIZED_SCHEMA), sorted by chunk then row."""
        if self.keys.size == 0:
            return pl.DataFrame(schema=FIRST_MEMORIZED_SCHEMA)
        sources = pl.concat(self.sources).unique("key", keep="first").sort("key")
        table = pl.DataFrame(
            {
                "chunk": self.keys >> 32,
                "row": self.keys & 0xFFFFFFFF,
                "source": sources["source"],
                "n_ckpts": self.n_ckpts,
                "n_memorized_ckpts": self.n_memorized,
                "first_memorized_ckpt": self.first,
                "last_memorized_ckpt": self.last,
                "longest_miss_run": self.longest_miss_run,
                "memorized_at_last": self.at_last,
            }
        )
        never = pl.col("first_memorized_ckpt") == self.NONE
        table = table.with_columns(
            pl.when(~never).then(pl.col(name)).alias(name) for name in ("first_memorized_ckpt", "last_memorized_ckpt")
        )
        return table.with_columns(
            (pl.col("longest_miss_run") >= min_misses).alias("forgotten"),
            (pl.col("first_memorized_ckpt") < pl.col("chunk")).fill_null(False).alias("memorized_before_seen"),
        ).select([pl.col(name).cast(dtype) for name, dtype in FIRST_MEMORIZED_SCHEMA.items()])


MAX_BARS = 60  # first_memorized_counts: more checkpoints than this are binned


def first_memorized_counts(memorized: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Sequences first memorized per checkpoint bin, and the bin width in checkpoints.

    `memorized`: first_memorized rows with a first_memorized_ckpt. One bin per checkpoint while
    the first checkpoints span at most MAX_BARS; beyond, bins of `step` checkpoints (360
    checkpoints: 60 bars of 6 instead of 360 hairlines). Returns (`bin`: first checkpoint of the
    bin, `all`, `forgotten`) sorted by bin, and step.
    """
    first_ckpts = memorized["first_memorized_ckpt"]
    step = max(1, -(-(int(first_ckpts.max()) - int(first_ckpts.min()) + 1) // MAX_BARS))
    counts = (
        memorized.group_by((pl.col("first_memorized_ckpt") // step * step).alias("bin"))
        .agg(pl.len().alias("all"), pl.col("forgotten").sum().alias("forgotten"))
        .sort("bin")
    )
    return counts, step


def generated_length(sequences: pl.LazyFrame) -> int | None:
    """l, the generated tokens per sequence, read off the data as matches / score of one scored row (None if none)."""
    row = (
        sequences.filter(pl.col("score") > 0)
        .select((pl.col("matches").cast(pl.Float64) / pl.col("score").cast(pl.Float64)).round().cast(pl.Int64))
        .drop_nulls()
        .head(1)
        .collect()
    )
    return int(row.item()) if row.height else None


def is_extractable_mode(table: Frame) -> bool:
    """True when the table's `score` is null everywhere (a sweep run in extractable mode)."""
    return table.lazy().select(pl.col("score").is_not_null().any()).collect().item() is not True


def _last_ckpt(sequences: pl.LazyFrame) -> int:
    last = sequences.select(pl.col("ckpt").max()).collect().item()
    if last is None:
        raise MemsweepError("the sequences table is empty")
    return int(last)
