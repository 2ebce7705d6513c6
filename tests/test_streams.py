"""The training streams of Pythia, OLMo and K2 (issue 22), end to end on local Ray.

One token stream (96 sequences of 40 ids, 3 chunks of 4 steps x 8 sequences) is written three ways
(tests/stream_world.py): Amber JSONL chunk files, a sharded Megatron dataset (items straddle shards), and OLMo-style
numpy token files in a shuffled storage order with an order file. One family of checkpoints is trained through the
stream; the JSONL sweep names them as Amber does (`ckpt_00c`, saved after chunk c) and the step-indexed sweeps as
Pythia does (`step{N}`, N = 4 (c + 1) steps): the same weights under two names, mapped here (ckpt c <-> step
4 (c + 1)). Every landed score must be equal per (checkpoint weights, stream position), and on the step-indexed
sweeps, which add checkpoints at steps 0, 2 and 6 (inside and at the edges of chunks), every cell's seen fraction and
every sequence's seen flag must equal a brute-force walk of the timeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from sweep.landed.reader import open_output
from sweep.run.driver import run_sweep
from sweep.spec import load_spec
from tests.stream_world import write_stream_world
from tests.sweeps import write_spec
from tests.tiny_lm import make_sequences, train_memorizing_llama

pytestmark = pytest.mark.ray

K = L = 16
VOCAB = 64
PER_STEP, STEPS_PER_CHUNK, CHUNKS = 8, 4, 3
PER_CHUNK = PER_STEP * STEPS_PER_CHUNK
SAMPLES = 16
STEP_CHECKPOINTS = [0, 2, 4, 6, 8, 12]  # 4, 8, 12 end chunks 0, 1, 2; 2 and 6 lie inside chunks 0 and 1; 0 before all
WEIGHTS_OF_STEP = {0: 0, 2: 0, 4: 0, 6: 1, 8: 1, 12: 2}  # the trained folder each step's revision holds


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    sequences = make_sequences(CHUNKS * PER_CHUNK, K + L + 8, VOCAB, seed=5).numpy()
    world = write_stream_world(root, sequences, PER_CHUNK, shard_bytes=1000)
    model = root / "model"
    for chunk in range(CHUNKS):
        trained = torch.from_numpy(sequences[: (chunk + 1) * PER_CHUNK])
        train_memorizing_llama(trained, VOCAB, steps=30, seed=chunk).save_pretrained(model / f"ckpt_{chunk:03d}")
    for step, folder in WEIGHTS_OF_STEP.items():  # Pythia's names for the same weights
        os.symlink(model / f"ckpt_{folder:03d}", model / f"step{step}")
    return world, model


def _sweep(tmp_path: Path, name: str, model_dir: Path, data: dict, **extra):
    spec = load_spec(write_spec(tmp_path, Path("/unused"), tmp_path / name,
                                model={"source": str(model_dir), **extra.pop("model", {})},
                                data={"samples_per_chunk": SAMPLES, **data},
                                memorization={"prompt_len": K, "continuation_len": L, "nll": False}, **extra))
    summary = run_sweep(spec, progress=False)
    assert summary.ok, summary.describe()
    output = open_output(tmp_path / name)
    return output.sequences().collect(), output.cells().collect(), summary


@pytest.fixture(scope="module")
def sweeps(stream, module_ray, tmp_path_factory):
    world, model = stream
    tmp = tmp_path_factory.mktemp("stream-sweeps")
    timeline = {"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK}
    steps = dict(model={"revision": "step{ckpt}"}, timeline=timeline, checkpoints=STEP_CHECKPOINTS,
                 chunks=f"0-{CHUNKS - 1}")
    return {
        "jsonl": _sweep(tmp, "jsonl", model, {"source": str(world.jsonl)}, checkpoints="0-2", chunks="0-2"),
        "megatron": _sweep(tmp, "megatron", model, {"source": str(world.megatron), "format": "megatron",
                                                    "file": "document"}, **steps),
        "numpy": _sweep(tmp, "numpy", model, {"source": str(world.numpy), "format": "numpy", "file": "tokens/*.npy",
                                              "dtype": "uint16", "sequence_len": K + L + 8,
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


def test_a_partly_seen_cell_is_seen_and_the_diagonal_is_the_newest_chunk(sweeps, stream, tmp_path):
    world, model = stream
    spec = load_spec(write_spec(tmp_path, Path("/unused"), tmp_path / "diag", model={"source": str(model),
                                "revision": "step{ckpt}"},
                                data={"source": str(world.megatron), "format": "megatron"},
                                timeline={"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK},
                                checkpoints=STEP_CHECKPOINTS, chunks="0-2", cells="diagonal"))
    assert spec.cell_list() == [(2, 0), (4, 0), (6, 1), (8, 1), (12, 2)]
