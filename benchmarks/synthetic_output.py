"""A synthetic landed memsweep output, in the store's compacted layout, at the real job's size.

    python benchmarks/synthetic_output.py /tmp/synthetic-full                          # 360 x 360 x 1000
    python benchmarks/synthetic_output.py /tmp/synthetic-small --ckpts 36 --chunks 36 --rows 100
    python benchmarks/synthetic_output.py /tmp/synthetic-census --census     # 1 x 143 x 1,024,000 (Pythia's stream)

Lands, through the store (`ResultStore.import_checkpoint`), one compacted pair per checkpoint:
`<out>/sequences/ckpt=<c>/part-*.parquet` (one row per (chunk, row), sorted by chunk then row,
columns and types of schema.SEQUENCE_SCHEMA) and `<out>/cells/ckpt=<c>/part-*.parquet` (one row per
chunk, CELL_SCHEMA, the means the store's summarize_cell would give), each listed with its size,
sha256 and rows in `<out>/ledger/ckpt=<c>.json`, and the manifest: exactly what a finished sweep
leaves, written as the store writes it (polars' `write_parquet(..., statistics=True)`, zstd).
Checkpoint ids are 0 .. ckpts-1 and chunk ids 0 .. chunks-1; checkpoint c has seen chunks <= c.

It also lands exposure counts, one scan per chunk file (`--scanned`, default every chunk), through
`ResultStore.write_exposure_scan` as a sweep does, with the spec listing every chunk in exposure.chunks.

The values are meant to stress the analyses the way a real run would, not to model Amber exactly:
- each sequence has a per-token hit probability (Beta-distributed, mean about 0.085) that grows
  with training and is a little higher once its chunk has been seen, so mean scores sit near
  Amber's published 0.10 and scores are multiples of 1/l with a heavy tail;
- every sequence occurs once in its own chunk; 5% are copied into other chunks, earlier and later,
  a heavy-tailed number of times (Pareto, tail index 1.1: most a few times, some thousands);
- a sequence becomes memorized (all l tokens right) a few checkpoints after its exposures reach
  a threshold of its own, drawn so that 2% of sequences seen once are memorized, 22% of those
  seen 8 times and 95% of those seen 64 times (memorization grows with duplicates, as Carlini
  et al. 2022 found); 1% are repeating templates (their continuation repeats the prompt), eight
  times easier to memorize, and 30% of those are reproduced early in training, seen or not; a copy
  in an early chunk memorizes a sequence before its chunk is seen;
- 35% of memorized sequences are forgotten for good, a geometric delay after their last exposure
  (longer the more copies they had), so the oldest chunks at the last checkpoints lose some;
- a memorized sequence misses one token at any single checkpoint with probability 4% (flicker),
  which is what makes "any later miss" a useless definition of forgetting at 360 checkpoints;
- `source` follows the Amber sample's mix (refinedweb 54%, starcoderdata 22%, c4 16%, ...);
- greedy mode with NLL (default, as configs/amber-diagonal.yaml): every column filled, `match_mask`
  packed bits (little bit order); --no-nll: `nll`/`tf_accuracy` null; --extractable: `matches`,
  `score`, `match_mask` null (configs/amber-full-matrix.yaml), as the store lands such runs.

Cost at the default size: one checkpoint partition (360k rows) in memory at a time; on a 2-core
VM 56 s and a 0.24 GB peak for 1.74 GB of Parquet (13.4 bytes/row; --extractable: 1.22 GB).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sweep.landed.schema import CELL_SCHEMA, SEQUENCE_SCHEMA
from sweep.spec import parse_id_list
from sweep.landed.store import ResultStore

ROWS_PER_AMBER_CHUNK = 1_706_976  # row numbers are positions in a chunk file of this many rows
SOURCE_MIX = {  # the sources of the 1000-row Amber sample (FACTS.md), as fractions
    "refinedweb": 536,
    "starcoderdata": 221,
    "c4": 163,
    "arxiv": 31,
    "book": 18,
    "wikipedia": 18,
    "stackexchange": 13,
}
FLICKER = 0.04  # chance that a memorized sequence misses one token at a given checkpoint
MEMORABLE = 0.02  # sequences seen once that get memorized
MEMORY_SHAPE = 1.2  # P(memorized after m exposures) = 1 - (1 - MEMORABLE) ** (m ** MEMORY_SHAPE)
DUPLICATED = 0.05  # sequences copied into other chunks beyond their own row
COPIES_TAIL = 1.1  # Pareto tail index of the number of extra copies
MAX_COPIES = 5000
TEMPLATES = 0.01  # sequences whose continuation repeats their prompt
TEMPLATE_EASE = 8  # ... and that need this many times fewer exposures
PREDICTABLE = 0.3  # of the templates, reproduced early in training whether seen or not
FORGETTING = 0.35  # of the memorized ones, forgotten for good later


@dataclass(frozen=True)
class SyntheticShape:
    """What to write: checkpoints 0..ckpts-1, chunks 0..chunks-1, `rows` sequences per cell."""

    ckpts: int = 360
    chunks: int = 360
    rows: int = 1000
    continuation_len: int = 32  # l
    extractable: bool = False
    nll: bool = True
    seed: int = 0


@dataclass(frozen=True)
class SequenceTraits:
    """Per-sequence latent values, fixed over checkpoints; arrays of length chunks * rows."""

    chunk: np.ndarray  # int32
    row: np.ndarray  # int64, sorted within each chunk
    source: pl.Series  # String
    skill: np.ndarray  # float32, base per-token hit probability
    template: np.ndarray  # bool, its continuation repeats its prompt
    onset: np.ndarray  # int64, first checkpoint memorized (a huge value: never)
    forget: np.ndarray  # int64, first checkpoint no longer memorized (a huge value: never)
    exposures: Exposures  # where each sequence occurs


@dataclass(frozen=True)
class Exposures:
    """Occurrences of the sequences' windows: one entry per (sequence, chunk holding it), by sequence then chunk."""

    sequence: np.ndarray  # int64, index into the traits' arrays
    chunk: np.ndarray  # int32, the chunk file holding them
    count: np.ndarray  # int64, how many times


