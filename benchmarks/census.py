"""A census of a Pythia-sized chunk (issue 23): 1,024,000 sequences scored, killed mid-way, rerun, compared.

    python benchmarks/census.py                       # one chunk of 1,024,000 sequences, two checkpoints
    python benchmarks/census.py --sequences 65536     # a quick look

Writes, in a scratch folder, a numpy token stream of one chunk (1000 steps x 1024 sequences of k + l = 64 uint16
tokens: only what a census reads of each sequence, 131 MB) and two tiny LLaMA checkpoints, `step500` (inside the
chunk) and `step1000` (its end), trained on the chunk's first 32 sequences (step1000 memorizes them). Then runs the
same census spec (`data.samples_per_chunk: all`, extractable mode; the chunk at step1000, or with --checkpoints 2 at
step500 too) three times, each `memsweep run` in a session of its own with its own local Ray:

1. clean: to the end, into `clean/`;
2. killed: into `resumed/`, SIGKILL to the driver's whole session (the driver, its Ray, the actors: a machine lost)
   half-way through the clean run's time (one cell: mid-cell), or once the first cell has committed (two cells);
3. rerun: the same command into `resumed/`, to the end.

and checks that `resumed/` equals `clean/` row for row (every sequence once, none lost), and that `memsweep verify`
finds it intact. First, in this process, the two parts of a census whose memory could grow with the chunk: an
actor's read of the whole chunk in pieces, and the driver's landing of a cell of that many rows (--parts-only: just
these, which take seconds where the sweeps take as long as a CPU needs to score the chunk twice). Prints each run's wall time and the peak RSS (VmHWM, polled every 0.2 s) of the driver process and
of the largest actor process. The machine this runs on may be shared: compare runs of one invocation.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sweep.landed.reader import open_output  # noqa: E402
from sweep.landed.verify import check_output  # noqa: E402
from tests.tiny_lm import make_sequences, train_memorizing_llama  # noqa: E402

PER_STEP, STEPS_PER_CHUNK = 1024, 1000
K = L = 32
VOCAB = 64
TRAINED = 32  # the chunk's first sequences, which the checkpoints are trained on (the second memorizes them all)


def checkpoints(sequences: int) -> list[int]:
    """Two steps: inside the chunk and at its end (500 and 1000 at full size)."""
    steps = max(2, sequences // PER_STEP)
    return [steps // 2, steps]


def scored_checkpoints(sequences: int, count: int) -> list[int]:
    """The checkpoints the census scores: the chunk's end, and with `count` 2 the one inside it too."""
    return checkpoints(sequences)[-count:]


def write_world(root: Path, sequences: int) -> None:
    """The token stream (one file of `sequences` items of k + l uint16 tokens) and the two checkpoints, the second
    trained longer."""
    tokens = make_sequences(sequences, K + L, VOCAB, seed=7).numpy().astype(np.uint16)
    (root / "data").mkdir(parents=True)
    tokens.tofile(root / "data" / "tokens.bin")
    trained = torch.from_numpy(tokens[:TRAINED].astype(np.int64))
    for step, steps in zip(checkpoints(sequences), (40, 120)):
        model = train_memorizing_llama(trained, VOCAB, steps=steps, seed=step, hidden_size=32, num_layers=1)
        model.save_pretrained(root / "model" / f"step{step}")


def write_spec(root: Path, output: Path, sequences: int, count: int) -> Path:
    spec = {
        "name": "census-bench",
        "model": {"source": str(root / "model"), "revision": "step{ckpt}", "dtype": "float32"},
        "data": {"source": str(root / "data"), "format": "numpy", "file": ["tokens.bin"], "dtype": "uint16",
                 "sequence_len": K + L, "samples_per_chunk": "all", "cache_dir": str(root / "cache")},
        "timeline": {"sequences_per_step": PER_STEP, "steps_per_chunk": checkpoints(sequences)[1]},
        "checkpoints": scored_checkpoints(sequences, count),
        "chunks": [0],
        "memorization": {"prompt_len": K, "continuation_len": L, "mode": "extractable"},
        "resources": {"batch_size": 4096, "actors": 1, "cpus_per_actor": 1},
        "output": str(output),
    }
    path = root / f"{output.name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def committed_cells(output: Path) -> int:
    return len(open_output(output).done_cells()) if (output / "manifest.json").exists() else 0


