"""Small landed outputs for the tests (not a test module): synthetic per-sequence results landed through the store, in
the exact layout it writes, with probe sets and, when asked, exposure scans landed as a sweep lands them.

    write_landed(output, records, exposures=True)      # records: synthetic_sequences(...) or hand-made dicts
    land_scans(store, counts, probe_chunks, seen_chunks)
    planted_counts(probes, seen_chunks, seed)          # every probe once in its own chunk, some copied elsewhere
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sweep.landed.schema import SEQUENCE_SCHEMA
from sweep.landed.store import ResultStore

L = 32  # generated tokens per sequence
SOURCES = ("refinedweb", "starcoderdata", "c4", "arxiv")


def synthetic_sequences(n_ckpts: int, n_chunks: int, n_rows: int, seed: int = 0) -> list[dict]:
    """Per-sequence results: more training -> more matches; a few sequences forgotten later."""
    rng = np.random.default_rng(seed)
    records = []
    for chunk in range(n_chunks):
        for row in range(n_rows):
            # Each sequence gets memorized from some checkpoint on (maybe never), sometimes
            # before its chunk was seen (boilerplate), and 1 in 8 memorized ones is forgotten later.
            onset = chunk + int(rng.integers(-1, 4)) if rng.random() < 0.5 else None
            forget_at = onset + int(rng.integers(1, 3)) if onset is not None and rng.random() < 0.125 else None
            base = int(rng.integers(0, 12))
            for ckpt in range(n_ckpts):
                memorized = onset is not None and ckpt >= onset and (forget_at is None or ckpt < forget_at)
                matches = L if memorized else min(L - 1, base + 2 * ckpt + int(rng.integers(0, 4)))
                prefix = L if memorized else int(rng.integers(0, matches + 1))
                records.append(
                    {
                        "ckpt": ckpt,
                        "chunk": chunk,
                        "row": row * 7 + 3,  # row numbers are positions in the chunk file, not 0..n-1
                        "source": SOURCES[(row + chunk) % len(SOURCES)],
                        "matches": matches,
                        "full_match": matches == L,
                        "prefix_match": prefix,
                        "nll": float(rng.uniform(0.5, 3.0)),
                    }
                )
    return records


def write_landed(
    output: Path,
    records: list[dict],
    extractable: bool = False,
    with_nll: bool = True,
    spec_name: str = "synthetic",
    exposures: bool | pl.DataFrame = False,
    scanned: list[int] | None = None,
    tokens: dict[tuple[int, int], list[int]] | None = None,
    identity: dict | None = None,
) -> Path:
    """Land `records` through the store, one compacted checkpoint at a time, with probe sets of random tokens (or
    `tokens[(chunk, row)]`, k + l ids, where given). `exposures`: True lands planted_counts, a frame lands those
    count rows, one scan per chunk file of `scanned` (default: every chunk) counting every chunk's probes; the spec
    then lists every chunk in exposure.chunks. `identity`: the manifest's (default {"synthetic": spec_name})."""
    frame = pl.DataFrame(records).with_columns(
        pl.col("chunk").cast(pl.Int32),
        pl.col("row").cast(pl.Int64),
        pl.col("matches").cast(pl.Int16),
        pl.col("prefix_match").cast(pl.Int16),
        (pl.col("matches") / L).cast(pl.Float32).alias("score"),
        pl.col("nll").cast(pl.Float32),
        pl.lit(None, dtype=pl.Float32).alias("tf_accuracy"),
        pl.lit(b"\x00\x00\x00\x00", dtype=pl.Binary).alias("match_mask"),
    )
    if extractable:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.Int16).alias("matches"), pl.lit(None, dtype=pl.Float32).alias("score")
        )
    if not with_nll:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float32).alias("nll"))
    columns = [name for name in SEQUENCE_SCHEMA if name in frame.columns]
    store = ResultStore(output)
    chunks = sorted(frame["chunk"].unique().to_list())
    scanned = chunks if scanned is None else scanned
    spec = {"name": spec_name, "prompt_len": 32, "generate_len": L,
            **({"exposure": {"chunks": chunks}} if exposures is not False else {})}
    store.open(identity=identity or {"synthetic": spec_name}, spec=spec, run_info={})
    for (ckpt,), part in frame.group_by(["ckpt"], maintain_order=True):
        cells = (
            part.group_by("chunk", maintain_order=True)
            .agg(
                pl.len().cast(pl.Int32).alias("n"),
                pl.col("score").cast(pl.Float64).mean().alias("score"),
                pl.col("full_match").cast(pl.Float64).mean().alias("full_match_rate"),
                pl.col("prefix_match").cast(pl.Float64).mean().alias("mean_prefix_match"),
                pl.col("nll").cast(pl.Float64).mean().alias("nll"),
                pl.col("tf_accuracy").cast(pl.Float64).mean().alias("tf_accuracy"),
            )
            .with_columns(
                (pl.col("chunk") <= ckpt).alias("seen"),
                pl.lit(1.5).alias("seconds"),
                (pl.col("n") / 1.5).alias("sequences_per_s"),
                pl.lit("cpu").alias("device"),
                pl.lit("float32").alias("dtype"),
                pl.lit(32, dtype=pl.Int32).alias("batch_size"),
                pl.lit(1, dtype=pl.Int32).alias("attempts"),
                pl.lit("2026-11-01T12:00:00+00:00").alias("finished_at"),
            )
        )
        store.import_checkpoint(ckpt, part.select(columns), cells)
    # the probe sets: each sampled (chunk, row) with k + l token ids, as a sweep lands them
    for (chunk,), rows in frame.select("chunk", "row", "source").unique(["chunk", "row"]).group_by(["chunk"]):
        rng = np.random.default_rng(int(chunk))
        ids = [(tokens or {}).get(key) or rng.integers(3, 32000, 32 + L).tolist()
               for key in rows.select("chunk", "row").rows()]
        store.write_probe_set(int(chunk), rows.with_columns(tokens=pl.Series(ids, dtype=pl.List(pl.UInt32))),
                              {"file": f"train/train_{int(chunk):03d}.jsonl", "sha256": f"{int(chunk):064d}"})
    if exposures is not False:
        counts = planted_counts(frame.select("chunk", "row").unique(), scanned) if exposures is True else exposures
        land_scans(store, counts, chunks, scanned)
    return output


