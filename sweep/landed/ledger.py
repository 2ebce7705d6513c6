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
This module is what all three share: paths, records, reading ledgers and committing them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
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
class FileRecord:
    """A landed file as its ledger records it; `path` is relative to the output."""

    path: str
    bytes: int
    sha256: str
    rows: int

    def to_dict(self) -> dict:
        return asdict(self)


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


def empty_ledger(ckpt: int) -> dict:
    return {"format": LEDGER_FORMAT, "ckpt": ckpt, "next_file": 0, "pin": None, "files": []}


def listed_chunks(ledger: dict) -> set[int]:
    """The chunks of the cells one checkpoint's ledger lists."""
    return {chunk for entry in ledger["files"] for chunk in entry["chunks"]}


class Ledgers:
    """Every ledger of one output, read once: what has landed, where, and what it was pinned to.

    A reader builds one per read (`Ledgers.read`); the single writer keeps one and updates it as it commits
    (`commit`, `commit_probes`), so it never re-reads its own ledgers.
    """

    def __init__(self, layout: OutputLayout, checkpoints: dict[int, dict], probes: dict[int, dict],
                 exposures: dict[int, dict] | None = None):
        self.layout = layout
        self.checkpoints = checkpoints  # ckpt -> ledger
        self.probes = probes  # chunk -> {"source": chunk file identity (pin), "file": FileRecord dict or None}
        # scanned chunk -> {"source": chunk file identity (pin), "scans": [{"name", "probe_chunks", "file": FileRecord
        # dict, "probes", "rows", "tokens", "bytes", "seconds", "cpu_seconds", "scanned_at"}, ...]}
        self.exposures = exposures or {}

    @classmethod
    def read(cls, layout: OutputLayout) -> Ledgers:
        checkpoints = {}
        for path in files_in(layout.ledger_dir):
            match = LEDGER_FILE.match(path.name)
            if match:
                checkpoints[int(match.group(1))] = read_json(path)
        probes, exposures = {}, {}
        if layout.probe_ledger.exists():
            probes = {int(chunk): entry for chunk, entry in read_json(layout.probe_ledger)["chunks"].items()}
        if layout.exposure_ledger.exists():
            exposures = {int(chunk): entry for chunk, entry in read_json(layout.exposure_ledger)["chunks"].items()}
        return cls(layout, checkpoints, probes, exposures)

    def ledger(self, ckpt: int) -> dict:
        """Checkpoint `ckpt`'s ledger (a copy to edit and commit): `pin`, `files`, `next_file`."""
        return json.loads(json.dumps(self.checkpoints.get(ckpt) or empty_ledger(ckpt)))

    def commit(self, ckpt: int, ledger: dict) -> None:
        """The commit point of every landing, compaction and repair of checkpoint `ckpt`."""
        write_json(self.layout, ledger, self.layout.ledger_path(ckpt))
        self.checkpoints[ckpt] = ledger

    def commit_probes(self, entries: dict[int, dict]) -> None:
        payload = {"format": LEDGER_FORMAT, "chunks": {str(chunk): entries[chunk] for chunk in sorted(entries)}}
        write_json(self.layout, payload, self.layout.probe_ledger)
        self.probes = dict(entries)

    def commit_exposures(self, entries: dict[int, dict]) -> None:
        """The commit point of every exposure scan landed or forgotten."""
        payload = {"format": LEDGER_FORMAT, "chunks": {str(chunk): entries[chunk] for chunk in sorted(entries)}}
        write_json(self.layout, payload, self.layout.exposure_ledger)
        self.exposures = dict(entries)

    def scanned_probe_chunks(self, seen_chunk: int) -> set[int]:
        """The probe chunks whose sequences have been counted in chunk file `seen_chunk`."""
        entry = self.exposures.get(seen_chunk) or {}
        return {chunk for scan in entry.get("scans", []) for chunk in parse_id_ranges(scan["probe_chunks"])}

    def scan_files(self) -> list[tuple[int, FileRecord]]:
        """(scanned chunk, record) of every landed exposure scan."""
        return [(chunk, FileRecord(**scan["file"])) for chunk, entry in sorted(self.exposures.items())
                for scan in entry.get("scans", [])]

    def done_cells(self) -> set[tuple[int, int]]:
        """(ckpt, chunk) of every cell a ledger lists."""
        return {(ckpt, chunk) for ckpt, ledger in self.checkpoints.items() for chunk in listed_chunks(ledger)}

    def has_landed_results(self) -> bool:
        return any(ledger["files"] for ledger in self.checkpoints.values()) or bool(self.scan_files())

    def pin(self, ckpt: int) -> dict | None:
        """What checkpoint `ckpt` was pinned to when its first cell landed: model_revision, model_commit,
        weights_fingerprint, stored_dtype (None before any landing)."""
        ledger = self.checkpoints.get(ckpt)
        return ledger["pin"] if ledger else None

    def pins(self) -> dict[int, dict]:
        return {ckpt: ledger["pin"] for ckpt, ledger in self.checkpoints.items() if ledger.get("pin")}

    def table_files(self, table: str, only_ckpt: int | None = None) -> list[tuple[int, FileRecord]]:
        """(ckpt, record) of every listed file of `table` ("sequences" or "cells"), by checkpoint."""
        return [(ckpt, FileRecord(**entry[table])) for ckpt, ledger in sorted(self.checkpoints.items())
                if only_ckpt is None or ckpt == only_ckpt for entry in ledger["files"]]

    def probe_files(self) -> list[tuple[int, FileRecord]]:
        return [(chunk, FileRecord(**entry["file"])) for chunk, entry in sorted(self.probes.items())
                if entry.get("file")]

    def landed_files(self) -> list[FileRecord]:
        """Every data file a ledger lists (sequences, cells, probes, exposure scans), as recorded."""
        records = [record for table in TABLES for _, record in self.table_files(table)]
        return (sorted(records, key=lambda r: r.path) + [record for _, record in self.probe_files()]
                + [record for _, record in self.scan_files()])