def run(spec: Path, kill_after_cells: int | None = None, kill_after_s: float | None = None) -> dict:
    """`memsweep run spec` in a session of its own; returns its wall time, exit status and peak RSS (driver, largest
    actor), killing the whole session with SIGKILL once `kill_after_cells` cells have committed or `kill_after_s`
    seconds have passed."""
    output = Path(yaml.safe_load(spec.read_text())["output"])
    command = [sys.executable, "-m", "sweep", "run", str(spec), "--num-cpus", "2", "--no-progress"]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    driver = psutil.Process(process.pid)
    peaks = {"driver": 0, "actor": 0}
    killed = False
    while process.poll() is None:
        for proc in [driver, *driver.children(recursive=True)] + _session_processes(process.pid):
            try:
                with open(f"/proc/{proc.pid}/status") as status:
                    hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
                name = " ".join(proc.cmdline())
            except (OSError, psutil.Error, StopIteration):
                continue
            role = "driver" if proc.pid == process.pid else "actor" if "CheckpointScorer" in name else None
            if role:
                peaks[role] = max(peaks[role], hwm)
        if (kill_after_cells is not None and committed_cells(output) >= kill_after_cells) or \
                (kill_after_s is not None and time.perf_counter() - began >= kill_after_s):
            os.killpg(process.pid, signal.SIGKILL)  # the driver, its Ray and its actors: a machine lost
            killed = True
            break
        time.sleep(0.2)  # how often to look, not how long to wait
    log = process.communicate()[0]
    _kill_leftovers(process.pid)
    return {"seconds": time.perf_counter() - began, "returncode": process.returncode, "killed": killed,
            "driver_peak": peaks["driver"], "actor_peak": peaks["actor"], "log": log}


