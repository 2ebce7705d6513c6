"""The binary stream readers (sweep/data/megatron.py, sweep/data/token_files.py) against the formats as their own
projects write them (tests/stream_world.py): items by stream position, every item once, in order in batches, what is
read and counted, and OLMo's rule for the tokens after a file's last whole instance. No Ray: a few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from sweep.data.stream_chunks import describe_stream, open_stream, stream_chunk
from sweep.data.token_stream import StreamError
from sweep.spec import DataSpec
from sweep.timeline import Timeline
from tests.stream_world import write_megatron, write_token_files

LENGTH = 24


@pytest.fixture(scope="module")
def sequences() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 60000, size=(50, LENGTH))


def megatron(folder, sequences, shard_bytes=None, dtype=np.uint16):
    write_megatron(folder, list(sequences), dtype=dtype, shard_bytes=shard_bytes)
    return open_stream(describe_stream(DataSpec(source=str(folder), format="megatron", file="document")))


def token_files(folder, sequences, files=3, remainder=5, order=True):
    names, order_file = write_token_files(folder, sequences, files, seed=1, remainder=remainder)
    if not order:  # storage order is stream order: rewrite the files without the shuffle
        for k, part in enumerate(np.array_split(np.arange(len(sequences)), files)):
            np.concatenate([sequences[part].reshape(-1), np.full(remainder, 7)]).astype(np.uint16).tofile(
                folder / names[k])
    spec = DataSpec(source=str(folder), format="numpy", file="tokens/*.npy", dtype="uint16", sequence_len=LENGTH,
                    order=order_file if order else None)
    return open_stream(describe_stream(spec))


@pytest.mark.parametrize("shard_bytes", [None, 7, 100, 1001])  # whole, cut inside every token / item
def test_megatron_items_by_position_across_shard_boundaries(tmp_path, sequences, shard_bytes):
    stream = megatron(tmp_path / "m", sequences, shard_bytes)
    assert stream.length == len(sequences)
    positions = np.array([49, 0, 17, 18, 3])
    assert np.array_equal(stream.read_items(positions, 10), sequences[positions, :10])
    assert np.array_equal(stream.read_items(positions, LENGTH, within=(0, 50)), sequences[positions])
    with pytest.raises(StreamError, match=f"item 3 has {LENGTH} tokens, fewer than the {LENGTH + 1} asked"):
        stream.read_items(np.array([3]), LENGTH + 1)


@pytest.mark.parametrize("make", ["megatron", "numpy", "numpy in storage order"])
def test_every_item_once_in_scan_batches_and_in_order_in_item_batches(tmp_path, sequences, make):
    if make == "megatron":
        stream = megatron(tmp_path / "m", sequences, shard_bytes=333)
    else:
        stream = token_files(tmp_path / "n", sequences, order=make == "numpy")
    seen = []
    for batch in stream.iter_items(10, 40, batch_bytes=100):
        assert len(batch.offsets) == len(batch.positions) + 1 and batch.offsets[0] == 0
        for i, position in enumerate(batch.positions):
            assert np.array_equal(batch.tokens[batch.offsets[i]:batch.offsets[i + 1]], sequences[position])
        seen += batch.positions.tolist()
    assert sorted(seen) == list(range(10, 40))
    batches = list(stream.iter_item_batches(5, 28, width=8, batch=6))
    assert [len(positions) for positions, _ in batches] == [6, 6, 6, 5]
    assert np.array_equal(np.concatenate([positions for positions, _ in batches]), np.arange(5, 28))
    assert np.array_equal(np.concatenate([tokens for _, tokens in batches]), sequences[5:28, :8])


def test_numpy_ignores_each_files_remainder_as_olmo_does(tmp_path, sequences):
    """OLMo's MemMapDataset: a file holds file_size // (itemsize * chunk_size) instances, the rest is ignored, and
    instances are numbered across files in their order. Three files of 17, 17, 16 instances plus 5 stray tokens."""
    stream = token_files(tmp_path / "n", sequences, files=3, remainder=5, order=False)
    assert stream.instances == len(sequences) == stream.length
    assert np.array_equal(stream.read_items(np.arange(50), LENGTH), sequences)  # the strays never shift an instance
    long = token_files(tmp_path / "long", sequences, files=3, remainder=LENGTH + 5, order=False)  # a whole extra one
    assert long.instances == len(sequences) + 3  # ... is an instance of its file, as OLMo counts it
    assert np.array_equal(long.read_items(np.array([17]), 4)[0], np.full(4, 7))  # file 0's extra instance


def test_the_order_file_maps_positions_to_instances(tmp_path, sequences):
    stream = token_files(tmp_path / "n", sequences, files=2, remainder=3)
    assert np.array_equal(stream.read_items(np.arange(50), LENGTH), sequences)
    assert stream.length == 50


def test_reads_are_counted_hashed_and_bounded_to_what_was_asked(tmp_path, sequences):
    stream = megatron(tmp_path / "m", sequences, shard_bytes=100)
    opened = stream.bytes_read
    assert opened >= 34  # the header (and the last entry, to check the shards add up)
    chunk = stream_chunk(stream.source, Timeline(5, 2), 2)  # positions [20, 30)
    stream.read_items(np.array([21, 27]), 4, within=(chunk.start, chunk.stop))
    read = stream.bytes_read - opened
    assert read <= 12 * 10 + 2 * 4 * 2 + 64 * 1024  # the chunk's entries, two items' 4 tokens, coalescing slack
    again = megatron(tmp_path / "m", sequences, shard_bytes=100)
    again.read_items(np.array([21, 27]), 4, within=(20, 30))
    assert again.digest() == stream.digest()  # the same reads of the same files: the same digest
    other = megatron(tmp_path / "m2", sequences[::-1], shard_bytes=100)
    other.read_items(np.array([21, 27]), 4, within=(20, 30))
    assert other.digest() != stream.digest()


def test_signed_megatron_tokens_below_zero_are_named(tmp_path, sequences):
    bad = sequences.astype(np.int32)
    bad[7, 3] = -5
    stream = megatron(tmp_path / "m", bad, dtype=np.int32)
    assert np.array_equal(stream.read_items(np.array([6]), 5), sequences[[6], :5])
    with pytest.raises(StreamError, match="item 7 holds a negative token id"):
        stream.read_items(np.array([6, 7]), 5)
    with pytest.raises(StreamError, match="item 7 holds a negative token id"):
        list(stream.iter_items(0, 50))
