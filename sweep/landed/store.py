"""ResultStore: the single writer of a landed output. It lands cells, probe sets, exposure scans and failure records,
compacts, keeps the manifest, recovers what a killed run left and repairs what `memsweep verify` found
(`repair_output`); the layout and the ledgers are sweep/landed/ledger.py's, the readers sweep/landed/reader.py's, the
checks sweep/landed/verify.py's. Nothing else writes into an output.

Guarantees, for a single writer (sweep/landed/writer_lock.py) that may be killed at any instruction:
- Every file reaches its final name by rename from `_tmp/` after an fsync (sweep/landed/atomic_write.py); a ledger
  update is the commit point of a landing, a compaction or a repair, and `open` recovers whatever a crash
  left before anything lands (`recover`).
- A Ctrl-C inside a landing waits for its commit (sweep/landed/uninterrupted.py): what was being landed is kept.
- Landing cells that are already done is a no-op: nothing is ever duplicated.
- Compaction writes the merged pair under a new name, commits the ledger, then deletes the old files, so a
  reader gets either the old files or the merged ones, never both.
- An output never mixes two commits or weights under one checkpoint, nor two versions of a chunk file
  (PinMismatchError).

Files come in pairs: a `sequences/` file and the `cells/` file of the same name hold the same chunks, so the
cells a damaged file carried can be removed from both tables and recomputed exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from sweep.errors import MemsweepError
from sweep.landed.atomic_write import fsync_dir, write_atomic
from sweep.landed.ledger import (MANIFEST_FORMAT, TABLES, CheckpointLedger, CheckpointPin, ExposureEntry, FileRecord,
                                 LandedPair, Ledgers, OutputLayout, ProbeEntry, ScanRecord, files_in, read_manifest,
                                 write_json)
from sweep.landed.reader import LandedOutput, output_layout, scan_listed
from sweep.landed.schema import (CELL_SCHEMA, EXPOSURE_COUNT_SCHEMA, PROBE_SCHEMA, SEQUENCE_SCHEMA, CellProvenance,
                                 conform, conform_sequences, summarize_cell, utc_now)
from sweep.landed.uninterrupted import uninterrupted
from sweep.landed.verify import VerifyReport, check_output, file_problem, foreign_files
from sweep.landed.writer_lock import LOCK_NAME, writer_lock
from sweep.spec import identity_hash

# A checkpoint's loose landing files are merged once this many pairs have piled up (and when it finishes).
COMPACT_AFTER_FILES = 64
# ... into pairs of at most this many sequences: a merge holds its pairs in memory (~130 bytes a row with the sort's
# copy, so ~0.5 GB). A sampled checkpoint (Amber: 360 x 1000 rows) is one pair; a census checkpoint of Pythia's
# (146M rows) is ~37, each of whole cells.
COMPACT_MAX_ROWS = 4_000_000


class StoreMismatchError(MemsweepError):
    """The output directory holds results of a different sweep identity."""


class PinMismatchError(MemsweepError):
    """A landing would mix two commits / fingerprints / chunk files under one checkpoint or chunk."""


@dataclass(frozen=True)
class ScoredCell:
    """One scored cell, the input of a landing: its sequences (SEQUENCE_SCHEMA columns; `ckpt` optional,
    the nullable columns optional) and how it was scored."""

    chunk: int
    sequences: pl.DataFrame
    provenance: CellProvenance
    seen_fraction: float | None = None  # the timeline's share of the chunk the checkpoint trained on (None: Amber's)


@dataclass(frozen=True)
class EncodedParquet:
    """A frame as the Parquet bytes a landing writes, made before the landing's writes begin."""

    payload: bytes
    sha256: str
    rows: int

    @classmethod
    def of(cls, frame: pl.DataFrame) -> EncodedParquet:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, statistics=True)
        payload = buffer.getvalue()
        return cls(payload, hashlib.sha256(payload).hexdigest(), frame.height)