def _session_processes(session: int) -> list[psutil.Process]:
    """Every process of the run's session (Ray's daemons and workers are not all the driver's children)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == session:
                found.append(proc)
        except OSError:
            continue
    return found


def _kill_leftovers(session: int) -> None:
    for proc in _session_processes(session):
        try:
            proc.kill()
        except psutil.Error:
            pass


def measure_full_size_parts(root: Path, sequences: int) -> None:
    """The two things a census does at any size, measured in this process at `sequences`: an actor's read of the
    whole chunk (sweep/data/census.py, the pieces it scores) and the driver's landing of the cell (the rows and
    scores an actor returns, joined and landed: sweep/run/landing.py, sweep/landed/store.py). Peak RSS growth of each
    (VmHWM, reset first) and its time."""
    import polars as pl
    from peak_memory import peak_rss_bytes, reset_peak_rss  # benchmarks/ (this script's folder)

    from actors.protocol import BatchScores, CellOutput, CheckpointTarget, LoadedCheckpoint
    from sweep.data.census import census_chunk
    from sweep.data.stream_chunks import describe_spec_chunks
    from sweep.landed.store import ResultStore
    from sweep.run.landing import scored_cell
    from sweep.spec import load_spec

    spec = load_spec(write_spec(root, root / "parts", sequences, 1))
    described, _ = describe_spec_chunks(spec, [0])
    reset_peak_rss()
    before = psutil.Process().memory_info().rss
    began = time.perf_counter()
    rows, full = 0, 0
    for piece in census_chunk(0, described[0], K, L).pieces():
        rows += len(piece.rows)
        full += int((piece.tokens[:, 0] == piece.tokens[:, K]).sum())  # touch the tokens
    read_s, read_peak = time.perf_counter() - began, peak_rss_bytes() - before
    print(f"read: {rows:,} sequences in {read_s:.1f} s ({rows / read_s:,.0f}/s), peak RSS growth "
          f"{read_peak / 1e6:,.1f} MB")

    rng = np.random.default_rng(0)
    prefix = np.minimum(rng.geometric(0.55, rows) - 1, L).astype(np.int16)
    scores = BatchScores(matches=None, prefix_match=prefix, full_match=prefix == L, match_mask=None, nll=None,
                         tf_accuracy=None)
    target = CheckpointTarget(spec.checkpoints[0], f"step{spec.checkpoints[0]}")
    output = CellOutput(ckpt=target.ckpt, chunk=0, scores=scores, seconds=1.0,
                        loaded=LoadedCheckpoint(target, "f" * 16, "float32", VOCAB, 1.0, 0, "here"),
                        loaded_now=True, device="cpu", dtype="float32", batch_size=4096, host="here",
                        rows=np.arange(rows, dtype=np.int64), data_sha256="0" * 64)
    store = ResultStore(root / "parts")
    store.open(spec.identity(), spec.model_dump(mode="json"), {"benchmark": "census"})
    reset_peak_rss()
    before = psutil.Process().memory_info().rss
    began = time.perf_counter()
    cell = scored_cell(output, 1, None, described[0].file, None, L, spec.timeline_positions(), described[0].start)
    store.write_cells(target.ckpt, [cell], finishes_checkpoint=True)
    land_s, land_peak = time.perf_counter() - began, peak_rss_bytes() - before
    landed = open_output(root / "parts").sequences().select(pl.len()).collect().item()
    print(f"land: a cell of {landed:,} sequences in {land_s:.2f} s, peak RSS growth {land_peak / 1e6:,.1f} MB "
          f"(the scores returned: {sum(a.nbytes for a in (prefix, scores.full_match, output.rows)) / 1e6:,.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=PER_STEP * STEPS_PER_CHUNK, help="sequences in the chunk")
    parser.add_argument("--checkpoints", type=int, choices=(1, 2), default=1,
                        help="1: one cell, killed half-way through the clean run's time; 2: two cells (the chunk at "
                             "step 500 and 1000), killed once the first has committed")
    parser.add_argument("--scratch", type=Path, help="folder to write in (default: a temporary one)")
    parser.add_argument("--parts-only", action="store_true",
                        help="only the read and the landing of one cell at --sequences, in this process (no sweep)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        root = Path(scratch)
        began = time.perf_counter()
        write_world(root, args.sequences)
        print(f"wrote a chunk of {args.sequences:,} sequences and 2 checkpoints in {time.perf_counter() - began:.1f} s")
        measure_full_size_parts(root, args.sequences)
        if args.parts_only:
            return
        runs = {}
        for name, output in (("clean", "clean"), ("killed", "resumed"), ("rerun", "resumed")):
            kill = {} if name != "killed" else {"kill_after_cells": 1} if args.checkpoints == 2 else \
                {"kill_after_s": runs["clean"]["seconds"] / 2}
            runs[name] = result = run(write_spec(root, root / output, args.sequences, args.checkpoints), **kill)
            cells = committed_cells(root / output)
            print(f"{name}: {result['seconds']:.1f} s, exit {result['returncode']}{' (SIGKILL)' if result['killed'] else ''}, "
                  f"{cells} cells committed; peak RSS driver {result['driver_peak'] / 1e6:,.0f} MB, "
                  f"actor {result['actor_peak'] / 1e6:,.0f} MB")
            if result["returncode"] not in (0, -9) or (name != "killed" and result["returncode"] != 0):
                print(result["log"][-4000:])
                raise SystemExit(1)
        clean, resumed = (open_output(root / name) for name in ("clean", "resumed"))
        order = ["ckpt", "chunk", "row"]
        a = clean.sequences().collect().sort(order)
        b = resumed.sequences().collect().sort(order)
        timing = ["seconds", "sequences_per_s", "finished_at", "attempts", "device", "batch_size"]
        equal = a.equals(b) and clean.cells().collect().drop(timing).sort(order[:2]).equals(
            resumed.cells().collect().drop(timing).sort(order[:2]))
        duplicated = int(b.select(order).is_duplicated().sum())
        report = check_output(root / "resumed")
        print(f"resumed == clean: {equal} ({b.height:,} rows, {duplicated} duplicated, "
              f"{int(a['full_match'].sum()):,} fully memorized); verify: "
              f"{'intact' if report.ok else report.describe()}")
        if not equal or duplicated or not report.ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
