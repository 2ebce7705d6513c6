"""ResultStore: round trip, ledger, compaction, crash safety at every filesystem step, manifest, failures,
pins, probe sets, integrity (verify / repair) and the one-writer lock."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import sweep.landed.atomic_write as atomic_write_module
import sweep.landed.ledger as ledger_module
import sweep.landed.store as store_module
from sweep.errors import MemsweepError
from sweep.landed.ledger import DamagedOutputError
from sweep.landed.reader import open_output
from actors.protocol import BatchScores
from sweep.landed.schema import (CELL_SCHEMA, EXPOSURE_COUNT_SCHEMA, PROBE_SCHEMA, SEQUENCE_SCHEMA, CellProvenance,
                                 conform, conform_sequences, score_columns, summarize_cell)
from sweep.spec import identity_hash
from sweep.landed.store import PinMismatchError, ResultStore, ScoredCell, StoreMismatchError, repair_output
from sweep.landed.verify import check_landed, file_sha256, verify_output
from sweep.landed.writer_lock import OutputLockedError, writer_lock
from tests.landed_world import synthetic_sequences, write_landed

# The landed-dataset contract (docs/architecture.md), spelled out independently of the store.
SEQUENCE_COLUMNS = {
    "ckpt": pl.Int32, "chunk": pl.Int32, "row": pl.Int64, "index": pl.Int64, "source": pl.String, "seen": pl.Boolean,
    "matches": pl.Int16,
    "score": pl.Float32, "full_match": pl.Boolean, "prefix_match": pl.Int16, "match_mask": pl.Binary,
    "nll": pl.Float32, "tf_accuracy": pl.Float32, "generated": pl.List(pl.UInt32), "decision_margin": pl.Float32,
}
CELL_COLUMNS = {
    "ckpt": pl.Int32, "chunk": pl.Int32, "n": pl.Int32, "score": pl.Float64, "full_match_rate": pl.Float64,
    "mean_prefix_match": pl.Float64, "nll": pl.Float64, "tf_accuracy": pl.Float64, "seen": pl.Boolean,
    "seen_fraction": pl.Float64, "seconds": pl.Float64, "sequences_per_s": pl.Float64, "device": pl.String, "dtype": pl.String,
    "batch_size": pl.Int32, "attempts": pl.Int32, "finished_at": pl.String, "model_revision": pl.String,
    "model_commit": pl.String, "weights_fingerprint": pl.String, "stored_dtype": pl.String,
    "data_file": pl.String, "data_sha256": pl.String,
}
LANDED_NAME = re.compile(r"^(batch|part)-\d{6}\.parquet$")
IDENTITY = {"model": "LLM360/Amber", "memorization": {"prompt_len": 32, "gen_len": 32}, "probe": {"n": 7}}
GEN_LEN = 32


def fake_sequences(ckpt: int, chunk: int, n: int = 7) -> pl.DataFrame:
    """What the driver hands the store for one cell: random but reproducible per (ckpt, chunk)."""
    rng = np.random.default_rng(1000 * ckpt + chunk)
    matches = rng.integers(0, GEN_LEN + 1, n)
    matches[0] = GEN_LEN  # at least one full match per cell
    return pl.DataFrame({
        "chunk": np.full(n, chunk),
        "row": np.sort(rng.choice(10_000, n, replace=False)),
        "source": rng.choice(["c4", "arxiv", "refinedweb"], n),
        "matches": matches,
        "score": matches / GEN_LEN,
        "full_match": matches == GEN_LEN,
        "prefix_match": np.minimum(matches, rng.integers(0, GEN_LEN + 1, n)),
        "match_mask": rng.integers(0, 256, (n, GEN_LEN // 8), dtype=np.uint8),
        "nll": rng.random(n) * 3,
    })


def cell_info(ckpt: int, chunk: int, **pin) -> dict:
    return {"seconds": 0.5 + chunk, "device": "cpu", "dtype": "float32", "batch_size": 4,
            "attempts": 1, "finished_at": f"2026-01-01T00:00:{ckpt:02d}+00:00",
            "model_revision": f"ckpt_{ckpt:03d}", "model_commit": f"{ckpt:040d}",
            "weights_fingerprint": f"fp{ckpt:014d}", **pin}


def write_cell(store: ResultStore, ckpt: int, chunk: int, sequences: pl.DataFrame, info: dict) -> dict:
    return store.write_cells(ckpt, [ScoredCell(chunk, sequences, CellProvenance.from_dict(info))])[0]


def write(store: ResultStore, ckpt: int, chunk: int) -> dict:
    return write_cell(store, ckpt, chunk, fake_sequences(ckpt, chunk), cell_info(ckpt, chunk))


def new_store(path: Path) -> ResultStore:
    store = ResultStore(path)
    store.open(IDENTITY, {"spec": "demo"}, {"device": "cpu", "batch_size": 4})
    return store


def read_sorted(store: ResultStore) -> tuple[pl.DataFrame, pl.DataFrame]:
    sequences = open_output(store.output).sequences().collect().sort("ckpt", "chunk", "row")
    cells = open_output(store.output).cells().collect().sort("ckpt", "chunk")
    return sequences, cells


def data_files(output: Path) -> list[Path]:
    return sorted(p for table in ("sequences", "cells") if (output / table).exists()
                  for p in (output / table).rglob("*") if p.is_file())


def test_round_trip_schema_values_and_done_cells(tmp_path):
    store = new_store(tmp_path / "out")
    records = {(c, j): write(store, c, j) for c in (0, 2) for j in (0, 1, 2)}
    assert store.ledgers.done_cells() == set(records)

    sequences, cells = read_sorted(store)
    assert dict(sequences.schema) == SEQUENCE_COLUMNS
    assert dict(cells.schema) == CELL_COLUMNS
    for (ckpt, chunk), record in records.items():
        written = fake_sequences(ckpt, chunk)
        landed = sequences.filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk))
        assert landed["row"].to_list() == written["row"].to_list()
        assert landed["source"].to_list() == written["source"].to_list()
        assert landed["matches"].to_list() == written["matches"].to_list()
        assert landed["full_match"].to_list() == written["full_match"].to_list()
        np.testing.assert_allclose(landed["score"].to_numpy(), written["score"].to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(landed["nll"].to_numpy(), written["nll"].to_numpy(), rtol=1e-6)
        assert landed["match_mask"].to_list() == [bytes(r) for r in written["match_mask"].to_numpy()]
        assert landed["tf_accuracy"].null_count() == landed.height  # left out -> null

        cell = cells.filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk)).row(0, named=True)
        assert cell == record
        assert cell["n"] == written.height
        assert cell["score"] == pytest.approx(written["score"].mean(), rel=1e-6)
        assert cell["full_match_rate"] == pytest.approx(written["full_match"].mean())
        assert cell["tf_accuracy"] is None
        assert cell["seen"] == (chunk <= ckpt)
        assert cell["model_commit"] == f"{ckpt:040d}" and cell["data_sha256"] is None
    # every data file is listed in a ledger, with its true size and sha256
    listed = {record.path: record for record in store.ledgers.landed_files()}
    assert {p.relative_to(tmp_path / "out").as_posix() for p in data_files(tmp_path / "out")} == set(listed)
    for path, record in listed.items():
        assert (tmp_path / "out" / path).stat().st_size == record.bytes
        assert file_sha256(tmp_path / "out" / path) == record.sha256


def test_several_cells_land_as_one_pair_and_generated_tokens_round_trip(tmp_path):
    store = new_store(tmp_path / "out")
    generated = np.arange(7 * GEN_LEN, dtype=np.uint32).reshape(7, GEN_LEN)
    cells = [ScoredCell(j, fake_sequences(4, j).with_columns(generated=pl.Series(generated).reshape((7, GEN_LEN))),
                        CellProvenance.from_dict(cell_info(4, j))) for j in (1, 3)]
    store.write_cells(4, cells)
    assert len(store.ledgers.ledger(4).files) == 1 and store.ledgers.ledger(4).files[0].chunks == (1, 3)
    landed = open_output(store.output).sequences().filter(pl.col("chunk") == 3).collect()
    assert landed["generated"].to_list() == generated.tolist()


def test_a_bulk_partition_lands_whole_and_refuses_cells_already_landed(tmp_path):
    store = new_store(tmp_path / "out")
    write(store, 2, 5)  # landed cell by cell
    write(store, 3, 1)  # another checkpoint's cell 1 must not block checkpoint 2's
    sequences = pl.concat([fake_sequences(2, chunk).drop("match_mask") for chunk in (0, 1)])
    cells = pl.DataFrame({"chunk": [0, 1], "score": [0.5, 0.25]})
    store.import_checkpoint(2, sequences, cells)
    assert sorted(store.ledgers.done_cells()) == [(2, 0), (2, 1), (2, 5), (3, 1)]
    assert open_output(store.output).sequences().filter(pl.col("ckpt") == 2).collect().height == 3 * 7
    before = data_files(tmp_path / "out")
    again = pl.concat([fake_sequences(2, chunk).drop("match_mask") for chunk in (4, 5)])
    with pytest.raises(MemsweepError, match=r"ckpt 2: chunks \[5\] have landed already"):
        store.import_checkpoint(2, again, pl.DataFrame({"chunk": [4, 5], "score": [0.0, 0.0]}))
    assert data_files(tmp_path / "out") == before and (2, 4) not in store.ledgers.done_cells()


def test_compaction_keeps_rows_one_pair_per_ckpt_and_no_duplicates(tmp_path):
    output = tmp_path / "out"
    store = new_store(output)
    for ckpt in (0, 1):
        for chunk in (0, 1, 2):
            write(store, ckpt, chunk)
    before = read_sorted(store)
    for ckpt in (0, 1):
        store.compact_checkpoint(ckpt)
    for table in ("sequences", "cells"):
        for ckpt in (0, 1):
            [name] = os.listdir(output / table / f"ckpt={ckpt}")
            assert name.startswith("part-")
    for expected, got in zip(before, read_sorted(ResultStore(output))):
        assert_frame_equal(got, expected)

    # Re-writing landed cells (compacted or not) must not duplicate them.
    write(store, 0, 1)
    assert len(os.listdir(output / "sequences" / "ckpt=0")) == 1
    for expected, got in zip(before, read_sorted(ResultStore(output))):
        assert_frame_equal(got, expected)
    more = {(0, 3), (0, 4), (1, 5)}
    for ckpt, chunk in more:
        write(store, ckpt, chunk)
    write(store, 0, 3)
    store.compact_checkpoint(0)
    store.compact_checkpoint(1)
    store.compact_checkpoint(1)  # nothing new: a no-op
    sequences, cells = read_sorted(ResultStore(output))
    assert cells.select("ckpt", "chunk").rows() == sorted({(c, j) for c in (0, 1) for j in (0, 1, 2)} | more)
    assert sequences.select("ckpt", "chunk", "row").is_duplicated().sum() == 0
    assert sequences.height == 7 * len(cells)
    assert ResultStore(output).ledgers.done_cells() == set(cells.select("ckpt", "chunk").rows())


def test_compaction_merges_at_most_compact_max_rows_into_a_pair(tmp_path, monkeypatch):
    """A census checkpoint (Pythia: 146M sequences) is never merged into one file: a merge holds its pairs in
    memory. Pairs of at most COMPACT_MAX_ROWS, each of whole cells, every row once, and a second compaction a no-op."""
    monkeypatch.setattr(store_module, "COMPACT_MAX_ROWS", 15)  # two cells of 7 rows a pair
    output = tmp_path / "out"
    store = new_store(output)
    for chunk in range(5):
        write(store, 0, chunk)
    before = read_sorted(store)
    store.compact_checkpoint(0)
    pairs = ResultStore(output).ledgers.ledger(0).files
    assert [pair.chunks for pair in pairs] == [(0, 1), (2, 3), (4,)]
    assert all(pair.name.startswith("part-") and pair.sequences.rows <= 15 for pair in pairs)
    store.compact_checkpoint(0)  # nothing left to merge
    assert ResultStore(output).ledgers.ledger(0).files == pairs
    for expected, got in zip(before, read_sorted(ResultStore(output))):
        assert_frame_equal(got, expected)
    assert verify_output(output).ok


def test_many_loose_landings_are_merged_as_they_pile_up(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "COMPACT_AFTER_FILES", 3)
    store = new_store(tmp_path / "out")
    for chunk in range(8):
        write(store, 0, chunk)
    assert len(store.ledgers.ledger(0).files) <= 4
    assert store.ledgers.done_cells() == {(0, j) for j in range(8)}
    assert open_output(store.output).sequences().collect().height == 8 * 7


def test_empty_store_reads_as_empty_tables(tmp_path):
    store = ResultStore(tmp_path / "nothing")
    assert store.ledgers.done_cells() == set()
    assert store.layout.failure_files() == []
    store = new_store(tmp_path / "out")
    assert open_output(store.output).failures() == []
    assert dict(open_output(store.output).sequences().collect().schema) == SEQUENCE_COLUMNS
    assert open_output(store.output).sequences().collect().height == 0
    assert open_output(store.output).cells().collect().height == 0
    assert open_output(store.output).probes().collect().height == 0


# ---- crash safety --------------------------------------------------------------------------

class SimulatedCrash(BaseException):
    """BaseException, so no `except Exception` in the code under test can swallow it."""


class CrashingOs:
    """Stands in for `os` inside sweep.landed.store: the crash_at-th filesystem mutation (or fsync)
    raises instead of running, as if the process had been killed just before it."""

    MUTATIONS = frozenset({"replace", "rename", "unlink", "rmdir", "makedirs", "fsync", "remove"})

    def __init__(self, crash_at: int):
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in self.MUTATIONS:
            return real

        def counted(*args, **kwargs):
            self.calls += 1
            if self.calls == self.crash_at:
                raise SimulatedCrash(name)
            return real(*args, **kwargs)
        return counted


def run_with_crash(monkeypatch, crash_at: int, operation) -> bool:
    """Run `operation` with a crash at mutation `crash_at`; True if it crashed."""
    crashing = CrashingOs(crash_at)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        crashing.calls += 1
        if crashing.calls == crashing.crash_at:
            raise SimulatedCrash("unlink")
        return real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as patch:
        for module in (store_module, atomic_write_module):  # every module of the writer that touches the disk
            patch.setattr(module, "os", crashing)
        patch.setattr(Path, "unlink", unlink)
        try:
            operation()
        except SimulatedCrash:
            return True
    return False


def assert_listed_files_whole(output: Path):
    store = ResultStore(output)
    assert check_landed(store, deep=True) == []
    for path in data_files(output):
        assert LANDED_NAME.match(path.name), f"stray file {path}"


def build_base(output: Path) -> ResultStore:
    """ckpt 0 compacted, ckpt 1 with two loose cells and one earlier compacted, a failure for (1, 3)."""
    store = new_store(output)
    for chunk in (0, 1):
        write(store, 0, chunk)
    store.compact_checkpoint(0)
    write(store, 1, 0)
    store.compact_checkpoint(1)
    write(store, 1, 1)
    write(store, 1, 2)
    store.record_failure(1, 3, "CUDA out of memory", attempts=3)
    return store


def redo_write(store: ResultStore):
    """What the driver does on resume: write the cell unless it landed."""
    if (1, 3) not in store.ledgers.done_cells():
        write(store, 1, 3)


@pytest.mark.parametrize("operation", ["write_cell", "compact_checkpoint"])
def test_crash_at_every_step_recovers_exactly(tmp_path, monkeypatch, operation):
    def act(store: ResultStore):
        if operation == "write_cell":
            write(store, 1, 3)
        else:
            store.compact_checkpoint(1)

    reference = build_base(tmp_path / "reference")
    old_rows = read_sorted(reference)
    act(reference)
    expected = read_sorted(reference)
    expected_failures = [(f["ckpt"], f["chunk"]) for f in open_output(reference.output).failures()]

    crash_points = 0
    for crash_at in range(1, 200):
        output = tmp_path / f"crash-{crash_at}"
        store = build_base(output)
        if not run_with_crash(monkeypatch, crash_at, lambda: act(store)):
            break
        crash_points += 1

        # Before any recovery, readers see the old rows or the new ones, never a mix, never nothing.
        seen = read_sorted(ResultStore(output))
        assert seen[0].height in (old_rows[0].height, expected[0].height)
        assert check_landed(ResultStore(output), deep=True) == []

        fresh = ResultStore(output)
        fresh.recover()
        assert not (output / "_tmp").exists() or not any((output / "_tmp").iterdir())
        assert_listed_files_whole(output)
        sequences, cells = read_sorted(fresh)
        assert set(sequences.select("ckpt", "chunk").unique().rows()) == set(cells.select("ckpt", "chunk").rows())
        assert len(cells) in (len(old_rows[1]), len(expected[1]))

        if operation == "write_cell":
            redo_write(fresh)
        else:
            fresh.compact_checkpoint(1)
        for want, got in zip(expected, read_sorted(ResultStore(output))):
            assert_frame_equal(got, want)
        assert [(f["ckpt"], f["chunk"]) for f in open_output(fresh.output).failures()] == expected_failures
        if operation == "compact_checkpoint":
            assert len(os.listdir(output / "sequences" / "ckpt=1")) == 1
    else:
        pytest.fail("operation never completed")
    assert crash_points >= 5  # the operation really has several steps to crash in


def test_recover_drops_unlisted_files_and_stale_failures(tmp_path):
    output = tmp_path / "out"
    store = new_store(output)
    write(store, 3, 0)
    # A landing cut short before its ledger commit, a stray temp file, a stale failure record.
    orphan = store.layout.partition_dir("sequences", 3) / "batch-000007.parquet"
    fake_sequences(3, 1).write_parquet(orphan)
    (output / "_tmp").mkdir(exist_ok=True)
    (output / "_tmp" / "cell-00002.abc.parquet").write_bytes(b"partial")
    store.record_failure(3, 0, "boom", 2)
    fresh = ResultStore(output)
    fresh.recover()
    assert not orphan.exists()
    assert list((output / "_tmp").iterdir()) == []
    assert open_output(fresh.output).failures() == []
    assert open_output(fresh.output).sequences().collect()["chunk"].unique().to_list() == [0]


# ---- Ctrl-C inside a landing ------------------------------------------------------------------

PYTHON_SIGNAL = signal.signal  # taken at import, before any Ray call of the session


@pytest.fixture(autouse=True)
def python_sigint(monkeypatch):
    """Each test starts as a fresh `memsweep run` would: Python's own SIGINT handler and `signal.signal`. In the whole
    suite (never alone) the Ctrl-C tests found their SIGINT swallowed once the session's Ray stayed connected across
    modules; the likeliest cause, not confirmed, is Ray's DeferSigint (ray/_private/utils.py), which patches
    `signal.signal` and sets a handler that only records the signal."""
    monkeypatch.setattr(signal, "signal", PYTHON_SIGNAL)
    previous = PYTHON_SIGNAL(signal.SIGINT, signal.default_int_handler)
    yield
    PYTHON_SIGNAL(signal.SIGINT, previous)


def interrupt_at(monkeypatch, step: str, nth: int = 1) -> list[str]:
    """Send this process a SIGINT (Ctrl-C) just before the store's `nth` file write ("write": a Parquet file or a
    ledger, through write_atomic) or file deletion ("delete"), from inside its write path; returns a log of the
    steps that ran."""
    steps: list[str] = []

    def interrupting(kind: str, real):
        def step_with_interrupt(*args, **kwargs):
            steps.append(kind)
            if kind == step and steps.count(kind) == nth:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*args, **kwargs)
        return step_with_interrupt

    for module in (store_module, ledger_module):
        monkeypatch.setattr(module, "write_atomic", interrupting("write", module.write_atomic))
    monkeypatch.setattr(Path, "unlink", interrupting("delete", Path.unlink))
    return steps


@pytest.mark.parametrize("nth", [1, 2, 3], ids=["sequences file", "cells file", "ledger"])
def test_ctrl_c_inside_a_landing_lets_it_commit_then_interrupts(tmp_path, monkeypatch, nth):
    output = tmp_path / "out"
    store = new_store(output)
    write(store, 0, 0)
    steps = interrupt_at(monkeypatch, "write", nth)
    with pytest.raises(KeyboardInterrupt):
        write(store, 0, 1)
    monkeypatch.undo()
    assert steps[:3] == ["write", "write", "write"]  # both files and the ledger commit ran before the interrupt
    assert ResultStore(output).ledgers.done_cells() == {(0, 0), (0, 1)}
    assert open_output(output).sequences().filter(pl.col("chunk") == 1).collect().height == 7
    assert verify_output(output).ok


def test_ctrl_c_inside_a_compaction_finishes_its_deletes(tmp_path, monkeypatch):
    output = tmp_path / "out"
    store = new_store(output)
    for chunk in (0, 1):
        write(store, 0, chunk)
    before = read_sorted(store)
    interrupt_at(monkeypatch, "delete")
    with pytest.raises(KeyboardInterrupt):
        store.compact_checkpoint(0)
    monkeypatch.undo()
    assert [name for name in os.listdir(output / "sequences" / "ckpt=0")] == ["part-000002.parquet"]
    assert verify_output(output).ok  # no old file left behind as a foreign one
    for want, got in zip(before, read_sorted(ResultStore(output))):
        assert_frame_equal(got, want)


def test_ctrl_c_inside_a_probe_set_landing_lets_it_commit(tmp_path, monkeypatch):
    store = new_store(tmp_path / "out")
    frame = pl.DataFrame({"chunk": [5, 5], "row": [3, 9], "source": ["c4", "arxiv"], "tokens": [[1, 2], [3, 4]]})
    interrupt_at(monkeypatch, "write")
    with pytest.raises(KeyboardInterrupt):
        store.write_probe_set(5, frame, {"file": "train_005.jsonl", "sha256": "a" * 64})
    monkeypatch.undo()
    assert ResultStore(tmp_path / "out").read_probe_set(5)["tokens"].to_list() == [[1, 2], [3, 4]]
    assert verify_output(tmp_path / "out").ok


def test_ctrl_c_before_a_landing_writes_leaves_its_cells_waiting_for_the_last_landing(tmp_path, monkeypatch):
    """A Ctrl-C while a batch is being encoded (before its first write) writes nothing, and the cells wait again:
    the scheduler's Ctrl-C path lands everything waiting (sweep/run/scheduler.py), this batch included."""
    from sweep.run.landing import Landing

    store = new_store(tmp_path / "out")
    landing = Landing(store)
    for chunk in (0, 1):
        landing.add(0, ScoredCell(chunk, fake_sequences(0, chunk), CellProvenance.from_dict(cell_info(0, chunk))))
    real = store_module.EncodedParquet.of

    def encoded_then_interrupted(frame):
        os.kill(os.getpid(), signal.SIGINT)
        return real(frame)

    with monkeypatch.context() as patch:
        patch.setattr(store_module.EncodedParquet, "of", encoded_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            landing.land({0: 2}, everything=True)
    assert data_files(tmp_path / "out") == [] and landing.cells_waiting == 2
    assert [chunk for _, cell in landing.land({0: 2}, everything=True).cells for chunk in [cell.chunk]] == [0, 1]
    assert ResultStore(tmp_path / "out").ledgers.done_cells() == {(0, 0), (0, 1)} and verify_output(tmp_path / "out").ok


# ---- ledgers in the form they have on disk -------------------------------------------------------

def test_an_output_written_before_ledger_entries_were_typed_opens_and_keeps_its_bytes(tmp_path):
    """Ledgers exactly as memsweep wrote them before issue 24 (its typed entries read and write the same JSON): the
    output opens, reads and verifies, and a ledger read and committed again is the same file, byte for byte."""
    output = tmp_path / "out"
    (output / "ledger").mkdir(parents=True)
    files = {}
    for table, frame in (("sequences", conform_sequences(fake_sequences(3, 1).with_columns(chunk=pl.lit(1)), 3, 1)),
                         ("cells", conform(pl.DataFrame({"chunk": [1], "n": [7], "score": [0.5]}), CELL_SCHEMA))):
        path = output / table / "ckpt=3" / "batch-000000.parquet"
        path.parent.mkdir(parents=True)
        frame.write_parquet(path)
        files[table] = {"path": f"{table}/ckpt=3/batch-000000.parquet", "bytes": path.stat().st_size,
                        "sha256": file_sha256(path), "rows": frame.height}
    probe = output / "probes" / "probe-00001.parquet"
    probe.parent.mkdir()
    conform(pl.DataFrame({"chunk": [1], "row": [4], "source": ["c4"], "tokens": [[1, 2]]}), PROBE_SCHEMA).write_parquet(probe)
    scan = output / "exposures" / "seen=2" / "scan-000000.parquet"
    scan.parent.mkdir(parents=True)
    conform(pl.DataFrame({"chunk": [1], "row": [4], "seen_chunk": [2], "window_count": [3], "prompt_count": [4]}),
            EXPOSURE_COUNT_SCHEMA).write_parquet(scan)

    def record(path: Path) -> dict:
        return {"path": path.relative_to(output).as_posix(), "bytes": path.stat().st_size,
                "sha256": file_sha256(path), "rows": pl.read_parquet(path).height}

    chunk_file = {"kind": "local", "data_source": "/data", "file": "train_001.jsonl", "size": 10, "sha256": "c" * 64,
                  "path": "/data/train_001.jsonl", "mtime_ns": 5, "repo": None, "commit": None}
    ledgers = {
        "ckpt=3.json": {"format": 1, "ckpt": 3, "next_file": 1,
                        "pin": {"model_revision": "ckpt_003", "model_commit": "a" * 40, "weights_fingerprint": "fp",
                                "stored_dtype": "bfloat16"},
                        "files": [{"name": "batch-000000", "chunks": [1], **files}]},
        "probes.json": {"format": 1, "chunks": {"1": {"source": chunk_file, "file": record(probe)},
                                                 "7": {"source": {**chunk_file, "file": "train_007.jsonl"}, "file": None}}},
        "exposures.json": {"format": 1, "chunks": {"2": {"source": {**chunk_file, "file": "train_002.jsonl"}, "scans": [
            {"name": "scan-000000", "probe_chunks": "0-1,3", "file": record(scan), "probes": 1, "rows": 100,
             "tokens": 6400, "bytes": 40000, "seconds": 0.5, "cpu_seconds": 0.25, "scanned_at": "2026-01-01T00:00:00+00:00"}]}}},
    }
    for name, ledger in ledgers.items():
        (output / "ledger" / name).write_text(json.dumps(ledger, indent=1) + "\n")
    (output / "manifest.json").write_text(json.dumps({"format": 2, "identity": IDENTITY, "runs": [], "spec": {}}))
    written = {name: (output / "ledger" / name).read_bytes() for name in ledgers}

    landed = open_output(output)
    assert landed.done_cells() == {(3, 1)} and landed.checkpoint_pin(3).model_commit == "a" * 40
    assert landed.sequences().collect().height == 7 and landed.probes().collect()["row"].to_list() == [4]
    assert landed.exposure_scans().row(0, named=True)["probe_chunks"] == [0, 1, 3]
    assert landed.exposure_scans().row(0, named=True)["cpus"] == 0.5
    assert landed.exposure_coverage().sort("chunk").rows() == [(0, 1), (1, 1), (3, 1)]
    assert verify_output(output).ok

    store = ResultStore(output)
    store.ledgers.commit(store.ledgers.ledger(3))
    store.ledgers.commit_probes(store.ledgers.probes)
    store.ledgers.commit_exposures(store.ledgers.exposures)
    assert {name: (output / "ledger" / name).read_bytes() for name in ledgers} == written


def test_a_pin_written_before_fingerprints_were_recorded_opens(tmp_path):
    output = tmp_path / "out"
    write(new_store(output), 0, 0)
    ledger = output / "ledger" / "ckpt=0.json"
    older = json.loads(ledger.read_text())
    older["pin"] = {"model_revision": "ckpt_000", "model_commit": "c" * 40}
    ledger.write_text(json.dumps(older))
    pin = open_output(output).checkpoint_pin(0)
    assert (pin.model_commit, pin.weights_fingerprint, pin.stored_dtype) == ("c" * 40, None, None)
    assert verify_output(output).ok


def test_a_ledger_not_in_the_form_memsweep_writes_is_named_as_damage(tmp_path):
    output = tmp_path / "out"
    write(new_store(output), 0, 0)
    ledger = output / "ledger" / "ckpt=0.json"
    broken = json.loads(ledger.read_text())
    del broken["files"][0]["cells"]["sha256"]
    ledger.write_text(json.dumps(broken))
    with pytest.raises(DamagedOutputError, match=re.escape(f"{ledger}: files[] batch-000000: missing key 'sha256'")):
        open_output(output)
    assert verify_output(output).broken_ledgers == ["ledger/ckpt=0.json"]


# ---- the identity, checked once -----------------------------------------------------------------

def test_a_run_checks_the_identity_once_holding_the_writer_lock_before_ray(tmp_path, monkeypatch):
    import ray

    from sweep.run.driver import run_sweep
    from sweep.spec import SweepSpec

    output = tmp_path / "out"
    write(new_store(output), 0, 0)  # results of another sweep
    for folder in ("model", "data"):
        (tmp_path / folder).mkdir()
    spec = SweepSpec.model_validate({
        "name": "t", "model": {"source": str(tmp_path / "model")},
        "data": {"source": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")},
        "checkpoints": [0], "chunks": [0], "output": str(output)})
    checks, real = [], store_module.refuse_other_identity

    def check_holding_the_lock(*args):
        with pytest.raises(OutputLockedError):  # held by the run
            with writer_lock(output):
                pass
        checks.append(args[-1])
        return real(*args)

    monkeypatch.setattr(store_module, "refuse_other_identity", check_holding_the_lock)
    ray_before = ray.is_initialized()
    with pytest.raises(StoreMismatchError, match="different sweep"):
        run_sweep(spec, progress=False)
    assert checks == [spec.identity()] and ray.is_initialized() == ray_before  # once, before any Ray starts


def test_open_goes_by_the_identity_check_it_was_given(tmp_path, monkeypatch):
    output = tmp_path / "out"
    write(new_store(output), 0, 0)
    checks, real = [], store_module.refuse_other_identity
    monkeypatch.setattr(store_module, "refuse_other_identity", lambda *args: checks.append(args) or real(*args))
    store = ResultStore(output)
    with writer_lock(output):
        store.check_identity(IDENTITY)
        store.open(IDENTITY, {"spec": "demo"}, {"device": "cpu"})
    assert len(checks) == 1
    assert len(json.loads((output / "manifest.json").read_text())["runs"]) == 2


# ---- integrity ------------------------------------------------------------------------------

def _damage(output: Path, how: str, table: str = "sequences", ckpt: int = 0) -> Path:
    [path] = [p for p in (output / table / f"ckpt={ckpt}").iterdir()]
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "flipped":  # same size, one byte changed in the middle: only the sha256 sees it
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "deleted":
        path.unlink()
    return path


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "flipped", "deleted"])
@pytest.mark.parametrize("compacted", [True, False])
def test_verify_finds_and_repair_heals_damaged_files(tmp_path, how, compacted):
    output = tmp_path / "out"
    store = new_store(output)
    write(store, 0, 0)
    write(store, 1, 0)
    if compacted:
        write(store, 0, 1)
        store.compact_checkpoint(0)
    healthy = read_sorted(ResultStore(output))
    path = _damage(output, how) if compacted else _damage(output, how, ckpt=0)
    relative = path.relative_to(output).as_posix()

    report = verify_output(output)
    assert not report.ok
    assert relative in report.missing or relative in [p for p, _ in report.damaged]
    if how != "flipped":  # readers check sizes (cheap); a same-size change is the sha256's job (verify, run)
        with pytest.raises(DamagedOutputError, match=re.escape(str(path))):
            open_output(output).sequences().collect()

    repaired = repair_output(output)
    lost = {(0, 0), (0, 1)} if compacted else {(0, 0)}
    assert set(repaired.repaired_cells) == lost
    store = ResultStore(output)
    assert verify_output(output).ok
    landed_before = {(0, 0), (1, 0)} | ({(0, 1)} if compacted else set())
    assert store.ledgers.done_cells() == landed_before - lost
    # the lost cells land again exactly as before (the rerun recomputes them)
    for ckpt, chunk in sorted(lost):
        write(store, ckpt, chunk)
    for want, got in zip(healthy, read_sorted(ResultStore(output))):
        assert_frame_equal(got.drop("finished_at", strict=False), want.drop("finished_at", strict=False))