NEVER = np.iinfo(np.int64).max // 2


def sequence_traits(shape: SyntheticShape) -> SequenceTraits:
    """Draw every sequence's latent values and copies (a few tens of MB at full size)."""
    rng = np.random.default_rng([shape.seed, 1 << 20])
    n = shape.chunks * shape.rows
    chunk = np.repeat(np.arange(shape.chunks, dtype=np.int32), shape.rows)
    row = np.concatenate(
        [np.sort(rng.choice(ROWS_PER_AMBER_CHUNK, size=shape.rows, replace=False)) for _ in range(shape.chunks)]
    ).astype(np.int64)
    names = list(SOURCE_MIX)
    weights = np.array([SOURCE_MIX[name] for name in names], dtype=np.float64)
    source = pl.Series("source", names, dtype=pl.String).gather(
        rng.choice(len(names), size=n, p=weights / weights.sum())
    )
    skill = rng.beta(0.6, 6.5, size=n).astype(np.float32)
    template = rng.random(n) < TEMPLATES
    # The training run's length in checkpoints; delays are scaled so a 36-checkpoint sweep looks
    # like every 10th checkpoint of a 360-checkpoint one.
    span = max(shape.ckpts, shape.chunks)
    scale = span / 360
    exposures = draw_exposures(rng, chunk, shape.chunks)
    # The exposures at which each sequence is memorized: 1 - P(threshold <= m) = (1 - MEMORABLE) ** (m ** SHAPE)
    threshold = (rng.exponential(size=n) / -np.log1p(-MEMORABLE)) ** (1 / MEMORY_SHAPE)
    threshold[template] /= TEMPLATE_EASE
    seen_so_far = np.cumsum(exposures.count) - np.repeat(_group_starts(exposures.sequence, exposures.count),
                                                        np.bincount(exposures.sequence, minlength=n))
    reached = np.flatnonzero(seen_so_far >= threshold[exposures.sequence])
    memorized, first = np.unique(exposures.sequence[reached], return_index=True)
    onset = np.full(n, NEVER, dtype=np.int64)
    delay = rng.geometric(1 / max(15 * scale, 1), size=n).astype(np.int64) - 1
    onset[memorized] = exposures.chunk[reached[first]] + delay[memorized]
    predictable = template & (rng.random(n) < PREDICTABLE)
    onset[predictable] = np.minimum(onset[predictable], rng.integers(0, max(int(0.3 * span), 1), size=n)[predictable])
    last_exposure = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_exposure, exposures.sequence, exposures.chunk)
    total = np.bincount(exposures.sequence, weights=exposures.count, minlength=n)
    forget = np.full(n, NEVER, dtype=np.int64)
    forgets = (onset < NEVER) & (rng.random(n) < FORGETTING)
    lasting = (rng.geometric(1 / max(60 * scale, 1), size=n) * (1 + np.log2(total))).astype(np.int64)
    forget[forgets] = np.maximum(onset, last_exposure)[forgets] + lasting[forgets]
    return SequenceTraits(chunk=chunk, row=row, source=source, skill=skill, template=template, onset=onset,
                          forget=forget, exposures=exposures)


