"""Which of a checkpoint's sequences to show, and in what order: the one selection behind `memsweep show` (through
sweep/analysis/examples.py `find_examples`, and so the report's examples) and the explorer's cell page.

Filters: a chunk, a source, full match or not, an exact prefix of at least so many tokens, given (chunk, row)s, and
exposures by the checkpoint within bounds (on a frame that has the `exposures` column; a sequence whose exposures
are unknown, null, is left out by either bound). Order: "memorized" is the most memorized first (full matches, then
the longest exact prefix, then the most matched tokens: ORDER), and ascending the least; any other sort is one
column in the asked direction, its ties the most memorized first. Ties left after that go by (chunk, row), so a
selection is one order, whatever the reader's file order; nulls sort last either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

ORDER = ("full_match", "prefix_match", "matches")  # most memorized first: all tokens, then the longest prefix


@dataclass(frozen=True)
class SequenceSelection:
    """Filters (None: any) and an order, as `select_sequences` applies them."""

    chunk: int | None = None
    source: str | None = None
    full_match: bool | None = None
    min_prefix: int | None = None  # exact prefix of at least this many tokens
    rows: list[tuple[int, int]] | None = None  # these (chunk, row)s only
    min_exposures: int | None = None  # exposures by the checkpoint within these bounds (needs `exposures`)
    max_exposures: int | None = None
    sort: str = "memorized"  # "memorized" (ORDER) or a column
    descending: bool = True


def select_sequences(sequences: pl.LazyFrame, selection: SequenceSelection) -> pl.LazyFrame:
    """The rows of `sequences` (one checkpoint's, with `chunk, row` and the columns filtered and sorted by) that
    `selection` keeps, in its order (the module docstring). Take a few with `.head(n)`: Polars keeps a top n then,
    never the sorted checkpoint (146M rows in a census)."""
    keys = sort_keys(selection.sort, selection.descending)
    return filter_sequences(sequences, selection).sort(list(keys), descending=list(keys.values()), nulls_last=True)


def select_per_source(sequences: pl.LazyFrame, selection: SequenceSelection, columns: list[str],
                      per_source: int) -> pl.DataFrame:
    """The first `per_source` rows of each source in `selection`'s order (`columns` of them), the sources ordered by
    their first row: `select_sequences(...).group_by("source", maintain_order=True).head(per_source)`, without holding
    the sorted checkpoint that takes (1.9 GB at 16M census rows): one streaming top-n per source, a source list read
    first (a handful: Pile's 22, Amber's 7)."""
    filtered = filter_sequences(sequences, selection)
    sources = filtered.select(pl.col("source").unique()).collect(engine="streaming")["source"].to_list()
    keys = sort_keys(selection.sort, selection.descending)
    held = list(dict.fromkeys([*columns, "source", *keys]))
    tops = pl.collect_all([filtered.filter(pl.col("source").eq_missing(source))
                           .sort(list(keys), descending=list(keys.values()), nulls_last=True)
                           .head(per_source).select(held) for source in sources], engine="streaming")
    chosen = pl.concat(tops) if tops else filtered.select(held).head(0).collect()
    return (chosen.sort(list(keys), descending=list(keys.values()), nulls_last=True)
            .group_by("source", maintain_order=True).head(per_source).select(columns))


def filter_sequences(sequences: pl.LazyFrame, selection: SequenceSelection) -> pl.LazyFrame:
    """The rows of `sequences` that `selection`'s filters keep, in no order."""
    for column, keep in (("chunk", selection.chunk), ("source", selection.source),
                         ("full_match", selection.full_match)):
        if keep is not None:
            sequences = sequences.filter(pl.col(column) == keep)
    if selection.min_prefix is not None:
        sequences = sequences.filter(pl.col("prefix_match") >= selection.min_prefix)
    if selection.rows is not None:
        wanted = pl.DataFrame(selection.rows, schema={"chunk": pl.Int32, "row": pl.Int64}, orient="row")
        sequences = sequences.join(wanted.lazy(), on=["chunk", "row"], how="semi")
    if selection.min_exposures is not None:
        sequences = sequences.filter(pl.col("exposures") >= selection.min_exposures)
    if selection.max_exposures is not None:
        sequences = sequences.filter(pl.col("exposures") <= selection.max_exposures)
    return sequences


def sort_keys(sort: str, descending: bool) -> dict[str, bool]:
    """Column -> descending, in sort order: `sort` ("memorized": ORDER) in the asked direction, then the most
    memorized first, then (chunk, row) ascending."""
    keys = dict.fromkeys(ORDER, descending) if sort == "memorized" else {sort: descending}
    for name in ORDER:
        keys.setdefault(name, True)
    for name in ("chunk", "row"):
        keys.setdefault(name, False)
    return keys