def test_verify_says_what_the_next_run_redoes_for_each_damaged_file(tmp_path):
    output = write_landed(tmp_path / "out", synthetic_sequences(2, 3, 4), exposures=True)
    ledgers = ResultStore(output).ledgers
    cells = next(record.path for record in ledgers.landed_files() if record.path.startswith("cells/ckpt=1/"))
    probes = next(record.path for record in ledgers.landed_files() if record.path.startswith("probes/probe-00002"))
    [scan] = [record.path for chunk, record in ledgers.scan_files() if chunk == 1]
    (output / cells).write_bytes(b"")
    (output / probes).unlink()
    (output / scan).write_bytes((output / scan).read_bytes()[:20])

    lines = verify_output(output).describe().splitlines()
    assert f"DAMAGED {cells}: size 0 bytes, recorded {_recorded(ledgers, cells)} (the next run redoes its 3 cells: " \
           "checkpoint 1 x chunks 0-2)" in lines
    assert f"MISSING {probes} (the next run redoes the probe set of chunk 2, sampled again from its pinned chunk " \
           "file)" in lines
    assert f"DAMAGED {scan}: size 20 bytes, recorded {_recorded(ledgers, scan)} (the next run redoes the exposure " \
           "scan of chunk file 1 for the sequences of chunks 0-2)" in lines
    assert lines[-1] == ("run `memsweep verify OUTPUT --repair` to remove them; the next run of the spec then redoes "
                         "what each damaged or missing file held (said above)")
    repaired = repair_output(output).describe().splitlines()[-1]
    assert repaired == ("repaired: 3 cells will be recomputed by the next run: (1, 0), (1, 1), (1, 2); it also redoes "
                        "the probe set of chunk 2, sampled again from its pinned chunk file; the exposure scan of chunk "
                        "file 1 for the sequences of chunks 0-2; 0 foreign files removed")


