"""How long a Ctrl-C can wait for a landing to commit (sweep/landed/uninterrupted.py), at Amber's cell size.

The store holds SIGINT from a landing's first file write to its ledger commit (and a compaction's deletes). This
times exactly those windows, through the real ResultStore, for one checkpoint of Amber's shape: landings of
`--batch` cells (the scheduler lands a checkpoint's results every 32 cells) of `--rows` sequences each, with the
l generated tokens kept (greedy mode's default: the largest rows), then the compaction that merges the
checkpoint's `--cells` cells into one pair.

    .venv/bin/python benchmarks/landing_hold.py              # 360 cells x 1000 rows, landed 32 at a time
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl

import sweep.landed.store as store_module
from actors.protocol import ScoringOptions
from control_plane import synthetic_scores
from sweep.landed.schema import CellProvenance, score_columns
from sweep.landed.store import ResultStore, ScoredCell

CONTINUATION = 32


def scored_cell(ckpt: int, chunk: int, rows: int) -> ScoredCell:
    """A cell as the driver hands it to the store: the cost model's synthetic scores (benchmarks/control_plane.py)
    joined with sampled rows, through the same columns a real actor's scores become (sweep/landed/schema.py)."""
    scores = synthetic_scores(ckpt, chunk, rows, ScoringOptions(nll=True), keep_generated=True)
    rng = np.random.default_rng([ckpt, chunk])
    probes = pl.DataFrame({"chunk": np.full(rows, chunk), "row": np.sort(rng.choice(10 * rows, rows, replace=False)),
                           "source": rng.choice(["refinedweb", "starcoderdata", "arxiv"], rows)})
    provenance = CellProvenance(seconds=1.0, device="cuda", dtype="bfloat16", batch_size=256,
                                model_revision=f"ckpt_{ckpt:03d}", model_commit="a" * 40, weights_fingerprint="fp")
    return ScoredCell(chunk, probes.with_columns(score_columns(scores, CONTINUATION)), provenance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=360, help="cells of the checkpoint (Amber: 360 chunks)")
    parser.add_argument("--rows", type=int, default=1000, help="sequences per cell")
    parser.add_argument("--batch", type=int, default=32, help="cells per landing")
    args = parser.parse_args()

    held: list[float] = []
    real = store_module.uninterrupted

    @contextmanager
    def timed():
        began = time.perf_counter()
        with real():
            yield
        held.append(time.perf_counter() - began)

    store_module.uninterrupted = timed
    store_module.COMPACT_AFTER_FILES = args.cells  # compaction only when asked, below
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder) / "out")
        store.open({"benchmark": "landing_hold"}, {}, {})
        cells = [scored_cell(359, chunk, args.rows) for chunk in range(args.cells)]
        for start in range(0, args.cells, args.batch):
            store.write_cells(359, cells[start:start + args.batch])
        landings = list(held)
        held.clear()
        store.compact_checkpoint(359)
        compaction = held[0]
        size = sum(path.stat().st_size for path in (Path(folder) / "out").rglob("part-*.parquet"))
    print(f"{len(landings)} landings of {args.batch} cells x {args.rows} rows: SIGINT held "
          f"median {1000 * statistics.median(landings):.0f} ms, max {1000 * max(landings):.0f} ms")
    print(f"compaction of {args.cells} cells ({args.cells * args.rows:,} rows, {size / 1e6:.1f} MB merged): "
          f"SIGINT held {1000 * compaction:.0f} ms")


if __name__ == "__main__":
    main()
