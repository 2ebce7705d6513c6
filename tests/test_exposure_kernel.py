"""The exposure-scan kernel (sweep/exposures/kernel.py): counts equal to a brute-force count probe for probe, on
corpora built here with planted copies, in both row formats, any whitespace and key order, any block sizes; clear
errors; bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from sweep.exposures.kernel import ExposureScanError, build_probe_index, scan_chunk

SOURCES = ["refinedweb", "starcoderdata", "arxiv"]


# ---------------------------------------------------------------- building corpora

def occurrences(row: list[int], sequence: np.ndarray) -> int:
    """Positions where ``sequence`` occurs in ``row`` (overlapping ones each count)."""
    if len(row) < len(sequence):
        return 0
    return int(np.all(sliding_window_view(np.asarray(row), len(sequence)) == sequence, axis=1).sum())


def brute_force(rows: list[list[int]], probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(window_count, prompt_count) per probe, int64[n], by comparing every position of every row."""
    window = np.array([sum(occurrences(row, probe) for row in rows) for probe in probes], dtype=np.int64)
    prompt = np.array([sum(occurrences(row, probe[:k]) for row in rows) for probe in probes], dtype=np.int64)
    return window, prompt


def dense_counts(result, n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    window, prompt = np.zeros(n_probes, dtype=np.int64), np.zeros(n_probes, dtype=np.int64)
    window[result.probe] = result.window_count
    prompt[result.probe] = result.prompt_count
    return window, prompt


def plant(rows: list[list[int]], sequence, rng: np.random.Generator, at_end: bool = False) -> None:
    """Overwrite ``sequence`` into a random row long enough for it, at a random offset (or at its end)."""
    candidates = [i for i, row in enumerate(rows) if len(row) >= len(sequence)]
    row = rows[candidates[int(rng.integers(len(candidates)))]]
    offset = len(row) - len(sequence) if at_end else int(rng.integers(len(row) - len(sequence) + 1))
    row[offset : offset + len(sequence)] = list(sequence)


def planted_corpus(seed: int, k: int, l: int, vocab: int) -> tuple[list[list[int]], np.ndarray]:
    """(rows, probes int64[n, k + l]): random rows with every kind of copy the scan must count exactly.

    A small ``vocab`` adds many natural (and overlapping) matches of its own.
    """
    rng = np.random.default_rng(seed)
    w = k + l

    def random_ids(n: int) -> list[int]:
        return rng.integers(0, vocab, n).tolist()

    rows = [random_ids(int(rng.integers(w, 5 * w))) for _ in range(30)]
    rows += [random_ids(int(rng.integers(0, k))) for _ in range(4)]  # shorter than k (and empty)
    probes = [row[:w] for row in rows[:6]]  # a probe's own row, at offset 0
    for _ in range(6):  # exact copies, 1-4 each, anywhere (several per row, overlapping each other)
        probe = random_ids(w)
        probes.append(probe)
        for _ in range(int(rng.integers(1, 5))):
            plant(rows, probe, rng)
    for part in (range(k), range(k, w)):  # a copy changed by one id in the prompt, or in the continuation
        probe = random_ids(w)
        probes.append(probe)
        changed = list(probe)
        changed[int(rng.choice(part))] = vocab + 1  # an id no probe holds
        plant(rows, changed, rng)
    probe = random_ids(w)  # cut short by a row's end (the prompt fits, the window does not)
    probes.append(probe)
    plant(rows, probe[: w - 1], rng, at_end=True)
    probe = random_ids(w)  # prompt-only copies
    probes.append(probe)
    plant(rows, probe[:k] + [vocab + 1], rng)
    shared = random_ids(w)  # two probes sharing a prompt, different continuations
    other = shared[:k] + random_ids(l)
    probes += [shared, other]
    plant(rows, shared, rng)
    plant(rows, other, rng)
    plant(rows, other, rng)
    probes.append(list(probes[7]))  # identical probes (the same row copied into two chunks)
    period = random_ids(int(rng.integers(1, 4)))  # a periodic run: overlapping occurrences
    run = (period * (3 * w))[: 3 * w]
    probes.append(run[:w])
    rows.append(run + random_ids(3))
    order = rng.permutation(len(probes))
    return rows, np.array(probes, dtype=np.int64)[order]


# ---------------------------------------------------------------- writing rows as chunk files

def odd_space(rng: np.random.Generator) -> str:
    return ["", "", " ", "  ", "\t", "\r", " \t "][int(rng.integers(7))]


def odd_array(ids: list[int], rng: np.random.Generator) -> str:
    inner = ",".join(f"{odd_space(rng)}{token}{odd_space(rng)}" for token in ids)
    return f"[{odd_space(rng)}{inner}{odd_space(rng)}]"


def render_row(ids: list[int], source: str, style: str, rng: np.random.Generator) -> str:
    """One row as a JSON line (no newline) in ``style``; all of them mean the row ``ids``."""
    if style == "raw":
        return json.dumps({"token_ids": ids, "source": source})
    if style == "raw-compact":
        return json.dumps({"source": source, "token_ids": ids}, separators=(",", ":"))
    if style == "raw-odd-space":  # any JSON whitespace, source first or last, no source at all
        members = [f'"token_ids"{odd_space(rng)}:{odd_space(rng)}{odd_array(ids, rng)}']
        where = int(rng.integers(3))  # no source, source first, source last
        if where:
            members.insert(where - 1, f'"source"{odd_space(rng)}:{odd_space(rng)}"{source}"')
        comma = odd_space(rng) + "," + odd_space(rng)
        return f"{odd_space(rng)}{{{odd_space(rng)}{comma.join(members)}}}{odd_space(rng)}"
    split = int(rng.integers(len(ids) + 1))  # a cached row: the row's ids are prompt + continuation
    prompt, continuation = odd_array(ids[:split], rng), odd_array(ids[split:], rng)
    if style == "cached":
        space = odd_space(rng)
        return f'{{"source":{space}"{source}", "prompt": {prompt},{space}"continuation":{continuation}}}'
    if style == "cached-reversed":  # continuation first: the fast path hands it to json.loads
        return f'{{"continuation": {continuation}, "source": "{source}", "prompt": {prompt}}}'
    if style == "escaped":  # escapes and non-ASCII in the source: json.loads reads it
        return json.dumps({"source": source + ' caf\u00e9 "quoted"', "token_ids": ids}, ensure_ascii=False)
    if style == "extra-key":
        return json.dumps({"token_ids": ids, "meta": {"url": "x", "ids": [1, 2]}, "source": source})
    raise ValueError(style)


STYLES = ["raw", "raw-compact", "raw-odd-space", "cached", "cached-reversed", "escaped", "extra-key"]


def chunk_bytes(rows: list[list[int]], rng: np.random.Generator, styles=STYLES) -> bytes:
    lines = [render_row(row, SOURCES[i % 3], styles[int(rng.integers(len(styles)))], rng)
             for i, row in enumerate(rows)]
    return ("\n".join(lines) + "\n").encode()


def random_blocks(data: bytes, rng: np.random.Generator, largest: int = 300) -> Iterator[bytes]:
    """``data`` cut at random places (empty blocks included)."""
    start = 0
    while start < len(data):
        size = int(rng.integers(0, largest))
        yield data[start : start + size]
        start += size


def one_byte_blocks(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


# ---------------------------------------------------------------- exact counts

@pytest.mark.parametrize("k,l,vocab", [(32, 32, 32000), (3, 2, 4), (1, 1, 3), (5, 1, 70000), (2, 7, 6)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_equal_brute_force(k, l, vocab, seed):
    rows, probes = planted_corpus(seed, k, l, vocab)
    rng = np.random.default_rng(100 + seed)
    data = chunk_bytes(rows, rng)
    index = build_probe_index(probes, k)

    result = scan_chunk(random_blocks(data, rng), index, "train_000.jsonl")

    window, prompt = brute_force(rows, probes, k)
    got_window, got_prompt = dense_counts(result, len(probes))
    np.testing.assert_array_equal(got_window, window)
    np.testing.assert_array_equal(got_prompt, prompt)
    assert result.probe.dtype == np.int64 and np.all(np.diff(result.probe) > 0)
    assert np.all(result.prompt_count > 0)  # only probes with a nonzero count are listed
    assert (result.rows, result.tokens, result.size) == (len(rows), sum(map(len, rows)), len(data))
    # the corpus holds what it was built to hold, so the comparison above is not vacuous
    assert window.max() >= 2 and np.any(prompt > window)
    assert vocab < 10 or np.any(window == 0)  # a tiny vocabulary holds every short window somewhere


def test_one_byte_blocks_and_whole_file_agree():
    rows, probes = planted_corpus(7, 3, 2, 5)
    data = chunk_bytes(rows, np.random.default_rng(7))
    index = build_probe_index(probes, 3)
    whole = scan_chunk([data], index, "f")
    single = scan_chunk(one_byte_blocks(data), index, "f")
    expected = brute_force(rows, probes, 3)
    for result in (whole, single):
        np.testing.assert_array_equal(np.stack(dense_counts(result, len(probes))), np.stack(expected))
    assert whole.sha256 == single.sha256 == hashlib.sha256(data).hexdigest()


def test_every_style_alone_gives_the_same_counts():
    """The fast path and json.loads (cached-reversed, escaped, extra-key lines) count alike."""
    rows, probes = planted_corpus(3, 4, 3, 6)
    index = build_probe_index(probes, 4)
    expected = np.stack(brute_force(rows, probes, 4))
    for style in STYLES:
        data = chunk_bytes(rows, np.random.default_rng(3), styles=[style])
        result = scan_chunk([data], index, style)
        np.testing.assert_array_equal(np.stack(dense_counts(result, len(probes))), expected, err_msg=style)
        assert result.tokens == sum(map(len, rows))


def test_identical_probes_and_shared_prompts_each_get_their_counts():
    k = 2
    rows = [[1, 2, 3, 1, 2, 4, 1, 2, 3], [9, 1, 2], [1, 2, 3]]
    probes = np.array([[1, 2, 3], [1, 2, 4], [1, 2, 3], [1, 2, 5], [7, 7, 7]])
    result = scan_chunk([chunk_bytes(rows, np.random.default_rng(0), styles=["raw"])],
                        build_probe_index(probes, k), "f")
    assert result.probe.tolist() == [0, 1, 2, 3]
    assert result.window_count.tolist() == [3, 1, 3, 0]
    assert result.prompt_count.tolist() == [5, 5, 5, 5]


def test_hash_collisions_are_verified_token_by_token():
    """A Thue-Morse sequence and its complement (1024 ids) have the same polynomial hash mod 2^64 for any
    odd base: as prompts, and as two continuations of one prompt, only the one that is there counts."""
    thue_morse = [bin(i).count("1") & 1 for i in range(1024)]
    complement = [1 - token for token in thue_morse]
    for k, probes in [(1024, [thue_morse + [5], complement + [5]]), (1, [[7] + thue_morse, [7] + complement])]:
        index = build_probe_index(np.array(probes), k)
        assert len(set(index.prompt_hash.tolist())) == 1 or len(set(index.window_hash.tolist())) == 1
        for row in probes:  # each of the pair in turn: the one the index lists first, then the other
            result = scan_chunk([chunk_bytes([row], np.random.default_rng(0), styles=["raw"])], index, "f")
            np.testing.assert_array_equal(np.stack(dense_counts(result, 2)),
                                          np.stack(brute_force([row], np.array(probes), k)))


def test_repeated_keys_mean_what_json_loads_says():
    """json.loads keeps the last value of a repeated key; the fast path hands such lines to it."""
    index = build_probe_index(np.array([[1, 2], [3, 4], [1, 4]]), 1)
    data = (b'{"token_ids": [1, 2], "token_ids": [3, 4]}\n'
            b'{"prompt": [1], "continuation": [2], "continuation": [4]}\n'
            b'{"source": "a", "token_ids": [9], "source": "b"}\n')
    result = scan_chunk([data], index, "f")
    assert (result.rows, result.tokens) == (3, 5)
    assert result.window_count.tolist() == [0, 1, 1] and result.prompt_count.tolist() == [1, 1, 1]


def test_a_row_longer_than_the_scratch_buffer():
    rng = np.random.default_rng(5)
    long_row = rng.integers(0, 50, 20_000).tolist()
    probes = np.array([long_row[-8:], long_row[9_000:9_008]])
    rows = [long_row, long_row[:100]]
    result = scan_chunk([chunk_bytes(rows, rng, styles=["raw"])], build_probe_index(probes, 4), "f")
    np.testing.assert_array_equal(np.stack(dense_counts(result, 2)), np.stack(brute_force(rows, probes, 4)))


def test_index_is_plain_picklable_and_compact():
    rows, probes = planted_corpus(0, 3, 2, 4)
    index = build_probe_index(probes, 3)
    again = pickle.loads(pickle.dumps(index))
    data = chunk_bytes(rows, np.random.default_rng(0))
    a, b = scan_chunk([data], index, "f"), scan_chunk([data], again, "f")
    assert np.array_equal(a.window_count, b.window_count) and np.array_equal(a.prompt_count, b.prompt_count)
    assert index.prompt_tokens.dtype == np.uint16  # ids < 2^16 are stored in 2 bytes
    assert build_probe_index(probes + 70_000, 3).prompt_tokens.dtype == np.uint32
    assert index.n_probes == len(probes)
    assert len(index.window_hash) == len(np.unique(probes, axis=0))  # identical probes share a window
    assert len(index.prompt_hash) == len(np.unique(probes[:, :3], axis=0))


def test_no_probes_and_bad_probe_arrays():
    empty = build_probe_index(np.zeros((0, 4), dtype=np.int64), 2)
    result = scan_chunk([b'{"token_ids": [1, 2, 3]}\n'], empty, "f")
    assert len(result.probe) == 0 and result.rows == 1 and result.tokens == 3
    with pytest.raises(ValueError, match="prompt_len"):
        build_probe_index(np.zeros((3, 4), dtype=np.int64), 4)
    with pytest.raises(ValueError, match="prompt_len"):
        build_probe_index(np.zeros((3, 4), dtype=np.int64), 0)
    with pytest.raises(ValueError, match=r"\[0, 2\^32\)"):
        build_probe_index(np.array([[1, -2, 3]]), 1)


# ---------------------------------------------------------------- the file: identity, ends, errors

def test_sha256_size_and_an_unterminated_last_line():
    data = b'{"token_ids": [1, 2]}\n{"token_ids": [3, 4, 5], "source": "s"}'
    result = scan_chunk(random_blocks(data, np.random.default_rng(1), largest=5), build_probe_index(
        np.array([[3, 4, 5]]), 2), "f")
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
    assert (result.rows, result.tokens, result.window_count.tolist()) == (2, 5, [1])


def test_trailing_blank_lines_are_harmless():
    index = build_probe_index(np.array([[1, 2]]), 1)
    result = scan_chunk(one_byte_blocks(b'{"token_ids": [1, 2]}\n\n\n'), index, "f")
    assert (result.rows, result.window_count.tolist()) == (1, [1])


@pytest.mark.parametrize("data,message", [
    (b'{"token_ids": [1]}\n{"token_ids": [1, 2}\n', "f.jsonl:2: malformed JSON"),
    (b'{"token_ids": [1]}\n\n{"token_ids": [1]}\n', "f.jsonl:2: empty line"),
    (b'\n{"token_ids": [1]}\n', "f.jsonl:1: empty line"),
    (b'{"token_ids": [1]}\n{"token_ids": [1, 1.5]}\n', "f.jsonl:2: token 1 is 1.5 (float), not an integer"),
    (b'{"token_ids": [1]}\n{"token_ids": [1, true]}\n', "f.jsonl:2: token 1 is True (bool)"),
    (b'{"token_ids": [-1]}\n', "f.jsonl:1: token 0 = -1 is outside"),
    (b'{"token_ids": [2147483648]}\n', "f.jsonl:1: token 0 = 2147483648 is outside"),
    (b'{"token_ids": [01]}\n', "f.jsonl:1: malformed JSON"),
    (b'{"token_ids": [1]} x\n', "f.jsonl:1: malformed JSON (Extra data)"),
    (b'{"token_ids": [1]}\n{"tokens": [1]}\n', "f.jsonl:2: unknown row format"),
    (b'{"prompt": [1, 2], "source": "s"}\n', "f.jsonl:1: missing key 'continuation'"),
    (b'{"token_ids": "1 2"}\n', "f.jsonl:1: 'token_ids' must be a list"),
    (b'[1, 2]\n', "f.jsonl:1: expected a JSON object"),
    (b'{"token_ids": [1], "source": "\xff"}\n', "f.jsonl:1: malformed JSON (not UTF-8)"),
    (b'   \n', "f.jsonl:1: malformed JSON"),
    (b"", "f.jsonl: file is empty"),
    (b"\n\n", "f.jsonl: file is empty (only blank lines)"),
])
def test_errors_name_file_and_line(data, message):
    index = build_probe_index(np.array([[1, 2]]), 1)
    for blocks in ([data], one_byte_blocks(data)):
        with pytest.raises(ExposureScanError) as caught:
            scan_chunk(blocks, index, "f.jsonl")
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_gzip_file_is_refused_by_name():
    data = gzip.compress(b'{"token_ids": [1, 2]}\n' * 10)
    index = build_probe_index(np.array([[1, 2]]), 1)
    for blocks in ([data], one_byte_blocks(data)):
        with pytest.raises(ExposureScanError, match=r"^train_001.jsonl.gz: file is gzip-compressed"):
            scan_chunk(blocks, index, "train_001.jsonl.gz")


def test_memory_stays_bounded_on_a_large_file():
    """64 MB of Amber-shaped rows in 64 KB blocks: the scan holds a block and a line, never the file."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 32000, (40, 2049))
    period = "".join(json.dumps({"token_ids": row, "source": "refinedweb"}) + "\n" for row in rows.tolist()).encode()
    block_size, repeats = 65_537, 64 * 2**20 // len(period)  # blocks cut lines anywhere
    total, doubled = repeats * len(period), period * 2

    def blocks() -> Iterator[bytes]:
        for offset in range(0, total, block_size):
            start = offset % len(period)
            yield doubled[start : start + min(block_size, total - offset)]

    index = build_probe_index(rows[:, :64], 32)
    scan_chunk([period], index, "warm-up")  # compile outside the measurement
    tracemalloc.start()
    try:
        result = scan_chunk(blocks(), index, "big.jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.rows == 40 * repeats and result.tokens == 40 * 2049 * repeats
    assert result.window_count.tolist() == [repeats] * 40
    assert peak < 2 * block_size + 2 * len(period) // 40 + 64 * 1024, peak  # a block, a line, the counts


# ---------------------------------------------------------------- binary items (Megatron, numpy token files)

def item_batches(rows: list[list[int]], dtype, per_batch: int, first_position: int = 1000
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`rows` as a binary stream reader hands them over: batches of (flat tokens, offsets, stream positions); row i
    is at stream position first_position + i."""
    for start in range(0, len(rows), per_batch):
        part = rows[start:start + per_batch]
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in part])]).astype(np.int64)
        positions = np.arange(first_position + start, first_position + start + len(part), dtype=np.int64)
        yield np.array([token for row in part for token in row], dtype=dtype), offsets, positions


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize("seed", [0, 1])
def test_binary_items_count_exactly_what_brute_force_and_the_jsonl_kernel_count(seed, dtype):
    from sweep.exposures.kernel import count_items

    k, l = 4, 3
    rows, probes = planted_corpus(seed, k, l, vocab=6)
    index = build_probe_index(probes, k)
    expected = brute_force(rows, probes, k)
    # where each window occurs: the position of every row holding it, once per occurrence
    positions = [[1000 + i for i, row in enumerate(rows) for _ in range(occurrences(row, probe))] for probe in probes]
    for per_batch in (1, 7, len(rows)):  # an item never spans batches; any batch size counts the same
        counted = count_items(item_batches(rows, dtype, per_batch), index)
        assert [a.tolist() for a in dense_counts(counted, len(probes))] == [e.tolist() for e in expected]
        assert counted.items == len(rows) and counted.tokens == sum(map(len, rows))
        logged = {int(p): where.tolist() for p, where in zip(counted.probe, counted.window_positions)}
        assert [logged.get(p, []) for p in range(len(probes))] == positions
    jsonl = scan_chunk([chunk_bytes(rows, np.random.default_rng(seed), ["raw"])], index, "chunk")
    assert [a.tolist() for a in dense_counts(jsonl, len(probes))] == [e.tolist() for e in expected]