def _recorded(ledgers, path: str) -> int:
    return next(record.bytes for record in ledgers.landed_files() if record.path == path)


def test_a_stray_copy_is_never_data_and_repair_removes_it(tmp_path):
    output = tmp_path / "out"
    store = new_store(output)
    write(store, 0, 0)
    store.compact_checkpoint(0)
    [part] = list((output / "sequences" / "ckpt=0").iterdir())
    shutil.copy(part, part.with_name("part-0 (copy).parquet"))
    assert open_output(store.output).sequences().collect().height == 7  # not 14
    report = verify_output(output)
    assert report.foreign == ["sequences/ckpt=0/part-0 (copy).parquet"] and not report.damaged
    repair_output(output)
    assert not part.with_name("part-0 (copy).parquet").exists() and verify_output(output).ok


# ---- pins ------------------------------------------------------------------------------------

def test_a_cell_from_another_commit_or_weights_is_refused(tmp_path):
    store = new_store(tmp_path / "out")
    write(store, 2, 0)
    assert store.ledgers.pin(2).model_commit == f"{2:040d}"
    with pytest.raises(PinMismatchError, match="model_commit"):
        write_cell(store, 2, 1, fake_sequences(2, 1), cell_info(2, 1, model_commit="f" * 40))
    with pytest.raises(PinMismatchError, match="weights_fingerprint"):
        write_cell(store, 2, 1, fake_sequences(2, 1), cell_info(2, 1, weights_fingerprint="other"))
    assert store.ledgers.done_cells() == {(2, 0)}


