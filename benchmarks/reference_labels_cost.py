"""What the demo's reference labels cost (sweep/demo/reference_labels.py): HF `generate` at the last checkpoint over
every line of the demo's stream, on one torch thread (what `memsweep demo` uses) and on two, side by side in one
process; wall and CPU seconds, and that both give the same labels.

    make demo                                                  # builds demo-world/ (and the labels)
    .venv/bin/python benchmarks/reference_labels_cost.py       # demo-world/model and demo-world/data
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.demo.config import DemoWorldConfig  # noqa: E402
from sweep.demo.reference_labels import reference_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo-world/model"))
    parser.add_argument("--data", type=Path, default=Path("demo-world/data"))
    args = parser.parse_args()
    results = {}
    for threads in (1, 2):
        wall, cpu = time.perf_counter(), time.process_time()
        results[threads] = reference_labels(DemoWorldConfig(), args.model, args.data, threads=threads)
        print(f"{threads} thread(s): wall {time.perf_counter() - wall:.1f} s, cpu {time.process_time() - cpu:.1f} s, "
              f"{results[threads].height:,} memorized lines", flush=True)
    print(f"same labels on both: {results[1].equals(results[2])}")


if __name__ == "__main__":
    main()
