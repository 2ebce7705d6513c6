"""Probe sets: same rows as the reference tool, both line formats, flat memory, clear errors, cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweep.data.probes import (
    ProbeCache,
    ProbeSetError,
    build_probe_set,
    build_probe_set_from,
    write_raw_chunk,
)
from sweep.landed.atomic_write import write_atomic
from sweep.data.sources import ChunkFile, IdentityMemo, describe_chunks
from sweep.errors import MemsweepError

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO.parent / "shared" / "amber-samples"
K, L = 32, 32


def random_raw_rows(n_rows: int, seed: int, min_len: int = K + L, max_len: int = 200,
                    vocab: int = 32000) -> list[tuple[list[int], str]]:
    rng = np.random.default_rng(seed)
    sources = ["refinedweb", "c4", "starcoderdata", "arxiv"]
    return [
        (rng.integers(0, vocab, int(rng.integers(min_len, max_len + 1))).tolist(), sources[i % 4] + f"-{i}")
        for i in range(n_rows)
    ]


# ---------------------------------------------------------------- same rows as `datasets`

@pytest.mark.parametrize("n_rows,n,seed", [(300, 50, 42), (257, 100, 7), (40, 64, 42)])
def test_picks_the_rows_datasets_shuffle_select_picks(tmp_path, caplog, n_rows, n, seed):
    import datasets

    rows = random_raw_rows(n_rows, seed=n_rows)
    path = tmp_path / "train_005.jsonl"
    write_raw_chunk(path, rows)

    with caplog.at_level(logging.WARNING, logger="sweep.data.probes"):
        probes = build_probe_set(path, chunk=5, n=n, seed=seed, prompt_len=K, continuation_len=L,
                                 vocab_size=32000)

    reference = datasets.Dataset.from_list(
        [{"row": i, "token_ids": ids, "source": source} for i, (ids, source) in enumerate(rows)]
    ).shuffle(seed=seed).select(range(min(n, n_rows)))
    assert probes["row"].to_list() == reference["row"]
    assert probes["source"].to_list() == reference["source"]
    assert probes["tokens"].to_list() == [ids[: K + L] for ids in reference["token_ids"]]
    assert probes["chunk"].unique().to_list() == [5]
    assert probes.schema == pl.Schema({"chunk": pl.Int32, "row": pl.Int64, "index": pl.Int64, "source": pl.String,
                                       "tokens": pl.List(pl.UInt32)})
    assert probes["index"].null_count() == probes.height  # a stream position is a binary stream's (megatron, numpy)
    warned = any("fewer than" in record.getMessage() for record in caplog.records)
    assert warned == (n_rows < n)


def test_large_ids_keep_their_value(tmp_path):
    rows = random_raw_rows(20, seed=1, vocab=100_000)  # beyond uint16 (Llama 3 has 128k ids)
    path = tmp_path / "big_vocab.jsonl"
    write_raw_chunk(path, rows)
    probes = build_probe_set(path, chunk=0, n=20, seed=0, prompt_len=K, continuation_len=L)
    assert probes.schema["tokens"] == pl.List(pl.UInt32)
    by_row = dict(zip(probes["row"].to_list(), probes["tokens"].to_list()))
    assert all(by_row[i] == ids[: K + L] for i, (ids, _) in enumerate(rows))


def test_unterminated_last_line_and_trailing_blank_lines(tmp_path):
    rows = random_raw_rows(5, seed=3)
    lines = [json.dumps({"token_ids": ids, "source": s}) for ids, s in rows]
    for name, text in [("no_newline.jsonl", "\n".join(lines)), ("blank_tail.jsonl", "\n".join(lines) + "\n\n\n")]:
        path = tmp_path / name
        path.write_text(text)
        probes = build_probe_set(path, chunk=0, n=10, seed=0, prompt_len=K, continuation_len=L)
        assert sorted(probes["row"].to_list()) == list(range(5)), name
        by_row = dict(zip(probes["row"].to_list(), probes["source"].to_list()))
        assert [by_row[i] for i in range(5)] == [s for _, s in rows], name


# ---------------------------------------------------------------- the real cached samples

@pytest.mark.parametrize("name", ["train_143.jsonl", "train_355.jsonl"])
def test_shared_amber_samples_load_and_round_trip(tmp_path, name):
    original = SHARED_SAMPLES / name
    if not original.exists():
        pytest.skip(f"shared Amber samples not present at {original}")
    expected = [json.loads(line) for line in original.read_text().splitlines()]

    probes = build_probe_set(original, chunk=143, n=len(expected), seed=42, prompt_len=K,
                             continuation_len=L, vocab_size=32000).sort("row")
    assert probes["row"].to_list() == list(range(len(expected)))
    assert all(len(row["prompt"]) == K and len(row["continuation"]) == L for row in expected)
    assert probes["tokens"].to_list() == [row["prompt"] + row["continuation"] for row in expected]
    assert probes["source"].to_list() == [row["source"] for row in expected]

    written = tmp_path / name
    with open(written, "w") as handle:
        for source, tokens in zip(probes["source"], probes["tokens"].to_list()):
            handle.write(json.dumps({"source": source, "prompt": tokens[:K], "continuation": tokens[K:]}) + "\n")
    reread = build_probe_set(written, chunk=143, n=len(expected), seed=42, prompt_len=K,
                             continuation_len=L, vocab_size=32000).sort("row")
    assert reread.equals(probes)
    assert [json.loads(line) for line in written.read_text().splitlines()] == expected


# ---------------------------------------------------------------- flat memory

def write_big_raw_chunk(path: Path, min_bytes: int, seed: int, row_len: int = 2049) -> np.ndarray:
    """Write a raw chunk of >= min_bytes; returns the first K+L ids of every row (int64[rows, K+L]).

    Fast: each row is a per-row random head (the K+L ids we check) plus one of a few
    pre-formatted random tails.
    """
    rng = np.random.default_rng(seed)
    tails = [",".join(map(str, rng.integers(0, 32000, row_len - K - L).tolist())) for _ in range(8)]
    n_rows = -(-min_bytes // (len(tails[0]) + 5 * (K + L)))  # ids average < 6 bytes: over-estimates
    heads = rng.integers(0, 32000, (n_rows, K + L))
    with open(path, "w") as handle:
        for start in range(0, n_rows, 512):
            handle.write("".join(
                f'{{"token_ids": [{",".join(map(str, head))},{tails[i % 8]}], "source": "s{i}"}}\n'
                for i, head in enumerate(heads[start : start + 512].tolist(), start)
            ))
    assert path.stat().st_size >= min_bytes
    return heads


CHILD = textwrap.dedent("""
    import json, sys, time
    import psutil
    from sweep.data.probes import build_probe_set

    def peak_rss() -> int:
        # VmHWM is this process's own peak; ru_maxrss would carry over the forking parent's.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    def sample(path: str) -> dict:
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each file's peak is its own.
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = psutil.Process().memory_info().rss
        began = time.perf_counter()
        probes = build_probe_set(path, chunk=0, n=1000, seed=42, prompt_len=32, continuation_len=32,
                                 vocab_size=32000)
        return {"growth": peak_rss() - before, "seconds": time.perf_counter() - began,
                "rows": probes["row"].to_list(), "tokens": probes["tokens"].to_list()}

    sample(sys.argv[1])  # the first call pays one-time costs (Polars' thread pool, imports) that no chunk size moves
    print(json.dumps({"small": sample(sys.argv[1]), "big": sample(sys.argv[2])}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux /proc")
def test_memory_stays_flat_in_chunk_size(tmp_path):
    # Flat means: a chunk 8x larger costs no more memory than the allocator's noise. One absolute bound on a
    # single file flaked (40.5 MB against 40 MB, cold, on a loaded CI machine), so the test compares two sizes
    # in one warm process: a reader that held the file would grow by the difference (~175 MB).
    small_path, big_path = tmp_path / "small" / "train_000.jsonl", tmp_path / "big" / "train_000.jsonl"
    small_path.parent.mkdir(), big_path.parent.mkdir()
    small_heads = write_big_raw_chunk(small_path, min_bytes=25 * 2**20, seed=1)
    heads = write_big_raw_chunk(big_path, min_bytes=200 * 2**20, seed=0)
    small_size, size = small_path.stat().st_size, big_path.stat().st_size
    result = subprocess.run([sys.executable, "-c", CHILD, str(small_path), str(big_path)], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)  # a hang guard
    assert result.returncode == 0, result.stderr
    small, big = json.loads(result.stdout).values()

    for report, expected_heads in ((small, small_heads), (big, heads)):
        expected_rows = np.random.default_rng(42).permutation(len(expected_heads))[:1000]
        assert report["rows"] == expected_rows.tolist()
        assert report["tokens"] == expected_heads[expected_rows].tolist()
    print(f"\n{size / 2**20:.0f} MB, {len(heads)} rows: sampled in {big['seconds']:.2f} s "
          f"({len(heads) / big['seconds']:.0f} rows/s), peak RSS growth {big['growth'] / 2**20:.1f} MB; "
          f"{small_size / 2**20:.0f} MB: {small['growth'] / 2**20:.1f} MB")
    assert big["growth"] < small["growth"] + 0.1 * (size - small_size)
    assert big["growth"] < 0.25 * size


# ---------------------------------------------------------------- bad input

def raw_line(ids, source="c4") -> str:
    return json.dumps({"token_ids": ids, "source": source})


def cached_line(prompt, continuation, source="c4") -> str:
    return json.dumps({"source": source, "prompt": prompt, "continuation": continuation})


GOOD = list(range(100, 100 + K + L))
BAD_CASES = {
    "malformed json": ([raw_line(GOOD), raw_line(GOOD), '{"token_ids": [1, 2,', raw_line(GOOD)], 3, "malformed JSON"),
    "not an object": ([raw_line(GOOD), "[1, 2, 3]"], 2, "JSON object"),
    "row too short": ([raw_line(GOOD), raw_line(GOOD[: K + L - 1])], 2, "fewer than k+l"),
    "float id": ([raw_line(GOOD), raw_line(GOOD[:5] + [3.0] + GOOD[6:])], 2, "not an integer"),
    "bool id": ([raw_line(GOOD[:7] + [True] + GOOD[8:]), raw_line(GOOD)], 1, "not an integer"),
    "string id": ([raw_line(GOOD), raw_line(GOOD), raw_line(["7"] + GOOD[1:])], 3, "not an integer"),
    "id >= vocab": ([raw_line(GOOD), raw_line(GOOD[:-1] + [32000])], 2, "outside"),
    "negative id": ([raw_line(GOOD), raw_line([-1] + GOOD[1:])], 2, "outside"),
    "missing token_ids": ([raw_line(GOOD), json.dumps({"source": "c4", "ids": GOOD})], 2, "token_ids"),
    "missing source": ([raw_line(GOOD), json.dumps({"token_ids": GOOD})], 2, "'source'"),
    "source not a string": ([raw_line(GOOD), raw_line(GOOD, source=3)], 2, "'source'"),
    "unknown format": ([json.dumps({"text": "hello"}), raw_line(GOOD)], 1, "unknown row format"),
    "blank line inside": ([raw_line(GOOD), "", raw_line(GOOD)], 2, "empty line"),
    "short prompt": ([cached_line(GOOD[:K], GOOD[K:]), cached_line(GOOD[: K - 1], GOOD[K:])], 2, "prompt 31"),
    "long continuation": ([cached_line(GOOD[:K], GOOD[K:]), cached_line(GOOD[:K], GOOD[K:] + [5])], 2, "continuation 33"),
    "missing continuation": ([cached_line(GOOD[:K], GOOD[K:]), json.dumps({"source": "c4", "prompt": GOOD[:K]})], 2, "'continuation'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_name_file_and_line(tmp_path, case):
    lines, line_number, why = BAD_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "chunk.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ProbeSetError) as raised:
        build_probe_set(data / "chunk.jsonl", chunk=0, seed=42, n=100, prompt_len=K, continuation_len=L,
                        vocab_size=32000)
    message = str(raised.value)
    assert f"{data / 'chunk.jsonl'}:{line_number}: " in message
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize("content,why", [(None, "not found"), ("", "empty"), ("\n\n", "empty"),
                                         (b"\x1f\x8b\x08\x00gzipped", "gzip-compressed")])
def test_missing_empty_or_compressed_file_is_named(tmp_path, content, why):
    path = tmp_path / "train_001.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ProbeSetError, match=why) as raised:
        build_probe_set(path, chunk=1, n=10, seed=42, prompt_len=K, continuation_len=L)
    assert str(path) in str(raised.value)


def test_unchosen_rows_are_not_parsed(tmp_path):
    """Documented trade-off: only the chosen rows' content is validated."""
    rows = random_raw_rows(50, seed=4)
    path = tmp_path / "chunk.jsonl"
    write_raw_chunk(path, rows)
    unchosen = int(np.random.default_rng(42).permutation(50)[-1])
    lines = path.read_text().splitlines()
    lines[unchosen] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    probes = build_probe_set(path, chunk=0, n=10, seed=42, prompt_len=K, continuation_len=L)
    assert unchosen not in probes["row"].to_list()
    with pytest.raises(ProbeSetError, match=f":{unchosen + 1}: malformed JSON"):
        build_probe_set(path, chunk=0, n=50, seed=42, prompt_len=K, continuation_len=L)


# ---------------------------------------------------------------- cache

def local_source(path: Path) -> ChunkFile:
    [source] = describe_chunks(str(path.parent), {0: path.name}).values()
    return source


def test_the_scan_gives_the_files_sha256_and_a_line_index_that_replaces_it(tmp_path):
    import hashlib

    path = tmp_path / "train_002.jsonl"
    write_raw_chunk(path, random_raw_rows(120, seed=5))
    first = build_probe_set_from(local_source(path), 2, 30, 42, K, L)
    assert first.chunk_file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.line_lengths is not None and int(first.line_lengths.sum()) == path.stat().st_size
    # With the cached line index the file is not scanned again (a scan would have to read all of it), and the
    # rows for another seed are exactly those a full build picks.
    again = build_probe_set_from(local_source(path), 2, 30, 7, K, L, line_lengths=first.line_lengths)
    assert again.line_lengths is None
    assert again.frame.equals(build_probe_set(path, 2, 30, 7, K, L))


def test_a_changed_file_gets_a_new_identity_and_the_memo_notices(tmp_path):
    path = tmp_path / "train_003.jsonl"
    write_raw_chunk(path, random_raw_rows(40, seed=6))
    memo = IdentityMemo(tmp_path / "cache")
    built = build_probe_set_from(local_source(path), 3, 10, 42, K, L)
    memo.remember(built.chunk_file)
    assert memo.lookup(local_source(path)) == built.chunk_file.sha256
    before = path.stat()
    write_raw_chunk(path, random_raw_rows(40, seed=7))  # same name, new content
    assert (path.stat().st_size, path.stat().st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    assert memo.lookup(local_source(path)) is None  # size/mtime moved: must be hashed again
    rebuilt = build_probe_set_from(local_source(path), 3, 10, 42, K, L)
    assert rebuilt.chunk_file.sha256 != built.chunk_file.sha256


def test_a_source_that_does_not_match_its_expected_sha256_is_refused(tmp_path):
    path = tmp_path / "train_004.jsonl"
    write_raw_chunk(path, random_raw_rows(40, seed=8))
    wrong = local_source(path).with_sha256("0" * 64)
    with pytest.raises(ProbeSetError, match="does not match the expected " + "0" * 64):
        build_probe_set_from(wrong, 4, 10, 42, K, L)


def test_cache_round_trips_and_a_damaged_entry_is_rebuilt_not_trusted(tmp_path, caplog):
    cache = ProbeCache(tmp_path / "cache")
    frame = build_probe_set_from(local_source(_chunk(tmp_path)), 0, 10, 42, K, L)
    sha = frame.chunk_file.sha256
    cache.put_probe_set(sha, 42, 10, K, L, frame.frame)
    cache.put_line_lengths(sha, frame.line_lengths)
    assert cache.probe_set(sha, 42, 10, K, L).equals(frame.frame)
    assert cache.probe_set(sha, 43, 10, K, L) is None  # keyed by every setting
    assert (cache.line_lengths(sha) == frame.line_lengths).all()
    [stored] = (tmp_path / "cache" / "probes").iterdir()
    stored.write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING):
        assert cache.probe_set(sha, 42, 10, K, L) is None
    assert str(stored) in caplog.text


def _chunk(tmp_path: Path) -> Path:
    path = tmp_path / "train_000.jsonl"
    write_raw_chunk(path, random_raw_rows(60, seed=9))
    return path


def test_an_unwritable_cache_is_named(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(MemsweepError, match=f"data.cache_dir {blocked}"):
        ProbeCache(blocked / "cache").check_writable()


def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch):
    target = tmp_path / "cache" / "probe.parquet"

    def crash(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(b"PAR1 a whole file", target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.undo()
    write_atomic(b"PAR1 a whole file", target)
    assert target.read_bytes() == b"PAR1 a whole file"
    assert list(target.parent.iterdir()) == [target]


def test_ranges_are_picked_from_a_stream_whatever_the_block_size():
    """The fallback for a server that ignores Range: one pass over the blocks gives each range's bytes."""
    import hashlib

    from sweep.data.probes import read_ranges_streaming

    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    ranges = [(0, 10), (4990, 10), (100, 0), (120, 400), (130, 5), (2000, 1), (2000, 3000)]
    for block in (1, 7, 333, 5000):
        blocks = (data[i:i + block] for i in range(0, len(data), block))
        picked, sha256, size = read_ranges_streaming(blocks, ranges)
        assert picked == [data[start:start + length] for start, length in ranges], block
        assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