def test_probe_sets_land_pinned_and_a_changed_source_is_refused(tmp_path):
    store = new_store(tmp_path / "out")
    frame = pl.DataFrame({"chunk": [5, 5], "row": [3, 9], "source": ["c4", "arxiv"],
                          "tokens": [[1, 2, 3], [4, 5, 6]]})
    store.write_probe_set(5, frame, {"file": "train_005.jsonl", "sha256": "a" * 64})
    assert ResultStore(tmp_path / "out").read_probe_set(5)["tokens"].to_list() == [[1, 2, 3], [4, 5, 6]]
    assert open_output(store.output).probes().collect().height == 2
    with pytest.raises(PinMismatchError, match="sha256 " + "b" * 64):
        store.write_probe_set(5, frame, {"file": "train_005.jsonl", "sha256": "b" * 64})


# ---- manifest --------------------------------------------------------------------------------

def test_manifest_reopen_appends_run_and_mismatch_names_key(tmp_path):
    output = tmp_path / "out"
    write(new_store(output), 0, 0)
    ResultStore(output).open(IDENTITY, {"spec": "demo", "batch_size": 8}, {"device": "cuda", "batch_size": 8})
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["format"] == 2
    assert manifest["identity"] == IDENTITY
    assert [run["device"] for run in manifest["runs"]] == ["cpu", "cuda"]
    assert manifest["identity_hash"] == identity_hash(IDENTITY)

    changed = {**IDENTITY, "memorization": {**IDENTITY["memorization"], "prompt_len": 16}}
    with pytest.raises(StoreMismatchError) as caught:
        ResultStore(output).open(changed, {}, {"device": "cpu"})
    message = str(caught.value)
    assert "memorization.prompt_len: 32 -> 16" in message
    assert "gen_len" not in message and "new output" in message and "\n" not in message
    assert len(json.loads((output / "manifest.json").read_text())["runs"]) == 2  # refused: unchanged