def identity_differences(old: dict, new: dict) -> list[str]:
    """Lines like `memorization.prompt_len: 32 -> 16`, one per differing leaf key."""
    def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
        flat: dict[str, object] = {}
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    # Round-trip through JSON so tuples vs lists or Paths vs strings do not count as changes.
    old_flat = flatten(json.loads(json.dumps(old, default=str)))
    new_flat = flatten(json.loads(json.dumps(new, default=str)))
    absent = "<absent>"
    lines = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        before, after = old_flat.get(key, absent), new_flat.get(key, absent)
        if before != after:
            lines.append(f"{key}: {json.dumps(before) if before is not absent else absent}"
                         f" -> {json.dumps(after) if after is not absent else absent}")
    return lines


def refuse_other_identity(output: Path, manifest: dict | None, ledgers: Ledgers, identity: dict) -> None:
    """Raise StoreMismatchError if the output at `output` (its `manifest`, None when it has none, and `ledgers`, as
    read) holds landed results of another identity. The one identity check: the writer's (`check_identity`, under
    the lock) and `memsweep plan`'s (sweep/run/preflight.py, on a reader) both make it."""
    if manifest is None or identity_hash(manifest["identity"]) == identity_hash(identity):
        return
    if ledgers.has_landed_results():
        changes = identity_differences(manifest["identity"], identity)
        raise StoreMismatchError(f"{output} holds results of a different sweep ({'; '.join(changes) or 'identity changed'}); "
                                 f"use a new output directory for this spec")


