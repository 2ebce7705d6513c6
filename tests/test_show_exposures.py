"""`memsweep show` with exposure counts: each example's exposures (at its checkpoint and over every scanned file),
the filters and the order by them, and the line saying what the counts cover, on a small output whose counts are
given here (tests/landed_world.py lands them as a sweep does)."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from sweep.cli import main
from sweep.landed.store import ResultStore
from tests.landed_world import L, write_landed

REPO = Path(__file__).resolve().parents[1]
CKPTS = CHUNKS = [0, 1, 2]
ROWS = [5, 6, 7, 8]
# (chunk, row, seen_chunk, window_count, prompt_count): each row once in its own chunk, some copied
COPIES = [(0, 5, 1, 3, 4), (0, 5, 2, 6, 6), (1, 6, 0, 2, 2), (2, 7, 0, 9, 12), (2, 8, 2, 1, 3), (1, 8, 2, 0, 5)]


def counts() -> pl.DataFrame:
    rows = [(chunk, row, chunk, 1, 1) for chunk in CHUNKS for row in ROWS] + COPIES
    return (pl.DataFrame(rows, schema=["chunk", "row", "seen_chunk", "window_count", "prompt_count"], orient="row")
            .group_by("chunk", "row", "seen_chunk").agg(pl.col("window_count", "prompt_count").sum()))


def exposures(chunk: int, row: int, ckpt: int) -> int:
    return counts().filter((pl.col("chunk") == chunk) & (pl.col("row") == row) & (pl.col("seen_chunk") <= ckpt))[
        "window_count"].sum()


def records() -> list[dict]:
    # memorized: every sequence of chunk 0, and (2, 7), seen 9 times in chunk 0
    return [{"ckpt": ckpt, "chunk": chunk, "row": row, "source": "web",
             "matches": L if chunk == 0 or (chunk, row) == (2, 7) else row, "full_match": chunk == 0 or
             (chunk, row) == (2, 7), "prefix_match": row, "nll": 1.0}
            for ckpt in CKPTS for chunk in CHUNKS for row in ROWS]


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return write_landed(tmp_path_factory.mktemp("show") / "out", records(), exposures=counts())


def show(*args: str, status: int = 0) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", *args, "--color", "never"]) == status
    return out.getvalue()


def shown_json(output: Path, tmp_path: Path, *args: str) -> list[dict]:
    path = tmp_path / "shown.json"
    show(str(output), "--format", "json", "--out", str(path), *args)
    return json.loads(path.read_text())


def test_each_example_carries_its_exposures(output, tmp_path):
    for ckpt in CKPTS:
        shown = shown_json(output, tmp_path, "--ckpt", str(ckpt), "--top", "12")
        assert len(shown) == 12
        for example in shown:
            key = (example["chunk"], example["row"])
            assert example["exposures"] == exposures(*key, ckpt), (ckpt, key)
            mine = counts().filter((pl.col("chunk") == key[0]) & (pl.col("row") == key[1]))
            assert example["window_count"] == mine["window_count"].sum()
            assert example["prompt_count"] == mine["prompt_count"].sum()
            held = mine.filter(pl.col("window_count") > 0)["seen_chunk"]
            assert (example["first_chunk"], example["last_chunk"]) == (held.min(), held.max())
            assert example["chunks_scanned"] == 3
    (planted,) = [e for e in shown_json(output, tmp_path, "--top", "12") if (e["chunk"], e["row"]) == (0, 5)]
    assert (planted["exposures"], planted["window_count"], planted["prompt_count"]) == (10, 10, 11)


def test_show_filters_and_sorts_by_exposures(output, tmp_path):
    by_exposures = shown_json(output, tmp_path, "--ckpt", "1", "--sort", "exposures", "--top", "5")
    assert [(e["chunk"], e["row"], e["exposures"]) for e in by_exposures[:3]] == [(2, 7, 9), (0, 5, 4), (1, 6, 3)]
    assert [e["exposures"] for e in by_exposures] == sorted((e["exposures"] for e in by_exposures), reverse=True)
    # at checkpoint 0, (1, 8) has not been seen: its only copy beyond its own row holds the prompt alone
    window = shown_json(output, tmp_path, "--ckpt", "0", "--min-exposures", "1", "--max-exposures", "2", "--top", "50")
    expected = {(c, r) for c in CHUNKS for r in ROWS if 1 <= exposures(c, r, 0) <= 2}
    assert {(e["chunk"], e["row"]) for e in window} == expected and (1, 6) in expected and (1, 8) not in expected
    assert show(str(output), "--min-exposures", "100") .endswith("no landed sequence of checkpoint 2 matches these "
                                                                 "filters\n")


def test_text_says_what_the_counts_cover_and_how_often_each_was_seen(output):
    text = show(str(output), "--ckpt", "1", "--chunk", "2", "--top", "1")
    lines = text.splitlines()
    assert lines[0] == "(exposure counts cover 3 of the 3 chunk files listed in exposure.chunks)"
    assert lines[1].startswith("(no tokenizer")  # this output's spec names no model: token ids
    assert lines[2].startswith("ckpt 1 · chunk 2 · row 7 · web · 32/32 tokens")
    assert lines[-1] == ("  seen   │ 9 times by checkpoint 1; 10 in all 3 scanned chunk files (its prompt 13); "
                         "first in chunk 0, last in chunk 2")


def test_a_partial_scan_says_so_and_without_counts_the_filters_are_refused(tmp_path, capsys):
    partial = write_landed(tmp_path / "partial", records(), exposures=counts(), scanned=[0, 1])
    ResultStore(partial).record_scan_failure(2, "train/train_002.jsonl: gone")
    text = show(str(partial), "--chunk", "1", "--top", "1")
    assert text.splitlines()[0] == ("(exposure counts cover 2 of the 3 chunk files listed in exposure.chunks; "
                                    "failed: chunk 2: train/train_002.jsonl: gone)")
    assert "seen   │" not in show(str(partial), "--chunk", "2", "--top", "1")  # its own file unscanned: unknown
    plain = write_landed(tmp_path / "plain", records())
    shown = show(str(plain), "--top", "1")
    assert "seen   │" not in shown and "exposure counts" not in shown
    show(str(plain), "--sort", "exposures", status=2)
    assert "no exposure counts to filter or sort by" in capsys.readouterr().err


def test_csv_and_json_go_to_stdout_for_a_pipe_and_the_notes_to_stderr(output, tmp_path):
    saved = shown_json(output, tmp_path, "--top", "12")
    command = f"{shlex.quote(sys.executable)} -m sweep show {output} --top 12"
    piped = subprocess.run(["bash", "-c", f"{command} --format json | python3 -m json.tool"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout) == saved  # one array, as --out writes it
    assert "(exposure counts cover 3 of the 3 chunk files listed in exposure.chunks)" in piped.stderr
    head = subprocess.run(["bash", "-c", f"{command} --format csv | head -2"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    header, first = head.stdout.splitlines()
    assert header.split(",") == list(saved[0])
    assert first.startswith(f"{saved[0]['ckpt']},{saved[0]['chunk']},{saved[0]['row']},")
    # nothing matches: an empty table with its header, and the reason on stderr
    empty = subprocess.run([*shlex.split(command), "--min-exposures", "100", "--format", "csv"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 0 and empty.stdout == header + "\n"
    assert "no landed sequence of checkpoint 2 matches these filters" in empty.stderr