def test_an_output_with_nothing_landed_takes_a_corrected_spec(tmp_path):
    output = tmp_path / "out"
    store = new_store(output)
    store.record_failure(0, 0, "bad revision", 3)
    changed = {**IDENTITY, "model": "LLM360/Amber-fixed"}
    ResultStore(output).open(changed, {}, {})
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["identity"] == changed and len(manifest["runs"]) == 2
    assert open_output(output).failures() == []


def test_open_refuses_foreign_directory_bad_and_old_manifests(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(MemsweepError, match="no manifest.json"):
        ResultStore(foreign).open(IDENTITY, {}, {})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{\n  \"format\": 2,\n")
    with pytest.raises(MemsweepError, match=r"manifest.json: not valid JSON \(line 3"):
        ResultStore(broken).open(IDENTITY, {}, {})
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": 1, "identity": IDENTITY, "runs": []}))
    with pytest.raises(MemsweepError, match="format 1"):
        ResultStore(old).open(IDENTITY, {}, {})
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(MemsweepError, match="is a file"):
        ResultStore(a_file).open(IDENTITY, {}, {})


# ---- failures and bad input ----------------------------------------------------------------

def test_failures_recorded_listed_and_cleared(tmp_path):
    store = new_store(tmp_path / "out")
    store.record_failure(2, 5, "RuntimeError: CUDA out of memory", attempts=3)
    store.record_failure(1, 7, "actor died", attempts=2)
    listed = open_output(store.output).failures()
    assert [(f["ckpt"], f["chunk"], f["attempts"]) for f in listed] == [(1, 7, 2), (2, 5, 3)]
    assert listed[1]["error"] == "RuntimeError: CUDA out of memory" and listed[1]["failed_at"]
    assert (2, 5) not in store.ledgers.done_cells()
    write(store, 2, 5)
    assert [(f["ckpt"], f["chunk"]) for f in open_output(tmp_path / "out").failures()] == [(1, 7)]


def test_bad_sequences_and_info_raise_clear_errors(tmp_path):
    store = new_store(tmp_path / "out")
    good = fake_sequences(0, 0)
    with pytest.raises(MemsweepError, match=r"ckpt 0 chunk 0: missing column\(s\) \['prefix_match'\]"):
        write_cell(store, 0, 0, good.drop("prefix_match"), cell_info(0, 0))
    with pytest.raises(MemsweepError, match=r"unexpected column\(s\) \['tokens'\]"):
        write_cell(store, 0, 0, good.with_columns(tokens=pl.lit(1)), cell_info(0, 0))
    with pytest.raises(MemsweepError, match="column 'chunk' holds values other than 4"):
        write_cell(store, 0, 4, good, cell_info(0, 4))
    with pytest.raises(MemsweepError, match="column 'row'"):
        write_cell(store, 0, 0, good.with_columns(row=pl.lit("x")), cell_info(0, 0))
    with pytest.raises(MemsweepError, match="holds a row more than once"):
        write_cell(store, 0, 0, pl.concat([good, good]), cell_info(0, 0))
    with pytest.raises(MemsweepError, match=r"missing key\(s\) \['device'\]"):
        write_cell(store, 0, 0, good, {k: v for k, v in cell_info(0, 0).items() if k != "device"})
    assert store.ledgers.done_cells() == set()
    assert data_files(tmp_path / "out") == []


def test_score_columns_are_the_schemas_and_keep_every_byte_of_the_packed_hits():
    rng = np.random.default_rng(5)
    hits = rng.random((9, 2 * GEN_LEN)) < 0.5
    hits[0], hits[1, GEN_LEN:] = False, False  # all-zero bytes, at the end of a row too: never dropped
    packed = np.packbits(hits, axis=1, bitorder="little")[:, ::2]  # not contiguous, as a slice of a batch is
    matches = rng.integers(0, GEN_LEN + 1, 9).astype(np.int16)
    greedy = BatchScores(matches=matches, prefix_match=matches, full_match=matches == GEN_LEN, match_mask=packed,
                         nll=None, tf_accuracy=rng.random(9).astype(np.float32))
    columns = {series.name: series for series in score_columns(greedy, GEN_LEN)}
    assert {name: series.dtype for name, series in columns.items()} == {
        name: dtype for name, dtype in SEQUENCE_SCHEMA.items() if name not in ("chunk", "row", "index", "source", "seen")}
    assert columns["match_mask"].to_list() == [bytes(row) for row in packed]
    assert [len(value) for value in columns["match_mask"].to_list()] == [packed.shape[1]] * 9
    assert columns["score"].to_list() == pytest.approx((matches / GEN_LEN).tolist())
    for name in ("nll", "generated", "decision_margin"):  # what the mode has none of: typed nulls, one per row
        assert columns[name].len() == 9 and columns[name].null_count() == 9, name


def test_sequences_already_in_the_schema_are_still_checked_and_summarized_exactly(tmp_path):
    sequences = conform_sequences(fake_sequences(0, 3), 0, 3)
    assert list(sequences.schema.items()) == list(SEQUENCE_SCHEMA.items())
    assert conform_sequences(sequences, 0, 3) is sequences  # nothing to cast
    with pytest.raises(MemsweepError, match="column 'chunk' holds values other than 4"):
        conform_sequences(sequences, 0, 4)
    with pytest.raises(MemsweepError, match="holds a row more than once"):
        conform_sequences(pl.concat([sequences, sequences]), 0, 3)
    record = summarize_cell(0, 3, sequences, CellProvenance.from_dict(cell_info(0, 3)))
    assert record["score"] == pytest.approx(float(np.mean(sequences["score"].to_numpy(), dtype=np.float64)))
    assert record["full_match_rate"] == pytest.approx(float(np.mean(sequences["full_match"].to_numpy())))
    assert record["mean_prefix_match"] == pytest.approx(float(np.mean(sequences["prefix_match"].to_numpy())))
    assert record["tf_accuracy"] is None and record["n"] == sequences.height


# ---- one writer ------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path):
    output = tmp_path / "out"
    with writer_lock(output):
        with pytest.raises(OutputLockedError, match=r"being written by a run on host .* \(pid " + str(os.getpid())):
            with writer_lock(output):
                pass
    # A process that dies holding the lock releases it with its life (SIGKILL: no cleanup runs).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, %r); from sweep.landed.writer_lock import writer_lock\n"
        "with writer_lock(%r):\n    print('held', flush=True); sys.stdin.read()") % (str(Path(__file__).parents[1]),
                                                                                    str(output))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # it holds the lock until killed
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
        with writer_lock(output):
            pass
    holder.kill()
    holder.wait()
    with writer_lock(output):  # taken over
        pass


