"""Query engine: SQL over the landed tables, clear errors, output formats, table printing; the command's output
through real pipes, and the tables an output has."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sweep.analysis.query import (QueryError, format_table, format_table_columns, run_query, table_columns,
                                  write_frame)
from sweep.landed.catalog import SQL_TABLES
from sweep.landed.reader import open_output
from sweep.landed.schema import CellProvenance
from sweep.landed.store import ResultStore, ScoredCell
from tests.landed_world import synthetic_sequences, write_landed

GEN_LEN = 32


def landed_output(tmp_path, ckpts=(3, 5), chunks=(2, 4, 6), rows=6):
    """A small landed dataset; returns (output, {(ckpt, chunk): per-sequence scores})."""
    output = tmp_path / "out"
    store = ResultStore(output)
    store.open({"model": "tiny"}, {}, {"device": "cpu"})
    scores = {}
    for ckpt in ckpts:
        for chunk in chunks:
            rng = np.random.default_rng(100 * ckpt + chunk)
            matches = rng.integers(0, GEN_LEN + 1, rows)
            scores[ckpt, chunk] = matches / GEN_LEN
            sequences = pl.DataFrame({
                "chunk": np.full(rows, chunk), "row": np.arange(rows) * 11, "source": ["c4"] * rows,
                "matches": matches, "score": matches / GEN_LEN, "full_match": matches == GEN_LEN,
                "prefix_match": matches // 2, "match_mask": rng.integers(0, 256, (rows, 4), dtype=np.uint8),
            })
            provenance = CellProvenance(seconds=1.0, device="cpu", dtype="float32", batch_size=2)
            store.write_cells(ckpt, [ScoredCell(chunk, sequences, provenance)])
    store.compact_checkpoint(ckpts[0])
    return output, scores


def test_sql_over_both_tables_with_join(tmp_path):
    output, scores = landed_output(tmp_path)
    per_cell = run_query(output, """
        SELECT c.ckpt, c.chunk, c.score AS cell_score, AVG(s.score) AS mean_seq_score, COUNT(*) AS n
        FROM cells c JOIN sequences s ON c.ckpt = s.ckpt AND c.chunk = s.chunk
        GROUP BY c.ckpt, c.chunk, c.score ORDER BY c.ckpt, c.chunk""")
    assert per_cell.select("ckpt", "chunk").rows() == sorted(scores)
    for ckpt, chunk, cell_score, mean_seq_score, n in per_cell.rows():
        assert cell_score == pytest.approx(scores[ckpt, chunk].mean(), rel=1e-6)
        assert mean_seq_score == pytest.approx(cell_score, rel=1e-6)
        assert n == len(scores[ckpt, chunk])

    seen = run_query(output, "SELECT ckpt, chunk, seen FROM cells WHERE seen ORDER BY ckpt, chunk")
    assert seen.select("ckpt", "chunk").rows() == [(c, j) for c, j in sorted(scores) if j <= c]


def test_failures_table_present_only_when_there_are_failures(tmp_path):
    output, _ = landed_output(tmp_path)
    with pytest.raises(QueryError, match="failures"):
        run_query(output, "SELECT * FROM failures")
    ResultStore(output).record_failure(9, 1, "actor died", attempts=3)
    failed = run_query(output, "SELECT ckpt, chunk, attempts, error FROM failures")
    assert failed.rows() == [(9, 1, 3, "actor died")]


def test_clear_one_line_errors(tmp_path):
    with pytest.raises(QueryError, match="does not exist") as caught:
        run_query(tmp_path / "missing", "SELECT 1")
    assert str(tmp_path / "missing") in str(caught.value)

    empty = tmp_path / "empty"
    ResultStore(empty).open({"model": "tiny"}, {}, {})
    with pytest.raises(QueryError, match="holds no landed results"):
        run_query(empty, "SELECT * FROM cells")

    output, _ = landed_output(tmp_path)
    for bad_sql, fragment in [("SELEC * FROM cells", "SQL error"),
                              ("SELECT no_such_column FROM cells", "no_such_column"),
                              ("SELECT * FROM no_such_table", "no_such_table")]:
        with pytest.raises(QueryError, match=fragment) as caught:
            run_query(output, bad_sql)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_write_frame_formats_round_trip(tmp_path, fmt):
    output, _ = landed_output(tmp_path)
    frame = run_query(output, "SELECT ckpt, chunk, row, score, full_match, match_mask FROM sequences "
                              "ORDER BY ckpt, chunk, row")
    path = tmp_path / "export" / f"result.{fmt}"
    write_frame(frame, path, fmt)
    if fmt == "parquet":
        assert_frame_equal(pl.read_parquet(path), frame)
        return
    back = pl.read_csv(path) if fmt == "csv" else pl.read_json(path)
    assert back.columns == frame.columns
    assert back.height == frame.height
    assert back["row"].to_list() == frame["row"].to_list()
    assert back["full_match"].to_list() == frame["full_match"].to_list()
    np.testing.assert_allclose(back["score"].to_numpy(), frame["score"].to_numpy(), rtol=1e-6)
    # Bytes travel as hex in text formats.
    assert [bytes.fromhex(h) for h in back["match_mask"]] == frame["match_mask"].to_list()


def test_write_frame_rejects_unknown_format(tmp_path):
    with pytest.raises(QueryError, match="unknown output format 'xlsx'"):
        write_frame(pl.DataFrame({"a": [1]}), tmp_path / "x.xlsx", "xlsx")


def test_format_table_shows_every_column_and_caps_rows(tmp_path):
    output, scores = landed_output(tmp_path)
    cells = run_query(output, "SELECT * FROM cells ORDER BY ckpt, chunk")
    text = format_table(cells, max_rows=len(scores))
    for column in cells.columns:
        assert column in text
    assert "…" not in text  # nothing elided when every row and column fits
    short = format_table(cells, max_rows=2)
    assert "…" in short
    assert len(short.splitlines()) < len(text.splitlines())


# ---- the command through real pipes (docs/cli.md, "Query: the tables and the output formats") ---------------

REPO = Path(__file__).resolve().parents[1]
MEMSWEEP = f"{shlex.quote(sys.executable)} -m sweep"


def piped(command: str, tmp_path: Path) -> tuple[str, str, int]:
    """`command` (a shell pipeline whose first stage is memsweep) run by bash as a user types it: (what the last
    stage printed, memsweep's stderr, memsweep's exit status)."""
    errors, status = tmp_path / "memsweep.stderr", tmp_path / "memsweep.status"
    first, rest = command.split(" | ", 1)
    script = f"{first} 2> {errors} | {rest}; echo ${{PIPESTATUS[0]}} > {status}"
    done = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, errors.read_text(), int(status.read_text())


def test_csv_to_a_pipe_that_closes_early_ends_quietly(tmp_path):
    output, _ = landed_output(tmp_path, rows=3000)  # 18,000 lines: far more than a pipe holds, so `head` hangs up
    sql = "SELECT ckpt, chunk, row, score, match_mask FROM sequences ORDER BY ckpt, chunk, row"
    shown, errors, status = piped(f"{MEMSWEEP} query {output} {shlex.quote(sql)} --format csv | head -3", tmp_path)
    expected = run_query(output, sql).head(2).with_columns(pl.col("match_mask").bin.encode("hex"))
    assert shown == expected.write_csv()  # the header and the first two rows, exactly
    assert (errors, status) == ("", 0)  # no traceback, no complaint: the reader had what it wanted


def test_json_to_a_pipe_is_one_array_json_tool_reads(tmp_path):
    output, _ = landed_output(tmp_path)
    sql = "SELECT ckpt, chunk, row, matches, full_match FROM sequences ORDER BY ckpt, chunk, row"
    shown, errors, status = piped(f"{MEMSWEEP} query {output} {shlex.quote(sql)} --format json | python3 -m json.tool",
                                  tmp_path)
    assert (errors, status) == ("", 0)
    assert json.loads(shown) == run_query(output, sql).to_dicts()


def test_parquet_goes_to_a_pipe_but_not_to_a_terminal(tmp_path):
    output, _ = landed_output(tmp_path)
    sql = "SELECT * FROM cells ORDER BY ckpt, chunk"
    command = [sys.executable, "-m", "sweep", "query", str(output), sql, "--format", "parquet"]
    piped_out = subprocess.run(command, cwd=REPO, capture_output=True, timeout=120)
    assert piped_out.returncode == 0, piped_out.stderr
    assert_frame_equal(pl.read_parquet(io.BytesIO(piped_out.stdout)), run_query(output, sql))

    terminal, user = pty.openpty()  # stdout a terminal, as in an interactive shell
    try:
        refused = subprocess.run(command, cwd=REPO, stdout=user, stderr=subprocess.PIPE, text=True, timeout=120)
        assert not select.select([terminal], [], [], 0)[0]  # the command has ended and wrote nothing to the terminal
    finally:
        os.close(user)
        os.close(terminal)
    assert refused.returncode == 2
    assert refused.stderr == ("memsweep: error: --format parquet is binary and stdout is a terminal: give --out FILE, "
                              "or redirect stdout (> result.parquet) or pipe it\n")


def test_without_out_csv_and_json_are_the_files_out_would_write(tmp_path):
    output, _ = landed_output(tmp_path)
    sql = "SELECT ckpt, chunk, row, score, match_mask FROM sequences ORDER BY ckpt, chunk, row"
    for fmt in ("csv", "json"):
        saved = subprocess.run([sys.executable, "-m", "sweep", "query", str(output), sql, "--format", fmt, "--out",
                                str(tmp_path / f"saved.{fmt}")], cwd=REPO, capture_output=True, text=True, timeout=120)
        printed = subprocess.run([sys.executable, "-m", "sweep", "query", str(output), sql, "--format", fmt],
                                 cwd=REPO, capture_output=True, text=True, timeout=120)
        assert saved.returncode == printed.returncode == 0, saved.stderr + printed.stderr
        assert printed.stdout == (tmp_path / f"saved.{fmt}").read_text()


# ---- the tables an output has ----------------------------------------------------------------------

def test_every_table_the_reader_gives_is_in_the_catalogue_help_and_docs(tmp_path):
    output, _ = landed_output(tmp_path)
    ResultStore(output).record_failure(9, 1, "actor died", attempts=3)
    scanned = write_landed(tmp_path / "scanned", synthetic_sequences(2, 2, 4), exposures=True)
    names = set(open_output(output).tables()) | set(open_output(scanned).tables())
    assert names == set(SQL_TABLES)  # every table a landed output can have, and only those
    usage = subprocess.run([sys.executable, "-m", "sweep", "--help"], cwd=REPO, capture_output=True, text=True)
    listed = " ".join(usage.stdout.split())  # argparse wraps the help
    assert all(name in listed for name in SQL_TABLES), usage.stdout
    catalogue = (REPO / "docs" / "cli.md").read_text()
    assert all(f"| `{name}` |" in catalogue for name in SQL_TABLES)


def test_tables_lists_what_this_output_has_with_its_columns(tmp_path):
    output, _ = landed_output(tmp_path)
    listed = table_columns(output)
    tables = open_output(output).tables()
    assert listed["table"].unique(maintain_order=True).to_list() == ["sequences", "cells", "probes"]
    for name, frame in tables.items():
        mine = listed.filter(pl.col("table") == name)
        assert mine.select("column", "type").rows() == [(c, str(t)) for c, t in frame.collect_schema().items()]
    text = format_table_columns(listed)
    assert text.splitlines()[0] == f"sequences: {SQL_TABLES['sequences']}"
    assert "    ckpt Int32, chunk Int32, row Int64, index Int64, source String," in text
    assert "failures" not in text and "exposure" not in text