def draw_exposures(rng: np.random.Generator, chunk: np.ndarray, chunks: int) -> Exposures:
    """Every sequence once in its own chunk; DUPLICATED of them copied a Pareto-distributed number of extra times
    into chunks drawn uniformly (earlier and later ones alike)."""
    n = chunk.size
    copied = np.flatnonzero(rng.random(n) < DUPLICATED)
    extra = np.minimum(np.floor(rng.pareto(COPIES_TAIL, size=copied.size) + 1), MAX_COPIES).astype(np.int64)
    sequence = np.concatenate([np.arange(n), np.repeat(copied, extra)])
    where = np.concatenate([chunk, rng.integers(0, chunks, size=int(extra.sum()))]).astype(np.int64)
    pairs, count = np.unique(sequence * chunks + where, return_counts=True)  # sorted by sequence, then chunk
    return Exposures(sequence=pairs // chunks, chunk=(pairs % chunks).astype(np.int32), count=count.astype(np.int64))


def _group_starts(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per group of sorted `groups`, the sum of `values` before its first entry."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.r_[0, np.cumsum(values)][starts]


def checkpoint_frame(shape: SyntheticShape, traits: SequenceTraits, ckpt: int) -> pl.DataFrame:
    """The sequences of one checkpoint: one row per (chunk, row), SEQUENCE_SCHEMA, sorted."""
    rng = np.random.default_rng([shape.seed, ckpt])
    n, l = traits.chunk.size, shape.continuation_len
    progress = ckpt / max(max(shape.ckpts, shape.chunks) - 1, 1)
    seen = traits.chunk <= ckpt
    hit_probability = np.clip(traits.skill * (0.55 + 0.45 * progress) + 0.04 * seen, 0.0, 0.95)
    hits = rng.random((n, l), dtype=np.float32) < hit_probability[:, None]
    memorized = (traits.onset <= ckpt) & (ckpt < traits.forget)
    flicker = memorized & (rng.random(n) < FLICKER)
    hits[memorized] = True
    # A flickering sequence misses one token, most often late in the continuation.
    flicker_rows = np.flatnonzero(flicker)
    hits[flicker_rows, l - 1 - np.minimum(rng.geometric(0.3, size=flicker_rows.size) - 1, l - 1)] = False
    matches = hits.sum(axis=1, dtype=np.int16)
    full_match = matches == l
    prefix_match = np.where(full_match, l, np.argmin(hits, axis=1)).astype(np.int16)
    columns: dict[str, pl.Series] = {
        "chunk": pl.Series("chunk", traits.chunk, dtype=pl.Int32),
        "row": pl.Series("row", traits.row, dtype=pl.Int64),
        "source": traits.source,
        "matches": pl.Series("matches", matches, dtype=pl.Int16),
        "score": pl.Series("score", matches.astype(np.float32) / np.float32(l), dtype=pl.Float32),
        "full_match": pl.Series("full_match", full_match, dtype=pl.Boolean),
        "prefix_match": pl.Series("prefix_match", prefix_match, dtype=pl.Int16),
        "match_mask": pl.Series("match_mask", np.packbits(hits, axis=1, bitorder="little"))
        .cast(pl.List(pl.UInt8))
        .cast(pl.Binary),
    }
    if shape.nll:
        accuracy = np.clip(hit_probability + rng.normal(0, 0.05, n), 0.0, 1.0).astype(np.float32)
        accuracy[memorized] = 1.0
        nll = np.clip(-1.3 * np.log(np.maximum(accuracy, 0.02)) + rng.normal(0, 0.2, n), 0.01, None)
        columns["nll"] = pl.Series("nll", nll.astype(np.float32), dtype=pl.Float32)
        columns["tf_accuracy"] = pl.Series("tf_accuracy", accuracy, dtype=pl.Float32)
    if shape.extractable:
        for name in ("matches", "score", "match_mask"):
            del columns[name]
    frame = pl.DataFrame(list(columns.values()))
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in SEQUENCE_SCHEMA.items()
    )


def cells_frame(sequences: pl.DataFrame, ckpt: int, rng: np.random.Generator) -> pl.DataFrame:
    """One CELL_SCHEMA row per chunk of one checkpoint's sequences (schema.summarize_cell's means)."""
    seconds = rng.uniform(60.0, 90.0, size=sequences["chunk"].n_unique())
    summary = (
        sequences.group_by("chunk", maintain_order=True)
        .agg(
            pl.len().cast(pl.Int32).alias("n"),
            pl.col("score").cast(pl.Float64).mean(),
            pl.col("full_match").cast(pl.Float64).mean().alias("full_match_rate"),
            pl.col("prefix_match").cast(pl.Float64).mean().alias("mean_prefix_match"),
            pl.col("nll").cast(pl.Float64).mean(),
            pl.col("tf_accuracy").cast(pl.Float64).mean(),
        )
        .with_columns(
            (pl.col("chunk") <= ckpt).alias("seen"),
            pl.Series("seconds", seconds),
        )
        .with_columns(
            (pl.col("n") / pl.col("seconds")).alias("sequences_per_s"),
            pl.lit("cuda:0").alias("device"),
            pl.lit("bfloat16").alias("dtype"),
            pl.lit(256).alias("batch_size"),
            pl.lit(1).alias("attempts"),
            pl.lit(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc).isoformat(timespec="seconds")).alias(
                "finished_at"
            ),
        )
    )
    return summary.select(pl.col(name).cast(dtype) for name, dtype in CELL_SCHEMA.items() if name in summary.columns)


