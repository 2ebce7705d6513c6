"""The landed tables' columns and the few functions that build their rows (docs/architecture.md, "Contracts").

- `sequences`: one row per (ckpt, chunk, row) scored: SEQUENCE_SCHEMA (`ckpt` comes from the partition);
- `cells`: one row per (ckpt, chunk): CELL_SCHEMA, the sequences' means plus the cell's provenance;
- `probes`: one row per sampled (chunk, row): PROBE_SCHEMA (prompt and true continuation ids).

`score_columns` turns an actor's per-sequence scores into sequence columns, `summarize_cell` a cell's conformed
sequences and its `CellProvenance` into its cell row, `probe_frame` sampled rows into a probe set.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import MISSING, dataclass, fields

import numpy as np
import polars as pl

from actors.protocol import BatchScores, one_line
from sweep.errors import MemsweepError
from sweep.landed.ledger import CheckpointPin

SEQUENCE_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),  # jsonl: the line of the chunk file; megatron / numpy: the position inside the chunk
    "index": pl.Int64(),  # the global stream position (megatron / numpy, as Pythia's datasets call it); null for jsonl
    "source": pl.String(),  # the row's corpus label in the chunk file (refinedweb, starcoderdata, ...); null if none
    "seen": pl.Boolean(),  # the checkpoint has trained on this very sequence (sweep/timeline.py)
    "matches": pl.Int16(),  # null in extractable mode
    "score": pl.Float32(),  # matches / l; null in extractable mode
    "full_match": pl.Boolean(),
    "prefix_match": pl.Int16(),
    "match_mask": pl.Binary(),  # packed bits, bit i = generated position i, little bit order
    "nll": pl.Float32(),  # mean teacher-forced NLL of the true continuation, nats/token
    "tf_accuracy": pl.Float32(),  # teacher-forced next-token accuracy
    "generated": pl.List(pl.UInt32()),  # the model's l greedy tokens (memorization.keep_generated)
    # the smallest top-1 minus top-2 logit gap (nats) over the decisions up to and at the first mismatch: how near
    # `full_match` / `prefix_match` are to a flip; null in cells landed before it was recorded
    "decision_margin": pl.Float32(),
}
# Columns a caller may leave out; they land as nulls.
OPTIONAL_SEQUENCE_COLUMNS = frozenset({"index", "seen", "matches", "score", "match_mask", "nll", "tf_accuracy",
                                       "generated", "decision_margin"})

CELL_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "n": pl.Int32(),
    "score": pl.Float64(),
    "full_match_rate": pl.Float64(),
    "mean_prefix_match": pl.Float64(),
    "nll": pl.Float64(),
    "tf_accuracy": pl.Float64(),
    "seen": pl.Boolean(),  # the checkpoint has trained on at least part of the chunk (Amber: chunk <= ckpt)
    "seen_fraction": pl.Float64(),  # the share of the chunk it has trained on (sweep/timeline.py): 0, 1, or between
    "seconds": pl.Float64(),  # wall time spent scoring the cell
    "sequences_per_s": pl.Float64(),
    "device": pl.String(),
    "dtype": pl.String(),  # the compute dtype
    "batch_size": pl.Int32(),
    "attempts": pl.Int32(),
    "finished_at": pl.String(),  # UTC ISO 8601
    "model_revision": pl.String(),  # the revision named by the spec (Hub branch, or local sub-folder)
    "model_commit": pl.String(),  # the Hub commit it was pinned to (null for a local folder)
    "weights_fingerprint": pl.String(),  # actors.loading.weights_fingerprint of the loaded weights
    "stored_dtype": pl.String(),  # the dtype the checkpoint is stored in (Amber: float32 .bin, main bf16)
    "data_file": pl.String(),  # the chunk file inside the data source
    "data_sha256": pl.String(),  # content identity of the chunk file the probe set was sampled from
}
CELL_METRICS = ("score", "full_match_rate", "mean_prefix_match", "nll", "tf_accuracy")

PROBE_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),  # 0-based line number in the chunk file, or position inside the chunk (megatron / numpy)
    "index": pl.Int64(),  # the global stream position (megatron / numpy); null for jsonl
    "source": pl.String(),
    "tokens": pl.List(pl.UInt32()),  # the first k + l token ids: prompt, then true continuation
}


# Exposure counts (sweep/exposures/scans.py): one row per (probe sequence, scanned chunk file) with an occurrence.
EXPOSURE_COUNT_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),  # the probe sequence: its chunk ...
    "row": pl.Int64(),  # ... and row
    "seen_chunk": pl.Int32(),  # the chunk file scanned
    "window_count": pl.Int64(),  # (row, offset) positions of that file holding the sequence's k + l ids
    "prompt_count": pl.Int64(),  # ... holding its first k ids
    # megatron / numpy: the stream position of the item holding each window occurrence, ascending (window_count of
    # them), which places every occurrence before or after a checkpoint inside the chunk; null for jsonl files
    "window_index": pl.List(pl.Int64()),
}
# One row per scan of a chunk file (from its ledger): what it read and what it cost.
EXPOSURE_SCAN_SCHEMA: dict[str, pl.DataType] = {
    "seen_chunk": pl.Int32(),
    "data_file": pl.String(),
    "data_sha256": pl.String(),  # content identity of the file scanned (pinned like probe sets)
    "probe_chunks": pl.List(pl.Int32()),  # whose probe sequences it counted
    "probes": pl.Int64(),  # how many probe sequences
    "rows": pl.Int64(),
    "tokens": pl.Int64(),
    "bytes": pl.Int64(),
    "seconds": pl.Float64(),  # wall time of the scan task
    "cpu_seconds": pl.Float64(),
    "cpus": pl.Float64(),  # cpu_seconds / seconds: the cores the task kept busy
    "scanned_at": pl.String(),  # UTC ISO 8601
}
# One row per probe sequence (derived from the two above and the probe sets).
EXPOSURES_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),
    "window_count": pl.Int64(),  # occurrences over every chunk file scanned for it (null: none scanned)
    "prompt_count": pl.Int64(),
    "first_chunk": pl.Int32(),  # first / last scanned chunk holding a window occurrence (null if none)
    "last_chunk": pl.Int32(),
    "chunks_scanned": pl.Int32(),  # chunk files its counts cover
}


@dataclass(frozen=True)
class CellProvenance:
    """How, where and from what one cell was scored: the cell row's columns that are not means."""

    seconds: float  # wall time scoring the cell, checkpoint load excluded
    device: str
    dtype: str  # the compute dtype
    batch_size: int
    attempts: int = 1
    finished_at: str | None = None  # UTC ISO 8601; None: when it lands
    model_revision: str | None = None
    model_commit: str | None = None
    weights_fingerprint: str | None = None
    stored_dtype: str | None = None
    data_file: str | None = None
    data_sha256: str | None = None

    def pin(self) -> CheckpointPin:
        """What the checkpoint's ledger pins when its first cell lands."""
        return CheckpointPin(self.model_revision, self.model_commit, self.weights_fingerprint, self.stored_dtype)

    @classmethod
    def from_dict(cls, record: dict) -> CellProvenance:
        """From a cell record (or any dict holding its keys); extra keys are ignored."""
        names = [field.name for field in fields(cls)]
        missing = [field.name for field in fields(cls) if field.default is MISSING and record.get(field.name) is None]
        if missing:
            raise MemsweepError(f"cell provenance: missing key(s) {missing}")
        return cls(**{name: record[name] for name in names if name in record})


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """`frame` with exactly `schema`'s columns in order, cast; columns it lacks become typed nulls."""
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in schema.items() if name not in frame.columns]
    return frame.with_columns(missing).select([pl.col(name).cast(dtype) for name, dtype in schema.items()])


