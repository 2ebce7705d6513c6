"""`memsweep verify OUTPUT [--repair]`: check a landed output against its ledgers, and heal it.

Every landed file was recorded when it landed (size, sha256, rows; see sweep/store.py). Verification
re-reads all of them (about 1.4 GB at 360 x 360 x 1000: seconds from the page cache) and reports, by name:

- damaged: a listed file whose size, Parquet footer, row count or sha256 differs from its record;
- missing: a listed file that is gone;
- foreign: a file under sequences/, cells/ or probes/ that no ledger lists (a stray copy, an editor's
  backup): never read as data, but confusing for anyone who reads the folder directly.

`--repair` takes the writer lock, removes each damaged or missing file's ledger entry (and its twin: a
sequences file and the cells file of the same name carry the same cells) and deletes foreign files, so the
next `memsweep run` of the same spec recomputes exactly the cells that were lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sweep.store import DamagedOutputError, ResultStore
from sweep.writer_lock import writer_lock


@dataclass
class VerifyReport:
    output: Path
    files_checked: int = 0
    bytes_checked: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what is wrong)
    missing: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    broken_ledgers: list[str] = field(default_factory=list)
    repaired_cells: list[tuple[int, int]] = field(default_factory=list)
    removed_foreign: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.missing or self.foreign or self.broken_ledgers)

    def describe(self) -> str:
        lines = [f"{self.output}: {self.files_checked} landed files checked "
                 f"({self.bytes_checked / 1e6:,.1f} MB)"]
        lines += [f"DAMAGED {path}: {why}" for path, why in self.damaged]
        lines += [f"MISSING {path}" for path in self.missing]
        lines += [f"FOREIGN {path} (not listed in any ledger; never read as data)" for path in self.foreign]
        lines += [f"BROKEN LEDGER {path}" for path in self.broken_ledgers]
        if self.repaired:
            cells = ", ".join(f"({c}, {j})" for c, j in self.repaired_cells[:10])
            more = f" and {len(self.repaired_cells) - 10} more" if len(self.repaired_cells) > 10 else ""
            lines.append(f"repaired: {len(self.repaired_cells)} cells will be recomputed by the next run"
                         + (f": {cells}{more}" if cells else "") + f"; {len(self.removed_foreign)} foreign files removed")
        elif self.ok:
            lines.append("ok: every landed file matches its record")
        else:
            lines.append("run `memsweep verify OUTPUT --repair` to remove them; the next run recomputes their cells")
        return "\n".join(lines)


def verify_output(output: Path, repair: bool = False) -> VerifyReport:
    """Check every landed file of `output` (see the module docstring); with `repair`, heal the output."""
    output = Path(output)
    store = ResultStore(output)
    if not store.manifest_path.exists():
        raise ValueError(f"{output}: no manifest.json (not a memsweep output)")
    store.read_manifest()
    report = VerifyReport(output)
    if repair:
        with writer_lock(output):
            _check(store, report)
            _repair(store, report)
    else:
        _check(store, report)
    return report


def _check(store: ResultStore, report: VerifyReport) -> None:
    for ledger in sorted(store.ledger_dir.glob("*.json")) if store.ledger_dir.is_dir() else []:
        try:
            ResultStore._read_json(ledger)
        except DamagedOutputError:
            report.broken_ledgers.append(ledger.relative_to(store.output).as_posix())
    if report.broken_ledgers:
        return  # a ledger that cannot be read cannot vouch for anything; repair starts there
    records = store.landed_files()
    report.files_checked = len(records)
    report.bytes_checked = sum(record.bytes for record in records)
    for record, problem in store.check_landed(deep=True):
        if problem == "missing":
            report.missing.append(record.path)
        else:
            report.damaged.append((record.path, problem))
    report.foreign = [path.relative_to(store.output).as_posix() for path in store.foreign_files()]


def _repair(store: ResultStore, report: VerifyReport) -> None:
    for ledger in report.broken_ledgers:
        # A ledger we cannot parse: its files can no longer be trusted, so drop it; recover() then deletes
        # the files it listed (they are ours and unlisted), and their cells are recomputed.
        (store.output / ledger).unlink()
    store.recover()
    lost = {path for path, _ in report.damaged} | set(report.missing)
    report.repaired_cells = store.forget_files(lost) if lost else []
    for path in store.foreign_files():
        path.unlink()
        report.removed_foreign.append(path.relative_to(store.output).as_posix())
    report.repaired = True
