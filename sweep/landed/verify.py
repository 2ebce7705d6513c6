"""Integrity of a landed output: landed files against their ledger records, recovery after a crash, repair.

Every landed file was recorded when it landed (size, sha256, rows; see sweep/landed/ledger.py). Checking re-reads
all of them (about 1.4 GB at 360 x 360 x 1000: seconds from the page cache) and reports, by name:

- damaged: a listed file whose size, Parquet footer, row count or sha256 differs from its record;
- missing: a listed file that is gone;
- foreign: a file under sequences/, cells/, probes/ or exposures/ that no ledger lists (a stray copy, an editor's
  backup): never read as data, but confusing for anyone who reads the folder directly.

`recover` brings an output back to a consistent state after a crash at any instruction (the writer runs it
before it lands anything); `memsweep verify --repair` takes the writer lock, removes each damaged or missing
file's ledger entry (and its twin: a sequences file and the cells file of the same name carry the same cells)
and deletes foreign files, so the next `memsweep run` of the same spec recomputes exactly the cells that were
lost. `run` refuses to skip work an output claims to hold until every file it relies on passes the deep check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import polars as pl

from actors.protocol import one_line
from sweep.landed.ledger import (TABLES, DamagedOutputError, FileRecord, Ledgers, OutputLayout, files_in, id_ranges,
                                  parse_id_ranges, read_json)
from sweep.landed.reader import open_output
from sweep.landed.writer_lock import writer_lock

log = logging.getLogger("memsweep")


class LedgeredOutput(Protocol):
    """An output and its ledgers: the writer (sweep/landed/store.py ResultStore) or a reader (sweep/landed/reader.py)."""

    layout: OutputLayout
    ledgers: Ledgers


def file_sha256(path: Path, block: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_problem(layout: OutputLayout, record: FileRecord, deep: bool) -> str | None:
    """What is wrong with one listed file, or None: missing, size, Parquet footer and row count (cheap), and
    with `deep` its sha256 (reads every byte)."""
    path = layout.absolute(record)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record.bytes:
        return f"size {size} bytes, recorded {record.bytes}"
    try:
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    except Exception as error:  # noqa: BLE001 - polars/arrow raise several types for a bad file
        return f"unreadable Parquet ({one_line(error, 'first')})"
    if rows != record.rows:
        return f"{rows} rows, recorded {record.rows}"
    if deep:
        digest = file_sha256(path)
        if digest != record.sha256:
            return f"sha256 {digest[:12]}.. differs from recorded {record.sha256[:12]}.."
    return None


def check_landed(output: LedgeredOutput, deep: bool = True) -> list[tuple[FileRecord, str]]:
    """(record, problem) for every listed file that fails the check."""
    problems = []
    for record in output.ledgers.landed_files():
        problem = file_problem(output.layout, record, deep)
        if problem:
            problems.append((record, problem))
    return problems


def refuse_damaged_output(output: LedgeredOutput) -> None:
    """`run` skips landed cells, so it first checks that what it relies on is intact (sha256 of every file)."""
    began = time.perf_counter()
    problems = check_landed(output, deep=True)
    log.info("verified %d landed files in %.1f s", len(output.ledgers.landed_files()), time.perf_counter() - began)
    if problems:
        root = output.layout.output
        named = "; ".join(f"{record.path}: {problem}" for record, problem in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DamagedOutputError(f"{root}: {len(problems)} landed files are damaged: {named}{more}; run "
                                 f"`memsweep verify {root} --repair` to remove them (it says what the next run "
                                 "redoes for each)")


def foreign_files(output: LedgeredOutput) -> list[Path]:
    """Files under sequences/, cells/, probes/ or exposures/ that no ledger lists (and `recover` would not delete)."""
    layout = output.layout
    listed = {record.path for record in output.ledgers.landed_files()}
    foreign = []
    for folder in (layout.output / "sequences", layout.output / "cells", layout.probes_dir, layout.exposures_dir):
        if folder.is_dir():
            foreign += [p for p in folder.rglob("*") if p.is_file() and layout.relative(p) not in listed]
    return sorted(foreign)


def recover(output: LedgeredOutput) -> None:
    """Bring the directory back to a consistent state after a crash at any point.

    1. Leftover temp files are deleted.
    2. Data files of ours (`batch-*`, `part-*`, `probe-*`) that no ledger lists are deleted: a landing or
       compaction cut short before (or after) its ledger commit.
    3. Failure records of cells that have since landed are deleted.
    Files with other names are left alone (`foreign_files` reports them).
    """
    layout = output.layout
    if layout.tmp_dir.is_dir():
        for entry in layout.tmp_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                os.unlink(entry)
    listed = {record.path for record in output.ledgers.landed_files()}
    for path in layout.named_like_data():
        if layout.relative(path) not in listed:
            os.unlink(path)
    done = output.ledgers.done_cells()
    for cell, path in layout.failure_files():
        if cell in done:
            os.unlink(path)


def forget_files(ledgers: Ledgers, paths: set[str]) -> list[tuple[int, int]]:
    """Remove every ledger entry holding one of `paths` (relative) and delete its files: the cells it carried
    become to-do again (a probe set is rebuilt, keeping its pinned chunk file; an exposure scan is made again).
    Returns those cells."""
    layout = ledgers.layout
    dropped: list[tuple[int, int]] = []
    for ckpt in sorted(ledgers.checkpoints):
        ledger = ledgers.ledger(ckpt)
        doomed = [e for e in ledger["files"] if {e["sequences"]["path"], e["cells"]["path"]} & paths]
        if not doomed:
            continue
        names = {entry["name"] for entry in doomed}
        ledger["files"] = [e for e in ledger["files"] if e["name"] not in names]
        if not ledger["files"]:
            ledger["pin"] = None  # nothing landed under the pin any more
        ledgers.commit(ckpt, ledger)
        for entry in doomed:
            dropped += [(ckpt, chunk) for chunk in entry["chunks"]]
            for table in TABLES:
                (layout.output / entry[table]["path"]).unlink(missing_ok=True)
    entries = dict(ledgers.probes)
    hit = [chunk for chunk, entry in entries.items() if entry.get("file") and entry["file"]["path"] in paths]
    if hit:
        for chunk in hit:
            (layout.output / entries[chunk]["file"]["path"]).unlink(missing_ok=True)
            entries[chunk] = {**entries[chunk], "file": None}
        ledgers.commit_probes(entries)
    scans = {chunk: {**entry, "scans": [scan for scan in entry["scans"] if scan["file"]["path"] not in paths]}
             for chunk, entry in ledgers.exposures.items()}
    if scans != ledgers.exposures:
        for entry in ledgers.exposures.values():
            for scan in entry["scans"]:
                if scan["file"]["path"] in paths:
                    (layout.output / scan["file"]["path"]).unlink(missing_ok=True)
        ledgers.commit_exposures(scans)
    return sorted(dropped)


@dataclass(frozen=True)
class Redo:
    """What the next `memsweep run` of the spec redoes for one removed file."""

    kind: Literal["cells", "probe set", "exposure scan"]
    what: str  # e.g. "its 2 cells: checkpoint 3 x chunks 0-1"


def what_the_next_run_redoes(ledgers: Ledgers, path: str) -> Redo | None:
    """What the next run redoes once the listed file `path` (relative) is removed: for a sequences or cells file, its
    cells; for a probe set, the sampling of its chunk from the pinned chunk file; for an exposure scan, that scan.
    None when no ledger lists `path`."""
    for ckpt, ledger in sorted(ledgers.checkpoints.items()):
        for entry in ledger["files"]:
            if path in (entry[table]["path"] for table in TABLES):
                chunks = sorted(entry["chunks"])
                plural = "s" if len(chunks) != 1 else ""
                return Redo("cells", f"its {len(chunks)} cell{plural}: checkpoint {ckpt} x chunk{plural} "
                                     f"{id_ranges(chunks)}")
    for chunk, entry in sorted(ledgers.probes.items()):
        if (entry.get("file") or {}).get("path") == path:
            return Redo("probe set", f"the probe set of chunk {chunk}, sampled again from its pinned chunk file")
    for seen_chunk, entry in sorted(ledgers.exposures.items()):
        for scan in entry.get("scans", []):
            if scan["file"]["path"] == path:
                plural = "s" if len(parse_id_ranges(scan["probe_chunks"])) != 1 else ""
                return Redo("exposure scan", f"the exposure scan of chunk file {seen_chunk} for the sequences of "
                                             f"chunk{plural} {scan['probe_chunks']}")
    return None


@dataclass
class VerifyReport:
    output: Path
    files_checked: int = 0
    bytes_checked: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what is wrong)
    missing: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    broken_ledgers: list[str] = field(default_factory=list)
    redo: dict[str, Redo] = field(default_factory=dict)  # damaged or missing file -> what the next run redoes
    repaired_cells: list[tuple[int, int]] = field(default_factory=list)
    removed_foreign: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.foreign or self.broken_ledgers)

    def describe(self) -> str:
        lines = [f"{self.output}: {self.files_checked} landed files checked "
                 f"({self.bytes_checked / 1e6:,.1f} MB)"]
        lines += [f"DAMAGED {path}: {why}{self._redone(path)}" for path, why in self.damaged]
        lines += [f"MISSING {path}{self._redone(path)}" for path in self.missing]
        lines += [f"FOREIGN {path} (not listed in any ledger; never read as data)" for path in self.foreign]
        lines += [f"BROKEN LEDGER {path}" for path in self.broken_ledgers]
        if self.repaired:
            cells = ", ".join(f"({c}, {j})" for c, j in self.repaired_cells[:10])
            more = f" and {len(self.repaired_cells) - 10} more" if len(self.repaired_cells) > 10 else ""
            besides = [redo.what for redo in self.redo.values() if redo.kind != "cells"]
            lines.append(f"repaired: {len(self.repaired_cells)} cells will be recomputed by the next run"
                         + (f": {cells}{more}" if cells else "")
                         + (f"; it also redoes {'; '.join(besides)}" if besides else "")
                         + f"; {len(self.removed_foreign)} foreign files removed")
        elif self.ok:
            lines.append("ok: every landed file matches its record")
        else:
            lines.append("run `memsweep verify OUTPUT --repair` to remove them; the next run of the spec then redoes "
                         "what each damaged or missing file held (said above)"
                         if self.damaged or self.missing else "run `memsweep verify OUTPUT --repair` to remove them")
        return "\n".join(lines)

    def _redone(self, path: str) -> str:
        return f" (the next run redoes {self.redo[path].what})" if path in self.redo else ""


def verify_output(output: Path, repair: bool = False) -> VerifyReport:
    """Check every landed file of `output` (see the module docstring); with `repair`, heal the output."""
    output = Path(output)
    open_output(output)  # a memsweep output with a manifest this memsweep reads, or a one-line refusal
    layout = OutputLayout(output)
    report = VerifyReport(output)
    if repair:
        with writer_lock(output):
            _check(layout, report)
            _repair(layout, report)
    else:
        _check(layout, report)
    return report


def _check(layout: OutputLayout, report: VerifyReport) -> None:
    for ledger in files_in(layout.ledger_dir):
        try:
            read_json(ledger)
        except DamagedOutputError:
            report.broken_ledgers.append(layout.relative(ledger))
    if report.broken_ledgers:
        return  # a ledger that cannot be read cannot vouch for anything; repair starts there
    output = open_output(layout.output)
    records = output.ledgers.landed_files()
    report.files_checked = len(records)
    report.bytes_checked = sum(record.bytes for record in records)
    for record, problem in check_landed(output, deep=True):
        if problem == "missing":
            report.missing.append(record.path)
        else:
            report.damaged.append((record.path, problem))
        redo = what_the_next_run_redoes(output.ledgers, record.path)
        if redo is not None:
            report.redo[record.path] = redo
    report.foreign = [layout.relative(path) for path in foreign_files(output)]


def _repair(layout: OutputLayout, report: VerifyReport) -> None:
    for ledger in report.broken_ledgers:
        # A ledger we cannot parse: its files can no longer be trusted, so drop it; recovery then deletes the
        # files it listed (they are ours and unlisted), and their cells are recomputed.
        (layout.output / ledger).unlink()
    output = open_output(layout.output)
    recover(output)
    lost = {path for path, _ in report.damaged} | set(report.missing)
    report.repaired_cells = forget_files(output.ledgers, lost) if lost else []
    for path in foreign_files(output):
        path.unlink()
        report.removed_foreign.append(layout.relative(path))
    report.repaired = True
