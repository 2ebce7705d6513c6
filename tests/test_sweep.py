"""The Ray sweep end to end on a local Ray with two logical GPUs (actors fall back to the CPU).

A small demo family (3 checkpoints trained through 3 chunks) is built once per session. The landed
numbers are checked against the scoring kernel run directly, and every fault test must end with a
dataset equal, row for row, to the uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import ray
import torch
import yaml

from actors.loading import load_checkpoint
from actors.scoring import ScoringOptions, score_batch
from sweep.run.driver import run_sweep
from sweep.landed.reader import open_output
from sweep.spec import load_spec
from sweep.landed.store import ResultStore
from tests.demo_exposure import sampled_lines, same_age_means
from tests.sweeps import K, L, SAMPLES, landed, write_spec

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def test_sweep_lands_what_the_kernel_computes(clean_run, world):
    torch.set_num_threads(1)  # tiny models: threads only add overhead, and the Ray actors share the cores
    spec, summary, output = clean_run
    assert summary.ok and summary.schedule.cells_scored == 9
    sequences, cells = landed(output)
    assert sequences.height == 9 * SAMPLES
    assert sequences.select("ckpt", "chunk", "row").is_duplicated().sum() == 0
    options = ScoringOptions(prompt_len=K, continuation_len=L, nll=True)
    for ckpt in range(3):
        model = load_checkpoint(str(world / "model" / f"ckpt_{ckpt:03d}"), None, "float32", "cpu")
        for chunk in range(3):
            probes = ResultStore(output).read_probe_set(chunk)  # the rows the output sampled, tokens included
            probes = probes.sort("row")  # the store lands rows sorted by (chunk, row)
            tokens = torch.from_numpy(probes["tokens"].list.to_array(K + L).to_numpy().astype(np.int64))
            direct = score_batch(model, tokens, options)
            got = sequences.filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk))
            assert got["row"].to_list() == probes["row"].to_list()
            assert got["source"].to_list() == probes["source"].to_list()
            assert got["matches"].to_list() == direct.matches.tolist()
            assert got["prefix_match"].to_list() == direct.prefix_match.tolist()
            assert np.allclose(got["score"].to_numpy(), direct.matches / L)
            assert np.allclose(got["nll"].to_numpy(), direct.nll, atol=1e-5)
            assert got["generated"].to_list() == direct.generated.tolist()  # what the model said, kept
            np.testing.assert_allclose(got["decision_margin"].to_numpy(), direct.decision_margin, atol=1e-4)
            cell = cells.filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk)).row(0, named=True)
            assert cell["n"] == SAMPLES and cell["seen"] == (chunk <= ckpt)
            assert cell["score"] == pytest.approx(float(np.mean(direct.matches / L)), abs=1e-6)
            assert cell["full_match_rate"] == pytest.approx(float(np.mean(direct.full_match)))


def test_each_checkpoint_is_loaded_once(clean_run):
    _, summary, _ = clean_run
    assert dict(summary.schedule.loads) == {0: 1, 1: 1, 2: 1}


def test_the_summarys_bound_is_not_above_the_makespan(clean_run):
    """The bound is what the hardware allows at the costs this run measured, so the run cannot beat it by much (noise
    in the medians). Local checkpoints download nothing: when a download was timed as its call's round trip, the
    actor's start counted as one, and the demo's summary read '-44.8%' against checkpoint downloads that bound."""
    _, summary, _ = clean_run
    assert summary.bound is not None and summary.bound.resources
    assert summary.bound.seconds <= 1.25 * summary.makespan_s, summary.bound.describe()
    downloads = next(r for r in summary.bound.resources if r.name == "checkpoint downloads")
    assert downloads.seconds < summary.makespan_s, summary.bound.describe()


def test_rerun_is_a_no_op_and_extending_adds_only_new_cells(clean_run, world, tmp_path):
    spec, _, output = clean_run
    before = landed(output)
    again = run_sweep(spec, progress=False)
    assert again.schedule.cells_scored == 0 and again.cells_done_before == 9
    after = landed(output)
    assert before[0].equals(after[0]) and before[1].equals(after[1])


def test_changed_meaning_is_refused(clean_run, world, tmp_path):
    from sweep.landed.store import StoreMismatchError

    spec, _, output = clean_run
    changed = load_spec(write_spec(tmp_path, world, output, memorization={"prompt_len": 16, "continuation_len": L}))
    with pytest.raises(StoreMismatchError, match="prompt_len"):
        run_sweep(changed, progress=False)


def test_actor_killed_mid_sweep_loses_and_duplicates_nothing(clean_run, world, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("MEMSWEEP_FAULT_KILL_AT", "1:1")  # SIGKILL the actor scoring ckpt 1 x chunk 1
    monkeypatch.setenv("MEMSWEEP_FAULT_MARKER", str(marker))
    spec = load_spec(write_spec(tmp_path, world, tmp_path / "out"))
    summary = run_sweep(spec, progress=False)
    assert marker.exists(), "the fault was not injected"
    assert summary.ok and summary.schedule.cells_scored == 9
    assert summary.schedule.loads[1] >= 1  # the restarted actor loaded ckpt 1 again (a killed call reports nothing)
    expected, got = landed(clean_run[2]), landed(tmp_path / "out")
    assert got[0].equals(expected[0])
    assert got[1].equals(expected[1])


def test_failing_cells_are_recorded_and_the_rest_lands(world, local_ray, tmp_path):
    spec = load_spec(write_spec(tmp_path, world, tmp_path / "out", model={"revision_overrides": {1: "missing"}}))
    summary = run_sweep(spec, progress=False)
    assert not summary.ok
    assert sorted((f["ckpt"], f["chunk"]) for f in summary.failed) == [(1, 0), (1, 1), (1, 2)]
    assert all(f["attempts"] == 2 and "missing" in f["error"] for f in summary.failed)
    assert "FAILED cell ckpt 1 x chunk 0" in summary.describe()
    sequences, cells = landed(tmp_path / "out")
    assert sorted(set(cells["ckpt"].to_list())) == [0, 2] and sequences.height == 6 * SAMPLES


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def committed_cells(output: Path) -> set[tuple[int, int]]:
    """The cells the output's ledgers list: a landed file is data only once its ledger commits (it is written first)."""
    return open_output(output).done_cells() if (output / "manifest.json").exists() else set()