def identity(shape: SyntheticShape) -> dict:
    """What the numbers of this synthetic output mean (the manifest's identity)."""
    return {
        "model": {"source": "synthetic/amber", "revision": "ckpt_{ckpt:03d}", "dtype": "bfloat16"},
        "data": {"source": "synthetic/amber-data", "samples_per_chunk": shape.rows, "seed": shape.seed},
        "memorization": {
            "prompt_len": 32,
            "continuation_len": shape.continuation_len,
            "mode": "extractable" if shape.extractable else "greedy",
            "nll": shape.nll,
        },
    }


def write_synthetic_output(output: Path, shape: SyntheticShape, progress: bool = True,
                           scanned: list[int] | None = None) -> int:
    """Write the whole output (replacing `output`) through the store, one compacted checkpoint at a time, with
    its ledger (sizes, sha256, rows) as a real sweep leaves it, and the exposure scans of the chunk files `scanned`
    (default: every chunk); returns its size on disk in bytes."""
    output = Path(output)
    if output.exists():
        if not (output / "manifest.json").is_file():
            raise ValueError(f"{output} exists and is not a memsweep output (no manifest.json); not replacing it")
        shutil.rmtree(output)
    store = ResultStore(output)
    spec = {"name": f"synthetic-{shape.ckpts}x{shape.chunks}x{shape.rows}", "checkpoints": f"0-{shape.ckpts - 1}",
            "chunks": f"0-{shape.chunks - 1}", **identity(shape), "exposure": {"chunks": f"0-{shape.chunks - 1}"}}
    store.open(identity(shape), spec, {"synthetic": True, "writer": "benchmarks/synthetic_output.py"})
    traits = sequence_traits(shape)
    write_probe_sets(store, shape, traits)
    write_exposure_scans(store, shape, traits, range(shape.chunks) if scanned is None else scanned)
    cell_rng = np.random.default_rng([shape.seed, 1 << 21])
    started = time.perf_counter()
    for ckpt in range(shape.ckpts):
        sequences = checkpoint_frame(shape, traits, ckpt)
        store.import_checkpoint(ckpt, sequences, cells_frame(sequences, ckpt, cell_rng))
        if progress and (ckpt % 20 == 19 or ckpt == shape.ckpts - 1):
            elapsed = time.perf_counter() - started
            print(f"  {ckpt + 1}/{shape.ckpts} checkpoints, {elapsed:.0f} s", flush=True)
    return disk_usage(output)


