"""What the landed exposure counts add up to, computed once: the files scanned for each probe chunk, and each
sequence's totals over them. The reader's `exposures` table is these (sweep/landed/reader.py), and so is every
total that `ExposureHistory` (sweep/exposures/history.py) hands the analyses, `memsweep show` and the explorer.

Polars, lazily: the totals are one group-by over the count rows (one per nonzero (sequence, scanned file) pair) and
two joins, which Polars' streaming engine runs in bounded memory however many rows have landed, and whose integer
sums are exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import polars as pl

from sweep.landed.schema import EXPOSURES_SCHEMA

FILES_SCANNED_SCHEMA = {"chunk": pl.Int32(), "chunks_scanned": pl.Int32()}


def files_scanned(scanned: Mapping[int, Iterable[int]]) -> pl.DataFrame:
    """Per probe chunk, how many chunk files have been scanned for its sequences: `chunk`, `chunks_scanned`, by
    chunk (a probe chunk no file was scanned for has no row). `scanned`: chunk file -> the probe chunks its landed
    scans counted."""
    files = Counter(chunk for probe_chunks in scanned.values() for chunk in set(probe_chunks))
    chunks = sorted(files)
    return pl.DataFrame({"chunk": chunks, "chunks_scanned": [files[chunk] for chunk in chunks]},
                        schema=FILES_SCANNED_SCHEMA)


def sequence_totals(sequences: pl.LazyFrame, counts: pl.LazyFrame, files: pl.LazyFrame) -> pl.LazyFrame:
    """One row per sequence of `sequences` (`chunk, row`), in EXPOSURES_SCHEMA: `window_count` and `prompt_count`
    summed over every scanned file, `first_chunk` / `last_chunk` (the first and last scanned file holding its window;
    null: none does) and `chunks_scanned` (from `files`, files_scanned's table).

    `counts`: the count rows (`chunk, row, seen_chunk, window_count, prompt_count`; rows of other sequences are
    ignored). A sequence whose probe chunk no file was scanned for has null counts and `chunks_scanned` null, never
    0: a count not made is not a count of zero.
    """
    held = pl.col("window_count") > 0
    totals = counts.group_by("chunk", "row").agg(
        pl.col("window_count").sum(), pl.col("prompt_count").sum(),
        pl.col("seen_chunk").filter(held).min().alias("first_chunk"),
        pl.col("seen_chunk").filter(held).max().alias("last_chunk"))
    scanned = pl.col("chunks_scanned").is_not_null()
    return (sequences.select("chunk", "row")
            .join(totals, on=["chunk", "row"], how="left")
            .join(files, on="chunk", how="left")
            .with_columns(pl.when(scanned).then(pl.col(name).fill_null(0)).alias(name)
                          for name in ("window_count", "prompt_count"))
            .select([pl.col(name).cast(dtype) for name, dtype in EXPOSURES_SCHEMA.items()]))
