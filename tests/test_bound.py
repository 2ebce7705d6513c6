"""sweep/run/bound.py: the makespan each resource allows on its own, which one binds, and the concurrency chosen for
exposure scans and probe-set builds. Pure: the Amber shapes of issue 25 on the default 64-GPU cluster."""

from __future__ import annotations

import random

import pytest

from sweep.run.assignments import plan_shares, planned_end_s
from sweep.run.bound import Cluster, Work, bound, build_concurrency, gpu_bound, largest_share, scan_concurrency

CELL_S, LOAD_S, CKPT, CHUNK = 1.447, 40.0, 27e9, 20.8e9
CLUSTER = Cluster(nodes=8, gpus_per_node=8, cpus_per_node=96)  # 2 GB/s per node, 250 MB/s a transfer
DOWNLOAD_S = CKPT / 250e6  # 108 s


def amber(checkpoints: int, chunks: int, probes: int | None = None, scans: int = 0) -> Work:
    return Work(cells=(chunks,) * checkpoints, cell_s=CELL_S, load_s=LOAD_S, checkpoint_bytes=CKPT,
                probe_bytes=(CHUNK,) * (chunks if probes is None else probes), scan_bytes=(CHUNK,) * scans)


def resource(result, name: str) -> float:
    return next(r.seconds for r in result.resources if r.name == name)


def test_the_full_matrix_is_bound_by_the_gpus_once_scans_are_sized_to_end_with_them():
    result = bound(amber(360, 360, scans=360), CLUSTER, actors=64)
    gpus = DOWNLOAD_S + (129_600 * CELL_S + 360 * LOAD_S) / 64  # 3,263 s: the first download counts
    assert resource(result, "GPUs") == pytest.approx(gpus)
    assert result.binding.name == "GPUs" and result.seconds == pytest.approx(gpus)
    assert resource(result, "exposure scans") <= gpus  # auto: they end with the GPUs ...
    assert 8 <= result.scans <= 16  # ... at about a dozen at once (360 scans of 83 s each in ~2,800 s)
    assert resource(result, "probe-set streaming") == pytest.approx(360 * CHUNK / 16e9 + CELL_S)  # every link
    assert resource(result, "node links, every transfer") == pytest.approx((360 * CKPT + 720 * CHUNK) / 16e9)


def test_two_scans_at_once_take_hours_longer_than_the_gpus():
    """The old default of exposure.concurrent_scans: 2, named in the issue."""
    result = bound(amber(360, 360, scans=360), CLUSTER, actors=64, scans=2)
    assert result.binding.name == "exposure scans" and result.seconds > resource(result, "GPUs") + 3 * 3600


def test_four_probe_builds_at_once_would_bind_the_full_matrix():
    result = bound(amber(360, 360), CLUSTER, actors=64, builds=4)
    assert result.binding.name == "probe-set streaming"
    assert result.seconds == pytest.approx(360 * CHUNK / (4 * 250e6) + CELL_S)  # 7,488 s


def test_a_single_chunk_sweep_is_bound_by_its_downloads():
    """360 one-cell checkpoints on 64 actors: some actor downloads 6 in a row, each 108 s at one stream's rate."""
    result = bound(amber(360, 1), CLUSTER, actors=64)
    assert result.binding.name == "checkpoint downloads"
    assert result.seconds == pytest.approx(6 * DOWNLOAD_S + LOAD_S + CELL_S)
    assert resource(result, "GPUs") < result.seconds / 2


def test_the_diagonal_on_64_gpus_is_one_checkpoint_per_actor():
    """36 checkpoints of 36 cells: halving every one would need 72 actors, so some actor scores a whole one after
    its download: 108 + 40 + 52 s."""
    result = bound(amber(36, 36), CLUSTER, actors=64)
    assert result.binding.name == "GPUs"
    assert result.seconds == pytest.approx(DOWNLOAD_S + LOAD_S + 36 * CELL_S)
    assert bound(amber(32, 36), CLUSTER, actors=64).seconds == pytest.approx(DOWNLOAD_S + LOAD_S + 18 * CELL_S)


@pytest.mark.parametrize("cells,actors,largest", [((36,) * 36, 64, 36), ((36,) * 32, 64, 18), ((10,), 64, 1),
                                                  ((100, 10), 4, 34), ((5,) * 70, 64, 1)])
def test_the_largest_share_of_the_most_even_split(cells, actors, largest):
    assert largest_share(cells, actors) == largest


@pytest.mark.parametrize("seed", range(30))
def test_no_plan_beats_the_gpu_bound(seed):
    """The bound is a lower bound: the planned makespan of any plan, after the first download, is never below it."""
    rng = random.Random(seed)
    actors = rng.randint(1, 64)
    cells = tuple(rng.randint(1, 300) for _ in range(rng.randint(1, 5 * actors)))
    cell_s, load_s = rng.uniform(0.3, 3.0), rng.uniform(1.0, 100.0)
    work = Work(cells=cells, cell_s=cell_s, load_s=load_s, checkpoint_bytes=CKPT)
    plan = plan_shares([(ckpt, range(n)) for ckpt, n in enumerate(cells)], [0.0] * actors, cell_s, load_s)
    planned = max(planned_end_s(shares, 0.0, cell_s, load_s) for shares in plan)
    assert DOWNLOAD_S + planned >= gpu_bound(work, actors, DOWNLOAD_S) - 1e-6