def write_probe_sets(store: ResultStore, shape: SyntheticShape, traits: SequenceTraits) -> None:
    """The probe sets a sweep lands: every sampled (chunk, row) with k + l random token ids (Amber's vocabulary).
    About 0.26 MB per chunk: 90 MB at full size."""
    rng = np.random.default_rng([shape.seed, 1 << 22])
    width = 32 + shape.continuation_len
    for chunk in range(shape.chunks):
        mine = traits.chunk == chunk
        rows = traits.row[mine]
        tokens = rng.integers(3, 32000, (len(rows), width), dtype=np.uint32)
        for at in np.flatnonzero(traits.template[mine]):  # a unit of 1-16 ids, repeated through the window
            tokens[at] = np.resize(tokens[at, : rng.integers(1, 17)], width)
        frame = pl.DataFrame({
            "chunk": pl.Series(np.full(len(rows), chunk, dtype=np.int32)),
            "row": pl.Series(rows),
            "source": traits.source.filter(pl.Series(mine)),
            "tokens": pl.Series(tokens).reshape((len(rows), width)).cast(pl.List(pl.UInt32)),
        })
        store.write_probe_set(chunk, frame, {"file": f"train/train_{chunk:03d}.jsonl", "sha256": f"{chunk:064x}"})


def write_exposure_scans(store: ResultStore, shape: SyntheticShape, traits: SequenceTraits, scanned) -> None:
    """One scan per chunk file in `scanned`, counting every chunk's probe sequences: their window counts, and
    prompt counts a little higher (a prompt occurs wherever its window does, and sometimes alone)."""
    rng = np.random.default_rng([shape.seed, 1 << 23])
    exposures = traits.exposures
    order = np.argsort(exposures.chunk, kind="stable")
    bounds = np.searchsorted(exposures.chunk[order], [np.arange(shape.chunks), np.arange(shape.chunks) + 1])
    probe_chunks = list(range(shape.chunks))
    for seen in scanned:
        at = order[bounds[0][seen]: bounds[1][seen]]
        sequence = exposures.sequence[at]
        window = exposures.count[at]
        counts = pl.DataFrame({
            "chunk": pl.Series(traits.chunk[sequence], dtype=pl.Int32),
            "row": pl.Series(traits.row[sequence], dtype=pl.Int64),
            "window_count": pl.Series(window, dtype=pl.Int64),
            "prompt_count": pl.Series(window + rng.poisson(0.2, size=window.size), dtype=pl.Int64),
        })
        tokens = int(ROWS_PER_AMBER_CHUNK * 2049)
        stats = {"probes": traits.chunk.size, "rows": ROWS_PER_AMBER_CHUNK, "tokens": tokens,
                 "bytes": int(tokens * 6.7), "seconds": tokens / 51.3e6, "cpu_seconds": tokens / 51.3e6}
        store.write_exposure_scan(seen, {"file": f"train/train_{seen:03d}.jsonl", "sha256": f"{seen:064x}"},
                                  probe_chunks, counts, stats)


# ---- a census (issue 23): every sequence of Pythia's stream at its last checkpoint ---------------------------------

CENSUS_MEMORIZED = 2_382_326 / 146_432_000  # Pythia 12B (duped): its memorized sequences over the whole stream
PIECE_CHUNKS = 4  # chunks a landed pair holds: ~4M rows, as the store's compaction leaves a census checkpoint


