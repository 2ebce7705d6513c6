"""What the demo's second model size costs to train, side by side with the demo's own model, in one process.

    .venv/bin/python benchmarks/demo_sizes.py                 # a 3 x 96 world (the tests' session world) in a temp dir
    .venv/bin/python benchmarks/demo_sizes.py --chunks 8 --rows 256 --rounds 1   # the default world's size

Builds the world's data once, then trains the demo model (DemoWorldConfig) and the smaller one
(sweep/demo/sizes.py) through the same chunk files, alternating, `--rounds` times, and prints each training time
and the ratio smaller / demo per round (alternating, so that a change of load on a shared machine falls on both).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.demo.config import DemoWorldConfig  # noqa: E402
from sweep.demo.sizes import smaller_config  # noqa: E402
from sweep.demo.world import train_checkpoints, write_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--rows", type=int, default=96, help="rows per chunk")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = DemoWorldConfig(chunks=args.chunks, rows_per_chunk=args.rows)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_data(config, root / "data")
        for round_ in range(args.rounds):
            seconds = {}
            for name, model in (("demo model", config), ("smaller", smaller_config(config))):
                started = time.perf_counter()
                train_checkpoints(model, root / "data", root / "model")
                seconds[name] = time.perf_counter() - started
                shutil.rmtree(root / "model")
            print(f"round {round_}: demo model {seconds['demo model']:.1f} s, smaller {seconds['smaller']:.1f} s, "
                  f"smaller / demo {seconds['smaller'] / seconds['demo model']:.2f}", flush=True)


if __name__ == "__main__":
    main()