def test_binary_items_with_ids_beyond_uint16_and_occurrences_at_item_edges():
    from sweep.exposures.kernel import count_items

    k, l = 3, 2
    probe = [70000, 1, 70001, 2, 3]
    rows = [probe, [9, *probe], [9, 9, *probe[:4]], [*probe[:3]], probe[2:] + probe]  # ends, starts, cut short
    index = build_probe_index(np.array([probe]), k)
    counted = count_items(item_batches(rows, np.uint32, 2), index)
    assert dense_counts(counted, 1) == ([3], [5])
    assert counted.window_positions[0].tolist() == [1000, 1001, 1004]
    # one id out of uint16's range read as uint16 would be another id: a uint32 stream keeps it
    assert count_items(item_batches([[70000 % 65536, 1, 70001 % 65536, 2, 3]], np.uint16, 1), index).probe.size == 0


def test_a_full_occurrence_log_is_emptied_between_items_without_losing_one(monkeypatch):
    from sweep.exposures import kernel

    k, l = 2, 1
    probe = [1, 1, 1]
    rows = [[1] * 20, [2, 1, 1, 1, 2], [1] * 7, [3] * 4, [1] * 30]  # overlapping runs: one occurrence per position
    index = build_probe_index(np.array([probe]), k)
    expected = [1000 + i for i, row in enumerate(rows) for _ in range(occurrences(row, np.array(probe)))]
    monkeypatch.setattr(kernel, "_LOG_ENTRIES", 6)  # smaller than one row: the log grows, and empties many times
    counted = kernel.count_items(item_batches(rows, np.uint16, 2), index)
    assert counted.window_count.tolist() == [len(expected)] and counted.window_positions[0].tolist() == expected
