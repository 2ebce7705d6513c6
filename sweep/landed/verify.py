"""Integrity of a landed output: every landed file against its ledger record, and the files no ledger lists.
It checks and reports; it never writes (recovery and repair are the store's: sweep/landed/store.py).

Every landed file was recorded when it landed (size, sha256, rows; see sweep/landed/ledger.py). Checking re-reads
all of them (about 1.4 GB at 360 x 360 x 1000: seconds from the page cache) and reports, by name:

- damaged: a listed file whose size, Parquet footer, row count or sha256 differs from its record;
- missing: a listed file that is gone;
- foreign: a file under sequences/, cells/, probes/ or exposures/ that no ledger lists (a stray copy, an editor's
  backup): never read as data, but confusing for anyone who reads the folder directly.

`verify_output` is `memsweep verify`; with `--repair` the store (`repair_output`) takes the writer lock, makes the
same check and removes each damaged or missing file's ledger entry (and its twin: a sequences file and the cells
file of the same name carry the same cells) and the foreign files, so the next `memsweep run` of the same spec
recomputes exactly the cells that were lost. `run` refuses to skip work an output claims to hold until every file
it relies on passes the deep check (`refuse_damaged_output`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import polars as pl

from actors.protocol import one_line
from sweep.landed.ledger import (TABLES, DamagedOutputError, FileRecord, Ledgers, OutputLayout, id_ranges,
                                  read_manifest)
from sweep.landed.reader import open_output, output_layout

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
    """Files under sequences/, cells/, probes/ or exposures/ that no ledger lists (named otherwise than landed data,
    or the store's recovery would have deleted them)."""
    layout = output.layout
    listed = {record.path for record in output.ledgers.landed_files()}
    foreign = []
    for folder in (layout.output / "sequences", layout.output / "cells", layout.probes_dir, layout.exposures_dir):
        if folder.is_dir():
            foreign += [p for p in folder.rglob("*") if p.is_file() and layout.relative(p) not in listed]
    return sorted(foreign)


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
        for pair in ledger.files:
            if path in (pair.record(table).path for table in TABLES):
                chunks = sorted(pair.chunks)
                plural = "s" if len(chunks) != 1 else ""
                return Redo("cells", f"its {len(chunks)} cell{plural}: checkpoint {ckpt} x chunk{plural} "
                                     f"{id_ranges(chunks)}")
    for chunk, entry in sorted(ledgers.probes.items()):
        if entry.file is not None and entry.file.path == path:
            return Redo("probe set", f"the probe set of chunk {chunk}, sampled again from its pinned chunk file")
    for seen_chunk, entry in sorted(ledgers.exposures.items()):
        for scan in entry.scans:
            if scan.file.path == path:
                plural = "s" if len(scan.probe_chunks) != 1 else ""
                return Redo("exposure scan", f"the exposure scan of chunk file {seen_chunk} for the sequences of "
                                             f"chunk{plural} {id_ranges(list(scan.probe_chunks))}")
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


def verify_output(output: Path) -> VerifyReport:
    """`memsweep verify OUTPUT`: check every landed file of `output` (see the module docstring); writes nothing."""
    read_manifest(output_layout(output))  # a memsweep output with a manifest this memsweep reads, or a refusal
    return check_output(output)


def check_output(output: Path) -> VerifyReport:
    """What is damaged, missing, foreign or unreadable in the output at `output` (a memsweep output)."""
    layout = OutputLayout(Path(output))
    report = VerifyReport(layout.output)
    report.broken_ledgers = [layout.relative(path) for path in Ledgers.unreadable(layout)]
    if report.broken_ledgers:
        return report  # a ledger that cannot be read cannot vouch for anything; repair starts there
    landed = open_output(layout.output)
    records = landed.ledgers.landed_files()
    report.files_checked = len(records)
    report.bytes_checked = sum(record.bytes for record in records)
    for record, problem in check_landed(landed, deep=True):
        if problem == "missing":
            report.missing.append(record.path)
        else:
            report.damaged.append((record.path, problem))
        redo = what_the_next_run_redoes(landed.ledgers, record.path)
        if redo is not None:
            report.redo[record.path] = redo
    report.foreign = [layout.relative(path) for path in foreign_files(landed)]
    return report
