"""A census (`data.samples_per_chunk: all`, issue 23): every sequence of each chunk scored, in the stream's order, for
every format, on the session's training stream (tests/stream_world.py: 96 sequences, 3 chunks of 32), swept once
for this file and tests/test_compare.py (tests/conftest.py `stream_census`).

A census lands what a sampled sweep of the same data lands for the rows both hold (the scores are per sequence, so
sampling must not change them), every row once, `row` the position in the chunk and `index` the stream position; the
three formats land the same scores; the output pins each chunk's source with an empty probe set, and a rerun is a
no-op.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from actors.read_ahead import read_ahead
from sweep.analysis.examples import find_examples
from sweep.data.census import census_chunk
from sweep.data.stream_chunks import describe_spec_chunks
from sweep.landed.reader import open_output
from sweep.run.driver import run_sweep
from tests.census_world import SAMPLED, STEPS
from tests.stream_world import CHUNKS, K, L, PER_CHUNK, STEPS_PER_CHUNK
from tests.sweeps import landed

pytestmark = pytest.mark.ray

SCORES = ["matches", "score", "full_match", "prefix_match", "match_mask"]


@pytest.fixture(scope="module")
def census(module_ray, stream_census, stream_family):
    """(the session census's specs by name, tests/census_world.py; the stream world). Ray first: the rerun needs it."""
    return stream_census, stream_family.world


def test_a_census_scores_every_sequence_once_in_stream_order(census):
    specs, world = census
    sequences = open_output(Path(specs["megatron"].output)).sequences().collect()
    assert sequences.height == len(STEPS) * CHUNKS * PER_CHUNK
    assert not sequences.select("ckpt", "chunk", "row").is_duplicated().any()
    for (ckpt, chunk), cell in sequences.group_by("ckpt", "chunk"):
        assert cell["row"].sort().to_list() == list(range(PER_CHUNK)), (ckpt, chunk)
    assert (sequences["index"] == sequences["chunk"].cast(pl.Int64) * PER_CHUNK + sequences["row"]).all()
    assert sequences["full_match"].any() and not sequences["full_match"].all()  # the scores say something
    cells = open_output(Path(specs["megatron"].output)).cells().collect()
    assert (cells["n"] == PER_CHUNK).all() and cells["data_sha256"].null_count() == 0


def test_a_census_lands_what_a_sample_lands_for_the_rows_both_hold(census):
    specs, _ = census
    sampled = open_output(Path(specs["sampled"].output)).sequences().collect()
    whole = open_output(Path(specs["megatron"].output)).sequences().collect()
    keys = ["ckpt", "chunk", "row", "index", "seen"]
    shared = whole.join(sampled.select(keys), on=keys, how="semi").select(*keys, *SCORES).sort(keys)
    assert shared.height == sampled.height == len(STEPS) * CHUNKS * SAMPLED
    assert shared.equals(sampled.select(*keys, *SCORES).sort(keys))


def test_jsonl_and_megatron_land_the_same_census(census):
    specs, _ = census
    megatron = open_output(Path(specs["megatron"].output)).sequences().collect()
    keyed = megatron.select("ckpt", "index", *SCORES).sort("ckpt", "index")
    jsonl = open_output(Path(specs["jsonl"].output)).sequences().collect()  # ckpt_00c = step 4 (c + 1)
    assert jsonl["source"].null_count() == 0 and jsonl["index"].null_count() == jsonl.height
    jsonl = jsonl.with_columns(ckpt=((pl.col("ckpt") + 1) * STEPS_PER_CHUNK).cast(pl.Int32),
                               index=pl.col("chunk").cast(pl.Int64) * PER_CHUNK + pl.col("row"))
    assert jsonl.select("ckpt", "index", *SCORES).sort("ckpt", "index").equals(keyed)


def test_a_census_pins_its_sources_lands_no_probe_rows_and_reruns_as_a_no_op(census):
    specs, _ = census
    spec = specs["jsonl"]
    output = open_output(Path(spec.output))
    assert output.probes().collect().height == 0
    assert sorted(output.ledgers.probes) == list(range(CHUNKS))
    before = landed(Path(spec.output))
    summary = run_sweep(spec, progress=False)
    assert summary.ok and summary.schedule.cells_scored == 0
    after = landed(Path(spec.output))
    assert after[0].equals(before[0]) and after[1].equals(before[1])


def test_census_pieces_read_every_sequence_in_order_in_bounded_pieces(census, stream_family):
    specs, world = census
    for name in ("jsonl", "megatron", "numpy"):
        spec = specs[name]
        described, _ = describe_spec_chunks(spec, [1])
        reader = census_chunk(1, described[1], K, L, piece_rows=5)
        pieces = list(reader.pieces())
        assert [len(piece.rows) for piece in pieces] == [5] * 6 + [2], name
        assert [piece.sha256 is not None for piece in pieces] == [False] * 6 + [True], name
        tokens = np.concatenate([piece.tokens for piece in pieces])
        assert np.array_equal(tokens, world.sequences[PER_CHUNK:2 * PER_CHUNK, : K + L]), name
        assert np.concatenate([piece.rows for piece in pieces]).tolist() == list(range(PER_CHUNK)), name


def test_show_reads_a_census_rows_again_from_the_pinned_source(census):
    specs, world = census
    for name in ("jsonl", "megatron"):
        examples = find_examples(open_output(Path(specs[name].output)), top=3)
        assert len(examples) == 3 and examples[0].full_match, name
        for example in examples:
            position = example.chunk * PER_CHUNK + example.row
            assert example.prompt + example.truth == world.sequences[position, : K + L].tolist(), name


def test_read_ahead_keeps_order_raises_where_the_reader_failed_and_stops_when_left():
    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("line 2: malformed JSON")

    pieces = read_ahead(failing())
    assert next(pieces) == 1
    with pytest.raises(ValueError, match="line 2"):
        next(pieces)
    read = []

    def endless():
        for number in itertools.count():
            read.append(number)
            yield number

    pieces = read_ahead(endless())
    assert [next(pieces) for _ in range(3)] == [0, 1, 2]
    pieces.close()  # the consumer leaves: the reader stops after at most the pieces it holds
    for reader in [thread for thread in threading.enumerate() if thread.name == "read-ahead"]:
        reader.join(timeout=60)  # a guard against a hang, not a wait for a time
        assert not reader.is_alive()
    assert len(read) <= 3 + 2  # the three taken, one waiting in the queue, one the reader held
