"""The landed output's layout and its ledgers: which files are data, and what each one must be.

    <output>/manifest.json                          identity, spec, one entry per run, pins (a copy)
    <output>/ledger/ckpt=<c>.json                   checkpoint c's commit record: its landed file pairs (bytes,
                                                    sha256, rows, chunks) and its pin (model commit, weights
                                                    fingerprint, stored dtype)
    <output>/ledger/probes.json                     the landed probe sets and their chunk files' identity (pins)
    <output>/sequences/ckpt=<c>/batch-NNNNNN.parquet    one row per (ckpt, chunk, row) of a landing ...
    <output>/sequences/ckpt=<c>/part-NNNNNN.parquet     ... merged by compaction
    <output>/cells/ckpt=<c>/{batch,part}-NNNNNN.parquet one row per cell; same name, same chunks as its twin
    <output>/probes/probe-<chunk:05d>.parquet       the sampled rows of a chunk (tokens included)
    <output>/ledger/exposures.json                  the exposure scans: per scanned chunk file its identity (pin)
                                                    and its scans (which probe chunks each counted, its file)
    <output>/exposures/seen=<j>/scan-NNNNNN.parquet one scan of chunk file j: nonzero counts per probe sequence
    <output>/failures/ckpt=<c>-chunk=<j>.json       a cell that failed after all retries
    <output>/failures/scan-chunk=<j>.json           a chunk file whose exposure scan failed
    <output>/_tmp/                                  temp files of landings in progress

The ledger is the single source of truth. A data file counts only if a ledger lists it, with its size,
sha256 and row count: readers (sweep/landed/reader.py) read exactly the listed files, the writer (sweep/landed/store.py)
commits a landing by rewriting a ledger, and integrity (sweep/landed/verify.py) checks files against their records.
This module is what all three share: paths, the typed ledger entries (each with the JSON form it has on disk),
reading ledgers and committing them.

    CheckpointLedger   ledger/ckpt=<c>.json: `pin` (CheckpointPin) and `files` (LandedPair: a sequences/cells
                       pair of FileRecords and the chunks they hold)
    ProbeEntry         one chunk of ledger/probes.json: its chunk file's identity and its probe set's FileRecord
    ExposureEntry      one scanned chunk file of ledger/exposures.json: its identity and its scans (ScanRecord)
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from sweep.landed.atomic_write import write_atomic
from sweep.errors import MemsweepError

MANIFEST_FORMAT = 2
LEDGER_FORMAT = 1
TABLES = ("sequences", "cells")  # the paired tables of a landing: same file name, same chunks
PARTITION = re.compile(r"^ckpt=(-?\d+)$")
DATA_FILE = re.compile(r"^(batch|part)-(\d{6})\.parquet$")
PROBE_FILE = re.compile(r"^probe-(\d{5,})\.parquet$")
SEEN_PARTITION = re.compile(r"^seen=(-?\d+)$")
SCAN_FILE = re.compile(r"^scan-(\d{6})\.parquet$")
SCAN_FAILURE_FILE = re.compile(r"^scan-chunk=(-?\d+)\.json$")
LEDGER_FILE = re.compile(r"^ckpt=(-?\d+)\.json$")
FAILURE_FILE = re.compile(r"^ckpt=(-?\d+)-chunk=(-?\d+)\.json$")


class DamagedOutputError(MemsweepError):
    """A landed file or ledger does not match what was recorded (missing, truncated, altered); names it."""


@dataclass(frozen=True)
class OutputLayout:
    """Where everything of one output lives (see the module docstring)."""

    output: Path

    @property
    def manifest(self) -> Path:
        return self.output / "manifest.json"

    @property
    def tmp_dir(self) -> Path:
        return self.output / "_tmp"

    @property
    def ledger_dir(self) -> Path:
        return self.output / "ledger"

    @property
    def probe_ledger(self) -> Path:
        return self.ledger_dir / "probes.json"

    @property
    def exposure_ledger(self) -> Path:
        return self.ledger_dir / "exposures.json"

    @property
    def exposures_dir(self) -> Path:
        return self.output / "exposures"

    @property
    def failures_dir(self) -> Path:
        return self.output / "failures"

    @property
    def probes_dir(self) -> Path:
        return self.output / "probes"

    def partition_dir(self, table: str, ckpt: int) -> Path:
        return self.output / table / f"ckpt={ckpt}"

    def ledger_path(self, ckpt: int) -> Path:
        return self.ledger_dir / f"ckpt={ckpt}.json"

    def failure_file(self, ckpt: int, chunk: int) -> Path:
        return self.failures_dir / f"ckpt={ckpt}-chunk={chunk}.json"

    def probe_file(self, chunk: int) -> Path:
        return self.probes_dir / f"probe-{chunk:05d}.parquet"

    def scan_file(self, seen_chunk: int, name: str) -> Path:
        return self.exposures_dir / f"seen={seen_chunk}" / f"{name}.parquet"

    def scan_failure_file(self, seen_chunk: int) -> Path:
        return self.failures_dir / f"scan-chunk={seen_chunk}.json"

    def scan_failure_files(self) -> list[tuple[int, Path]]:
        """(scanned chunk, path) of every failed exposure scan's record."""
        return sorted((int(match.group(1)), entry) for entry in files_in(self.failures_dir)
                      for match in [SCAN_FAILURE_FILE.match(entry.name)] if match)

    def relative(self, path: Path) -> str:
        return Path(path).relative_to(self.output).as_posix()

    def absolute(self, record: FileRecord) -> Path:
        return self.output / record.path

    def check_writable(self) -> None:
        """Refuse, naming the path, an output that is a file, lies under a file or cannot be written."""
        output = self.output
        if output.exists() and not output.is_dir():
            raise MemsweepError(f"output {output} is a file, not a directory")
        parent = next((p for p in [output, *output.parents] if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise MemsweepError(f"output {output}: cannot be created, {parent} is a file")
        if parent is not None and not os.access(parent, os.W_OK):
            raise MemsweepError(f"output {output}: {parent} is not writable")

    def damaged(self, path: Path, problem: str) -> DamagedOutputError:
        return DamagedOutputError(f"{path}: {problem}; run `memsweep verify {self.output} --repair`")

    def failure_files(self) -> list[tuple[tuple[int, int], Path]]:
        """((ckpt, chunk), path) of every failure record, ordered by cell."""
        found = []
        for entry in files_in(self.failures_dir):
            match = FAILURE_FILE.match(entry.name)
            if match:
                found.append(((int(match.group(1)), int(match.group(2))), entry))
        return sorted(found)

    def named_like_data(self) -> list[Path]:
        """Every file named as memsweep names landed data (`batch-*`, `part-*` in a partition, `probe-*`,
        `scan-*`)."""
        found = []
        for table in TABLES:
            root = self.output / table
            if root.is_dir():
                for partition in root.iterdir():
                    if partition.is_dir() and PARTITION.match(partition.name):
                        found += [p for p in partition.iterdir() if DATA_FILE.match(p.name)]
        found += [p for p in files_in(self.probes_dir) if PROBE_FILE.match(p.name)]
        if self.exposures_dir.is_dir():
            for partition in self.exposures_dir.iterdir():
                if partition.is_dir() and SEEN_PARTITION.match(partition.name):
                    found += [p for p in partition.iterdir() if SCAN_FILE.match(p.name)]
        return found


def id_ranges(ids: list[int]) -> str:
    """Sorted ids as the spec writes them: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (a scan of one of Amber's files
    lists the 360 probe chunks it counted as "0-359": a ledger stays small however many scans it records)."""
    runs: list[list[int]] = []
    for value in sorted(set(ids)):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def parse_id_ranges(text: str) -> list[int]:
    """The inverse of `id_ranges`."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        start, _, stop = part.partition("-")
        ids += range(int(start), int(stop or start) + 1)
    return ids


def files_in(folder: Path) -> list[Path]:
    """The files directly in `folder`, sorted; none if it does not exist."""
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def read_json(path: Path) -> dict:
    """A ledger, failure record or manifest; an unparsable one is damage, named."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DamagedOutputError(f"{path}: not valid JSON (line {error.lineno}: {error.msg}); "
                                 "run `memsweep verify --repair` on the output") from None


def write_json(layout: OutputLayout, payload: dict, final: Path) -> None:
    """Land a JSON file of the output (manifest, ledger, failure record) atomically."""
    text = json.dumps(payload, indent=1, sort_keys=False, default=str) + "\n"
    write_atomic(text.encode(), final, temp_dir=layout.tmp_dir)


def read_manifest(layout: OutputLayout) -> dict:
    """The manifest, checked: a JSON object of a format this memsweep reads, with identity, spec and runs."""
    path = layout.manifest
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MemsweepError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    except OSError as error:
        raise MemsweepError(f"{path}: cannot read ({error.strerror})") from None
    if not isinstance(manifest, dict):
        raise MemsweepError(f"{path}: expected a JSON object")
    for key in ("format", "identity", "runs"):
        if key not in manifest:
            raise MemsweepError(f"{path}: missing key '{key}'")
    if manifest["format"] == 1:
        raise MemsweepError(f"{path}: written by an older memsweep (format 1, landed files without "
                            "checksums); sweep into a new output directory")
    if manifest["format"] != MANIFEST_FORMAT:
        raise MemsweepError(f"{path}: format {manifest['format']!r} is not supported "
                            f"(this memsweep writes format {MANIFEST_FORMAT})")
    return manifest


# ---- the ledgers' entries, typed; each reads and writes the JSON form it has on disk ------------------------------


class LedgerFormatError(Exception):
    """An entry that is not in the form this memsweep writes (a missing key, a wrong type): `Ledgers.read` names the
    ledger file and calls it damage."""


def _field(record: dict, key: str, kind: type | tuple[type, ...], entry: str):
    """record[key], which must be of `kind` (a bool is not an int here)."""
    if not isinstance(record, dict) or key not in record:
        raise LedgerFormatError(f"{entry}: missing key '{key}'")
    value, kinds = record[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise LedgerFormatError(f"{entry}: '{key}' is {value!r}, not {names}")
    return value


NUMBER = (int, float)
OPTIONAL_TEXT = (str, type(None))


@dataclass(frozen=True)
class FileRecord:
    """A landed file as its ledger records it; `path` is relative to the output."""

    path: str
    bytes: int
    sha256: str
    rows: int

    def to_json(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "rows": self.rows}

    @classmethod
    def from_json(cls, record: dict, entry: str = "file") -> FileRecord:
        return cls(_field(record, "path", str, entry), _field(record, "bytes", int, entry),
                   _field(record, "sha256", str, entry), _field(record, "rows", int, entry))


@dataclass(frozen=True)
class CheckpointPin:
    """What a checkpoint's cells were scored from, fixed when its first cell landed: every later cell of it must
    match (sweep/landed/store.py refuses a different commit or weights fingerprint)."""

    model_revision: str | None = None  # the revision the spec names (a Hub branch, or a local sub-directory)
    model_commit: str | None = None  # the Hub commit it resolved to (None for a local checkpoint)
    weights_fingerprint: str | None = None
    stored_dtype: str | None = None  # the dtype the weights are stored in (not the compute dtype)

    def to_json(self) -> dict:
        return {"model_revision": self.model_revision, "model_commit": self.model_commit,
                "weights_fingerprint": self.weights_fingerprint, "stored_dtype": self.stored_dtype}

    @classmethod
    def from_json(cls, record: dict, entry: str = "pin") -> CheckpointPin:
        """A key the pin lacks is None: pins written before memsweep recorded weights fingerprints and stored dtypes
        hold fewer keys, and mean what they say."""
        return cls(**{key: _field(record, key, OPTIONAL_TEXT, entry) for key in cls.__dataclass_fields__
                      if key in record})


@dataclass(frozen=True)
class LandedPair:
    """One landing or compaction: a `sequences/` file and the `cells/` file of the same name, holding the same
    cells (`chunks`, of one checkpoint)."""

    name: str  # batch-NNNNNN (a landing) or part-NNNNNN (a compaction or an import)
    chunks: tuple[int, ...]
    sequences: FileRecord
    cells: FileRecord

    def record(self, table: str) -> FileRecord:
        """The FileRecord of `table` ("sequences" or "cells")."""
        return {"sequences": self.sequences, "cells": self.cells}[table]

    def to_json(self) -> dict:
        return {"name": self.name, "chunks": list(self.chunks), "sequences": self.sequences.to_json(),
                "cells": self.cells.to_json()}

    @classmethod
    def from_json(cls, record: dict, entry: str = "files[]") -> LandedPair:
        name = _field(record, "name", str, entry)
        chunks = tuple(_field(record, "chunks", list, entry))
        if not all(isinstance(chunk, int) and not isinstance(chunk, bool) for chunk in chunks):
            raise LedgerFormatError(f"{entry} {name}: 'chunks' holds something other than chunk ids")
        return cls(name, chunks, FileRecord.from_json(_field(record, "sequences", dict, entry), f"{entry} {name}"),
                   FileRecord.from_json(_field(record, "cells", dict, entry), f"{entry} {name}"))


@dataclass(frozen=True)
class CheckpointLedger:
    """Checkpoint `ckpt`'s commit record (`ledger/ckpt=<c>.json`): its landed pairs and its pin. Immutable: the
    writer commits a changed copy (`with_pair`, `without`)."""

    ckpt: int
    next_file: int = 0  # the number of the next pair's name: names are never reused
    pin: CheckpointPin | None = None  # None until its first cell lands (and again once no file is left)
    files: tuple[LandedPair, ...] = ()

    @property
    def chunks(self) -> set[int]:
        """The chunks of the cells this ledger lists."""
        return {chunk for pair in self.files for chunk in pair.chunks}

    def with_pair(self, pair: LandedPair, replaces: tuple[LandedPair, ...] = ()) -> CheckpointLedger:
        """This ledger listing `pair` instead of `replaces` (a compaction replaces every earlier pair)."""
        gone = {old.name for old in replaces}
        return replace(self, files=tuple(old for old in self.files if old.name not in gone) + (pair,),
                       next_file=self.next_file + 1)

    def without(self, names: set[str]) -> CheckpointLedger:
        """This ledger without the pairs named `names`; unpinned once nothing is left under the pin."""
        files = tuple(pair for pair in self.files if pair.name not in names)
        return replace(self, files=files, pin=self.pin if files else None)

    def to_json(self) -> dict:
        return {"format": LEDGER_FORMAT, "ckpt": self.ckpt, "next_file": self.next_file,
                "pin": self.pin.to_json() if self.pin is not None else None,
                "files": [pair.to_json() for pair in self.files]}

    @classmethod
    def from_json(cls, record: dict) -> CheckpointLedger:
        pin = _field(record, "pin", (dict, type(None)), "ledger")
        return cls(_field(record, "ckpt", int, "ledger"), _field(record, "next_file", int, "ledger"),
                   CheckpointPin.from_json(pin) if pin is not None else None,
                   tuple(LandedPair.from_json(pair) for pair in _field(record, "files", list, "ledger")))


@dataclass(frozen=True)
class ProbeEntry:
    """One chunk of `ledger/probes.json`: the identity of the chunk file its rows were sampled from (the data layer's
    description, sweep/data/sources.py ChunkFile; the ledger reads only its `sha256`) and the landed probe set (None
    once repair removed it: it is sampled again from the pinned file)."""

    source: dict
    file: FileRecord | None = None

    @property
    def sha256(self) -> str | None:
        return self.source.get("sha256")

    def to_json(self) -> dict:
        return {"source": self.source, "file": self.file.to_json() if self.file is not None else None}

    @classmethod
    def from_json(cls, record: dict, entry: str) -> ProbeEntry:
        file = _field(record, "file", (dict, type(None)), entry)
        return cls(_field(record, "source", dict, entry), FileRecord.from_json(file, entry) if file is not None else None)


@dataclass(frozen=True)
class ScanRecord:
    """One landed exposure scan of a chunk file: the probe chunks whose sequences it counted, its file of counts,
    and what it cost."""

    name: str  # scan-NNNNNN
    probe_chunks: tuple[int, ...]  # written as id ranges ("0-359"): a ledger of 360 scans stays small
    file: FileRecord
    probes: int  # probe sequences it looked for
    rows: int  # lines of the chunk file
    tokens: int
    bytes: int
    seconds: float
    cpu_seconds: float
    scanned_at: str  # UTC ISO 8601

    def to_json(self) -> dict:
        return {"name": self.name, "probe_chunks": id_ranges(list(self.probe_chunks)), "file": self.file.to_json(),
                "probes": self.probes, "rows": self.rows, "tokens": self.tokens, "bytes": self.bytes,
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "scanned_at": self.scanned_at}

    @classmethod
    def from_json(cls, record: dict, entry: str) -> ScanRecord:
        name = _field(record, "name", str, entry)
        where = f"{entry} {name}"
        ranges = _field(record, "probe_chunks", str, where)
        try:
            probe_chunks = tuple(parse_id_ranges(ranges))
        except ValueError:
            raise LedgerFormatError(f"{where}: 'probe_chunks' is {ranges!r}, not id ranges such as '0-359'") from None
        return cls(name, probe_chunks,
                   FileRecord.from_json(_field(record, "file", dict, where), where),
                   *(_field(record, key, int, where) for key in ("probes", "rows", "tokens", "bytes")),
                   *(float(_field(record, key, NUMBER, where)) for key in ("seconds", "cpu_seconds")),
                   _field(record, "scanned_at", str, where))


@dataclass(frozen=True)
class ExposureEntry:
    """One scanned chunk file of `ledger/exposures.json`: its identity (pinned by the first scan, as a probe set
    pins its file) and its scans, in the order they landed."""

    source: dict
    scans: tuple[ScanRecord, ...] = ()

    @property
    def sha256(self) -> str | None:
        return self.source.get("sha256")

    @property
    def probe_chunks(self) -> set[int]:
        """The probe chunks whose sequences have been counted in this file."""
        return {chunk for scan in self.scans for chunk in scan.probe_chunks}

    def to_json(self) -> dict:
        return {"source": self.source, "scans": [scan.to_json() for scan in self.scans]}

    @classmethod
    def from_json(cls, record: dict, entry: str) -> ExposureEntry:
        return cls(_field(record, "source", dict, entry),
                   tuple(ScanRecord.from_json(scan, f"{entry} scans[]") for scan in _field(record, "scans", list, entry)))


# ---- the ledgers of one output -----------------------------------------------------------------------------------


class Ledgers:
    """Every ledger of one output, read once: what has landed, where, and what it was pinned to.

    A reader builds one per read (`Ledgers.read`); the single writer keeps one and updates it as it commits
    (`commit`, `commit_probes`, `commit_exposures`), so it never re-reads its own ledgers.
    """

    def __init__(self, layout: OutputLayout, checkpoints: dict[int, CheckpointLedger],
                 probes: dict[int, ProbeEntry], exposures: dict[int, ExposureEntry] | None = None):
        self.layout = layout
        self.checkpoints = checkpoints  # ckpt -> its ledger
        self.probes = probes  # chunk -> its probe set and chunk file
        self.exposures = exposures or {}  # scanned chunk -> its scans

    @classmethod
    def read(cls, layout: OutputLayout) -> Ledgers:
        """Every ledger of the output; one not in the form this memsweep writes raises DamagedOutputError naming it."""
        checkpoints: dict[int, CheckpointLedger] = {}
        probes: dict[int, ProbeEntry] = {}
        exposures: dict[int, ExposureEntry] = {}
        for path in files_in(layout.ledger_dir):
            match = LEDGER_FILE.match(path.name)
            if match:
                checkpoints[int(match.group(1))] = _parsed(path, CheckpointLedger.from_json)
        if layout.probe_ledger.exists():
            probes = _parsed(layout.probe_ledger, _probe_entries)
        if layout.exposure_ledger.exists():
            exposures = _parsed(layout.exposure_ledger, _exposure_entries)
        return cls(layout, checkpoints, probes, exposures)

    @staticmethod
    def unreadable(layout: OutputLayout) -> list[Path]:
        """The files in `ledger/` that cannot vouch for anything: not JSON, or a ledger not in the form this memsweep
        writes."""
        parsers = {layout.probe_ledger.name: _probe_entries, layout.exposure_ledger.name: _exposure_entries}
        broken = []
        for path in files_in(layout.ledger_dir):
            parse = CheckpointLedger.from_json if LEDGER_FILE.match(path.name) else parsers.get(path.name, _any_json)
            try:
                _parsed(path, parse)
            except DamagedOutputError:
                broken.append(path)
        return broken

    def ledger(self, ckpt: int) -> CheckpointLedger:
        """Checkpoint `ckpt`'s ledger (an empty one before its first landing)."""
        return self.checkpoints.get(ckpt) or CheckpointLedger(ckpt)

    def commit(self, ledger: CheckpointLedger) -> None:
        """The commit point of every landing, compaction and repair of checkpoint `ledger.ckpt`."""
        write_json(self.layout, ledger.to_json(), self.layout.ledger_path(ledger.ckpt))
        self.checkpoints[ledger.ckpt] = ledger

    def commit_probes(self, entries: dict[int, ProbeEntry]) -> None:
        """The commit point of every probe set landed or forgotten."""
        write_json(self.layout, _chunks_json(entries), self.layout.probe_ledger)
        self.probes = dict(entries)

    def commit_exposures(self, entries: dict[int, ExposureEntry]) -> None:
        """The commit point of every exposure scan landed or forgotten."""
        write_json(self.layout, _chunks_json(entries), self.layout.exposure_ledger)
        self.exposures = dict(entries)

    def scanned_probe_chunks(self, seen_chunk: int) -> set[int]:
        """The probe chunks whose sequences have been counted in chunk file `seen_chunk`."""
        entry = self.exposures.get(seen_chunk)
        return entry.probe_chunks if entry is not None else set()

    def sampled_chunks(self) -> list[int]:
        """The chunks whose probe set has landed, in order."""
        return sorted(chunk for chunk, entry in self.probes.items() if entry.file is not None)

    def scan_files(self) -> list[tuple[int, FileRecord]]:
        """(scanned chunk, record) of every landed exposure scan."""
        return [(chunk, scan.file) for chunk, entry in sorted(self.exposures.items()) for scan in entry.scans]

    def done_cells(self) -> set[tuple[int, int]]:
        """(ckpt, chunk) of every cell a ledger lists."""
        return {(ckpt, chunk) for ckpt, ledger in self.checkpoints.items() for chunk in ledger.chunks}

    def has_landed_results(self) -> bool:
        return any(ledger.files for ledger in self.checkpoints.values()) or bool(self.scan_files())

    def pin(self, ckpt: int) -> CheckpointPin | None:
        """What checkpoint `ckpt` was pinned to when its first cell landed (None before any landing)."""
        ledger = self.checkpoints.get(ckpt)
        return ledger.pin if ledger else None

    def pins(self) -> dict[int, CheckpointPin]:
        return {ckpt: ledger.pin for ckpt, ledger in self.checkpoints.items() if ledger.pin is not None}

    def table_files(self, table: str, only_ckpt: int | None = None) -> list[tuple[int, FileRecord]]:
        """(ckpt, record) of every listed file of `table` ("sequences" or "cells"), by checkpoint."""
        return [(ckpt, pair.record(table)) for ckpt, ledger in sorted(self.checkpoints.items())
                if only_ckpt is None or ckpt == only_ckpt for pair in ledger.files]

    def probe_files(self) -> list[tuple[int, FileRecord]]:
        return [(chunk, entry.file) for chunk, entry in sorted(self.probes.items()) if entry.file is not None]

    def landed_files(self) -> list[FileRecord]:
        """Every data file a ledger lists (sequences, cells, probes, exposure scans), as recorded."""
        records = [record for table in TABLES for _, record in self.table_files(table)]
        return (sorted(records, key=lambda r: r.path) + [record for _, record in self.probe_files()]
                + [record for _, record in self.scan_files()])


def _parsed(path: Path, parse):
    """`parse` of the JSON ledger at `path`; a ledger not in the form this memsweep writes is damage, named."""
    try:
        return parse(read_json(path))
    except LedgerFormatError as error:
        raise DamagedOutputError(f"{path}: {error}; run `memsweep verify --repair` on the output") from None


def _by_chunk(ledger: dict, parse) -> dict:
    """A probe or exposure ledger's entries by chunk id (its JSON keys are the ids as text)."""
    chunks = _field(ledger, "chunks", dict, "ledger")
    wrong = [key for key in chunks if not key.isdigit()]
    if wrong:
        raise LedgerFormatError(f"chunks: key {wrong[0]!r} is not a chunk id")
    return {int(chunk): parse(entry, f"chunk {chunk}") for chunk, entry in chunks.items()}


def _any_json(payload):
    return payload


def _probe_entries(ledger: dict) -> dict[int, ProbeEntry]:
    return _by_chunk(ledger, ProbeEntry.from_json)


def _exposure_entries(ledger: dict) -> dict[int, ExposureEntry]:
    return _by_chunk(ledger, ExposureEntry.from_json)


def _chunks_json(entries: dict) -> dict:
    return {"format": LEDGER_FORMAT, "chunks": {str(chunk): entries[chunk].to_json() for chunk in sorted(entries)}}
