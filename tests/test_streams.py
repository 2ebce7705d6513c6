"""The training streams of Pythia, OLMo and K2 (issue 22), end to end on local Ray.

One token stream (96 sequences of 40 ids, 3 chunks of 4 steps x 8 sequences) is written three ways
(tests/stream_world.py): Amber JSONL chunk files, a sharded Megatron dataset (items straddle shards), and OLMo-style
numpy token files in a shuffled storage order with an order file. One family of checkpoints is trained through the
stream; the JSONL sweep names them as Amber does (`ckpt_00c`, saved after chunk c) and the step-indexed sweeps as
Pythia does (`step{N}`, N = 4 (c + 1) steps): the same weights under two names, mapped here (ckpt c <-> step
4 (c + 1)). Every landed score must be equal per (checkpoint weights, stream position), and on the step-indexed
sweeps, which add checkpoints at steps 0, 2 and 6 (inside and at the edges of chunks), every cell's seen fraction and
every sequence's seen flag must equal a brute-force walk of the timeline.

The Megatron stream is also served by a local Hub laid out as Pythia's is (tests/hub_world.py `build_pythia_world`: a
model repository with one branch `step{N}` per checkpoint, the last also on `main`; a dataset repository with one
`document.idx` and the byte-range shards `document-0000k-of-0000N.bin`, all LFS; olah behind the conformance wrapper,
tests/hub_world_server.py). A sweep from the Hub ids must land exactly the local sweep's rows, read every byte of the
dataset by Range requests answered 206 (no file fetched whole) and nothing of the shards outside the sampled items'
extent, and record in the probe ledger and the summary the bytes the server sent.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweep.data.stream_chunks import describe_stream, open_stream
from sweep.landed.reader import open_output
from sweep.run.driver import run_sweep
from sweep.spec import load_spec
from tests.hub_world import apply_hub_client_env, build_pythia_world, hub_client_env, serve_hub
from tests.stream_world import (CHUNKS, COPY_AT, K, L, PER_CHUNK, PER_STEP, SAMPLES, SEQUENCE_LEN, STEP_CHECKPOINTS,
                                STEPS_PER_CHUNK, megatron_pointers)
from tests.sweeps import landed, write_spec

pytestmark = pytest.mark.ray

CAN_SERVE_HUB = shutil.which("git") is not None and importlib.util.find_spec("olah") is not None
HUB_STEPS = [4, 6, 12]  # the end of chunk 0, inside chunk 1, the end of chunk 2 (also `main`)


@pytest.fixture(scope="module")
def hub(stream_family, tmp_path_factory):
    """The Megatron stream and the step checkpoints on a local Hub in Pythia's layout (None without git and olah)."""
    if not CAN_SERVE_HUB:
        yield None
        return
    mirrors = tmp_path_factory.mktemp("pythia-mirrors")
    megatron = stream_family.world.megatron
    world = build_pythia_world(mirrors, {step: stream_family.model / f"step{step}" for step in HUB_STEPS},
                               {path.name: path for path in sorted(megatron.iterdir())})
    root = tmp_path_factory.mktemp("pythia-hub")
    with serve_hub(mirrors, root / "server") as server, pytest.MonkeyPatch.context() as patch:
        apply_hub_client_env(patch, hub_client_env(server.endpoint, root / "hf-home"))
        yield server, world


@pytest.fixture(scope="module")
def module_ray(hub, module_ray):
    """The session's Ray (tests/conftest.py), connected after the Hub environment is set: a Ray started here has
    workers that inherit it, and to one started by an earlier module the driver forwards the HF_ variables
    (sweep/run/driver.py `_forwarded_environment`), as to a cluster's nodes."""
    yield


def _sweep(tmp_path: Path, name: str, model_dir: Path, data: dict, **extra):
    spec = load_spec(write_spec(tmp_path, Path("/unused"), tmp_path / name,
                                model={"source": str(model_dir), **extra.pop("model", {})},
                                data={"samples_per_chunk": SAMPLES, **data},
                                memorization={"prompt_len": K, "continuation_len": L, "nll": False},
                                exposure={"chunks": f"0-{CHUNKS - 1}"}, **extra))
    summary = run_sweep(spec, progress=False)
    assert summary.ok, summary.describe()
    output = open_output(tmp_path / name)
    return output.sequences().collect(), output.cells().collect(), summary


