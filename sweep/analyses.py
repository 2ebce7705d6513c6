"""Analyses of a landed memsweep dataset: each one a Polars function, tables in, DataFrame out.

The landed dataset (see docs/architecture.md) has two hive-partitioned tables:

    <output>/sequences/ckpt=<c>/*.parquet   one row per (ckpt, chunk, row)
    <output>/cells/ckpt=<c>/*.parquet       one row per (ckpt, chunk) cell

`load_tables` opens them through the store (the one reader of the layout, shared with `memsweep query`).
Every other function
takes those tables (LazyFrame or DataFrame) and returns a small, collected DataFrame. A sequence
is identified by (chunk, row); checkpoint c has seen chunk x when x <= c (Amber saved checkpoint
i after training on chunk i). "Memorized" means full_match: all l generated tokens are right.
The same analyses as Polars SQL are in docs/queries.md.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sweep.store import CELL_SCHEMA, SEQUENCE_SCHEMA

# The landed column types are the store's contract; the reader casts to them so every consumer
# sees one schema even where files hold wider or all-null columns.
SEQUENCES_SCHEMA = SEQUENCE_SCHEMA
CELLS_SCHEMA = CELL_SCHEMA
CELL_METRICS = ("score", "full_match_rate", "mean_prefix_match", "nll", "tf_accuracy")

Frame = pl.LazyFrame | pl.DataFrame


def load_tables(output: Path | str) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Open a landed dataset as (sequences, cells) LazyFrames, each with `ckpt` Int32 first.

    The store is the one reader of its layout: only the files its ledgers list are read (a stray copy in a
    partition is never data), each checked against its recorded size first (DamagedOutputError names a file
    that is not). sequences: one row per (ckpt, chunk, row), columns as SEQUENCES_SCHEMA; cells: one row per
    (ckpt, chunk), columns as CELLS_SCHEMA; columns a file lacks read as typed nulls. Nothing is read until a
    query collects.
    """
    from sweep.store import ResultStore

    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(f"{output}: no such output folder")
    store = ResultStore(output)
    if not store.manifest_path.exists():
        raise FileNotFoundError(f"{output}: no manifest.json (not a memsweep output)")
    store.read_manifest()
    return store.sequences(), store.cells()


def _check_metric(metric: str) -> None:
    if metric not in CELL_METRICS:
        raise ValueError(f"unknown cell metric {metric!r}; choose one of {', '.join(CELL_METRICS)}")


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
        raise ValueError(f"cells table holds cell (ckpt={first['ckpt']}, chunk={first['chunk']}) more than once")
    chunk_names = [str(c) for c in long["chunk"].unique(maintain_order=True)]
    if not chunk_names:
        return pl.DataFrame(schema={"ckpt": pl.Int32()})
    wide = long.pivot(on="chunk", index="ckpt", values=metric).sort("ckpt")
    return wide.select("ckpt", *chunk_names)


