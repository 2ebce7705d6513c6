"""The control-plane benchmark's stand-in actor (benchmarks/control_plane.py): it must keep CheckpointScorer's
interface, or the benchmark measures a driver that no longer exists; and a sweep through it must land every
cell exactly once, with the scores the cost model made for that cell."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.sweeps import ray_of_its_own

REPO = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("control_plane", REPO / "benchmarks" / "control_plane.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["control_plane"] = module
    spec.loader.exec_module(module)
    return module


control_plane = _benchmark()


def test_cost_model_actor_has_checkpoint_scorers_interface():
    from actors.scorer_actor import CheckpointScorer

    real = CheckpointScorer.__ray_metadata__
    stand_in = control_plane.cost_model_scorer(control_plane.CostModel(0, 0)).__ray_metadata__
    assert stand_in.concurrency_groups == real.concurrency_groups
    assert stand_in.method_meta.concurrency_group_for_methods == real.method_meta.concurrency_group_for_methods
    public = {name for name in real.method_meta.signatures if not name.startswith("_")}
    assert public == {"prefetch", "discard", "score_cell", "release"}  # a new method must be added to both
    for method in public:
        assert stand_in.method_meta.signatures[method] == real.method_meta.signatures[method], method


def test_stand_in_does_not_import_torch():
    """64 of them run on one small machine: each must stay a numpy + ray process."""
    import subprocess

    code = ("import sys, runpy; sys.argv = ['x']; runpy.run_path('benchmarks/control_plane.py', run_name='cp'); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_synthetic_scores_are_deterministic_and_consistent():
    from actors.protocol import ScoringOptions

    greedy = ScoringOptions(mode="greedy", nll=True)
    first = control_plane.synthetic_scores(300, 7, 1000, greedy, keep_generated=True)
    again = control_plane.synthetic_scores(300, 7, 1000, greedy, keep_generated=True)
    other = control_plane.synthetic_scores(300, 8, 1000, greedy, keep_generated=True)
    assert (first.prefix_match == again.prefix_match).all() and (first.nll == again.nll).all()
    assert not (first.prefix_match == other.prefix_match).all()
    assert (first.full_match == (first.prefix_match == 32)).all()
    assert (first.matches >= first.prefix_match).all() and first.matches.max() <= 32
    assert 0.001 < first.full_match.mean() < 0.05  # the reference tool saw 0.010-0.016
    assert first.match_mask.shape == (1000, 4) and first.generated.shape == (1000, 32)
    extractable = control_plane.synthetic_scores(300, 7, 1000, ScoringOptions(mode="extractable"), False)
    assert extractable.matches is None and extractable.match_mask is None and extractable.nll is None


@pytest.mark.ray
def test_cost_model_sweep_lands_every_cell_once(tmp_path):
    """12 checkpoints x 8 chunks on 6 logical GPUs (3 simulated nodes), chunk files 0-9 streamed and scanned over the
    simulated network in next to no time: every cell once with its own synthetic scores, every scan landed."""
    import ray

    from actors.protocol import ScoringOptions
    from sweep.run.bound import Cluster
    from sweep.run.driver import run_sweep
    from sweep.landed.reader import open_output

    control_plane.build_world(tmp_path / "world", checkpoints=list(range(12)), chunks=list(range(10)), rows=40)
    spec = control_plane.make_spec(tmp_path / "world", tmp_path / "out", tmp_path / "cache", checkpoints="0-11",
                                   chunks="0-7", samples=40, mode="extractable", actors=6, exposure="0-9")
    cluster = Cluster(nodes=3, gpus_per_node=2, cpus_per_node=4, network_bytes_per_s=4e9, stream_bytes_per_s=1e9)
    cost = control_plane.CostModel(cell_seconds=0.01, load_seconds=0.02, checkpoint_bytes=2e7, chunk_bytes=1e7,
                                   scan_bytes_per_core_s=1e9)
    with ray_of_its_own(num_cpus=2, num_gpus=6):
        control_plane.start_network(cluster, cost)
        with control_plane.simulated_chunk_streams():
            summary = run_sweep(spec, progress=False, scorer=control_plane.cost_model_scorer(cost), cluster=cluster)
        moved = ray.get(ray.get_actor(control_plane.NETWORK_NAME).moved_bytes.remote())
    assert summary.ok and summary.schedule.cells_scored == 96 and summary.scans.scanned == 10
    assert moved["probe builds"] == 8 * 1e7 and moved["exposure scans"] == 10 * 1e7  # every chunk file once each
    assert moved["checkpoint downloads"] >= 12 * 2e7  # every checkpoint at least once
    assert summary.schedule.prefetched_elsewhere == 0  # a reservation is loaded by the actor that prefetched it
    store = open_output(tmp_path / "out")
    sequences = store.sequences().collect()
    assert sequences.height == 96 * 40
    assert sequences.select("ckpt", "chunk", "row").is_duplicated().sum() == 0
    probes = store.probes().collect()
    options = ScoringOptions(mode="extractable", nll=True)
    for (ckpt, chunk), landed in sequences.group_by("ckpt", "chunk"):
        sampled = probes.filter(pl.col("chunk") == chunk)["row"].to_list()  # the order the actor scored them
        expected = control_plane.synthetic_scores(ckpt, chunk, 40, options, False)
        by_row = dict(zip(sampled, expected.prefix_match.tolist()))
        assert landed["prefix_match"].to_list() == [by_row[row] for row in landed["row"].to_list()]
