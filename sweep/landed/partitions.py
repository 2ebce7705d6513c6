"""The landed sequences table read one checkpoint partition at a time, and a sequence's key.

Analyses over a full-size output (129.6M rows for Amber) never hold the sequences table: they fold over
`by_checkpoint`, whose `ckpt == c` filter prunes the reader's scan to partition c's files, and join sequences by one
Int64 key instead of (chunk, row).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sweep.errors import MemsweepError

Frame = pl.LazyFrame | pl.DataFrame


# A sequence's key: chunk * 2**32 + row as one Int64, ordered like (chunk, row); null where the
# row number does not fit in 32 bits (row numbers are line numbers in a chunk file).
SEQUENCE_KEY = (
    pl.when(pl.col("row").is_between(0, (1 << 32) - 1))
    .then(pl.col("chunk").cast(pl.Int64) * (1 << 32) + pl.col("row").cast(pl.Int64))
    .alias("key")
)


def key_array(frame: pl.DataFrame) -> np.ndarray:
    """The `key` column (see SEQUENCE_KEY) as int64; raises if a row number did not fit."""
    if frame["key"].null_count():
        raise MemsweepError("sequences table: row numbers must lie in 0..2**32-1 to tell sequences apart")
    return frame["key"].to_numpy()


def by_checkpoint(sequences: Frame):
    """(ckpt, that checkpoint's rows as a LazyFrame) for every checkpoint, ascending.

    On load_tables' scan the `ckpt == c` filter prunes the scan to partition c's files, so a
    consumer that collects one at a time holds one checkpoint's rows (360k at full Amber scale).
    Any other LazyFrame is filtered once per checkpoint (fine for small, in-memory ones).
    """
    if isinstance(sequences, pl.DataFrame):
        parts = sequences.partition_by("ckpt", as_dict=True)
        for (ckpt,) in sorted(parts):
            yield int(ckpt), parts[(ckpt,)].lazy()
        return
    ckpts = sequences.select(pl.col("ckpt").unique().sort()).collect(engine="streaming")["ckpt"]
    for ckpt in ckpts.drop_nulls().to_list():
        yield int(ckpt), sequences.filter(pl.col("ckpt") == ckpt)