class ResultStore:
    """The writer of the output at `output`; see the module docstring."""

    def __init__(self, output: Path):
        self.layout = OutputLayout(Path(output))
        self.output = self.layout.output
        self._ledgers: Ledgers | None = None  # read once: no one else writes them while we hold the lock
        self._checked: tuple[str, dict | None] | None = None  # (identity hash, manifest) as `check_identity` found them

    @property
    def ledgers(self) -> Ledgers:
        if self._ledgers is None:
            self._ledgers = Ledgers.read(self.layout)
        return self._ledgers

    def reader(self) -> LandedOutput:
        """What has landed so far, through the one reader (sweep/landed/reader.py), without re-reading the ledgers."""
        return LandedOutput(self.layout, read_manifest(self.layout), self.ledgers)

    # ---- manifest ----------------------------------------------------------------------------

    def check_identity(self, identity: dict) -> None:
        """Raise StoreMismatchError if the output holds landed results of another identity (no writes).

        A run checks once, holding the writer lock, before Ray starts (sweep/run/driver.py); `open` then goes by
        what this check read instead of checking again.
        """
        manifest = read_manifest(self.layout) if self.layout.manifest.exists() else None
        refuse_other_identity(self.output, manifest, self.ledgers, identity)
        self._checked = (identity_hash(identity), manifest)

    def open(self, identity: dict, spec: dict, run_info: dict) -> None:
        """Create the store, or take the existing one for `identity` (checked by `check_identity`, unless it already
        was); recover from any interrupted operation; record this run.

        Raises StoreMismatchError if the output holds landed results of a different identity; an output where
        nothing landed yet (a run that failed early) takes the new identity, and its probe sets and failure
        records are dropped with the old one. The top-level `spec` becomes this run's spec (non-identity
        settings such as batch size may change between runs); `run_info` is appended to `runs` with
        `started_at` (UTC ISO) added if absent.
        """
        if self._checked is None or self._checked[0] != identity_hash(identity):
            self.check_identity(identity)
        manifest = self._checked[1]
        run = {"started_at": utc_now(), **run_info}
        if manifest is not None:
            self.recover()
            if identity_hash(manifest["identity"]) != identity_hash(identity):
                self._forget_unlanded_identity()
                manifest = {"format": MANIFEST_FORMAT, "identity": identity, "runs": manifest["runs"]}
            manifest["identity_hash"] = identity_hash(identity)
            manifest["spec"] = spec
            manifest["runs"].append(run)
        else:
            self.layout.check_writable()
            ours = {self.layout.tmp_dir.name, LOCK_NAME}
            leftovers = [p.name for p in self.output.iterdir() if p.name not in ours] if self.output.is_dir() else []
            if leftovers:
                raise MemsweepError(f"{self.output} is not empty and has no manifest.json "
                                    f"(holds {sorted(leftovers)[:5]}); use an empty or new output directory")
            os.makedirs(self.output, exist_ok=True)
            self.recover()
            manifest = {"format": MANIFEST_FORMAT, "identity": identity, "identity_hash": identity_hash(identity),
                        "spec": spec, "runs": [run]}
        # The manifest lands before any result, so a directory with results always has one.
        write_json(self.layout, manifest, self.layout.manifest)
        self._checked = None  # the manifest has changed: a later `open` checks again

    def record_pins_in_manifest(self) -> None:
        """Copy the pins (checkpoint -> commit, fingerprint, stored dtype; chunk -> file, sha256) into
        manifest.json, for a reader who opens only that file. The ledgers stay the authority."""
        manifest = read_manifest(self.layout)
        manifest["pins"] = {
            "checkpoints": {str(c): pin.to_json() for c, pin in sorted(self.ledgers.pins().items())},
            "chunks": {str(c): {key: entry.source.get(key) for key in ("file", "sha256", "size", "commit")}
                       for c, entry in sorted(self.ledgers.probes.items())},
        }
        write_json(self.layout, manifest, self.layout.manifest)

    def _forget_unlanded_identity(self) -> None:
        """Drop what an earlier identity left without landing a cell: ledgers, probe sets, failures."""
        layout = self.layout
        for path in [*files_in(layout.ledger_dir), *files_in(layout.probes_dir), *files_in(layout.failures_dir)]:
            os.unlink(path)
        self._ledgers = None

    # ---- cells -------------------------------------------------------------------------------

    def write_cells(self, ckpt: int, cells: list[ScoredCell], finishes_checkpoint: bool = False) -> list[dict]:
        """Land several cells of one checkpoint as ONE pair of files and one ledger commit.

        Returns the cell rows (with `ckpt`), in the order given. A cell that has already landed is left as it
        is and its existing row returned: never a duplicate. A cell whose model commit or weights fingerprint
        differs from the checkpoint's pin raises PinMismatchError before anything is written.

        Compaction is decided here and only here: the checkpoint's files are merged when the caller says the
        checkpoint is finished (`finishes_checkpoint`, also with no cells: its last cells failed) or when
        more than COMPACT_AFTER_FILES loose pairs have piled up.
        """
        # Only this checkpoint's cells can collide, and its ledger lists them (all 129,600 done cells would be
        # walked per landing at full scale); the probe pins are read once per landing, not per cell.
        ledger = self.ledgers.ledger(ckpt)
        done = ledger.chunks
        pin = ledger.pin
        records: dict[int, dict] = {}
        fresh_rows, fresh_sequences = [], []
        for cell in cells:
            if cell.chunk in done or cell.chunk in records:
                continue
            conformed = conform_sequences(cell.sequences, ckpt, cell.chunk)
            self._check_pin(ckpt, pin, cell)
            pin = pin or cell.provenance.pin()
            record = summarize_cell(ckpt, cell.chunk, conformed, cell.provenance, cell.seen_fraction)
            records[cell.chunk] = record
            fresh_rows.append({key: record[key] for key in CELL_SCHEMA})
            fresh_sequences.append(conformed)
        if records:
            ledger = self._land_pair(replace(ledger, pin=pin), "batch", sorted(records), pl.concat(fresh_sequences),
                                     pl.DataFrame(fresh_rows, schema=CELL_SCHEMA))
            for chunk in records:
                self._clear_failure(ckpt, chunk)
        loose = sum(pair.name.startswith("batch-") for pair in ledger.files)  # as committed above
        if finishes_checkpoint or loose > COMPACT_AFTER_FILES:
            self.compact_checkpoint(ckpt)
        if all(cell.chunk in records for cell in cells):
            return [records[cell.chunk] for cell in cells]
        landed = self.reader().cells(ckpt).collect()
        existing = {row["chunk"]: row for row in landed.iter_rows(named=True)}
        return [records.get(cell.chunk) or existing.get(cell.chunk) for cell in cells]

    def import_checkpoint(self, ckpt: int, sequences: pl.DataFrame, cells: pl.DataFrame,
                          pin: CheckpointPin | None = None) -> None:
        """Land a whole checkpoint's precomputed tables as given, WITHOUT summarizing or checking the numbers:
        a bulk import for synthetic outputs (benchmarks) and tables computed elsewhere; the caller owns them.

        `sequences` holds SEQUENCE_SCHEMA columns for several chunks; `cells` one CELL_SCHEMA row per chunk,
        the same chunks. Chunks this checkpoint already holds are refused (nothing is written).
        """
        ledger = self.ledgers.ledger(ckpt)
        chunks = sorted(int(c) for c in cells["chunk"].to_list())
        if sorted(int(c) for c in sequences["chunk"].unique().to_list()) != chunks or len(set(chunks)) != len(chunks):
            raise MemsweepError(f"ckpt {ckpt}: sequences and cells must cover the same chunks, once each")
        overlap = sorted(chunk for chunk in chunks if chunk in ledger.chunks)
        if overlap:
            raise MemsweepError(f"ckpt {ckpt}: chunks {overlap[:5]} have landed already")
        sequences = conform(sequences.drop("ckpt", strict=False), SEQUENCE_SCHEMA)
        cells = conform(cells.drop("ckpt", strict=False), CELL_SCHEMA)
        self._land_pair(replace(ledger, pin=ledger.pin or pin), "part", chunks, sequences.sort("chunk", "row"),
                        cells.sort("chunk"))

    def compact_checkpoint(self, ckpt: int) -> None:
        """Merge the landed files of `ckpt` into pairs `part-NNNNNN` of at most COMPACT_MAX_ROWS sequences each (one
        pair for any sampled checkpoint; rows sorted by chunk, row).

        Each merge writes the merged pair, commits the ledger listing it instead of the pairs it merged, then deletes
        those; `recover` deletes any of them a crash left behind. A `part-` pair left alone by the grouping stays as
        it is.
        """
        for group in compaction_groups(self.ledgers.ledger(ckpt).files):
            ledger = self.ledgers.ledger(ckpt)
            frames = {table: [self._read_listed(pair.record(table), table) for pair in group] for table in TABLES}
            sequences = pl.concat(frames["sequences"], how="vertical").sort("chunk", "row")
            cells = pl.concat(frames["cells"], how="vertical").sort("chunk")
            chunks = sorted({chunk for pair in group for chunk in pair.chunks})
            self._land_pair(ledger, "part", chunks, sequences, cells, replaces=group)

    def _land_pair(self, ledger: CheckpointLedger, kind: str, chunks: list[int], sequences: pl.DataFrame,
                   cells: pl.DataFrame, replaces: tuple[LandedPair, ...] = ()) -> CheckpointLedger:
        """Write a sequences/cells pair (`kind` "batch" or "part", numbered by the ledger), commit `ledger` listing it
        instead of `replaces`, then delete those; returns the committed ledger.

        The Parquet bytes are made first; a Ctrl-C from the first file written to the last file deleted waits for
        the end (BENCHMARKS.md, "Ctrl-C during a landing"), and one before it writes nothing."""
        name = f"{kind}-{ledger.next_file:06d}"
        encoded = {"sequences": EncodedParquet.of(sequences), "cells": EncodedParquet.of(cells)}
        with uninterrupted():
            records = {table: self._land_file(payload, self.layout.partition_dir(table, ledger.ckpt) / f"{name}.parquet")
                       for table, payload in encoded.items()}
            committed = ledger.with_pair(LandedPair(name, tuple(chunks), records["sequences"], records["cells"]),
                                         replaces)
            self.ledgers.commit(committed)  # the commit point
            for old in replaces:
                for table in TABLES:
                    self.layout.absolute(old.record(table)).unlink(missing_ok=True)
        return committed

    def _land_file(self, encoded: EncodedParquet, final: Path) -> FileRecord:
        write_atomic(encoded.payload, final, temp_dir=self.layout.tmp_dir)
        return FileRecord(self.layout.relative(final), len(encoded.payload), encoded.sha256, encoded.rows)

    def _read_listed(self, record: FileRecord, table: str) -> pl.DataFrame:
        path = self.layout.absolute(record)
        problem = file_problem(self.layout, record, deep=False)
        if problem:
            raise self.layout.damaged(path, problem)
        return conform(pl.read_parquet(path), SEQUENCE_SCHEMA if table == "sequences" else CELL_SCHEMA)

    def _check_pin(self, ckpt: int, pin: CheckpointPin | None, cell: ScoredCell) -> None:
        if pin is not None:
            new = cell.provenance.pin()
            for key in ("model_commit", "weights_fingerprint"):
                pinned, got = getattr(pin, key), getattr(new, key)
                if pinned and got and pinned != got:
                    raise PinMismatchError(
                        f"ckpt {ckpt} chunk {cell.chunk}: {key} {got} differs from the {pinned} its landed cells "
                        f"were scored with (revision {pin.model_revision!r}); refusing to mix them in {self.output}")
        probe = self.ledgers.probes.get(cell.chunk)
        sha256 = cell.provenance.data_sha256
        if probe and sha256 and probe.sha256 not in (None, sha256):
            raise PinMismatchError(f"ckpt {ckpt} chunk {cell.chunk}: data sha256 {sha256} differs from "
                                   f"the pinned {probe.sha256}")

    # ---- probe sets --------------------------------------------------------------------------

    def write_probe_set(self, chunk: int, frame: pl.DataFrame, chunk_file: dict) -> None:
        """Land chunk `chunk`'s probe set (PROBE_SCHEMA) and pin its chunk file's identity (`sha256`, ...).

        A chunk whose pinned identity differs raises PinMismatchError: an output never mixes rows sampled
        from two versions of a chunk file.
        """
        pinned = self.ledgers.probes.get(chunk)
        if pinned and pinned.sha256 != chunk_file.get("sha256"):
            raise PinMismatchError(
                f"chunk {chunk}: {chunk_file.get('file')} has sha256 {chunk_file.get('sha256')}, but this output's "
                f"cells of that chunk were sampled from sha256 {pinned.sha256}; use a new output directory")
        encoded = EncodedParquet.of(conform(frame, PROBE_SCHEMA))
        with uninterrupted():
            record = self._land_file(encoded, self.layout.probe_file(chunk))
            self.ledgers.commit_probes({**self.ledgers.probes, chunk: ProbeEntry(chunk_file, record)})

    def read_probe_set(self, chunk: int) -> pl.DataFrame | None:
        """The landed probe set of `chunk`, checked against its record in full (sha256), or None if none landed."""
        entry = self.ledgers.probes.get(chunk)
        if not entry or entry.file is None:
            return None
        problem = file_problem(self.layout, entry.file, deep=True)
        if problem:
            raise self.layout.damaged(self.layout.absolute(entry.file), problem)
        return scan_listed(self.layout, [entry.file], PROBE_SCHEMA, partitioned=False).collect()

    # ---- exposure scans ----------------------------------------------------------------------

    def write_exposure_scan(self, seen_chunk: int, chunk_file: dict, probe_chunks: list[int], counts: pl.DataFrame,
                            stats: dict) -> None:
        """Land one scan of chunk file `seen_chunk`: the nonzero counts (EXPOSURE_COUNT_SCHEMA) of the probe
        sequences of `probe_chunks`, and `stats` (ScanRecord's probes, rows, tokens, bytes, seconds, cpu_seconds).

        The file is pinned by content like a probe set (PinMismatchError if a scan of another version of it landed);
        probe chunks it has counted already are refused (MemsweepError): a count is never landed twice.
        """
        entry = self.ledgers.exposures.get(seen_chunk) or ExposureEntry(chunk_file)
        if entry.sha256 and entry.sha256 != chunk_file.get("sha256"):
            raise PinMismatchError(
                f"exposure scan of chunk {seen_chunk}: {chunk_file.get('file')} has sha256 {chunk_file.get('sha256')}, "
                f"but this output's counts of it were scanned from sha256 {entry.sha256}; use a new output directory")
        again = sorted(set(probe_chunks) & entry.probe_chunks)
        if again:
            raise MemsweepError(f"exposure scan of chunk {seen_chunk}: probe chunks {again[:5]} are counted already")
        name = f"scan-{1 + max((int(scan.name[5:]) for scan in entry.scans), default=-1):06d}"
        frame = conform(counts.with_columns(pl.lit(seen_chunk).alias("seen_chunk")), EXPOSURE_COUNT_SCHEMA)
        encoded = EncodedParquet.of(frame.sort("chunk", "row"))
        with uninterrupted():
            record = self._land_file(encoded, self.layout.scan_file(seen_chunk, name))
            scan = ScanRecord(name=name, probe_chunks=tuple(sorted({int(c) for c in probe_chunks})), file=record,
                              **stats, scanned_at=utc_now())
            source = entry.source if entry.sha256 else chunk_file
            self.ledgers.commit_exposures({**self.ledgers.exposures,
                                           seen_chunk: ExposureEntry(source, entry.scans + (scan,))})  # the commit point
            path = self.layout.scan_failure_file(seen_chunk)
            if path.exists():
                os.unlink(path)
                fsync_dir(path.parent)

    def record_scan_failure(self, seen_chunk: int, error: str) -> None:
        """Remember that chunk file `seen_chunk` could not be scanned; the next run tries again."""
        payload = {"seen_chunk": seen_chunk, "error": str(error), "failed_at": utc_now()}
        write_json(self.layout, payload, self.layout.scan_failure_file(seen_chunk))

    # ---- failures ----------------------------------------------------------------------------

    def record_failure(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        """Remember that a cell failed after `attempts` tries; it stays to-do for the next run."""
        payload = {"ckpt": ckpt, "chunk": chunk, "error": str(error), "attempts": int(attempts),
                   "failed_at": utc_now()}
        write_json(self.layout, payload, self.layout.failure_file(ckpt, chunk))

    def _clear_failure(self, ckpt: int, chunk: int) -> None:
        path = self.layout.failure_file(ckpt, chunk)
        if path.exists():
            os.unlink(path)
            fsync_dir(path.parent)

    # ---- recovery and repair -----------------------------------------------------------------

    def recover(self) -> None:
        """Bring the directory back to a consistent state after a crash at any point (`open` runs it first).

        1. Leftover temp files are deleted.
        2. Data files of ours (`batch-*`, `part-*`, `probe-*`, `scan-*`) that no ledger lists are deleted: a landing
           or compaction cut short before (or after) its ledger commit.
        3. Failure records of cells that have since landed are deleted.
        Files with other names are left alone (sweep/landed/verify.py `foreign_files` reports them).
        """
        layout = self.layout
        if layout.tmp_dir.is_dir():
            for entry in layout.tmp_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    os.unlink(entry)
        listed = {record.path for record in self.ledgers.landed_files()}
        for path in layout.named_like_data():
            if layout.relative(path) not in listed:
                os.unlink(path)
        done = self.ledgers.done_cells()
        for cell, path in layout.failure_files():
            if cell in done:
                os.unlink(path)

    def forget_files(self, paths: set[str]) -> list[tuple[int, int]]:
        """Remove every ledger entry holding one of `paths` (relative to the output) and delete its files: the cells it
        carried become to-do again (a probe set is sampled again from its pinned chunk file; an exposure scan is made
        again). Returns those cells."""
        ledgers, layout = self.ledgers, self.layout
        dropped: list[tuple[int, int]] = []
        with uninterrupted():
            for ckpt, ledger in sorted(ledgers.checkpoints.items()):
                doomed = [pair for pair in ledger.files if {pair.sequences.path, pair.cells.path} & paths]
                if not doomed:
                    continue
                ledgers.commit(ledger.without({pair.name for pair in doomed}))
                for pair in doomed:
                    dropped += [(ckpt, chunk) for chunk in pair.chunks]
                    for table in TABLES:
                        layout.absolute(pair.record(table)).unlink(missing_ok=True)
            hit = [chunk for chunk, entry in ledgers.probes.items() if entry.file is not None and entry.file.path in paths]
            if hit:
                gone = [ledgers.probes[chunk].file for chunk in hit]
                ledgers.commit_probes({**ledgers.probes, **{chunk: replace(ledgers.probes[chunk], file=None)
                                                             for chunk in hit}})
                for record in gone:
                    layout.absolute(record).unlink(missing_ok=True)
            doomed_scans = [scan.file for entry in ledgers.exposures.values() for scan in entry.scans
                            if scan.file.path in paths]
            if doomed_scans:
                ledgers.commit_exposures({chunk: replace(entry, scans=tuple(scan for scan in entry.scans
                                                                            if scan.file.path not in paths))
                                          for chunk, entry in ledgers.exposures.items()})
                for record in doomed_scans:
                    layout.absolute(record).unlink(missing_ok=True)
        return sorted(dropped)

    def repair(self, report: VerifyReport) -> None:
        """Heal what `report` (sweep/landed/verify.py `check_output`, made under the writer lock) found: unreadable
        ledgers are dropped (their files become unlisted, and recovery deletes them), damaged and missing files are
        forgotten with their twins, foreign files deleted; the next run recomputes exactly the cells they carried."""
        for ledger in report.broken_ledgers:
            # A ledger we cannot parse: its files can no longer be trusted, so drop it; recovery then deletes the
            # files it listed (they are ours and unlisted), and their cells are recomputed.
            (self.output / ledger).unlink()
        self._ledgers = None
        self.recover()
        lost = {path for path, _ in report.damaged} | set(report.missing)
        report.repaired_cells = self.forget_files(lost) if lost else []
        for path in foreign_files(self):
            path.unlink()
            report.removed_foreign.append(self.layout.relative(path))
        report.repaired = True


def compaction_groups(pairs: tuple[LandedPair, ...]) -> list[tuple[LandedPair, ...]]:
    """The pairs to merge, in ledger order: consecutive runs of at most COMPACT_MAX_ROWS sequences (a pair larger than
    that alone); a run that is a single `part-` pair is already merged and left out."""
    groups: list[list[LandedPair]] = []
    rows = 0
    for pair in pairs:
        if not groups or rows + pair.sequences.rows > COMPACT_MAX_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(pair)
        rows += pair.sequences.rows
    return [tuple(group) for group in groups if not (len(group) == 1 and group[0].name.startswith("part-"))]


def repair_output(output: Path) -> VerifyReport:
    """`memsweep verify OUTPUT --repair`: under the writer lock, check every landed file (sweep/landed/verify.py) and
    let the store remove what is damaged, missing or foreign, so the next run recomputes exactly their cells."""
    output = Path(output)
    read_manifest(output_layout(output))  # a memsweep output with a manifest this memsweep reads, or a refusal
    with writer_lock(output):
        report = check_output(output)
        ResultStore(output).repair(report)
    return report