def conform_sequences(sequences: pl.DataFrame, ckpt: int, chunk: int) -> pl.DataFrame:
    """Cast one cell's `sequences` to SEQUENCE_SCHEMA (column order included), or raise naming the column."""
    where = f"sequences for ckpt {ckpt} chunk {chunk}"
    if list(sequences.schema.items()) != list(SEQUENCE_SCHEMA.items()):  # the driver's own cells match already
        sequences = _cast_to_sequence_schema(sequences, ckpt, where)
    if sequences.height and not (sequences["chunk"] == chunk).all():
        raise MemsweepError(f"{where}: column 'chunk' holds values other than {chunk}")
    if sequences["row"].n_unique() != sequences.height:
        raise MemsweepError(f"{where}: column 'row' holds a row more than once")
    return sequences


def _cast_to_sequence_schema(sequences: pl.DataFrame, ckpt: int, where: str) -> pl.DataFrame:
    names = sequences.columns
    if "ckpt" in names:
        # The checkpoint lives in the partition path; a stray column must at least agree with it.
        if not (sequences["ckpt"] == ckpt).all():
            raise MemsweepError(f"{where}: column 'ckpt' holds values other than {ckpt}")
        sequences = sequences.drop("ckpt")
        names.remove("ckpt")
    extra = [name for name in names if name not in SEQUENCE_SCHEMA]
    if extra:
        raise MemsweepError(f"{where}: unexpected column(s) {extra}; expected {list(SEQUENCE_SCHEMA)}")
    missing = [n for n in SEQUENCE_SCHEMA if n not in names and n not in OPTIONAL_SEQUENCE_COLUMNS]
    if missing:
        raise MemsweepError(f"{where}: missing column(s) {missing}")
    columns = []
    for name, dtype in SEQUENCE_SCHEMA.items():
        if name not in names:
            columns.append(null_series(name, dtype, sequences.height))
            continue
        series = sequences[name]
        if isinstance(series.dtype, pl.Array):  # packed match_mask as uint8[B, w], generated as [B, l]
            series = series.cast(pl.List(series.dtype.inner))
        try:
            columns.append(series.cast(dtype, strict=True))
        except Exception as error:  # noqa: BLE001 - polars raises several exception types for bad casts
            raise MemsweepError(f"{where}: column '{name}' ({series.dtype}) cannot be cast to {dtype}: "
                                f"{one_line(error, 'first')}") from None
    return pl.DataFrame(columns)