COUNT_SCHEMA = {"chunk": pl.Int32, "row": pl.Int64, "seen_chunk": pl.Int32, "window_count": pl.Int64,
                "prompt_count": pl.Int64}


def land_scans(store: ResultStore, counts: pl.DataFrame, probe_chunks: list[int], seen_chunks: list[int]) -> None:
    """One scan per chunk file in `seen_chunks`, each counting the probe sequences of `probe_chunks`, as a sweep
    lands them; `counts` rows of other files are ignored, a missing prompt_count is the window_count."""
    if "prompt_count" not in counts.columns:
        counts = counts.with_columns(prompt_count=pl.col("window_count"))
    counts = counts.select([pl.col(name).cast(dtype) for name, dtype in COUNT_SCHEMA.items()])
    for seen in seen_chunks:
        mine = counts.filter((pl.col("seen_chunk") == seen) & pl.col("chunk").is_in(probe_chunks)).drop("seen_chunk")
        stats = {"probes": 0, "rows": 100, "tokens": 6400, "bytes": 40000, "seconds": 0.5, "cpu_seconds": 0.5}
        store.write_exposure_scan(seen, {"file": f"train/train_{seen:03d}.jsonl", "sha256": f"{seen:064d}"},
                                  probe_chunks, mine, stats)


def planted_counts(probes: pl.DataFrame, seen_chunks: list[int], seed: int = 0) -> pl.DataFrame:
    """Count rows for `probes` (chunk, row): each once in its own chunk (when scanned), a quarter of them copied
    1-20 more times into random scanned chunks, earlier and later; prompt counts a little higher."""
    rng = np.random.default_rng(seed)
    keys = sorted(probes.select("chunk", "row").iter_rows())
    rows = [(chunk, row, chunk, 1) for chunk, row in keys if chunk in seen_chunks]
    for chunk, row in keys:
        if rng.random() < 0.25:
            for seen in rng.choice(seen_chunks, size=int(rng.integers(1, 21))):
                rows.append((chunk, row, int(seen), 1))
    frame = pl.DataFrame(rows, schema=["chunk", "row", "seen_chunk", "window_count"], orient="row")
    return (frame.group_by("chunk", "row", "seen_chunk").agg(pl.col("window_count").sum())
            .with_columns(prompt_count=pl.col("window_count") + (pl.col("row") % 3))
            .select([pl.col(name).cast(dtype) for name, dtype in COUNT_SCHEMA.items()])
            .sort("chunk", "row", "seen_chunk"))
