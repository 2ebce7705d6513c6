"""Published memorization labels, read from a local Parquet file or folder or from a Hub dataset's split.

Two published forms are read (../shared/FACTS.md; EleutherAI's dataset cards):

- a **memorized-only list** (`EleutherAI/pythia-memorized-evals`, one split per model, e.g. `deduped.70m`): `index`
  (int64, the sequence's position in the training stream), `tokens` (its first 64 ids) and `__index_level_0__` (a
  pandas export's leftover, equal to `index`; ignored). Only memorized sequences are listed: the list was made over
  every sequence of the stream, so a sequence absent from it counts as not memorized;
- a **labelled sample** (`EleutherAI/pile-duped-pythia-random-sampled`): `index`, `tokens` (uint16) and
  `is_memorized` (bool); only the listed sequences are labelled.

Both come out as one frame: `index` Int64, `tokens` List(UInt32), `is_memorized` Boolean (all true for a list).

A Hub dataset is read at the commit its revision resolves to when it is read (the commit is kept in
`PublishedLabels.source`, as probe sets keep theirs). Its split's Parquet files are found as the Hub lays them out:
files named `<split>-NNNNN-of-NNNNN[-hash].parquet` in any folder (what `datasets.push_to_hub` writes, e.g.
`data/deduped.70m-00000-of-00001-<hash>.parquet`), or every Parquet file under a folder named `<split>` (the
`refs/convert/parquet` layout, `default/<split>/0000.parquet`). Downloads go through huggingface_hub's cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import huggingface_hub
import polars as pl

from actors.protocol import one_line
from sweep.errors import MemsweepError

LabelsForm = Literal["memorized-only", "labelled"]
LABELS_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),  # the sequence's global position in the training stream
    "tokens": pl.List(pl.UInt32()),  # its first ids as published (64 for Pythia's)
    "is_memorized": pl.Boolean(),  # true for every row of a memorized-only list
}
IGNORED_COLUMNS = ("__index_level_0__",)


class LabelsError(MemsweepError):
    """Labels that cannot be read: a missing file or split, a column missing or of the wrong type (one line)."""


@dataclass(frozen=True)
class PublishedLabels:
    frame: pl.DataFrame  # LABELS_SCHEMA, one row per labelled sequence
    form: LabelsForm
    source: str  # where they were read: a path, or "repo@commit:split"
    files: tuple[str, ...]  # the Parquet files read (local paths, or paths in the Hub repository)

    def describe(self) -> str:
        what = "memorized-only list" if self.form == "memorized-only" else "labelled sample"
        return f"{self.source}: a {what} of {self.frame.height:,} sequences"


def read_labels(labels: str | Path, split: str | None = None, revision: str = "main") -> PublishedLabels:
    """The labels at `labels`: a local Parquet file or folder (of Parquet files, read in name order), else a Hub
    dataset id whose `split` is read at `revision` pinned to its commit."""
    path = Path(labels).expanduser()
    if path.exists():
        if split is not None:
            raise LabelsError(f"--split {split}: {path} is a local file or folder; a split names part of a Hub dataset")
        files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
        if not files:
            raise LabelsError(f"{path}: no .parquet files in this folder")
        return _labels_from_files([str(file) for file in files], str(path), tuple(str(file) for file in files))
    if "/" not in str(labels) or str(labels).startswith((".", "/")):
        raise LabelsError(f"{labels}: no such file or folder (nor a Hub dataset id such as "
                          "EleutherAI/pythia-memorized-evals)")
    if split is None:
        raise LabelsError(f"{labels}: a Hub dataset needs --split (e.g. deduped.70m)")
    return _hub_labels(str(labels), split, revision)


def split_files(repo_files: list[str], split: str) -> list[str]:
    """The Parquet files of `split` among a dataset repository's files (see the module docstring), in name order."""
    named = re.compile(rf"(?:.*/)?{re.escape(split)}-\d{{5}}-of-\d{{5}}(?:-[0-9a-zA-Z]+)?\.parquet")
    found = [name for name in repo_files if named.fullmatch(name)]
    if not found:
        found = [name for name in repo_files if name.endswith(".parquet") and f"/{split}/" in f"/{name}"]
    return sorted(found)


def _hub_labels(repo: str, split: str, revision: str) -> PublishedLabels:
    api = huggingface_hub.HfApi()
    try:
        info = api.repo_info(repo, revision=revision, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 - any Hub error names the dataset and says why, on one line
        raise LabelsError(f"dataset {repo} at {revision}: {one_line(error, 'first')}") from None
    names = [sibling.rfilename for sibling in info.siblings or []]
    files = split_files(names, split)
    if not files:
        splits = sorted({re.sub(r"-\d{5}-of-\d{5}.*$", "", name.rsplit("/", 1)[-1]) for name in names
                         if name.endswith(".parquet")})
        raise LabelsError(f"dataset {repo} at {info.sha[:12]}: no Parquet files for split {split!r} "
                          f"(splits found: {', '.join(splits) or 'none'})")
    local = []
    for name in files:
        try:
            local.append(huggingface_hub.hf_hub_download(repo, name, revision=info.sha, repo_type="dataset"))
        except Exception as error:  # noqa: BLE001
            raise LabelsError(f"dataset {repo} at {info.sha[:12]}: {name}: {one_line(error, 'first')}") from None
    return _labels_from_files(local, f"{repo}@{info.sha[:12]}:{split}", tuple(files))


def _labels_from_files(paths: list[str], source: str, files: tuple[str, ...]) -> PublishedLabels:
    frames = []
    for path in paths:
        try:
            frames.append(pl.read_parquet(path))
        except Exception as error:  # noqa: BLE001 - polars and pyarrow raise several types for a bad file
            raise LabelsError(f"{path}: not a readable Parquet file ({one_line(error, 'first')})") from None
    columns = {name for frame in frames for name in frame.columns} - set(IGNORED_COLUMNS)
    form: LabelsForm = "labelled" if "is_memorized" in columns else "memorized-only"
    for path, frame in zip(paths, frames):
        missing = [name for name in ("index", "tokens", *(["is_memorized"] if form == "labelled" else []))
                   if name not in frame.columns]
        if missing:
            raise LabelsError(f"{path}: no column {missing[0]!r} (a labels file holds index, tokens and, for a "
                              f"labelled sample, is_memorized; found {', '.join(frame.columns)})")
    try:
        frame = pl.concat([_conformed(frame, form) for frame in frames])
    except pl.exceptions.PolarsError as error:
        raise LabelsError(f"{source}: {one_line(error, 'first')}") from None
    if frame["index"].null_count() or frame["tokens"].null_count():
        raise LabelsError(f"{source}: a row without an index or tokens")
    repeated = frame.filter(pl.col("index").is_duplicated())
    if repeated.height:
        raise LabelsError(f"{source}: index {repeated['index'][0]} is listed more than once")
    return PublishedLabels(frame.sort("index"), form, source, files)


def _conformed(frame: pl.DataFrame, form: LabelsForm) -> pl.DataFrame:
    """One file's rows as LABELS_SCHEMA; a value that is not a token id (negative, too large) or not a bool fails."""
    memorized = pl.col("is_memorized").cast(pl.Boolean, strict=True) if form == "labelled" else pl.lit(True)
    return frame.select(pl.col("index").cast(pl.Int64, strict=True),
                        pl.col("tokens").cast(pl.List(pl.UInt32), strict=True),
                        memorized.alias("is_memorized"))
