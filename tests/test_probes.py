"""Probe sets: same rows as the reference tool, both line formats, flat memory, clear errors, cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweep.probes import (
    ProbeSetError,
    build_probe_set,
    load_or_build_probe_set,
    probe_set_path,
    write_probe_set,
    write_raw_chunk,
)

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

    with caplog.at_level(logging.WARNING, logger="sweep.probes"):
        probes = build_probe_set(path, chunk=5, n=n, seed=seed, prompt_len=K, continuation_len=L,
                                 vocab_size=32000)

    reference = datasets.Dataset.from_list(
        [{"row": i, "token_ids": ids, "source": source} for i, (ids, source) in enumerate(rows)]
    ).shuffle(seed=seed).select(range(min(n, n_rows)))
    assert probes["row"].to_list() == reference["row"]
    assert probes["source"].to_list() == reference["source"]
    assert probes["tokens"].to_list() == [ids[: K + L] for ids in reference["token_ids"]]
    assert probes["chunk"].unique().to_list() == [5]
    assert probes.schema == pl.Schema({"chunk": pl.Int32, "row": pl.Int64, "source": pl.String,
                                       "tokens": pl.List(pl.UInt16)})
    warned = any("fewer than" in record.getMessage() for record in caplog.records)
    assert warned == (n_rows < n)


def test_large_ids_use_int32(tmp_path):
    rows = random_raw_rows(20, seed=1, vocab=100_000)
    path = tmp_path / "big_vocab.jsonl"
    write_raw_chunk(path, rows)
    probes = build_probe_set(path, chunk=0, n=20, seed=0, prompt_len=K, continuation_len=L)
    assert probes.schema["tokens"] == pl.List(pl.Int32)
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
    from sweep.probes import build_probe_set

    def peak_rss() -> int:
        # VmHWM is this process's own peak; ru_maxrss would carry over the forking parent's.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    before = psutil.Process().memory_info().rss
    began = time.perf_counter()
    probes = build_probe_set(sys.argv[1], chunk=0, n=1000, seed=42, prompt_len=32,
                             continuation_len=32, vocab_size=32000)
    seconds = time.perf_counter() - began
    print(json.dumps({"growth": peak_rss() - before, "seconds": seconds, "rows": probes["row"].to_list(),
                      "tokens": probes["tokens"].to_list()}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from Linux /proc")
def test_memory_stays_flat_in_chunk_size(tmp_path):
    path = tmp_path / "train_000.jsonl"
    heads = write_big_raw_chunk(path, min_bytes=200 * 2**20, seed=0)
    size = path.stat().st_size
    result = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    expected_rows = np.random.default_rng(42).permutation(len(heads))[:1000]
    assert report["rows"] == expected_rows.tolist()
    assert report["tokens"] == heads[expected_rows].tolist()
    print(f"\n{size / 2**20:.0f} MB, {len(heads)} rows: sampled in {report['seconds']:.2f} s "
          f"({len(heads) / report['seconds']:.0f} rows/s), peak RSS growth "
          f"{report['growth'] / 2**20:.1f} MB = {100 * report['growth'] / size:.1f}% of the file")
    assert report["growth"] < 0.2 * size


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
    cache = tmp_path / "cache"
    with pytest.raises(ProbeSetError) as raised:
        load_or_build_probe_set(cache, str(data), "chunk.jsonl", chunk=0, seed=42, n=100,
                                prompt_len=K, continuation_len=L, vocab_size=32000)
    message = str(raised.value)
    assert f"{data / 'chunk.jsonl'}:{line_number}: " in message
    assert why in message
    assert "\n" not in message
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.parametrize("content,why", [(None, "not found"), ("", "empty"), ("\n\n", "empty")])
def test_missing_or_empty_file_is_named(tmp_path, content, why):
    path = tmp_path / "train_001.jsonl"
    if content is not None:
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

def test_cache_is_reused_and_keyed_by_every_setting(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    write_raw_chunk(data / "train" / "train_002.jsonl", random_raw_rows(120, seed=5))
    cache = tmp_path / "cache"
    settings = dict(chunk=2, seed=42, n=30, prompt_len=K, continuation_len=L)

    built = load_or_build_probe_set(cache, str(data), "train/train_002.jsonl", **settings)
    cached_file = probe_set_path(cache, str(data), "train/train_002.jsonl", 2, 42, 30, K, L)
    assert [p.name for p in cache.iterdir()] == [cached_file.name]
    assert pl.read_parquet(cached_file).equals(built)

    (data / "train" / "train_002.jsonl").unlink()  # a cache hit must not need the data file
    again = load_or_build_probe_set(cache, str(data), "train/train_002.jsonl", **settings)
    assert again.equals(built)
    assert again.schema == built.schema

    base = ("src", "train/train_002.jsonl", 2, 42, 30, K, L)
    keys = {probe_set_path(cache, *base)}
    for position, changed in enumerate(["other", "train/train_003.jsonl", 3, 43, 31, 16, 16]):
        variant = list(base)
        variant[position] = changed
        keys.add(probe_set_path(cache, *variant))
    assert len(keys) == 8
    assert probe_set_path(cache, *base) == probe_set_path(cache, *base)


def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch):
    frame = pl.DataFrame({"chunk": pl.Series([1], dtype=pl.Int32)})
    target = tmp_path / "cache" / "probe.parquet"

    def crash(self, file, **kwargs):
        file.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        write_probe_set(frame, target)
    assert list(target.parent.iterdir()) == []
    monkeypatch.undo()
    write_probe_set(frame, target)
    assert pl.read_parquet(target).equals(frame)
    assert list(target.parent.iterdir()) == [target]


def test_damaged_cache_file_is_named(tmp_path):
    cache = tmp_path / "cache"
    path = probe_set_path(cache, "src", "f.jsonl", 0, 42, 10, K, L)
    cache.mkdir()
    path.write_bytes(b"not parquet")
    with pytest.raises(ProbeSetError, match="delete it to rebuild") as raised:
        load_or_build_probe_set(cache, "src", "f.jsonl", chunk=0, seed=42, n=10, prompt_len=K,
                                continuation_len=L)
    assert str(path) in str(raised.value)
