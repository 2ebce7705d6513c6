"""Query engine: SQL over the landed tables, clear errors, output formats, table printing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sweep.analysis.query import QueryError, format_table, run_query, write_frame
from sweep.landed.schema import CellProvenance
from sweep.landed.store import ResultStore, ScoredCell

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
