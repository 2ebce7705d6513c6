"""The driver's CPU per cell on its landing path, for one checkpoint of Amber's shape, optionally against another
checkout side by side.

What the scheduler does on the driver for every cell an actor returns, through the real code: `scored_cell` (the
actor's scores joined with the probe set), `ResultStore.write_cells` for each batch (conform, summarize, two
Parquet files, a ledger commit), and the compaction once the checkpoint is finished. Ray's part (the call, the
result's transfer) is not in it: `benchmarks/control_plane.py` measures the whole driver. Scores are the cost
model's (extractable mode, as the control-plane benchmark runs).

    .venv/bin/python benchmarks/landing_path.py                          # this checkout
    .venv/bin/python benchmarks/landing_path.py --against /tmp/old       # and a worktree of another commit

With `--against`, the two checkouts take turns in fresh processes, `--rounds` each; the best round of each is
compared (CPU time, so the load of the machine moves it less than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def measure(cells: int, rows: int, batch: int) -> float:
    """CPU milliseconds per cell of one checkpoint's landing path, in this process, with the modules on sys.path."""
    import numpy as np

    from actors.protocol import CellOutput, CheckpointTarget, LoadedCheckpoint, ScoringOptions
    from benchmarks.control_plane import synthetic_scores
    from sweep.landed.schema import probe_frame
    from sweep.landed.store import ResultStore
    from sweep.run.landing import scored_cell

    continuation = 32
    options = ScoringOptions(mode="extractable", continuation_len=continuation)
    target = CheckpointTarget(7, "ckpt_007", "a" * 40)
    loaded = LoadedCheckpoint(target, "f" * 16, "bfloat16", 32000, 40.0, 27_000_000_000, "node0")
    rng = np.random.default_rng(0)
    probes = {chunk: probe_frame(chunk, np.sort(rng.permutation(2 * rows)[:rows]), ["refinedweb"] * rows,
                                 rng.integers(0, 32000, (rows, 64)), np.arange(rows) + 2 * rows * chunk).drop("tokens")
              for chunk in range(cells)}
    outputs = [CellOutput(7, chunk, synthetic_scores(7, chunk, rows, options, False), 0.7, loaded, chunk == 0,
                          "cuda:0", "bfloat16", 128, "node0") for chunk in range(cells)]

    def one_checkpoint(store: ResultStore) -> None:
        waiting = []
        for chunk, output in enumerate(outputs):
            waiting.append(scored_cell(output, 1, probes[chunk], f"train_{chunk:03d}.jsonl", "0" * 64, continuation))
            if len(waiting) == batch or chunk == cells - 1:
                store.write_cells(7, waiting)
                waiting = []
        store.write_cells(7, [], finishes_checkpoint=True)

    with tempfile.TemporaryDirectory() as scratch:
        def fresh(name: str) -> ResultStore:
            store = ResultStore(Path(scratch) / name)
            store.open({"benchmark": "landing_path"}, {}, {})
            return store

        one_checkpoint(fresh("warm-up"))
        began = time.process_time()
        one_checkpoint(fresh("measured"))
        return 1000 * (time.process_time() - began) / cells


def round_in(checkout: Path, args: argparse.Namespace) -> float:
    """One measurement in a fresh process of `checkout` (its own modules, this file's code)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", "--cells", str(args.cells), "--rows",
               str(args.rows), "--batch", str(args.batch)]
    done = subprocess.run(command, cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["ms_per_cell"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=360, help="cells of the checkpoint (Amber: 360 chunks)")
    parser.add_argument("--rows", type=int, default=1000, help="sequences per cell")
    parser.add_argument("--batch", type=int, default=14,
                        help="cells per landing (14: what LAND_MAX_WAIT_S holds at control_plane.py's time scale 2)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per checkout")
    parser.add_argument("--against", type=Path, help="another checkout (a git worktree) to measure side by side")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single round, as JSON
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, str(Path.cwd()))
        print(json.dumps({"ms_per_cell": measure(args.cells, args.rows, args.batch)}))
        return
    checkouts = {"this checkout": HERE} | ({f"--against {args.against}": args.against.resolve()} if args.against else {})
    rounds: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, checkout in checkouts.items():  # taking turns: a change in the machine's load hits both
            rounds[name].append(round_in(checkout, args))
    print(f"one checkpoint: {args.cells} cells x {args.rows} sequences, landed {args.batch} at a time, then compacted")
    for name, values in rounds.items():
        print(f"{name}: {min(values):.3f} ms CPU per cell (best of {args.rounds}: "
              f"{', '.join(f'{value:.3f}' for value in values)})")
    if args.against:
        this, other = (min(values) for values in rounds.values())
        print(f"this checkout / other: {this / other:.2f}x")


if __name__ == "__main__":
    main()