def test_scan_concurrency_ends_with_the_gpus_within_what_the_cpus_and_links_leave():
    assert scan_concurrency(30_000, 2_500, cpu_slots=700, link_streams=64) == 12
    assert scan_concurrency(30_000, 2_500, cpu_slots=5, link_streams=64) == 5  # the actors took the other CPUs
    assert scan_concurrency(30_000, 100, cpu_slots=700, link_streams=64) == 32  # half the links at most
    assert scan_concurrency(30_000, 0, cpu_slots=700, link_streams=64) == 32  # no time left: as many as allowed
    assert scan_concurrency(10, 2_500, cpu_slots=0, link_streams=64) == 1  # at least one


def test_the_bound_says_which_resource_binds():
    text = bound(amber(360, 360, scans=360), CLUSTER, actors=64).describe()
    assert "binding: GPUs" in text and "54.4 min" in text
    for name in ("GPUs:", "checkpoint downloads:", "probe-set streaming:", "exposure scans:", "node links"):
        assert name in text


def test_probe_builds_take_the_streams_the_downloads_leave_on_the_busiest_node():
    assert build_concurrency(CLUSTER, 360, downloads_in_flight=64) == 1  # every actor fetches its first checkpoint
    assert build_concurrency(CLUSTER, 360, downloads_in_flight=0) == 64  # then every stream of the 8 links
    assert build_concurrency(CLUSTER, 36, downloads_in_flight=36) == 24  # 5 downloads on some node: 3 streams each
    assert build_concurrency(CLUSTER, 5, downloads_in_flight=0) == 5  # no more than are left


def test_stream_scans_are_priced_at_the_binary_kernels_rate_on_their_bytes():
    """A stream chunk's `size` counts items: its scan is priced on its share of the stream's token bytes, at the
    binary kernel's 70M tokens/s (140 MB/s of uint16 ids), not at the JSONL kernel's ~300 MB/s of text."""
    from sweep.data.sources import ChunkFile
    from sweep.data.stream_chunks import StreamChunk
    from sweep.data.token_stream import StreamFile, StreamSource
    from sweep.run.bound import SCAN_BYTES_PER_CORE_S
    from sweep.run.pacing import scan_task_seconds

    items, tokens = 1_024_000, 2049  # one Pythia chunk: 4.2 GB of uint16 ids
    source = StreamSource(format="megatron", kind="local", data_source="/d", name="pile",
                          files=(StreamFile("pile.idx", 12 * 143 * items), StreamFile("pile.bin", 143 * items * tokens * 2)))
    chunk = StreamChunk(kind="local", format="megatron", data_source="/d", file="pile[0:1024000)", chunk=0, start=0,
                        stop=items, files_sha256="x", stream=source)
    assert scan_task_seconds(chunk, 143 * items, 1e12) == pytest.approx(items * tokens / 70e6)
    assert scan_task_seconds(chunk, 143 * items, 100e6) == pytest.approx(items * tokens * 2 / 100e6)  # the link binds
    text = ChunkFile(kind="local", data_source="/d", file="train_000.jsonl", size=int(CHUNK))
    assert scan_task_seconds(text, None, 1e12) == pytest.approx(CHUNK / SCAN_BYTES_PER_CORE_S)


def test_plan_bound_prices_stream_scans_like_the_plans_cost_lines():
    """`memsweep plan`'s bound and its exposure-scans line give one price: core-seconds = tokens / 70M."""
    from pathlib import Path

    from sweep.run.bound import work_of
    from sweep.run.cost import CostEstimate
    from sweep.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "pythia-deduped.yaml")
    scan_bytes, scan_tokens = 1_024_000 * (12 + 2 * 2049.0), 1_024_000 * 2049.0
    estimate = CostEstimate(checkpoints=1, scan_bytes={0: scan_bytes}, scan_tokens={0: scan_tokens})
    work = work_of(spec, [1], estimate)
    assert work.scan_seconds(1e12) == pytest.approx(scan_tokens / 70e6)
    jsonl = work_of(spec, [1], CostEstimate(checkpoints=1, scan_bytes={0: CHUNK}))
    assert jsonl.scan_seconds(1e12) == pytest.approx(CHUNK / (50e6 * 20.8e9 / (1_706_976 * 2049)))


def test_a_prefetch_leaves_the_links_to_the_probe_builds_until_it_must_go():
    """While probe sets are still being built, the cells wait for them before the actor needs its next checkpoint:
    the prefetch goes at PREFETCH_LEAD_WHILE_BUILDING downloads before the current checkpoint ends, not at
    PREFETCH_LEAD, and that is still early enough for a download that shares its node's link with a full set of
    builds already half done (every actor of the node prefetching at once, as in the full matrix's first round)."""
    from pathlib import Path

    from sweep.run.pacing import PREFETCH_LEAD, PREFETCH_LEAD_WHILE_BUILDING, Pacing, UnitCosts
    from sweep.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "amber-full-matrix.yaml")
    pacing = Pacing(spec, CLUSTER, actors=64, cpus_per_actor=1)
    costs = UnitCosts(cell_guess=CELL_S, load_guess=LOAD_S, download_guess=DOWNLOAD_S)
    between = (PREFETCH_LEAD + PREFETCH_LEAD_WHILE_BUILDING) / 2 * DOWNLOAD_S
    assert pacing.prefetch_due(between, costs, builds_left=0)
    assert not pacing.prefetch_due(between, costs, builds_left=40)
    assert pacing.prefetch_due(PREFETCH_LEAD_WHILE_BUILDING * DOWNLOAD_S, costs, builds_left=40)
    streams = int(CLUSTER.network_bytes_per_s // CLUSTER.stream_bytes_per_s)  # 8 a node
    shared_link_s = (streams * CKPT + streams * CHUNK / 2) / CLUSTER.network_bytes_per_s  # 150 s: the last byte
    assert shared_link_s < PREFETCH_LEAD_WHILE_BUILDING * DOWNLOAD_S < PREFETCH_LEAD * DOWNLOAD_S