def chunk_trajectories(cells: Frame, chunks: list[int], metric: str = "score") -> pl.DataFrame:
    """How one cell metric of the given chunks moves over checkpoints.

    Returns long rows (`chunk`, `ckpt`, `<metric>`, `seen`) sorted by chunk then checkpoint, for
    plotting one line per chunk. Raises ValueError naming any requested chunk with no cells.
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
        raise ValueError(f"chunks {missing} have no cells in the dataset")
    return rows


def score_distribution(sequences: Frame, ckpt: int | None = None, column: str = "score") -> pl.DataFrame:
    """Histogram of a per-sequence value at one checkpoint (default: the last one).

    The values are discrete (score = matches / l, prefix_match in tokens), so each distinct value
    is its own bin. Returns (`<column>`, `count`, `fraction`) sorted by value; nulls are left out
    (in extractable mode the score is null: use column="prefix_match").
    """
    if column not in ("score", "matches", "prefix_match"):
        raise ValueError(f"unknown sequence column {column!r}; choose score, matches or prefix_match")
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
        .collect()
    )


def per_source(sequences: Frame) -> pl.DataFrame:
    """Memorization by data source (refinedweb, starcoderdata, ...) at each checkpoint.

    Returns (`ckpt`, `source`, `n`, `score` mean (null in extractable mode), `full_match_rate`,
    `mean_prefix_match` in tokens) sorted by checkpoint, then by n descending.
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
        .collect()
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
    """
    sequences = sequences.lazy()
    if final_ckpt is None:
        final_ckpt = _last_ckpt(sequences)
    elif sequences.filter(pl.col("ckpt") == final_ckpt).select(pl.len()).collect().item() == 0:
        raise ValueError(f"final_ckpt={final_ckpt} has no sequences in the dataset")
    final = sequences.filter(pl.col("ckpt") == final_ckpt).select(
        "chunk", "row", pl.col("full_match").alias("memorized_final")
    )
    earlier = sequences.filter((pl.col("ckpt") < final_ckpt) & (pl.col("chunk") <= pl.col("ckpt"))).select(
        "ckpt", "chunk", "row", pl.col("full_match").alias("memorized")
    )
    both = pl.col("memorized") & pl.col("memorized_final")
    counts = (
        earlier.join(final, on=["chunk", "row"], how="inner")
        .drop_nulls(["memorized", "memorized_final"])
        .group_by("ckpt")
        .agg(
            pl.len().alias("n_sequences"),
            pl.col("memorized").sum().alias("n_memorized"),
            pl.col("memorized_final").sum().alias("n_memorized_final"),
            both.sum().alias("n_both"),
        )
    )
    return (
        counts.with_columns(pl.lit(final_ckpt, dtype=pl.Int32).alias("final_ckpt"))
        .with_columns(
            (pl.col("n_both") / pl.when(pl.col("n_memorized") > 0).then(pl.col("n_memorized"))).alias("precision"),
            (pl.col("n_both") / pl.when(pl.col("n_memorized_final") > 0).then(pl.col("n_memorized_final"))).alias(
                "recall"
            ),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in PREDICTABILITY_SCHEMA.items()])
        .sort("ckpt")
        .collect()
    )


def first_memorized(sequences: Frame) -> pl.DataFrame:
    """When each sequence was first memorized, and whether it was forgotten afterwards.

    One row per (chunk, row), sorted by chunk then row:
        source                  the row's data source
        n_ckpts                 checkpoints that scored it (non-null full_match)
        n_memorized_ckpts       of those, how many had it fully memorized
        first_memorized_ckpt    first checkpoint with full_match (null if never)
        last_memorized_ckpt     last checkpoint with full_match (null if never)
        forgotten               memorized, then not at some later checkpoint
        memorized_at_last       full_match at the last checkpoint that scored it
        memorized_before_seen   first memorized at a checkpoint that had not trained on its chunk
    """
    scored = sequences.lazy().drop_nulls("full_match")
    memorized = pl.col("full_match")
    first_ckpt = pl.col("ckpt").filter(memorized).min()
    return (
        scored.group_by("chunk", "row")
        .agg(
            pl.col("source").first(),
            pl.len().alias("n_ckpts"),
            memorized.sum().cast(pl.UInt32).alias("n_memorized_ckpts"),
            first_ckpt.alias("first_memorized_ckpt"),
            pl.col("ckpt").filter(memorized).max().alias("last_memorized_ckpt"),
            # Forgotten: some checkpoint after the first memorized one no longer reproduces it.
            (pl.col("ckpt").filter(~memorized).max() > first_ckpt).fill_null(False).alias("forgotten"),
            memorized.sort_by("ckpt").last().alias("memorized_at_last"),
        )
        .with_columns(
            (pl.col("first_memorized_ckpt") < pl.col("chunk")).fill_null(False).alias("memorized_before_seen")
        )
        .sort("chunk", "row")
        .collect()
    )


def is_extractable_mode(table: Frame) -> bool:
    """True when the table's `score` is null everywhere (a sweep run in extractable mode)."""
    return table.lazy().select(pl.col("score").is_not_null().any()).collect().item() is not True


def _last_ckpt(sequences: pl.LazyFrame) -> int:
    last = sequences.select(pl.col("ckpt").max()).collect().item()
    if last is None:
        raise ValueError("the sequences table is empty")
    return int(last)
