"""ResultStore: the landed dataset under `<output>/`, written crash-safely by one process.

Layout (see docs/architecture.md for the column contract):

    <output>/manifest.json                       identity, spec, one entry per run
    <output>/sequences/ckpt=<c>/cell-<j:05d>.parquet   one file per landed cell ...
    <output>/sequences/ckpt=<c>/part-0.parquet         ... merged by compact_checkpoint
    <output>/cells/ckpt=<c>/cell-<j:05d>.parquet       one summary row per cell, same two forms
    <output>/failures/ckpt=<c>-chunk=<j>.json          a cell that failed after all retries
    <output>/_tmp/                                     temp files and compaction staging

Guarantees, for a single writer that may be killed at any instruction:
- Every file reaches its final name by `os.replace`/`os.rename` from `_tmp/` after an fsync, so a
  reader of `sequences/` or `cells/` never sees a partial file.
- The cell record (`cells/`) is the commit point of a cell: it lands after the cell's sequences.
  `recover()` deletes sequence files whose cell record never landed, so after recovery a cell is
  either fully there or absent. (A concurrent reader can see a cell's sequences for the few
  milliseconds between the two renames.)
- Writing a cell that is already done is a no-op: nothing is ever duplicated.
- Compaction swaps whole partition directories; `recover()` rolls an interrupted swap forward or
  back, so readers get either the old files or the merged one, never both, never neither.

Readers: `pl.scan_parquet("<output>/sequences", hive_schema={"ckpt": pl.Int32})` yields `ckpt` as
an Int32 column (checked with polars 2.1: without `hive_schema` it is inferred as Int64).
`sequences()` / `cells()` return exactly that, with `ckpt` first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import polars as pl

MANIFEST_FORMAT = 1

SEQUENCE_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),
    "source": pl.String(),
    "matches": pl.Int16(),  # null in extractable mode
    "score": pl.Float32(),  # matches / l; null in extractable mode
    "full_match": pl.Boolean(),
    "prefix_match": pl.Int16(),
    "match_mask": pl.Binary(),  # packed bits, bit i = generated position i, little bit order
    "nll": pl.Float32(),  # mean teacher-forced NLL of the true continuation, nats/token
    "tf_accuracy": pl.Float32(),  # teacher-forced next-token accuracy
}
# Columns a caller may leave out; they land as nulls.
OPTIONAL_SEQUENCE_COLUMNS = frozenset({"matches", "score", "match_mask", "nll", "tf_accuracy"})

CELL_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "n": pl.Int32(),
    "score": pl.Float64(),
    "full_match_rate": pl.Float64(),
    "mean_prefix_match": pl.Float64(),
    "nll": pl.Float64(),
    "tf_accuracy": pl.Float64(),
    "seen": pl.Boolean(),  # chunk <= ckpt: checkpoint c was saved after training on chunks 0..c
    "seconds": pl.Float64(),  # wall time spent scoring the cell
    "sequences_per_s": pl.Float64(),
    "device": pl.String(),
    "dtype": pl.String(),
    "batch_size": pl.Int32(),
    "attempts": pl.Int32(),
    "finished_at": pl.String(),  # UTC ISO 8601
}
REQUIRED_CELL_INFO = ("seconds", "device", "dtype", "batch_size")

TABLES = ("sequences", "cells")
COMPACTED_NAME = "part-0.parquet"
_PARTITION = re.compile(r"^ckpt=(-?\d+)$")
_CELL_FILE = re.compile(r"^cell-(\d+)\.parquet$")
_FAILURE_FILE = re.compile(r"^ckpt=(-?\d+)-chunk=(-?\d+)\.json$")
_STAGING_PREFIX = "compact-"


class StoreMismatchError(ValueError):
    """The output directory holds results of a different sweep identity."""


def identity_hash(identity: dict) -> str:
    """sha256 hex digest of the identity's canonical JSON (sorted keys)."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def identity_differences(old: dict, new: dict) -> list[str]:
    """Lines like `memorization.prompt_len: 32 -> 16`, one per differing leaf key."""
    # Round-trip through JSON so tuples vs lists or Paths vs strings do not count as changes.
    old_flat = _flatten(json.loads(json.dumps(old, default=str)))
    new_flat = _flatten(json.loads(json.dumps(new, default=str)))
    absent = "<absent>"
    lines = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        before, after = old_flat.get(key, absent), new_flat.get(key, absent)
        if before != after:
            lines.append(f"{key}: {json.dumps(before) if before is not absent else absent}"
                         f" -> {json.dumps(after) if after is not absent else absent}")
    return lines


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    """Make a rename/unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_tree(path: Path) -> None:
    """Delete a directory tree file by file (a crash midway leaves a smaller tree, never a mess)."""
    if not path.exists():
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(Path(entry.path))
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def _conform_sequences(sequences: pl.DataFrame, ckpt: int, chunk: int) -> pl.DataFrame:
    """Cast `sequences` to SEQUENCE_SCHEMA (column order included), or raise naming the column."""
    where = f"sequences for ckpt {ckpt} chunk {chunk}"
    if "ckpt" in sequences.columns:
        # The checkpoint lives in the partition path; a stray column must at least agree with it.
        if not (sequences["ckpt"] == ckpt).all():
            raise ValueError(f"{where}: column 'ckpt' holds values other than {ckpt}")
        sequences = sequences.drop("ckpt")
    extra = [name for name in sequences.columns if name not in SEQUENCE_SCHEMA]
    if extra:
        raise ValueError(f"{where}: unexpected column(s) {extra}; expected {list(SEQUENCE_SCHEMA)}")
    missing = [n for n in SEQUENCE_SCHEMA if n not in sequences.columns and n not in OPTIONAL_SEQUENCE_COLUMNS]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}")
    columns = []
    for name, dtype in SEQUENCE_SCHEMA.items():
        if name not in sequences.columns:
            columns.append(pl.Series(name, [None] * sequences.height, dtype=dtype))
            continue
        series = sequences[name]
        if isinstance(series.dtype, pl.Array):  # packed match_mask as uint8[B, w]
            series = series.cast(pl.List(series.dtype.inner))
        try:
            columns.append(series.cast(dtype, strict=True))
        except Exception as error:  # polars raises several exception types for bad casts
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{where}: column '{name}' ({series.dtype}) cannot be cast to {dtype}: {first_line}") from None
    conformed = pl.DataFrame(columns)
    if conformed.height and not (conformed["chunk"] == chunk).all():
        raise ValueError(f"{where}: column 'chunk' holds values other than {chunk}")
    return conformed


def summarize_cell(ckpt: int, chunk: int, sequences: pl.DataFrame, info: dict) -> dict:
    """One cell record (CELL_SCHEMA keys, plus `ckpt` first) from conformed sequences + run info.

    info: `seconds` (float, wall time for the cell), `device`, `dtype`, `batch_size` (required);
    `attempts` (default 1) and `finished_at` (default now, UTC ISO) optional.
    """
    missing = [key for key in REQUIRED_CELL_INFO if key not in info]
    if missing:
        raise ValueError(f"cell info for ckpt {ckpt} chunk {chunk}: missing key(s) {missing}")
    n = sequences.height
    means = sequences.select(
        pl.col("score").cast(pl.Float64).mean(),
        pl.col("full_match").cast(pl.Float64).mean().alias("full_match_rate"),
        pl.col("prefix_match").cast(pl.Float64).mean().alias("mean_prefix_match"),
        pl.col("nll").cast(pl.Float64).mean(),
        pl.col("tf_accuracy").cast(pl.Float64).mean(),
    ).row(0, named=True)
    seconds = float(info["seconds"])
    return {
        "ckpt": ckpt,
        "chunk": chunk,
        "n": n,
        **means,
        "seen": chunk <= ckpt,
        "seconds": seconds,
        "sequences_per_s": n / seconds if seconds > 0 else None,
        "device": str(info["device"]),
        "dtype": str(info["dtype"]),
        "batch_size": int(info["batch_size"]),
        "attempts": int(info.get("attempts", 1)),
        "finished_at": str(info.get("finished_at") or _utc_now()),
    }


class ResultStore:
    """The landed results of one sweep identity under `output`; see the module docstring."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.manifest_path = self.output / "manifest.json"
        self.tmp_dir = self.output / "_tmp"
        self.failures_dir = self.output / "failures"
        self._done: set[tuple[int, int]] | None = None  # cache; valid because we are the only writer

    # ---- paths -------------------------------------------------------------------------------

    def partition_dir(self, table: str, ckpt: int) -> Path:
        return self.output / table / f"ckpt={ckpt}"

    def cell_file(self, table: str, ckpt: int, chunk: int) -> Path:
        return self.partition_dir(table, ckpt) / f"cell-{chunk:05d}.parquet"

    def failure_file(self, ckpt: int, chunk: int) -> Path:
        return self.failures_dir / f"ckpt={ckpt}-chunk={chunk}.json"

    def _partitions(self, table: str) -> dict[int, Path]:
        """ckpt -> partition directory, for every `ckpt=<c>` directory of `table`."""
        root = self.output / table
        if not root.is_dir():
            return {}
        found = {}
        for entry in root.iterdir():
            match = _PARTITION.match(entry.name)
            if match and entry.is_dir():
                found[int(match.group(1))] = entry
        return found

    # ---- atomic writes -----------------------------------------------------------------------

    def _temp_path(self, stem: str, suffix: str) -> Path:
        os.makedirs(self.tmp_dir, exist_ok=True)
        return self.tmp_dir / f"{stem}.{uuid.uuid4().hex}{suffix}"

    def _land(self, temp: Path, final: Path) -> None:
        """fsync'd temp file -> final name, atomically and durably."""
        os.makedirs(final.parent, exist_ok=True)
        os.replace(temp, final)
        _fsync_dir(final.parent)

    def _write_parquet_atomic(self, frame: pl.DataFrame, final: Path) -> None:
        temp = self._temp_path(final.stem, ".parquet")
        with open(temp, "wb") as handle:
            frame.write_parquet(handle, statistics=True)
            handle.flush()
            os.fsync(handle.fileno())
        self._land(temp, final)

    def _write_json_atomic(self, payload: dict, final: Path) -> None:
        temp = self._temp_path(final.stem, ".json")
        with open(temp, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._land(temp, final)

    # ---- manifest ----------------------------------------------------------------------------

    def read_manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.manifest_path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        for key in ("format", "identity", "runs"):
            if key not in manifest:
                raise ValueError(f"{self.manifest_path}: missing key '{key}'")
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"{self.manifest_path}: format {manifest['format']!r} is not supported "
                             f"(this memsweep writes format {MANIFEST_FORMAT})")
        return manifest

    def open(self, identity: dict, spec: dict, run_info: dict) -> None:
        """Create the store, or check `identity` against the existing one; record this run.

        Recovers from any interrupted operation first. Raises StoreMismatchError if the output
        holds a different identity. The top-level `spec` becomes this run's spec (non-identity
        settings such as batch size may change between runs); `run_info` is appended to `runs`
        with `started_at` (UTC ISO) added if absent.
        """
        run = {"started_at": _utc_now(), **run_info}
        if self.manifest_path.exists():
            manifest = self.read_manifest()
            if identity_hash(manifest["identity"]) != identity_hash(identity):
                changes = identity_differences(manifest["identity"], identity)
                raise StoreMismatchError(
                    f"{self.output} holds results of a different sweep ({'; '.join(changes) or 'identity changed'}); "
                    f"use a new output directory for this spec")
            self.recover()
            manifest["spec"] = spec
            manifest["runs"].append(run)
        else:
            leftovers = [p.name for p in self.output.iterdir() if p.name != self.tmp_dir.name] \
                if self.output.is_dir() else []
            if leftovers:
                raise ValueError(f"{self.output} is not empty and has no manifest.json "
                                 f"(holds {sorted(leftovers)[:5]}); use an empty or new output directory")
            os.makedirs(self.output, exist_ok=True)
            self.recover()
            manifest = {"format": MANIFEST_FORMAT, "identity": identity,
                        "identity_hash": identity_hash(identity), "spec": spec, "runs": [run]}
        # The manifest lands before any result, so a directory with results always has one.
        self._write_json_atomic(manifest, self.manifest_path)

    # ---- recovery ----------------------------------------------------------------------------

    def recover(self) -> None:
        """Bring the directory back to a consistent state after a crash at any point.

        1. An interrupted compaction swap is rolled forward (live dir missing -> move the new
           one in, or the old one back) or discarded (live dir present: it is complete).
        2. Leftover temp files are deleted.
        3. Sequence files whose cell record never landed are deleted (the cell is redone).
        4. Failure records of cells that have since landed are deleted.
        """
        self._done = None
        if not self.tmp_dir.is_dir():
            staging_dirs = []
        else:
            staging_dirs = [p for p in self.tmp_dir.iterdir() if p.is_dir() and p.name.startswith(_STAGING_PREFIX)]
        for staging in staging_dirs:
            table, ckpt = self._parse_staging(staging)
            live = self.partition_dir(table, ckpt)
            if not live.exists():
                for candidate in ("new", "old"):
                    if (staging / candidate).is_dir():
                        os.makedirs(live.parent, exist_ok=True)
                        os.rename(staging / candidate, live)
                        _fsync_dir(live.parent)
                        break
            _remove_tree(staging)
        if self.tmp_dir.is_dir():
            for entry in self.tmp_dir.iterdir():
                if entry.is_dir():
                    _remove_tree(entry)
                else:
                    os.unlink(entry)
        done = self.done_cells()
        for ckpt, partition in self._partitions("sequences").items():
            for entry in partition.iterdir():
                match = _CELL_FILE.match(entry.name)
                if match and (ckpt, int(match.group(1))) not in done:
                    os.unlink(entry)
        for failure in self._failure_files():
            if failure[0] in done:
                os.unlink(failure[1])

    def _staging_dir(self, table: str, ckpt: int) -> Path:
        return self.tmp_dir / f"{_STAGING_PREFIX}{table}-{ckpt}"

    def _parse_staging(self, staging: Path) -> tuple[str, int]:
        body = staging.name[len(_STAGING_PREFIX):]
        table, _, ckpt = body.rpartition("-")
        if table not in TABLES or not ckpt.lstrip("-").isdigit():
            raise ValueError(f"{staging}: unrecognised compaction staging directory")
        return table, int(ckpt)

    # ---- cells -------------------------------------------------------------------------------

    def done_cells(self) -> set[tuple[int, int]]:
        """(ckpt, chunk) of every cell whose record has landed (per-cell file or compacted)."""
        if self._done is not None:
            return set(self._done)
        done = set()
        for ckpt, partition in self._partitions("cells").items():
            for entry in partition.iterdir():
                match = _CELL_FILE.match(entry.name)
                if match:
                    done.add((ckpt, int(match.group(1))))
                elif entry.name == COMPACTED_NAME:
                    chunks = pl.read_parquet(entry, columns=["chunk"])["chunk"]
                    done.update((ckpt, int(chunk)) for chunk in chunks)
        self._done = done
        return set(done)

    def read_cell(self, ckpt: int, chunk: int) -> dict | None:
        """The landed record of one cell (with `ckpt`), or None."""
        frame = self.cells().filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk)).collect()
        return frame.row(0, named=True) if frame.height else None

    def write_cell(self, ckpt: int, chunk: int, sequences: pl.DataFrame, info: dict) -> dict:
        """Land one cell: its sequences file, then its cell record (the commit point).

        sequences: one row per scored sequence, columns of SEQUENCE_SCHEMA (`ckpt` optional, the
        nullable score columns optional; `match_mask` may be bytes, List(UInt8) or Array(UInt8)).
        info: see summarize_cell. Returns the cell record (with `ckpt`). A cell that has already
        landed is left as it is and its existing record returned: never a duplicate.
        """
        if (ckpt, chunk) in self.done_cells():
            self._clear_failure(ckpt, chunk)
            return self.read_cell(ckpt, chunk)
        conformed = _conform_sequences(sequences, ckpt, chunk)
        record = summarize_cell(ckpt, chunk, conformed, info)
        cell_row = pl.DataFrame([{k: record[k] for k in CELL_SCHEMA}], schema=CELL_SCHEMA)
        self._write_parquet_atomic(conformed, self.cell_file("sequences", ckpt, chunk))
        self._write_parquet_atomic(cell_row, self.cell_file("cells", ckpt, chunk))
        self._done.add((ckpt, chunk))
        self._clear_failure(ckpt, chunk)
        return record

    # ---- failures ----------------------------------------------------------------------------

    def record_failure(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        """Remember that a cell failed after `attempts` tries; it stays to-do for the next run."""
        payload = {"ckpt": ckpt, "chunk": chunk, "error": str(error), "attempts": int(attempts),
                   "failed_at": _utc_now()}
        self._write_json_atomic(payload, self.failure_file(ckpt, chunk))

    def _failure_files(self) -> list[tuple[tuple[int, int], Path]]:
        if not self.failures_dir.is_dir():
            return []
        found = []
        for entry in self.failures_dir.iterdir():
            match = _FAILURE_FILE.match(entry.name)
            if match:
                found.append(((int(match.group(1)), int(match.group(2))), entry))
        return sorted(found)

    def failures(self) -> list[dict]:
        """Failure records (ckpt, chunk, error, attempts, failed_at), ordered by (ckpt, chunk)."""
        records = []
        for _, path in self._failure_files():
            try:
                records.append(json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        return records

    def _clear_failure(self, ckpt: int, chunk: int) -> None:
        path = self.failure_file(ckpt, chunk)
        if path.exists():
            os.unlink(path)
            _fsync_dir(path.parent)

    # ---- compaction --------------------------------------------------------------------------

    def compact_checkpoint(self, ckpt: int) -> None:
        """Merge the per-cell files of `ckpt` (and any earlier part-0) into one part-0 per table.

        Only cells whose record landed are merged; rows are sorted by (chunk, row). Each table's
        partition directory is swapped whole: build `new` in _tmp, rename live -> `old`, rename
        `new` -> live, delete `old`. recover() finishes or rolls back any step.
        """
        done_chunks = {chunk for c, chunk in self.done_cells() if c == ckpt}
        if not done_chunks:
            return
        for table, schema, order in (("sequences", SEQUENCE_SCHEMA, ["chunk", "row"]),
                                     ("cells", CELL_SCHEMA, ["chunk"])):
            live = self.partition_dir(table, ckpt)
            cell_files = sorted(p for p in live.iterdir() if _CELL_FILE.match(p.name)) if live.is_dir() else []
            if not cell_files:
                continue  # already compacted (e.g. an earlier, interrupted call got this far)
            merged = self._merge_partition(live, cell_files, done_chunks, schema).sort(order)
            self._swap_partition(table, ckpt, merged)

    @staticmethod
    def _merge_partition(live: Path, cell_files: list[Path], done_chunks: set[int],
                         schema: dict[str, pl.DataType]) -> pl.DataFrame:
        # Sequence files of cells whose record never landed are left out (they vanish with the
        # old directory); recover() would delete them anyway.
        fresh_chunks = sorted(int(_CELL_FILE.match(path.name).group(1)) for path in cell_files)
        fresh_chunks = [chunk for chunk in fresh_chunks if chunk in done_chunks]
        fresh = [pl.read_parquet(live / f"cell-{chunk:05d}.parquet") for chunk in fresh_chunks]
        frames = fresh
        compacted = live / COMPACTED_NAME
        if compacted.exists():
            # A chunk present in both forms would be a duplicate; the per-cell file wins.
            earlier = pl.read_parquet(compacted).filter(~pl.col("chunk").is_in(fresh_chunks))
            frames = [earlier, *fresh]
        return pl.concat([frame.cast(schema) for frame in frames], how="vertical")

    def _swap_partition(self, table: str, ckpt: int, merged: pl.DataFrame) -> None:
        live = self.partition_dir(table, ckpt)
        staging = self._staging_dir(table, ckpt)
        _remove_tree(staging)
        building, new, old = staging / "building", staging / "new", staging / "old"
        os.makedirs(building)
        with open(building / COMPACTED_NAME, "wb") as handle:
            merged.write_parquet(handle, statistics=True)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(building)
        # `new` exists only once complete, which is what lets recover() trust it.
        os.rename(building, new)
        _fsync_dir(staging)
        os.rename(live, old)
        os.rename(new, live)
        _fsync_dir(live.parent)
        _remove_tree(staging)

    # ---- readers -----------------------------------------------------------------------------

    def _scan(self, table: str, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        root = self.output / table
        if not root.is_dir():
            return pl.LazyFrame(schema={"ckpt": pl.Int32(), **schema})
        # Passing `schema` keeps a table with no files yet scannable (polars fails otherwise).
        frame = pl.scan_parquet(root, schema=schema, hive_schema={"ckpt": pl.Int32},
                                hive_partitioning=True)
        return frame.select("ckpt", *schema)

    def sequences(self) -> pl.LazyFrame:
        """One row per (ckpt, chunk, row): `ckpt` Int32 followed by SEQUENCE_SCHEMA."""
        return self._scan("sequences", SEQUENCE_SCHEMA)

    def cells(self) -> pl.LazyFrame:
        """One row per landed cell: `ckpt` Int32 followed by CELL_SCHEMA."""
        return self._scan("cells", CELL_SCHEMA)
