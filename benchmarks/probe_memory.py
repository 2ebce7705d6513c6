"""Probe-set sampling speed and memory on a synthetic Amber-shaped chunk.

    python benchmarks/probe_memory.py --megabytes 2000            # writes a temp chunk
    python benchmarks/probe_memory.py --chunk /data/train_143.jsonl  # an existing chunk

Prints rows scanned per second and the peak RSS growth of this process while sampling
(Linux: /proc/self/status VmHWM, reset first through /proc/self/clear_refs). The memory should stay flat in the chunk size:
a 4 MB scan buffer plus 8 bytes per row, whatever the file's size.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from peak_memory import peak_rss_bytes, reset_peak_rss  # benchmarks/ (this script's folder)

from sweep.data.probes import build_probe_set

ROW_LEN = 2049  # Amber rows hold 2049 token ids


def write_synthetic_chunk(path: Path, megabytes: int, seed: int = 0) -> int:
    """Raw-format rows of ROW_LEN random ids until ``megabytes`` are written; returns the row count."""
    rng = np.random.default_rng(seed)
    # A few pre-formatted bodies with a per-row random head keep writing at disk speed.
    bodies = [",".join(map(str, rng.integers(0, 32000, ROW_LEN - 64).tolist())) for _ in range(8)]
    rows, written = 0, 0
    with open(path, "w") as handle:
        while written < megabytes * 1_000_000:
            heads = rng.integers(0, 32000, (512, 64)).tolist()
            block = "".join(
                f'{{"token_ids": [{",".join(map(str, head))},{bodies[(rows + i) % 8]}], "source": "s"}}\n'
                for i, head in enumerate(heads)
            )
            handle.write(block)
            rows += len(heads)
            written += len(block)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk", type=Path, help="an existing chunk file (default: write a synthetic one)")
    parser.add_argument("--megabytes", type=int, default=1000, help="size of the synthetic chunk")
    parser.add_argument("--n", type=int, default=1000, help="rows to sample")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # build_probe_set logs rows/s

    with tempfile.TemporaryDirectory() as scratch:
        path = args.chunk
        if path is None:
            path = Path(scratch) / "train_000.jsonl"
            began = time.perf_counter()
            rows = write_synthetic_chunk(path, args.megabytes)
            print(f"wrote {rows} rows, {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - began:.1f} s")
        size = os.path.getsize(path)
        reset_peak_rss()
        before = psutil.Process().memory_info().rss
        began = time.perf_counter()
        probes = build_probe_set(path, chunk=0, n=args.n, seed=42, prompt_len=32, continuation_len=32)
        seconds = time.perf_counter() - began
        growth = peak_rss_bytes() - before
        print(f"sampled {len(probes)} rows of a {size / 1e6:.0f} MB chunk in {seconds:.2f} s "
              f"({size / 1e6 / seconds:.0f} MB/s); peak RSS growth {growth / 1e6:.1f} MB "
              f"({100 * growth / size:.2f}% of the file)")


if __name__ == "__main__":
    main()