@pytest.fixture(scope="module")
def sweeps(stream_family, module_ray, tmp_path_factory):
    world, model = stream_family.world, stream_family.model
    tmp = tmp_path_factory.mktemp("stream-sweeps")
    timeline = {"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK}
    steps = dict(model={"revision": "step{ckpt}"}, timeline=timeline, checkpoints=STEP_CHECKPOINTS,
                 chunks=f"0-{CHUNKS - 1}")
    return {
        "jsonl": _sweep(tmp, "jsonl", model, {"source": str(world.jsonl)}, checkpoints="0-2", chunks="0-2"),
        "megatron": _sweep(tmp, "megatron", model, {"source": str(world.megatron), "format": "megatron",
                                                    "file": "document"}, **steps),
        "numpy": _sweep(tmp, "numpy", model, {"source": str(world.numpy), "format": "numpy", "file": "tokens/*.npy",
                                              "dtype": "uint16", "sequence_len": SEQUENCE_LEN,
                                              "order": "global_indices.npy"}, **steps),
    }, world


SCORES = ["matches", "score", "full_match", "prefix_match", "match_mask", "generated"]


def test_one_stream_in_three_formats_lands_identical_scores(sweeps):
    runs, world = sweeps
    jsonl = runs["jsonl"][0].with_columns(  # Amber's names -> positions and steps (the mapping the docstring says)
        index=pl.col("chunk").cast(pl.Int64) * PER_CHUNK + pl.col("row"),
        step=(pl.col("ckpt") + 1) * STEPS_PER_CHUNK)
    assert jsonl.height == 3 * CHUNKS * SAMPLES and jsonl["index"].n_unique() == CHUNKS * SAMPLES
    assert jsonl["seen"].to_list() == (jsonl["chunk"] <= jsonl["ckpt"]).to_list()
    keyed = jsonl.select(pl.col("step").cast(pl.Int32).alias("ckpt"), "index", "chunk", "row", *SCORES).sort("ckpt", "index")
    assert keyed["full_match"].any() and not keyed["full_match"].all()  # the scores say something
    for name in ("megatron", "numpy"):
        sequences = runs[name][0]
        assert sequences["source"].null_count() == sequences.height  # binary streams carry no corpus label
        shared = (sequences.filter(pl.col("ckpt").is_in([4, 8, 12]))
                  .select("ckpt", "index", "chunk", "row", *SCORES).sort("ckpt", "index"))
        assert shared.equals(keyed), name
        # row is the position inside the chunk, index the global position, and the probe tokens are the stream's
        probes = open_output(Path(runs[name][2].output)).probes().collect()
        assert (probes["index"] == probes["chunk"].cast(pl.Int64) * PER_CHUNK + probes["row"]).all()
        tokens = np.array(probes["tokens"].to_list())
        assert np.array_equal(tokens, world.sequences[probes["index"].to_numpy(), : K + L])


def test_exposure_counts_are_the_same_on_every_format(sweeps, stream_family):
    runs, _ = sweeps
    copied = stream_family.copied
    counts = {}
    for name, (_, _, summary) in runs.items():
        table = open_output(Path(summary.output)).exposure_counts().collect()
        counts[name] = (table.with_columns(index=pl.col("chunk").cast(pl.Int64) * PER_CHUNK + pl.col("row"))
                        .select("index", "seen_chunk", "window_count", "prompt_count").sort("index", "seen_chunk"))
        assert summary.scans.scanned == CHUNKS, name
    assert counts["megatron"].equals(counts["jsonl"]) and counts["numpy"].equals(counts["jsonl"])
    assert counts["jsonl"].filter(pl.col("index") == copied).select("seen_chunk", "window_count").rows() == \
        [(0, 1), (2, 1)]  # its own row, and the copy
    for name in ("megatron", "numpy"):  # a stream chunk also says where on the timeline each occurrence lies
        table = open_output(Path(runs[name][2].output)).exposure_counts().collect()
        own = table.filter(pl.col("chunk") == 0, pl.col("row") == copied).sort("seen_chunk")
        assert own["window_index"].to_list() == [[copied], [COPY_AT]], name
        assert all(positions is not None and len(positions) == count for positions, count
                   in zip(table["window_index"].to_list(), table["window_count"].to_list())), name
    assert counts["jsonl"].height >= CHUNKS * SAMPLES  # every sampled sequence occurs at least in its own row


def test_seen_fractions_and_flags_equal_a_brute_force_walk_of_the_timeline(sweeps):
    runs, _ = sweeps
    for name in ("megatron", "numpy"):
        sequences, cells, _ = runs[name]
        assert sorted(set(cells["ckpt"].to_list())) == STEP_CHECKPOINTS
        for cell in cells.iter_rows(named=True):
            trained = {p for step in range(cell["ckpt"]) for p in range(step * PER_STEP, (step + 1) * PER_STEP)}
            chunk_positions = range(cell["chunk"] * PER_CHUNK, (cell["chunk"] + 1) * PER_CHUNK)
            fraction = sum(p in trained for p in chunk_positions) / PER_CHUNK
            assert cell["seen_fraction"] == pytest.approx(fraction), (name, cell["ckpt"], cell["chunk"])
            assert cell["seen"] == (fraction > 0)
        for row in sequences.iter_rows(named=True):
            assert row["seen"] == (row["index"] < row["ckpt"] * PER_STEP), (name, row["ckpt"], row["index"])
        # checkpoints strictly inside a chunk have both seen and unseen sequences in it
        inside = sequences.filter((pl.col("ckpt") == 6) & (pl.col("chunk") == 1))
        assert inside["seen"].any() and not inside["seen"].all()


def test_exposures_at_every_checkpoint_count_exactly_the_copies_before_it(sweeps):
    """On a step-indexed output the history places each occurrence by its stream position: a checkpoint inside a
    chunk counts the copies before it and not those after. Brute force: every probe's k + l window looked for in
    every stream item before the checkpoint's position; and the seen split by cells follows the timeline."""
    from numpy.lib.stride_tricks import sliding_window_view

    from sweep.exposures.analyses import seen_per_sequence
    from sweep.exposures.history import ExposureHistory
    from sweep.timeline import Timeline

    runs, world = sweeps
    output = open_output(Path(runs["megatron"][2].output))
    history = ExposureHistory.read(output)
    timeline = Timeline(PER_STEP, STEPS_PER_CHUNK)
    probes = output.probes().collect()
    windows = {(c, r): np.array(t) for c, r, t in probes.select("chunk", "row", "tokens").rows()}
    holding = {key: [q for q in range(len(world.sequences)) for _ in range(int(np.all(
        sliding_window_view(world.sequences[q], K + L) == window, axis=1).sum()))] for key, window in windows.items()}
    for ckpt in STEP_CHECKPOINTS:
        exposures = history.exposures_at(ckpt)
        expected = [sum(q < ckpt * PER_STEP for q in holding[(c, r)]) for c, r in exposures.select("chunk", "row").rows()]
        assert exposures["exposures"].to_list() == expected, ckpt
    split = seen_per_sequence(runs["megatron"][0], history)
    assert split["chunk_seen"].to_list() == [timeline.is_seen(c, j) for c, j in split.select("ckpt", "chunk").rows()]
    # a sequence of chunk 1 sampled after step 6's position is not seen by checkpoint 6, one before it is
    at_six = history.exposures_at(6).filter(pl.col("chunk") == 1).with_columns(
        index=PER_CHUNK + pl.col("row")).with_columns(before=pl.col("index") < 6 * PER_STEP)
    assert at_six.filter("before")["exposures"].min() >= 1 and at_six.filter(~pl.col("before"))["exposures"].max() == 0


def test_a_partly_seen_cell_is_seen_and_the_diagonal_is_the_newest_chunk(stream_family, tmp_path):
    world, model = stream_family.world, stream_family.model
    spec = load_spec(write_spec(tmp_path, Path("/unused"), tmp_path / "diag", model={"source": str(model),
                                "revision": "step{ckpt}"},
                                data={"source": str(world.megatron), "format": "megatron"},
                                timeline={"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK},
                                checkpoints=STEP_CHECKPOINTS, chunks="0-2", cells="diagonal"))
    assert spec.cell_list() == [(2, 0), (4, 0), (6, 1), (8, 1), (12, 2)]


def test_a_pythia_layout_hub_serves_a_sweep_that_reads_only_the_sampled_items(hub, sweeps, stream_family,
                                                                              tmp_path):
    if hub is None:
        pytest.skip("needs `git` and olah (pip install olah, the dev extra) to serve local Hub repositories")
    server, world = hub
    since = len(server.requests())
    spec = load_spec(write_spec(
        tmp_path, Path("/unused"), tmp_path / "hub",
        model={"source": world.model_id, "revision": "step{ckpt}", "download_dir": str(tmp_path / "downloads")},
        data={"source": world.data_id, "format": "megatron", "file": "document", "samples_per_chunk": SAMPLES},
        timeline={"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK}, checkpoints=HUB_STEPS,
        chunks=f"0-{CHUNKS - 1}", memorization={"prompt_len": K, "continuation_len": L, "nll": False},
        resources={"actors": 1, "batch_size": 16, "max_attempts": 2}))
    summary = run_sweep(spec, progress=False)
    assert summary.ok, summary.describe()

    sequences, cells = landed(tmp_path / "hub")
    local_sequences, local_cells = landed(Path(sweeps[0]["megatron"][2].output))
    in_hub = pl.col("ckpt").is_in(HUB_STEPS)
    assert sequences.height == len(HUB_STEPS) * CHUNKS * SAMPLES
    assert sequences.equals(local_sequences.filter(in_hub))
    assert cells.drop("model_commit").equals(local_cells.filter(in_hub).drop("model_commit"))
    assert cells["model_commit"].to_list() == [world.sha(f"step{step}") for step in HUB_STEPS for _ in range(CHUNKS)]

    # what the dataset cost: ranged reads only, within the sampled items, and recorded as sent
    dataset = [r for r in server.requests(since) if r.path.startswith(f"/datasets/{world.data_id}/resolve/")]
    assert dataset and all(r.method == "GET" and r.range and r.status == 206 for r in dataset), dataset
    probes = open_output(tmp_path / "hub").ledgers.probes
    recorded = sum(entry.source["bytes_read"] for entry in probes.values())
    assert recorded == summary.supply.bytes_read > 0
    assert sum(entry.source["requests"] for entry in probes.values()) == summary.supply.requests
    opening = open_stream(describe_stream(spec.data))  # what describing the stream costs the driver, once
    assert sum(r.length for r in dataset) == recorded + opening.bytes_read
    pointers = megatron_pointers(stream_family.world.megatron / "document.idx")
    index = open_output(tmp_path / "hub").probes().collect().partition_by("chunk")
    extent = sum(int(pointers[part["index"]].max() + 2 * (K + L) - pointers[part["index"]].min()) for part in index)
    assert sum(r.length for r in dataset if r.path.endswith(".bin")) <= extent


def test_the_explorer_and_the_report_draw_the_step_timeline(sweeps, tmp_path):
    """The heatmap's staircase crosses each row where its checkpoint is on the stream (inside chunk 1's cell for step
    6), the sequence page marks the step that first trained on the row, and the report writes on this output."""
    from starlette.testclient import TestClient

    from sweep.explorer.app import create_app
    from sweep.explorer.data import ExplorerData
    from sweep.report.page import write_report
    from sweep.timeline import Timeline

    runs, _ = sweeps
    output = Path(runs["megatron"][2].output)
    client = TestClient(create_app(ExplorerData(output)), base_url="http://127.0.0.1")
    matrix = client.get("/api/matrix").json()
    timeline = Timeline(PER_STEP, STEPS_PER_CHUNK)
    assert matrix["checkpoints"] == STEP_CHECKPOINTS and matrix["chunks"] == list(range(CHUNKS))
    assert matrix["staircase"] == [timeline.staircase(c, list(range(CHUNKS))) for c in STEP_CHECKPOINTS]
    assert matrix["staircase"][STEP_CHECKPOINTS.index(6)] == 1.5  # all of chunk 0, half of chunk 1
    row = open_output(output).probes().collect().filter(pl.col("chunk") == 1).row(0, named=True)
    first = (row["index"]) // PER_STEP + 1
    page = client.get(f"/sequence/1/{row['row']}")
    assert page.status_code == 200 and f"trained on (step {first})" in page.text
    assert (write_report(output, out_dir=tmp_path / "report")).exists()
    import contextlib
    import io

    from sweep.cli import main

    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):  # binary streams carry no source label: show goes on without one
        assert main(["show", str(output), "--top", "3", "--color", "never"]) == 0
        assert main(["show", str(output), "--per-source", "2", "--sort", "exposures", "--color", "never"]) == 0
    assert "ckpt 12" in shown.getvalue() and "chunk" in shown.getvalue()
