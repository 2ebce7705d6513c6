"""The reads that every exposure view starts from, timed for one or more versions of the code side by side.

    python benchmarks/synthetic_output.py /tmp/synthetic-keys --ckpts 4 --chunks 360 --rows 1000
    python benchmarks/exposure_reads.py /tmp/synthetic-keys                          # this checkout
    python benchmarks/exposure_reads.py /tmp/synthetic-keys --code /tmp/before --code . --rounds 5

(4 checkpoints of 360 chunks of 1000 rows hold the full-size history: 360,000 probe keys and 443,962 count rows, as
the 360 x 360 x 1000 output does, in 0.08 GB instead of 1.8 GB.) Each round runs every version once, in turn, in a
child process of its own with that version's `sweep` first on sys.path, so load on a shared machine falls on all of
them alike. A child times `ExposureHistory.read`, `exposures_at` of one checkpoint, then (with the history kept, as
`memsweep serve` keeps it) the explorer's cell page sorted by exposures (`ExplorerData.cell_view`, over chunks
100-109 of checkpoint min(3, last)) and sequence page (`sequence_view`, ten rows of chunk 200 or the last chunk),
and reports its peak RSS (ru_maxrss) after the history and at the end (the pages load transformers to look for a
tokenizer). Prints the median of each per version, and its ratio to the first version's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, logging, resource, sys, time
logging.disable(logging.WARNING)  # no tokenizer in a synthetic output: each page says so once
code, output = sys.argv[1], sys.argv[2]
sys.path.insert(0, code)
import polars as pl
from sweep.explorer.data import ExplorerData, SequenceQuery
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import open_output

landed = open_output(output)
timed = {}
started = time.perf_counter()
history = ExposureHistory.read(landed)
timed["ExposureHistory.read"] = time.perf_counter() - started
timed["peak RSS, history (GB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
ckpt = min(3, landed.last_checkpoint())
history.exposures_at(ckpt)  # a first frame built costs polars some one-time setup
started = time.perf_counter()
history.exposures_at(ckpt)
timed["exposures_at"] = time.perf_counter() - started
data = ExplorerData(output)
chunks = sorted(set(history.chunks.tolist()))
data.cell_view(ckpt, chunks[0], SequenceQuery())  # the history read and kept, a tokenizer looked for
cells = [chunk for chunk in chunks if 100 <= chunk < 110] or chunks[:10]
started = time.perf_counter()
for chunk in cells:
    data.cell_view(ckpt, chunk, SequenceQuery(sort="exposures"))
timed["cell page"] = (time.perf_counter() - started) / len(cells)
chunk = 200 if 200 in chunks else chunks[-1]
rows = landed.probes().filter(pl.col("chunk") == chunk).select("chunk", "row").head(10).collect().rows()
started = time.perf_counter()
for chunk, row in rows:
    data.sequence_view(chunk, row)
timed["sequence page"] = (time.perf_counter() - started) / len(rows)
timed["peak RSS, pages (GB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
print(json.dumps({"sweep": __import__("sweep").__file__, **timed}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a landed output with exposure counts (synthetic_output.py)")
    parser.add_argument("--code", type=Path, action="append", help="a checkout whose `sweep` to time (repeatable; "
                                                                    "default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    versions = [path.resolve() for path in (args.code or [REPO])]
    results: dict[Path, list[dict]] = {version: [] for version in versions}
    for _ in range(args.rounds):
        for version in versions:
            child = subprocess.run([sys.executable, "-c", CHILD, str(version), str(args.output.resolve())],
                                   capture_output=True, text=True, cwd=version)
            if child.returncode:
                sys.exit(f"{version}: {child.stderr.strip().splitlines()[-1]}")
            results[version].append(json.loads(child.stdout.strip().splitlines()[-1]))
    first = versions[0]
    names = [name for name in results[first][0] if name != "sweep"]
    print(f"median of {args.rounds} rounds; ratio to {first}")
    for version in versions:
        print(f"{version} (sweep from {results[version][0]['sweep']})")
        for name in names:
            median = statistics.median(row[name] for row in results[version])
            base = statistics.median(row[name] for row in results[first])
            unit = "" if "GB" in name else " s"
            print(f"  {name:22} {median:8.3f}{unit}   x{median / base:.2f}")


if __name__ == "__main__":
    main()