def summarize_cell(ckpt: int, chunk: int, sequences: pl.DataFrame, provenance: CellProvenance,
                   seen_fraction: float | None = None) -> dict:
    """One cell row (`ckpt` first, then CELL_SCHEMA's keys) from its conformed sequences and provenance.
    `seen_fraction`: the timeline's share of the chunk the checkpoint has trained on (default: Amber's, chunk <=
    ckpt)."""
    if seen_fraction is None:
        seen_fraction = float(chunk <= ckpt)
    n = sequences.height
    # Series means, not a select (the query engine): 13 us against ~210 us for a 1000-row cell, equal results
    means = {key: sequences[column].cast(pl.Float64).mean()
             for key, column in (("score", "score"), ("full_match_rate", "full_match"),
                                 ("mean_prefix_match", "prefix_match"), ("nll", "nll"), ("tf_accuracy", "tf_accuracy"))}
    seconds = float(provenance.seconds)
    optional = ("model_revision", "model_commit", "weights_fingerprint", "stored_dtype", "data_file", "data_sha256")
    return {
        "ckpt": ckpt,
        "chunk": chunk,
        "n": n,
        **means,
        "seen": seen_fraction > 0,
        "seen_fraction": float(seen_fraction),
        "seconds": seconds,
        "sequences_per_s": n / seconds if seconds > 0 else None,
        "device": str(provenance.device),
        "dtype": str(provenance.dtype),
        "batch_size": int(provenance.batch_size),
        "attempts": int(provenance.attempts),
        "finished_at": str(provenance.finished_at or utc_now()),
        **{key: None if getattr(provenance, key) is None else str(getattr(provenance, key)) for key in optional},
    }


def score_columns(scores: BatchScores, continuation_len: int) -> list[pl.Series]:
    """An actor's per-sequence scores as SEQUENCE_SCHEMA columns, named (a score the mode has none of is a column of
    typed nulls). Plain Series, so a cell's frame is put together without Polars' query engine."""
    height = len(scores.prefix_match)

    def column(name: str, values, dtype: pl.DataType) -> pl.Series:
        return pl.Series(name, values, dtype=dtype) if values is not None else null_series(name, dtype, height)

    matches = scores.matches
    mask = None
    if scores.match_mask is not None:  # each row's packed bytes as one value: a numpy void of the row's width
        packed = np.ascontiguousarray(scores.match_mask, dtype=np.uint8)
        mask = packed.view(np.dtype((np.void, packed.shape[1]))).ravel().tolist()
    generated = scores.generated
    return [
        column("matches", matches, pl.Int16),
        column("score", (matches / continuation_len).astype(np.float32) if matches is not None else None, pl.Float32),
        column("full_match", scores.full_match, pl.Boolean),
        column("prefix_match", scores.prefix_match, pl.Int16),
        column("match_mask", mask, pl.Binary),
        column("nll", scores.nll, pl.Float32),
        column("tf_accuracy", scores.tf_accuracy, pl.Float32),
        (pl.Series("generated", generated.astype(np.uint32)).reshape(generated.shape).cast(pl.List(pl.UInt32))
         if generated is not None else column("generated", None, pl.List(pl.UInt32))),
        column("decision_margin", scores.decision_margin, pl.Float32),
    ]


def null_series(name: str, dtype: pl.DataType, height: int) -> pl.Series:
    """`height` typed nulls: one null repeated, ~4x faster than from a list of Nones (it runs for every missing column
    of every cell the driver lands)."""
    return pl.Series(name, [None], dtype=dtype).new_from_index(0, height)


def probe_frame(chunk: int, rows: np.ndarray, sources: list[str | None], tokens: np.ndarray,
                index: np.ndarray | None = None) -> pl.DataFrame:
    """A probe set (PROBE_SCHEMA, sample order) from row numbers, corpus labels, int[n, k+l] tokens and (megatron,
    numpy) the rows' global stream positions."""
    width = tokens.shape[1] if tokens.ndim == 2 else 0
    token_series = (pl.Series("tokens", tokens.astype(np.uint32).reshape(-1))
                    .reshape((len(rows), width)).cast(pl.List(pl.UInt32)))
    return pl.DataFrame({
        "chunk": pl.Series("chunk", [chunk] * len(rows), dtype=pl.Int32),
        "row": pl.Series("row", rows, dtype=pl.Int64),
        "index": (pl.Series("index", index, dtype=pl.Int64) if index is not None
                  else null_series("index", pl.Int64, len(rows))),
        "source": pl.Series("source", sources, dtype=pl.String),
        "tokens": token_series,
    })


def tokens_array(frame: pl.DataFrame, width: int) -> np.ndarray:
    """A probe set's tokens as a contiguous int[n, width] numpy array (what the actors score)."""
    if frame.height == 0:
        return np.zeros((0, width), dtype=np.int64)
    return np.ascontiguousarray(frame["tokens"].list.to_array(width).to_numpy())
