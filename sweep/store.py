"""ResultStore: the landed dataset under `<output>/`, written crash-safely by one process, read through a ledger.

Layout (docs/architecture.md gives the column contract):

    <output>/manifest.json                          identity, spec, one entry per run
    <output>/ledger/ckpt=<c>.json                   the commit record of checkpoint c: its landed files
                                                    (bytes, sha256, rows, chunks) and its pin (model commit,
                                                    weights fingerprint, stored dtype)
    <output>/ledger/probes.json                     the landed probe sets and their source identity (pins)
    <output>/sequences/ckpt=<c>/batch-NNNNNN.parquet    one row per (ckpt, chunk, row) of a landing ...
    <output>/sequences/ckpt=<c>/part-NNNNNN.parquet     ... merged by compact_checkpoint
    <output>/cells/ckpt=<c>/{batch,part}-NNNNNN.parquet one row per cell; same name, same chunks as its twin
    <output>/probes/probe-<chunk:05d>.parquet       the sampled rows of a chunk (tokens included)
    <output>/failures/ckpt=<c>-chunk=<j>.json       a cell that failed after all retries
    <output>/_tmp/                                  temp files

The ledger is the single source of truth. A data file counts only if a ledger lists it, with its size,
sha256 and row count: readers read exactly the listed files (a stray copy in a partition is never data),
`verify()` checks every listed file against its record, and `recover()` deletes files of ours that no
ledger lists (a landing or compaction cut short).

Files come in pairs: a `sequences/` file and the `cells/` file of the same name hold the same chunks, so
the cells a damaged file carried can be removed from both tables and recomputed exactly.

Guarantees, for a single writer (see sweep/writer_lock.py) that may be killed at any instruction:
- Every file reaches its final name by `os.replace` from `_tmp/` after an fsync; a ledger update (also
  temp + fsync + rename) is the commit point of a landing, a compaction or a repair.
- Landing cells that are already done is a no-op: nothing is ever duplicated.
- Compaction writes the merged pair under a new name, commits the ledger, then deletes the old files, so a
  reader gets either the old files or the merged ones, never both.

Cost at 360 x 360 x 1000: 360 ledgers of a few KB (the per-cell files of a checkpoint are merged once it is
finished, and whenever more than COMPACT_AFTER_FILES pairs pile up, so a ledger lists at most ~65 pairs);
hashing every landed file (about 1.4 GB) takes a few seconds, which `memsweep run` spends once per run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

MANIFEST_FORMAT = 2
LEDGER_FORMAT = 1
# A checkpoint's loose landing files are merged once this many pairs have piled up (and when it finishes).
COMPACT_AFTER_FILES = 64

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
    "generated": pl.List(pl.UInt32()),  # the model's l greedy tokens (memorization.keep_generated)
}
# Columns a caller may leave out; they land as nulls.
OPTIONAL_SEQUENCE_COLUMNS = frozenset({"matches", "score", "match_mask", "nll", "tf_accuracy", "generated"})

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
    "dtype": pl.String(),  # the compute dtype
    "batch_size": pl.Int32(),
    "attempts": pl.Int32(),
    "finished_at": pl.String(),  # UTC ISO 8601
    "model_revision": pl.String(),  # the revision named by the spec (Hub branch, or local sub-folder)
    "model_commit": pl.String(),  # the Hub commit it was pinned to (null for a local folder)
    "weights_fingerprint": pl.String(),  # actors.loading.weights_fingerprint of the loaded weights
    "stored_dtype": pl.String(),  # the dtype the checkpoint is stored in (Amber: float32 .bin, main bf16)
    "data_file": pl.String(),  # the chunk file inside the data source
    "data_sha256": pl.String(),  # content identity of the chunk file the probe set was sampled from
}
REQUIRED_CELL_INFO = ("seconds", "device", "dtype", "batch_size")
OPTIONAL_CELL_INFO = ("model_revision", "model_commit", "weights_fingerprint", "stored_dtype", "data_file",
                      "data_sha256")

PROBE_SCHEMA: dict[str, pl.DataType] = {
    "chunk": pl.Int32(),
    "row": pl.Int64(),  # 0-based line number in the chunk file
    "source": pl.String(),
    "tokens": pl.List(pl.UInt32()),  # the first k + l token ids: prompt, then true continuation
}

TABLES = ("sequences", "cells")
_PARTITION = re.compile(r"^ckpt=(-?\d+)$")
_DATA_FILE = re.compile(r"^(batch|part)-(\d{6})\.parquet$")
_PROBE_FILE = re.compile(r"^probe-(\d{5,})\.parquet$")
_LEDGER_FILE = re.compile(r"^ckpt=(-?\d+)\.json$")
_FAILURE_FILE = re.compile(r"^ckpt=(-?\d+)-chunk=(-?\d+)\.json$")


class StoreMismatchError(ValueError):
    """The output directory holds results of a different sweep identity."""


class DamagedOutputError(ValueError):
    """A landed file does not match its ledger record (missing, truncated, altered); the message names it."""


class PinMismatchError(ValueError):
    """A landing would mix two commits / fingerprints / data files under one checkpoint or chunk."""


@dataclass(frozen=True)
class LandedCell:
    """One scored cell as the driver hands it to `write_cells`."""

    chunk: int
    sequences: pl.DataFrame  # SEQUENCE_SCHEMA columns (`ckpt` optional; nullable score columns optional)
    info: dict  # see summarize_cell


@dataclass(frozen=True)
class FileRecord:
    """A landed file as its ledger records it; `path` is relative to the output."""

    path: str
    bytes: int
    sha256: str
    rows: int


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


def file_sha256(path: Path, block: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


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
        if isinstance(series.dtype, pl.Array):  # packed match_mask as uint8[B, w], generated as [B, l]
            series = series.cast(pl.List(series.dtype.inner))
        try:
            columns.append(series.cast(dtype, strict=True))
        except Exception as error:  # polars raises several exception types for bad casts
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{where}: column '{name}' ({series.dtype}) cannot be cast to {dtype}: {first_line}") from None
    conformed = pl.DataFrame(columns)
    if conformed.height and not (conformed["chunk"] == chunk).all():
        raise ValueError(f"{where}: column 'chunk' holds values other than {chunk}")
    if conformed["row"].is_duplicated().any():
        raise ValueError(f"{where}: column 'row' holds a row more than once")
    return conformed


def summarize_cell(ckpt: int, chunk: int, sequences: pl.DataFrame, info: dict) -> dict:
    """One cell record (CELL_SCHEMA keys, plus `ckpt` first) from conformed sequences + run info.

    info: `seconds` (float, wall time for the cell), `device`, `dtype`, `batch_size` (required);
    `attempts` (default 1), `finished_at` (default now, UTC ISO) and the provenance keys OPTIONAL_CELL_INFO
    (default null) optional.
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
        **{key: None if info.get(key) is None else str(info[key]) for key in OPTIONAL_CELL_INFO},
    }