def test_id_ranges_round_trip_and_stay_short():
    from sweep.landed.ledger import id_ranges, parse_id_ranges

    for ids in ([], [4], [0, 1, 2, 5, 7, 8], list(range(360)), [3, 9, 10, 11, 40]):
        assert parse_id_ranges(id_ranges(ids)) == ids
    assert id_ranges(list(range(360))) == "0-359" and id_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_an_output_landed_before_the_stream_columns_still_opens(tmp_path):
    """Files without `index`, `seen` (sequences) and `seen_fraction` (cells), as every output landed before issue 22
    has them, and without `decision_margin`, as before issue 23: they read as typed nulls, and seen follows the only
    timeline such an output can have (chunk <= ckpt)."""
    import hashlib

    store = new_store(tmp_path / "out")
    for ckpt, chunk in ((0, 0), (0, 1), (2, 1)):
        write(store, ckpt, chunk)
    for ckpt in (0, 2):  # rewrite each listed file as the old store wrote it, and its ledger record to match
        ledger = store.ledgers.ledger(ckpt)
        pairs = []
        for pair in ledger.files:
            records = {}
            for table, dropped in (("sequences", ["index", "seen", "decision_margin"]), ("cells", ["seen_fraction"])):
                record = pair.record(table)
                path = tmp_path / "out" / record.path
                pl.read_parquet(path).drop(dropped).write_parquet(path)
                payload = path.read_bytes()
                records[table] = dataclasses.replace(record, bytes=len(payload),
                                                     sha256=hashlib.sha256(payload).hexdigest())
            pairs.append(dataclasses.replace(pair, **records))
        store.ledgers.commit(dataclasses.replace(ledger, files=tuple(pairs)))
    assert "index" not in pl.read_parquet(next((tmp_path / "out" / "sequences").rglob("*.parquet"))).columns
    output = open_output(tmp_path / "out")
    sequences, cells = output.sequences().collect(), output.cells().collect()
    assert dict(sequences.schema) == SEQUENCE_COLUMNS and dict(cells.schema) == CELL_COLUMNS
    assert sequences["index"].null_count() == sequences["decision_margin"].null_count() == sequences.height
    assert sequences["seen"].to_list() == (sequences["chunk"] <= sequences["ckpt"]).to_list()
    assert cells.sort("ckpt", "chunk")["seen_fraction"].to_list() == [1.0, 0.0, 1.0]
    assert verify_output(tmp_path / "out").ok


