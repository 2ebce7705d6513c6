"""What the lines a sweep of a demo world sampled had been exposed to, from its chunk files (not a test module).

The demo's chunk files are its training stream (sweep/demo/stream.py): a later file replays rows of earlier
ones, so "a file checkpoint c has not trained on" no longer means "text it has not seen". Whether a sampled
line was seen by a checkpoint is read from the files by an exposure scan: the first file that holds its
k + l ids. Whether it is duplicated in the corpus (a row the builder planted copies of, or one of the copies)
is read from the builder's record; every line also recurs once per epoch and in replays, so counting
occurrences in the files would call every line duplicated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sweep.demo.world import chunk_path
from sweep.demo.stream import read_origin_record
from sweep.exposures.kernel import build_probe_index, scan_chunk
from sweep.landed.reader import open_output


def first_files(tokens: np.ndarray, prompt_len: int, data_dir: Path, chunks: int) -> np.ndarray:
    """int64[n]: per probe (``tokens``: int[n, k + l]), the first of chunk files 0..chunks-1 holding its
    k + l ids anywhere in a line, or -1."""
    index = build_probe_index(tokens, prompt_len)
    first = np.full(len(tokens), -1, dtype=np.int64)
    for chunk in reversed(range(chunks)):
        path = chunk_path(data_dir, chunk)
        found = scan_chunk([path.read_bytes()], index, path.name)
        first[found.probe[found.window_count > 0]] = chunk
    return first


def sampled_lines(output: Path, data_dir: Path, chunks: int, prompt_len: int) -> pl.DataFrame:
    """Per sampled line of ``output``: ``chunk, row, first_file`` (the first file holding its k + l ids) and
    ``duplicated`` (its corpus row is a planted copy or has one)."""
    probes = open_output(output).probes().collect()
    width = probes["tokens"].list.len().max()
    tokens = probes["tokens"].list.to_array(width).to_numpy().astype(np.int64)
    record = read_origin_record(data_dir)
    copies = record.group_by("original_chunk", "original_row").agg(
        corpus_rows=pl.struct("corpus_chunk", "corpus_row").n_unique())
    duplicated = record.join(copies, on=["original_chunk", "original_row"]).select(
        "chunk", "row", duplicated=pl.col("corpus_rows") > 1)
    return probes.select("chunk", "row").with_columns(
        first_file=pl.Series(first_files(tokens, prompt_len, data_dir, chunks), dtype=pl.Int32)).join(
        duplicated, on=["chunk", "row"], how="left")


def same_age_means(scored: pl.DataFrame) -> tuple[float, float]:
    """(mean score of the duplicated lines, mean score of the unique lines first seen in the same files,
    weighted as the duplicated ones are). ``scored``: one checkpoint's sequences joined with sampled_lines.
    Older rows are sampled more often (every later file replays them) and score lower, and duplicated rows
    are older on the whole (their first copy counts), so a plain mean over all unique lines compares ages."""
    unique = scored.filter(~pl.col("duplicated")).group_by("first_file").agg(unique=pl.col("score").mean())
    duplicated = scored.filter("duplicated").join(unique, on="first_file", how="left")
    return duplicated["score"].mean(), duplicated["unique"].mean()
