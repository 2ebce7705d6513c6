"""Polars SQL over a landed dataset: the tables sweep/landed/catalog.py names, those this output has; over several
outputs of the same data and probe sets, their tables together, each row led by its output, model and identity
(sweep/analysis/joint_outputs.py).

Read-only, through the one reader (sweep/landed/reader.py), so it is safe to run while a sweep is writing. A result
is printed as a table, or written as csv, json (one array of row objects) or parquet to a file or to a stream
(`memsweep query ... --format csv | head`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Literal, Sequence, TextIO

import polars as pl

from actors.protocol import one_line
from sweep.analysis.joint_outputs import open_joint_outputs
from sweep.errors import MemsweepError
from sweep.landed.catalog import SQL_TABLES
from sweep.landed.reader import OutputNotFoundError, open_output

OutputFormat = Literal["csv", "json", "parquet"]
OUTPUT_FORMATS: tuple[str, ...] = ("csv", "json", "parquet")


class QueryError(MemsweepError):
    """A query could not run: missing/empty output directory, or an SQL error (one line)."""


def open_tables(output: Path, others: Sequence[Path] = ()) -> dict[str, pl.LazyFrame]:
    """The landed tables of `output` by SQL name; with `others`, the tables of all of them together, each row led by
    `output`, `model` and `identity` (refused, naming the key, where they probe different sequences). Raises
    QueryError if there is nothing to query."""
    tables = _landed_tables(output, others)
    has_cells = tables["cells"].select(pl.len()).collect().item() > 0
    if not has_cells and "failures" not in tables:
        raise QueryError(f"output directory {output} holds no landed results "
                         f"(no cells/ files: is it a memsweep output, and has a run finished a cell?)")
    return tables


def _landed_tables(output: Path, others: Sequence[Path]) -> dict[str, pl.LazyFrame]:
    try:
        return open_joint_outputs([output, *others]).tables() if others else open_output(output).tables()
    except OutputNotFoundError as error:
        raise QueryError(str(error)) from None


def run_query(output: Path, sql: str, others: Sequence[Path] = ()) -> pl.DataFrame:
    """Run one SQL statement over `output`'s tables (and `others`', together: `open_tables`), eagerly."""
    tables = open_tables(output, others)
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
    """Write `frame` to the file `path` as csv, json (one array of row objects) or parquet.

    In csv and json, binary columns become lowercase hex strings; parquet keeps every type.
    """
    path = Path(path)
    _check_writable(frame, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(frame, path, fmt)


def write_frame_to_stream(frame: pl.DataFrame, stream: BinaryIO | TextIO, fmt: OutputFormat) -> None:
    """Write `frame` to a stream (stdout, often a pipe) as `write_frame` writes a file. A text stream is written
    through its binary buffer, after what was printed to it before; one without a buffer (stdout captured in
    memory) takes csv and json as text.

    The bytes are made in memory first and written by Python, so a reader that stops early (`| head`) raises
    BrokenPipeError here, as any other write to a closed pipe does (Polars' own writers raise a bare OSError).
    """
    _check_writable(frame, fmt)
    data = io.BytesIO()
    _write(frame, data, fmt)
    binary = getattr(stream, "buffer", None) if isinstance(stream, io.TextIOBase) else stream
    if binary is None:
        if fmt == "parquet":
            raise QueryError("parquet is binary: this stream takes text only; give --out FILE")
        stream.write(data.getvalue().decode())
    else:
        stream.flush()
        binary.write(data.getbuffer())
        binary.flush()


def _check_writable(frame: pl.DataFrame, fmt: str) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise QueryError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    if fmt == "csv":
        nested = [name for name, dtype in frame.schema.items() if dtype.is_nested()]
        if nested:
            raise QueryError(f"columns {nested} hold lists, which csv cannot: select the other columns, or use "
                             "--format json or parquet")


def _write(frame: pl.DataFrame, target: Path | BinaryIO, fmt: str) -> None:
    if fmt == "parquet":
        frame.write_parquet(target)
    elif fmt == "csv":
        _text_safe(frame).write_csv(target)
    else:
        _text_safe(frame).write_json(target)


def table_columns(output: Path, others: Sequence[Path] = ()) -> pl.DataFrame:
    """The tables this output has (with `others`, the outputs' tables together), in the catalogue's order, and their
    columns: one row per (table, column) with `table`, `column`, `type` (Polars' name) and `table_holds` (what one
    row of the table is)."""
    tables = _landed_tables(output, others)
    rows = []
    for name in sorted(tables, key=list(SQL_TABLES).index):
        rows += [{"table": name, "column": column, "type": str(dtype), "table_holds": SQL_TABLES[name]}
                 for column, dtype in tables[name].collect_schema().items()]
    return pl.DataFrame(rows, schema={"table": pl.String, "column": pl.String, "type": pl.String,
                                      "table_holds": pl.String})


def format_table_columns(columns: pl.DataFrame, width: int = 110) -> str:
    """`table_columns`' result for a reader: each table, what one row is, then its columns and their types."""
    lines = []
    for (name,), group in columns.group_by("table", maintain_order=True):
        lines.append(f"{name}: {group['table_holds'][0]}")
        entries = [f"{column} {dtype}" for column, dtype in group.select("column", "type").iter_rows()]
        line = ""
        for entry in entries:  # wrapped between columns, never between a column and its type
            if line and len(line) + len(entry) + 2 > width:
                lines.append(line + ",")
                line = ""
            line = f"{line}, {entry}" if line else f"    {entry}"
        lines.append(line)
    return "\n".join(lines)


def format_table(frame: pl.DataFrame, max_rows: int = 50) -> str:
    """`frame` as a printable table: every column shown, at most `max_rows` rows."""
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=60,
                   tbl_hide_dataframe_shape=False):
        return str(frame)