def test_a_landing_with_a_deadline_lands_the_oldest_due_checkpoint_and_leaves_the_rest_due(tmp_path):
    """The scheduler lands in slices (sweep/run/scheduler.py CHORE_SLICE_S): past its deadline a landing still lands
    one checkpoint (the one waiting longest), and the others stay due for the next pass, nothing lost."""
    from sweep.run.landing import Landing

    store = new_store(tmp_path / "out")
    landing = Landing(store)
    for ckpt in (2, 0, 1):  # checkpoint 2 waits longest
        landing.add(ckpt, ScoredCell(0, fake_sequences(ckpt, 0), CellProvenance.from_dict(cell_info(ckpt, 0))))
    remaining = {0: 1, 1: 1, 2: 1}
    assert landing.due(remaining) == [2, 0, 1]
    first = landing.land(remaining, deadline=0.0)  # long past
    assert [ckpt for ckpt, _ in first.cells] == [2]
    assert landing.due(remaining) == [0, 1] and landing.cells_waiting == 2
    rest = landing.land(remaining)
    assert sorted(ckpt for ckpt, _ in rest.cells) == [0, 1] and not landing.due(remaining)
    assert ResultStore(tmp_path / "out").ledgers.done_cells() == {(0, 0), (1, 0), (2, 0)}
