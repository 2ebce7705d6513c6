"""A sweep survives the loss of a whole Ray node mid-sweep, and lands exactly the rows of a clean run.

`ray.cluster_utils.Cluster` runs a two-node cluster on this machine: a head node (the driver's,
no GPU) and a worker node with one logical GPU, so the checkpoint actor must live on the worker. When the
driver receives the first cell's result, the worker node is killed outright (SIGKILL of its raylet and every process on it) and a
fresh GPU node joins; the actor (`max_restarts`) restarts there. The driver hands an actor every chunk of a
checkpoint at once, so at that moment the next cell is executing on the doomed actor: the loss hits a call in
flight. The sweep must end with the clean run's rows, each (ckpt, chunk, row) once, and nothing failed.

Until the GCS declares the lost node dead (missed health checks), calls to the actor fail at once against
its dead address. Ray must keep retrying them until the actor has restarted elsewhere, not for a fixed
count: 3 retries ran out in about 5 s, the scheduler saw the error and, with no try left, recorded the
cell as failed. Hence `max_attempts: 1` (a node loss may cost no memsweep try: Ray carries the in-flight
call to the restarted actor) and node death detected after about 8 s, longer than those 5 s; Ray's
default (3 s x 5 misses) is 15 s or more.
"""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from sweep.run.driver import connect, run_sweep
from sweep.run.scheduler import Scheduler
from sweep.spec import load_spec
from sweep.landed.reader import open_output
from tests.sweeps import SAMPLES, landed, start_local_ray, write_spec

pytestmark = pytest.mark.ray

# checkpoints 0-1 x chunks 0-1 of the session's demo world (tests/conftest.py `world`, built once for every module)
CELLS = {"checkpoints": "0-1", "chunks": "0-1", "resources": {"batch_size": 32, "max_attempts": 1}}
NODE_DEATH_AFTER_8_S = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                        "health_check_timeout_ms": 1000, "health_check_failure_threshold": 8}


@pytest.fixture
def cluster():
    """Head (2 CPUs, no GPU) + one worker (1 CPU, 1 logical GPU), memsweep's driver connected to the head. A process
    holds one Ray at a time: the session's (tests/conftest.py `local_ray`), when connected, is shut down for the test
    and started again after it."""
    connected = ray.is_initialized()
    if connected:
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "_system_config": NODE_DEATH_AFTER_8_S})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        connect(cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if connected:
            start_local_ray()


def test_node_lost_mid_sweep_loses_and_duplicates_nothing(world, cluster, tmp_path, monkeypatch):
    clean = run_sweep(load_spec(write_spec(tmp_path, world, tmp_path / "clean", **CELLS)), progress=False)
    assert clean.ok and clean.schedule.cells_scored == 4 and dict(clean.schedule.loads) == {0: 1, 1: 1}

    (worker,) = cluster.worker_nodes
    lost_at = []
    collect = Scheduler._collect

    def lose_the_worker_node_at_first_result(scheduler, ref):
        ckpt, chunk = scheduler.owner[ref][1].target.ckpt, scheduler.owner[ref][1].in_flight[ref]
        collect(scheduler, ref)
        if not lost_at:  # the driver holds cell (0, 0); cell (0, 1) is executing on the actor right now
            lost_at.append([(ckpt, chunk)])
            cluster.remove_node(worker, allow_graceful=False)
            cluster.add_node(num_cpus=1, num_gpus=1)

    monkeypatch.setattr(Scheduler, "_collect", lose_the_worker_node_at_first_result)
    output = tmp_path / "out"
    summary = run_sweep(load_spec(write_spec(tmp_path, world, output, **CELLS)), progress=False)

    assert lost_at == [[(0, 0)]], "the node was not lost mid-sweep"
    assert summary.ok and summary.schedule.cells_scored == 4, summary.describe()
    # A call the lost actor had not finished was run again, by the restarted actor: it loaded ckpt 0 anew.
    assert dict(summary.schedule.loads) == {0: 2, 1: 1}
    store = open_output(output)
    assert store.failures() == [] and not store.layout.failures_dir.exists()
    assert set(store.cells().collect()["attempts"]) == {1}  # retried by Ray, never re-queued by the scheduler
    rows = store.sequences().collect()
    assert rows.height == 4 * SAMPLES
    assert rows.select("ckpt", "chunk", "row").is_duplicated().sum() == 0
    assert set(rows.select("ckpt", "chunk").unique().iter_rows()) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    expected, got = landed(tmp_path / "clean"), landed(output)
    assert got[0].equals(expected[0])
    assert got[1].equals(expected[1])
