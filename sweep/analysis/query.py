"""Polars SQL over a landed dataset: tables `sequences`, `cells`, `probes` and (when any) `failures`.

Read-only, through the one reader (sweep/landed/reader.py), so it is safe to run while a sweep is writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from actors.protocol import one_line
from sweep.errors import MemsweepError
from sweep.landed.reader import OutputNotFoundError, open_output

OutputFormat = Literal["csv", "json", "parquet"]
OUTPUT_FORMATS: tuple[str, ...] = ("csv", "json", "parquet")


class QueryError(MemsweepError):
    """A query could not run: missing/empty output directory, or an SQL error (one line)."""


def open_tables(output: Path) -> dict[str, pl.LazyFrame]:
    """The landed tables of `output` by SQL name; raises QueryError if there is nothing to query."""
    try:
        landed = open_output(output)
    except OutputNotFoundError as error:
        raise QueryError(str(error)) from None
    tables = landed.tables()
    has_cells = tables["cells"].select(pl.len()).collect().item() > 0
    if not has_cells and "failures" not in tables:
        raise QueryError(f"output directory {output} holds no landed results "
                         f"(no cells/ files: is it a memsweep output, and has a run finished a cell?)")
    return tables


def run_query(output: Path, sql: str) -> pl.DataFrame:
    """Run one SQL statement over `output`'s tables and return the result, eagerly."""
    tables = open_tables(output)
    context = pl.SQLContext(frames=tables)
    try:
        return context.execute(sql, eager=True)
    except FileNotFoundError as error:  # a listed file deleted under us: name it
        raise QueryError(f"a landed file is missing ({one_line(error, 'first')}); run `memsweep verify {output}`") from None
    except pl.exceptions.ComputeError as error:
        text = one_line(error, 'first')
        if "parquet" in text.lower() or "file" in text.lower():
            raise QueryError(f"a landed file is unreadable ({text}); run `memsweep verify {output} --repair`") from None
        raise QueryError(f"SQL error: {text} (tables: {', '.join(sorted(tables))})") from None
    except (pl.exceptions.PolarsError, ValueError, TypeError) as error:
        # Polars reports unknown tables, columns and syntax errors as several error types.
        raise QueryError(f"SQL error: {one_line(error, 'first')} (tables: {', '.join(sorted(tables))})") from None


def _text_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Binary columns (e.g. match_mask) as hex strings: CSV and JSON writers cannot hold bytes."""
    binary = [name for name, dtype in frame.schema.items() if dtype == pl.Binary]
    return frame.with_columns(pl.col(name).bin.encode("hex") for name in binary) if binary else frame


def write_frame(frame: pl.DataFrame, path: Path, fmt: OutputFormat) -> None:
    """Write `frame` to `path` as csv, json (an array of row objects) or parquet.

    In csv and json, binary columns become lowercase hex strings; parquet keeps every type.
    """
    path = Path(path)
    if fmt not in OUTPUT_FORMATS:
        raise QueryError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(path)
    elif fmt == "csv":
        frame = _text_safe(frame)
        nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
        if nested:
            raise QueryError(f"columns {nested} are nested and cannot be written to csv; use json or parquet")
        frame.write_csv(path)
    else:
        _text_safe(frame).write_json(path)


def format_table(frame: pl.DataFrame, max_rows: int = 50) -> str:
    """`frame` as a printable table: every column shown, at most `max_rows` rows."""
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=60,
                   tbl_hide_dataframe_shape=False):
        return str(frame)