def census_spec(output: Path, chunks: int, rows: int) -> dict:
    """A whole census spec over a Pythia-shaped stream (a local path that does not exist: the examples say they cannot
    read it), one checkpoint: the end of the last chunk."""
    steps = max(1, rows // 1024)
    return {"name": f"synthetic-census-{chunks}x{rows}",
            "model": {"source": "EleutherAI/pythia-12b", "revision": "step{ckpt}", "dtype": "float16"},
            "data": {"source": str(output.parent / "synthetic-pile-absent"), "format": "megatron", "file": "document",
                     "samples_per_chunk": "all"},
            "timeline": {"sequences_per_step": 1024, "steps_per_chunk": steps},
            "checkpoints": [chunks * steps], "chunks": f"0-{chunks - 1}",
            "memorization": {"prompt_len": 32, "continuation_len": 32, "mode": "extractable"},
            "output": str(output)}


def census_frame(rng: np.random.Generator, chunks: range, rows: int, ckpt: int) -> pl.DataFrame:
    """Every sequence of `chunks` at a checkpoint past them all, in extractable mode: CENSUS_MEMORIZED of them fully
    memorized, the others an exact prefix from a geometric draw (most 0-2 tokens)."""
    n = len(chunks) * rows
    chunk = np.repeat(np.array(chunks, dtype=np.int32), rows)
    row = np.tile(np.arange(rows, dtype=np.int64), len(chunks))
    full = rng.random(n) < CENSUS_MEMORIZED
    prefix = np.where(full, 32, np.minimum(rng.geometric(0.55, n) - 1, 31)).astype(np.int16)
    frame = pl.DataFrame({"chunk": chunk, "row": row, "index": chunk.astype(np.int64) * rows + row,
                          "seen": np.ones(n, dtype=bool), "full_match": full, "prefix_match": prefix})
    return frame.select(pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
                        for name, dtype in SEQUENCE_SCHEMA.items())


def write_census_output(output: Path, chunks: int = 143, rows: int = 1_024_000, seed: int = 0,
                        progress: bool = True) -> int:
    """A census output (replacing `output`): one checkpoint x `chunks` chunks x `rows` sequences, landed through the
    store in pairs of PIECE_CHUNKS chunks, each chunk's source pinned with an empty probe set as a census pins it;
    returns its size on disk in bytes."""
    from sweep.spec import SweepSpec

    output = Path(output)
    if output.exists():
        if not (output / "manifest.json").is_file():
            raise ValueError(f"{output} exists and is not a memsweep output (no manifest.json); not replacing it")
        shutil.rmtree(output)
    raw = census_spec(output, chunks, rows)
    spec = SweepSpec.model_validate(raw)
    store = ResultStore(output)
    store.open(spec.identity(), spec.model_dump(mode="json"), {"synthetic": True, "writer": "synthetic_output.py"})
    empty = pl.DataFrame(schema={"chunk": pl.Int32, "row": pl.Int64, "tokens": pl.List(pl.UInt32)})
    for chunk in range(chunks):
        start = chunk * rows
        store.write_probe_set(chunk, empty, {"kind": "local", "format": "megatron", "data_source": raw["data"]["source"],
                                             "file": f"document[{start}:{start + rows})", "chunk": chunk,
                                             "start": start, "stop": start + rows, "files_sha256": "0" * 64})
    ckpt = spec.checkpoints[0]
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for first in range(0, chunks, PIECE_CHUNKS):
        sequences = census_frame(rng, range(first, min(first + PIECE_CHUNKS, chunks)), rows, ckpt)
        store.import_checkpoint(ckpt, sequences, cells_frame(sequences, ckpt, rng).with_columns(
            seen_fraction=pl.lit(1.0)))
        if progress and (first // PIECE_CHUNKS) % 8 == 7:
            print(f"  {first + PIECE_CHUNKS}/{chunks} chunks, {time.perf_counter() - started:.0f} s", flush=True)
    return disk_usage(output)


def disk_usage(folder: Path) -> int:
    """Bytes of all files under `folder`."""
    return sum(entry.stat().st_size for entry in Path(folder).rglob("*") if entry.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="output folder (replaced if it holds a memsweep output)")
    parser.add_argument("--ckpts", type=int, default=360)
    parser.add_argument("--chunks", type=int, default=360)
    parser.add_argument("--rows", type=int, default=1000, help="sequences per cell")
    parser.add_argument("--extractable", action="store_true", help="land it as an extractable-mode run")
    parser.add_argument(
        "--nll", action=argparse.BooleanOptionalAction, default=True, help="fill nll and tf_accuracy (--no-nll: null)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scanned", help="chunk files with exposure counts, ids and ranges such as 0-99,200 "
                                          "(default: every chunk)")
    parser.add_argument("--census", action="store_true",
                        help="a census instead (issue 23): one checkpoint x --chunks (default 143) x --rows (default "
                             "1,024,000) sequences, every one of a Pythia-sized stream")
    args = parser.parse_args()
    if args.census:
        started = time.perf_counter()
        chunks = 143 if args.chunks == 360 else args.chunks
        rows = 1_024_000 if args.rows == 1000 else args.rows
        size = write_census_output(args.output, chunks, rows, args.seed)
        print(f"{args.output}: a census of 1 ckpt x {chunks} chunks x {rows:,} rows = {chunks * rows:,} sequence rows, "
              f"{size / 1e9:.2f} GB on disk ({size / (chunks * rows):.1f} bytes/row), "
              f"{time.perf_counter() - started:.0f} s")
        return
    shape = SyntheticShape(
        ckpts=args.ckpts, chunks=args.chunks, rows=args.rows, extractable=args.extractable, nll=args.nll, seed=args.seed
    )
    started = time.perf_counter()
    scanned = parse_id_list(args.scanned) if args.scanned else None
    size = write_synthetic_output(args.output, shape, scanned=scanned)
    rows = shape.ckpts * shape.chunks * shape.rows
    print(
        f"{args.output}: {shape.ckpts} ckpts x {shape.chunks} chunks x {shape.rows} rows = {rows:,} sequence rows, "
        f"{size / 1e9:.2f} GB on disk ({size / rows:.1f} bytes/row), {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