def _empty_ledger(ckpt: int) -> dict:
    return {"format": LEDGER_FORMAT, "ckpt": ckpt, "next_file": 0, "pin": None, "files": []}


class ResultStore:
    """The landed results of one sweep identity under `output`; see the module docstring."""

    def __init__(self, output: Path):
        self.output = Path(output)
        self.manifest_path = self.output / "manifest.json"
        self.tmp_dir = self.output / "_tmp"
        self.ledger_dir = self.output / "ledger"
        self.failures_dir = self.output / "failures"
        self.probes_dir = self.output / "probes"
        self._ledgers: dict[int, dict] | None = None  # cache; valid because we are the only writer

    # ---- paths -------------------------------------------------------------------------------

    def partition_dir(self, table: str, ckpt: int) -> Path:
        return self.output / table / f"ckpt={ckpt}"

    def ledger_path(self, ckpt: int) -> Path:
        return self.ledger_dir / f"ckpt={ckpt}.json"

    def failure_file(self, ckpt: int, chunk: int) -> Path:
        return self.failures_dir / f"ckpt={ckpt}-chunk={chunk}.json"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.output).as_posix()

    # ---- atomic writes -----------------------------------------------------------------------

    def _temp_path(self, stem: str, suffix: str) -> Path:
        os.makedirs(self.tmp_dir, exist_ok=True)
        return self.tmp_dir / f"{stem}.{uuid.uuid4().hex}{suffix}"

    def _land_bytes(self, payload: bytes, final: Path) -> None:
        """Write `payload` to `final` atomically and durably: temp file, fsync, rename, fsync the folder."""
        temp = self._temp_path(final.stem, final.suffix)
        with open(temp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.makedirs(final.parent, exist_ok=True)
        os.replace(temp, final)
        _fsync_dir(final.parent)

    def _land_parquet(self, frame: pl.DataFrame, final: Path) -> FileRecord:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, statistics=True)
        payload = buffer.getvalue()
        self._land_bytes(payload, final)
        return FileRecord(self._relative(final), len(payload), hashlib.sha256(payload).hexdigest(), frame.height)

    def _write_json_atomic(self, payload: dict, final: Path) -> None:
        text = json.dumps(payload, indent=1, sort_keys=False, default=str) + "\n"
        self._land_bytes(text.encode(), final)

    # ---- manifest ----------------------------------------------------------------------------

    def read_manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.manifest_path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        except OSError as error:
            raise ValueError(f"{self.manifest_path}: cannot read ({error.strerror})") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{self.manifest_path}: expected a JSON object")
        for key in ("format", "identity", "runs"):
            if key not in manifest:
                raise ValueError(f"{self.manifest_path}: missing key '{key}'")
        if manifest["format"] == 1:
            raise ValueError(f"{self.manifest_path}: written by an older memsweep (format 1, landed files without "
                             "checksums); sweep into a new output directory")
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"{self.manifest_path}: format {manifest['format']!r} is not supported "
                             f"(this memsweep writes format {MANIFEST_FORMAT})")
        return manifest

    def check_identity(self, identity: dict) -> None:
        """Raise StoreMismatchError if the output holds landed results of another identity (no writes)."""
        if not self.manifest_path.exists():
            return
        manifest = self.read_manifest()
        if identity_hash(manifest["identity"]) != identity_hash(identity) and self.has_landed_results():
            changes = identity_differences(manifest["identity"], identity)
            raise StoreMismatchError(
                f"{self.output} holds results of a different sweep ({'; '.join(changes) or 'identity changed'}); "
                f"use a new output directory for this spec")

    def open(self, identity: dict, spec: dict, run_info: dict) -> None:
        """Create the store, or check `identity` against the existing one; record this run.

        Recovers from any interrupted operation first. Raises StoreMismatchError if the output holds
        landed results of a different identity; an output where nothing landed yet (a run that failed
        early) takes the new identity, and its probe sets and failure records are dropped with the old one.
        The top-level `spec` becomes this run's spec (non-identity settings such as batch size may change
        between runs); `run_info` is appended to `runs` with `started_at` (UTC ISO) added if absent.
        """
        run = {"started_at": _utc_now(), **run_info}
        if self.manifest_path.exists():
            self.check_identity(identity)
            manifest = self.read_manifest()
            self.recover()
            if identity_hash(manifest["identity"]) != identity_hash(identity):
                self._forget_unlanded_identity()
                manifest = {"format": MANIFEST_FORMAT, "identity": identity,
                            "identity_hash": identity_hash(identity), "spec": spec, "runs": manifest["runs"]}
            manifest["spec"] = spec
            manifest["runs"].append(run)
        else:
            if self.output.exists() and not self.output.is_dir():
                raise ValueError(f"output {self.output} is a file, not a directory")
            ours = {self.tmp_dir.name, ".memsweep.lock"}
            leftovers = [p.name for p in self.output.iterdir() if p.name not in ours] if self.output.is_dir() else []
            if leftovers:
                raise ValueError(f"{self.output} is not empty and has no manifest.json "
                                 f"(holds {sorted(leftovers)[:5]}); use an empty or new output directory")
            os.makedirs(self.output, exist_ok=True)
            self.recover()
            manifest = {"format": MANIFEST_FORMAT, "identity": identity,
                        "identity_hash": identity_hash(identity), "spec": spec, "runs": [run]}
        # The manifest lands before any result, so a directory with results always has one.
        self._write_json_atomic(manifest, self.manifest_path)

    def record_pins_in_manifest(self) -> None:
        """Copy the pins (checkpoint -> commit, fingerprint, stored dtype; chunk -> file, sha256) into
        manifest.json, for a reader who opens only that file. The ledgers stay the authority."""
        manifest = self.read_manifest()
        manifest["pins"] = {
            "checkpoints": {str(c): pin for c, pin in sorted(self.checkpoint_pins().items())},
            "chunks": {str(c): {key: entry["source"].get(key) for key in ("file", "sha256", "size", "commit")}
                       for c, entry in sorted(self.probe_entries().items())},
        }
        self._write_json_atomic(manifest, self.manifest_path)

    def has_landed_results(self) -> bool:
        return any(ledger["files"] for ledger in self._load_ledgers().values())

    def _forget_unlanded_identity(self) -> None:
        """Drop what an earlier identity left without landing a cell: ledgers, probe sets, failures."""
        for path in [*self._listed_dir(self.ledger_dir), *self._listed_dir(self.probes_dir),
                     *self._listed_dir(self.failures_dir)]:
            os.unlink(path)
        self._ledgers = None

    @staticmethod
    def _listed_dir(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    # ---- ledgers -----------------------------------------------------------------------------

    def _load_ledgers(self) -> dict[int, dict]:
        if self._ledgers is None:
            ledgers = {}
            for path in self._listed_dir(self.ledger_dir):
                match = _LEDGER_FILE.match(path.name)
                if match:
                    ledgers[int(match.group(1))] = self._read_json(path)
            self._ledgers = ledgers
        return self._ledgers

    def ledger(self, ckpt: int) -> dict:
        """Checkpoint `ckpt`'s ledger (a copy): `pin`, `files` [{name, chunks, sequences, cells}], `next_file`."""
        return json.loads(json.dumps(self._load_ledgers().get(ckpt) or _empty_ledger(ckpt)))

    def _commit_ledger(self, ckpt: int, ledger: dict) -> None:
        self._write_json_atomic(ledger, self.ledger_path(ckpt))
        self._load_ledgers()[ckpt] = ledger

    def landed_files(self) -> list[FileRecord]:
        """Every data file a ledger lists (sequences, cells, probes), as recorded."""
        records = []
        for ckpt, ledger in sorted(self._load_ledgers().items()):
            for entry in ledger["files"]:
                for table in TABLES:
                    records.append(FileRecord(**entry[table]))
        for entry in self.probe_entries().values():
            if entry.get("file"):
                records.append(FileRecord(**entry["file"]))
        return records

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DamagedOutputError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}); "
                                     "run `memsweep verify --repair` on the output") from None

    # ---- pins ---------------------------------------------------------------------------------

    def checkpoint_pin(self, ckpt: int) -> dict | None:
        """What checkpoint `ckpt` was pinned to when its first cell landed: model_revision, model_commit,
        weights_fingerprint, stored_dtype (None before any landing)."""
        return self.ledger(ckpt)["pin"]

    def checkpoint_pins(self) -> dict[int, dict]:
        return {ckpt: ledger["pin"] for ckpt, ledger in self._load_ledgers().items() if ledger.get("pin")}

    @staticmethod
    def _pin_of(info: dict) -> dict:
        return {key: info.get(key) for key in ("model_revision", "model_commit", "weights_fingerprint",
                                                "stored_dtype")}

    def _check_pin(self, ckpt: int, pin: dict | None, info: dict, chunk: int, probes: dict[int, dict]) -> None:
        """probes: probe_entries(), read once per landing (parsing it per cell cost ~1 ms at 360 chunks)."""
        if pin is None:
            return
        new = self._pin_of(info)
        for key in ("model_commit", "weights_fingerprint"):
            if pin.get(key) and new.get(key) and pin[key] != new[key]:
                raise PinMismatchError(
                    f"ckpt {ckpt} chunk {chunk}: {key} {new[key]} differs from the {pin[key]} its landed cells "
                    f"were scored with (revision {pin.get('model_revision')!r}); refusing to mix them in {self.output}")
        probe = probes.get(chunk)
        if probe and info.get("data_sha256") and probe["source"].get("sha256") not in (None, info["data_sha256"]):
            raise PinMismatchError(f"ckpt {ckpt} chunk {chunk}: data sha256 {info['data_sha256']} differs from "
                                   f"the pinned {probe['source']['sha256']}")

    # ---- cells -------------------------------------------------------------------------------

    def done_cells(self) -> set[tuple[int, int]]:
        """(ckpt, chunk) of every cell a ledger lists."""
        return {(ckpt, chunk) for ckpt, ledger in self._load_ledgers().items() for chunk in _listed_chunks(ledger)}

    def read_cell(self, ckpt: int, chunk: int) -> dict | None:
        """The landed record of one cell (with `ckpt`), or None."""
        frame = self.cells().filter((pl.col("ckpt") == ckpt) & (pl.col("chunk") == chunk)).collect()
        return frame.row(0, named=True) if frame.height else None

    def write_cell(self, ckpt: int, chunk: int, sequences: pl.DataFrame, info: dict) -> dict:
        """Land one cell; see write_cells. Returns its record (with `ckpt`)."""
        return self.write_cells(ckpt, [LandedCell(chunk, sequences, info)])[0]

    def write_cells(self, ckpt: int, cells: list[LandedCell]) -> list[dict]:
        """Land several cells of one checkpoint as ONE pair of files and one ledger commit.

        sequences: one row per scored sequence, columns of SEQUENCE_SCHEMA (`ckpt` optional, the nullable
        columns optional; `match_mask` may be bytes, List(UInt8) or Array(UInt8)). info: see
        summarize_cell. Returns the cell records (with `ckpt`), in the order given. A cell that has
        already landed is left as it is and its existing record returned: never a duplicate. A cell whose
        model commit or weights fingerprint differs from the checkpoint's pin raises PinMismatchError
        before anything is written.
        """
        # Only this checkpoint's cells can collide, and its ledger lists them (done_cells() would walk all
        # 129,600 cells per landing at full scale); the probe pins are read once per landing, not per cell.
        ledger = self.ledger(ckpt)
        done = _listed_chunks(ledger)
        probes = self.probe_entries()
        records: dict[int, dict] = {}
        fresh_rows, fresh_sequences = [], []
        for cell in cells:
            if cell.chunk in done or cell.chunk in records:
                continue
            conformed = _conform_sequences(cell.sequences, ckpt, cell.chunk)
            self._check_pin(ckpt, ledger["pin"], cell.info, cell.chunk, probes)
            if ledger["pin"] is None:
                ledger["pin"] = self._pin_of(cell.info)
            record = summarize_cell(ckpt, cell.chunk, conformed, cell.info)
            records[cell.chunk] = record
            fresh_rows.append({key: record[key] for key in CELL_SCHEMA})
            fresh_sequences.append(conformed)
        if records:
            name = f"batch-{ledger['next_file']:06d}"
            self._land_pair(ckpt, ledger, name, sorted(records), pl.concat(fresh_sequences),
                            pl.DataFrame(fresh_rows, schema=CELL_SCHEMA))
            for chunk in records:
                self._clear_failure(ckpt, chunk)
            if sum(entry["name"].startswith("batch-") for entry in ledger["files"]) > COMPACT_AFTER_FILES:
                self.compact_checkpoint(ckpt)
        return [records.get(cell.chunk) or self.read_cell(ckpt, cell.chunk) for cell in cells]

    def write_partition(self, ckpt: int, sequences: pl.DataFrame, cells: pl.DataFrame, pin: dict | None = None) -> None:
        """Land a whole checkpoint's precomputed tables at once (benchmarks, synthetic outputs, imports).

        `sequences` holds SEQUENCE_SCHEMA columns for several chunks; `cells` one CELL_SCHEMA row per chunk,
        the same chunks. Cells already landed are refused (ValueError); nothing is summarized or checked
        beyond the schema, so the caller owns the numbers.
        """
        ledger = self.ledger(ckpt)
        chunks = sorted(int(c) for c in cells["chunk"].to_list())
        if sorted(int(c) for c in sequences["chunk"].unique().to_list()) != chunks or len(set(chunks)) != len(chunks):
            raise ValueError(f"ckpt {ckpt}: sequences and cells must cover the same chunks, once each")
        landed = _listed_chunks(ledger)  # this checkpoint's own ledger: done_cells() reads all 360 per call
        overlap = sorted(chunk for chunk in chunks if chunk in landed)
        if overlap:
            raise ValueError(f"ckpt {ckpt}: chunks {overlap[:5]} have landed already")
        if ledger["pin"] is None and pin is not None:
            ledger["pin"] = dict(pin)
        sequences = sequences.drop("ckpt", strict=False)
        sequences = sequences.with_columns(
            [pl.lit(None, dtype).alias(name) for name, dtype in SEQUENCE_SCHEMA.items() if name not in sequences.columns]
        ).select([pl.col(name).cast(dtype) for name, dtype in SEQUENCE_SCHEMA.items()])
        cells = cells.drop("ckpt", strict=False)
        cells = cells.with_columns(
            [pl.lit(None, dtype).alias(name) for name, dtype in CELL_SCHEMA.items() if name not in cells.columns]
        ).select([pl.col(name).cast(dtype) for name, dtype in CELL_SCHEMA.items()])
        self._land_pair(ckpt, ledger, f"part-{ledger['next_file']:06d}", chunks,
                        sequences.sort("chunk", "row"), cells.sort("chunk"))

    def _land_pair(self, ckpt: int, ledger: dict, name: str, chunks: list[int], sequences: pl.DataFrame,
                   cells: pl.DataFrame, replaces: list[dict] | None = None) -> None:
        """Write a sequences/cells pair named `name`, then commit the ledger listing it (minus `replaces`)."""
        entry = {"name": name, "chunks": chunks}
        for table, frame in (("sequences", sequences), ("cells", cells)):
            record = self._land_parquet(frame, self.partition_dir(table, ckpt) / f"{name}.parquet")
            entry[table] = record.__dict__
        replaced = {old["name"] for old in replaces or []}
        ledger["files"] = [old for old in ledger["files"] if old["name"] not in replaced] + [entry]
        ledger["next_file"] += 1
        self._commit_ledger(ckpt, ledger)  # the commit point
        for old in replaces or []:
            for table in TABLES:
                (self.output / old[table]["path"]).unlink(missing_ok=True)

    def compact_checkpoint(self, ckpt: int) -> None:
        """Merge every landed file of `ckpt` into one pair `part-NNNNNN` (rows sorted by chunk, row).

        Writes the merged pair, commits the ledger listing only it, then deletes the old files; recover()
        deletes any of them a crash left behind. A checkpoint held in a single pair is left as it is.
        """
        ledger = self.ledger(ckpt)
        if len(ledger["files"]) <= 1 and all(e["name"].startswith("part-") for e in ledger["files"]):
            return
        frames = {table: [self._read_listed(ckpt, entry, table) for entry in ledger["files"]] for table in TABLES}
        chunks = sorted(chunk for entry in ledger["files"] for chunk in entry["chunks"])
        sequences = pl.concat(frames["sequences"], how="vertical").sort("chunk", "row")
        cells = pl.concat(frames["cells"], how="vertical").sort("chunk")
        self._land_pair(ckpt, ledger, f"part-{ledger['next_file']:06d}", chunks, sequences, cells,
                        replaces=list(ledger["files"]))

    def _read_listed(self, ckpt: int, entry: dict, table: str) -> pl.DataFrame:
        record = FileRecord(**entry[table])
        path = self.output / record.path
        problem = self._quick_problem(record)
        if problem:
            raise DamagedOutputError(f"{path}: {problem}; run `memsweep verify {self.output} --repair`")
        schema = SEQUENCE_SCHEMA if table == "sequences" else CELL_SCHEMA
        return pl.read_parquet(path).select([pl.col(name).cast(dtype) for name, dtype in schema.items()])

    # ---- probe sets --------------------------------------------------------------------------

    def probe_entries(self) -> dict[int, dict]:
        """chunk -> {"source": identity of the chunk file (pin), "file": FileRecord dict or None}."""
        path = self.ledger_dir / "probes.json"
        if not path.exists():
            return {}
        return {int(chunk): entry for chunk, entry in self._read_json(path)["chunks"].items()}

    def write_probe_set(self, chunk: int, frame: pl.DataFrame, source: dict) -> None:
        """Land chunk `chunk`'s probe set (PROBE_SCHEMA) and pin its source identity (`sha256`, ...).

        A chunk whose pinned source identity differs raises PinMismatchError: an output never mixes rows
        sampled from two versions of a chunk file.
        """
        entries = self.probe_entries()
        pinned = entries.get(chunk, {}).get("source")
        if pinned and pinned.get("sha256") != source.get("sha256"):
            raise PinMismatchError(
                f"chunk {chunk}: {source.get('file')} has sha256 {source.get('sha256')}, but this output's cells "
                f"of that chunk were sampled from sha256 {pinned.get('sha256')}; use a new output directory")
        frame = frame.select([pl.col(name).cast(dtype) for name, dtype in PROBE_SCHEMA.items()])
        record = self._land_parquet(frame, self.probes_dir / f"probe-{chunk:05d}.parquet")
        entries[chunk] = {"source": source, "file": record.__dict__}
        self._write_probe_ledger(entries)

    def _write_probe_ledger(self, entries: dict[int, dict]) -> None:
        payload = {"format": LEDGER_FORMAT, "chunks": {str(chunk): entries[chunk] for chunk in sorted(entries)}}
        self._write_json_atomic(payload, self.ledger_dir / "probes.json")

    def read_probe_set(self, chunk: int) -> pl.DataFrame | None:
        """The landed probe set of `chunk` (checked against its record), or None if none landed."""
        entry = self.probe_entries().get(chunk)
        if not entry or not entry.get("file"):
            return None
        record = FileRecord(**entry["file"])
        problem = self._quick_problem(record) or self._deep_problem(record)
        if problem:
            raise DamagedOutputError(f"{self.output / record.path}: {problem}; "
                                     f"run `memsweep verify {self.output} --repair`")
        return pl.read_parquet(self.output / record.path)

    # ---- failures ----------------------------------------------------------------------------

    def record_failure(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        """Remember that a cell failed after `attempts` tries; it stays to-do for the next run."""
        payload = {"ckpt": ckpt, "chunk": chunk, "error": str(error), "attempts": int(attempts),
                   "failed_at": _utc_now()}
        self._write_json_atomic(payload, self.failure_file(ckpt, chunk))

    def _failure_files(self) -> list[tuple[tuple[int, int], Path]]:
        found = []
        for entry in self._listed_dir(self.failures_dir):
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

    # ---- recovery and integrity --------------------------------------------------------------

    def recover(self) -> None:
        """Bring the directory back to a consistent state after a crash at any point.

        1. Leftover temp files are deleted.
        2. Data files of ours (`batch-*`, `part-*`, `probe-*`) that no ledger lists are deleted: a landing
           or compaction cut short before (or after) its ledger commit.
        3. Failure records of cells that have since landed are deleted.
        Files with other names are left alone (verify() reports them as foreign).
        """
        self._ledgers = None
        if self.tmp_dir.is_dir():
            for entry in self.tmp_dir.iterdir():
                if entry.is_dir():
                    for inner in entry.rglob("*"):
                        if inner.is_file():
                            os.unlink(inner)
                    for inner in sorted(entry.rglob("*"), reverse=True):
                        os.rmdir(inner)
                    os.rmdir(entry)
                else:
                    os.unlink(entry)
        listed = {record.path for record in self.landed_files()}
        for path in self._our_data_files():
            if self._relative(path) not in listed:
                os.unlink(path)
        done = self.done_cells()
        for cell, path in self._failure_files():
            if cell in done:
                os.unlink(path)

    def _our_data_files(self) -> list[Path]:
        found = []
        for table in TABLES:
            root = self.output / table
            if not root.is_dir():
                continue
            for partition in root.iterdir():
                if partition.is_dir() and _PARTITION.match(partition.name):
                    found += [p for p in partition.iterdir() if _DATA_FILE.match(p.name)]
        found += [p for p in self._listed_dir(self.probes_dir) if _PROBE_FILE.match(p.name)]
        return found

    def foreign_files(self) -> list[Path]:
        """Files under sequences/, cells/ or probes/ that no ledger lists (and recover() would not delete)."""
        listed = {record.path for record in self.landed_files()}
        foreign = []
        for folder in (self.output / "sequences", self.output / "cells", self.probes_dir):
            if folder.is_dir():
                foreign += [p for p in folder.rglob("*") if p.is_file() and self._relative(p) not in listed]
        return sorted(foreign)

    def _quick_problem(self, record: FileRecord) -> str | None:
        """Cheap check of a listed file (exists, size, Parquet footer row count); None if fine."""
        path = self.output / record.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if size != record.bytes:
            return f"size {size} bytes, recorded {record.bytes}"
        try:
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        except Exception as error:  # noqa: BLE001 - polars/arrow raise several types for a bad file
            return f"unreadable Parquet ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        if rows != record.rows:
            return f"{rows} rows, recorded {record.rows}"
        return None

    def _deep_problem(self, record: FileRecord) -> str | None:
        digest = file_sha256(self.output / record.path)
        return None if digest == record.sha256 else f"sha256 {digest[:12]}.. differs from recorded {record.sha256[:12]}.."

    def check_landed(self, deep: bool = True) -> list[tuple[FileRecord, str]]:
        """(record, problem) for every listed file that fails the check; deep adds the sha256."""
        problems = []
        for record in self.landed_files():
            problem = self._quick_problem(record) or (self._deep_problem(record) if deep else None)
            if problem:
                problems.append((record, problem))
        return problems

    def forget_files(self, paths: set[str]) -> list[tuple[int, int]]:
        """Remove every ledger entry holding one of `paths` (relative) and delete its files: the cells it
        carried become to-do again (a probe set is rebuilt, keeping its pinned source). Returns those cells."""
        dropped: list[tuple[int, int]] = []
        for ckpt, ledger in sorted(self._load_ledgers().items()):
            doomed = [e for e in ledger["files"] if {e["sequences"]["path"], e["cells"]["path"]} & paths]
            if not doomed:
                continue
            ledger = self.ledger(ckpt)
            ledger["files"] = [e for e in ledger["files"] if e["name"] not in {d["name"] for d in doomed}]
            if not ledger["files"]:
                ledger["pin"] = None  # nothing landed under the pin any more
            self._commit_ledger(ckpt, ledger)
            for entry in doomed:
                dropped += [(ckpt, chunk) for chunk in entry["chunks"]]
                for table in TABLES:
                    (self.output / entry[table]["path"]).unlink(missing_ok=True)
        entries = self.probe_entries()
        hit = [chunk for chunk, entry in entries.items() if entry.get("file") and entry["file"]["path"] in paths]
        if hit:
            for chunk in hit:
                (self.output / entries[chunk]["file"]["path"]).unlink(missing_ok=True)
                entries[chunk]["file"] = None
            self._write_probe_ledger(entries)
        return sorted(dropped)

    # ---- readers -----------------------------------------------------------------------------

    def _scan(self, table: str, schema: dict[str, pl.DataType], only_ckpt: int | None = None) -> pl.LazyFrame:
        """The listed files of `table` (of checkpoint `only_ckpt` alone if given), size-checked (cheap), as one
        LazyFrame with `ckpt` Int32 first.

        Columns a file lacks (written before they existed) read as typed nulls.
        """
        files = []
        for ckpt, ledger in sorted(self._load_ledgers().items()):
            if only_ckpt is not None and ckpt != only_ckpt:
                continue
            for entry in ledger["files"]:
                record = FileRecord(**entry[table])
                path = self.output / record.path
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise DamagedOutputError(f"{path}: listed in the ledger but missing; "
                                             f"run `memsweep verify {self.output} --repair`") from None
                if size != record.bytes:
                    raise DamagedOutputError(f"{path}: size {size} bytes, recorded {record.bytes}; "
                                             f"run `memsweep verify {self.output} --repair`")
                files.append(str(path))
        if not files:
            return pl.LazyFrame(schema={"ckpt": pl.Int32(), **schema})
        frame = pl.scan_parquet(files, schema=schema, hive_schema={"ckpt": pl.Int32}, hive_partitioning=True,
                                missing_columns="insert", extra_columns="ignore")
        return frame.select("ckpt", *schema)

    def sequences(self, ckpt: int | None = None) -> pl.LazyFrame:
        """One row per (ckpt, chunk, row) (of checkpoint `ckpt` alone if given): `ckpt` Int32 followed by
        SEQUENCE_SCHEMA. As for cells(ckpt), filtering here saves a stat and a footer read per other checkpoint."""
        return self._scan("sequences", SEQUENCE_SCHEMA, ckpt)

    def cells(self, ckpt: int | None = None) -> pl.LazyFrame:
        """One row per landed cell (of checkpoint `ckpt` alone if given): `ckpt` Int32 followed by CELL_SCHEMA.

        Filtering here rather than with `.filter` saves a stat and a footer read per landed checkpoint.
        """
        return self._scan("cells", CELL_SCHEMA, ckpt)

    def probes(self) -> pl.LazyFrame:
        """One row per sampled (chunk, row): PROBE_SCHEMA (tokens = prompt followed by the true continuation)."""
        files = []
        for chunk, entry in sorted(self.probe_entries().items()):
            if entry.get("file"):
                path = self.output / entry["file"]["path"]
                if not path.exists() or path.stat().st_size != entry["file"]["bytes"]:
                    raise DamagedOutputError(f"{path}: missing or not the recorded size; "
                                             f"run `memsweep verify {self.output} --repair`")
                files.append(str(path))
        if not files:
            return pl.LazyFrame(schema=PROBE_SCHEMA)
        return pl.scan_parquet(files, schema=PROBE_SCHEMA)


def _listed_chunks(ledger: dict) -> set[int]:
    """The chunks of the cells one checkpoint's ledger lists."""
    return {chunk for entry in ledger["files"] for chunk in entry["chunks"]}