def test_interrupted_driver_resumes_to_the_same_rows(clean_run, world, tmp_path):
    output = tmp_path / "out"
    spec_path = write_spec(tmp_path, world, output)
    first = _cli("run", str(spec_path), "--num-cpus", "2", "--num-gpus", "1", "--no-progress")
    while not committed_cells(output):  # the state to interrupt in: a cell landed and committed
        assert first.poll() is None, first.communicate()[0]
        time.sleep(0.2)  # how often to look, not how long to wait
    first.send_signal(signal.SIGINT)  # Ctrl-C mid-sweep
    log, _ = first.communicate(timeout=300)  # a guard against a hang: the driver lands, releases its actors, exits
    partial = ResultStore(output).ledgers.done_cells()
    assert 0 < len(partial) < 9 or first.returncode == 0, log
    # the rerun resumes from what the interrupted driver left on disk: run here, on the session's Ray (a second CLI
    # process would read the same files, after seconds of imports and a Ray start of its own)
    resumed = run_sweep(load_spec(spec_path), progress=False)
    assert resumed.ok and resumed.cells_done_before == len(partial), resumed.describe()
    assert resumed.schedule.cells_scored == 9 - len(partial)
    expected, got = landed(clean_run[2]), landed(output)
    assert got[0].equals(expected[0])
    assert got[1].equals(expected[1])


def test_landed_parquet_shows_real_memorization(clean_run, world):
    """From the landed Parquet, the world's files and its builder's record (tests/demo_exposure.py): lines a
    checkpoint has seen beat lines it has not at every checkpoint that has both, and rows duplicated in the
    corpus are memorized more than unique rows first seen in the same files."""
    _, _, output = clean_run
    sequences = pl.scan_parquet(output / "sequences", hive_partitioning=True).collect().join(
        sampled_lines(output, world / "data", 3, K), on=["chunk", "row"])
    seen = pl.col("first_file") <= pl.col("ckpt")
    for ckpt in (0, 1):  # checkpoint 2 has seen every line
        at = sequences.filter(pl.col("ckpt") == ckpt)
        assert at.filter(seen)["score"].mean() > 1.25 * at.filter(~seen)["score"].mean(), ckpt
    overall = sequences.filter(seen)["score"].mean(), sequences.filter(~seen)["score"].mean()
    assert overall[0] > 2 * overall[1], overall

    last = sequences.filter(pl.col("ckpt") == 2)
    assert last.height == 3 * SAMPLES and last["duplicated"].sum() > 5
    duplicated, unique = same_age_means(last)
    assert duplicated > 1.5 * unique, (duplicated, unique)


def test_query_tables_lists_the_demo_outputs_tables_and_columns_with_and_without_exposure_scans(clean_run, world,
                                                                                               tmp_path):
    """`memsweep query OUT --tables` as a user runs it, on the demo world's output; then on a copy of it after a run
    that adds an `exposure:` section to the spec (it scores nothing, and scans the three chunk files)."""
    spec, _, output = clean_run

    def listed(out: Path) -> dict[str, list[str]]:
        done = _cli("query", str(out), "--tables")
        text, _ = done.communicate(timeout=120)
        assert done.returncode == 0, text
        tables = {}
        for line in text.splitlines():  # "name: what one row is", then "    column type, column type, ..."
            if not line.startswith(" "):
                name = line.split(":", 1)[0]
                tables[name] = []
            else:
                tables[name] += [column.strip() for column in line.split(",") if column.strip()]
        return tables

    def expected(out: Path) -> dict[str, list[str]]:
        return {name: [f"{column} {dtype}" for column, dtype in frame.collect_schema().items()]
                for name, frame in open_output(out).tables().items()}

    plain = listed(output)
    assert list(plain) == ["sequences", "cells", "probes"] and plain == expected(output)
    assert "generated List(UInt32)" in plain["sequences"] and "tokens List(UInt32)" in plain["probes"]

    scanned = tmp_path / "scanned"
    shutil.copytree(output, scanned)
    extended = load_spec(write_spec(tmp_path, world, scanned, exposure={"chunks": "0-2"}))
    assert extended.identity_hash() == spec.identity_hash()  # the same numbers: the run only scans
    summary = run_sweep(extended, progress=False)
    assert summary.ok and summary.schedule.cells_scored == 0 and summary.scans.scanned == 3
    with_scans = listed(scanned)
    assert list(with_scans) == ["sequences", "cells", "probes", "exposures", "exposure_counts", "exposure_scans"]
    assert with_scans == expected(scanned)
    assert with_scans["exposure_counts"] == ["chunk Int32", "row Int64", "seen_chunk Int32", "window_count Int64",
                                             "prompt_count Int64", "window_index List(Int64)"]
