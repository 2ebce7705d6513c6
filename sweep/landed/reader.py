"""The one reader of a landed output: `open_output(path)` -> tables as Polars LazyFrames, read-only.

Everything that reads results goes through here: `memsweep query`, `show`, `report`, `verify`, the analyses
and the explorer. Only the files a ledger lists are read (a stray copy in a partition is never data), each
checked against its recorded size first (DamagedOutputError names a file that is not; its sha256 is the job
of `memsweep verify` and of `run`, which hash every file before they trust it). Nothing here writes or
recovers, so it is safe to read an output while a sweep is landing into it: a checkpoint whose compaction is
mid-swap at that instant reads as its old files or its new ones.

Cost at 360 x 360 x 1000: opening reads 361 small ledgers; `cells()` scans 360 files of a few KB,
`sequences(ckpt)` one checkpoint's files (a filter on `ckpt` after `sequences()` also prunes to them).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import polars as pl

from sweep.errors import MemsweepError
from sweep.landed.exposure_totals import files_scanned, sequence_totals
from sweep.landed.ledger import CheckpointPin, FileRecord, Ledgers, OutputLayout, read_json, read_manifest
from sweep.landed.schema import (CELL_SCHEMA, EXPOSURE_COUNT_SCHEMA, EXPOSURE_SCAN_SCHEMA, PROBE_SCHEMA,
                                 SEQUENCE_SCHEMA)
from sweep.spec import SweepSpec, identity_hash, parse_id_list, recorded_spec


class OutputNotFoundError(MemsweepError, FileNotFoundError):
    """The path is not a memsweep output (missing, or without a manifest)."""


def open_output(path: str | Path) -> LandedOutput:
    """The landed output at `path`, read-only; raises OutputNotFoundError if it is not one."""
    layout = output_layout(path)
    return LandedOutput(layout, read_manifest(layout), Ledgers.read(layout))


def output_layout(path: str | Path) -> OutputLayout:
    """The layout of the memsweep output at `path` (its ledgers unread); OutputNotFoundError if it is not one."""
    output = Path(path)
    if not output.is_dir():
        raise OutputNotFoundError(f"{output}: no such output folder (the directory does not exist)")
    layout = OutputLayout(output)
    if not layout.manifest.exists():
        raise OutputNotFoundError(f"{output}: no manifest.json (not a memsweep output)")
    return layout


def scan_listed(layout: OutputLayout, records: list[FileRecord], schema: dict[str, pl.DataType],
                partitioned: bool) -> pl.LazyFrame:
    """The listed files as one LazyFrame of `schema` (with `ckpt` Int32 first when `partitioned` by it).

    Each file's size is checked against its record (one stat). Columns a file lacks (written before they
    existed) read as typed nulls.
    """
    files = []
    for record in records:
        path = layout.absolute(record)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise layout.damaged(path, "listed in the ledger but missing") from None
        if size != record.bytes:
            raise layout.damaged(path, f"size {size} bytes, recorded {record.bytes}")
        files.append(str(path))
    full_schema = {"ckpt": pl.Int32(), **schema} if partitioned else schema
    if not files:
        return pl.LazyFrame(schema=full_schema)
    hive = dict(hive_schema={"ckpt": pl.Int32}, hive_partitioning=True) if partitioned else {}
    frame = pl.scan_parquet(files, schema=schema, missing_columns="insert", extra_columns="ignore", **hive)
    return frame.select(*full_schema)


class LandedOutput:
    """One output's landed tables, as of the moment it was opened (see the module docstring)."""

    def __init__(self, layout: OutputLayout, manifest: dict, ledgers: Ledgers):
        self.layout = layout
        self.path = layout.output
        self.manifest = manifest
        self.ledgers = ledgers

    @property
    def identity_hash(self) -> str:
        return identity_hash(self.manifest["identity"])

    @property
    def spec(self) -> dict:
        """The spec of the latest run, as it was written into the manifest."""
        return self.manifest.get("spec") or {}

    @cached_property
    def sweep_spec(self) -> SweepSpec | None:
        """The latest run's spec validated again (sweep/spec.py `recorded_spec`), once per opening; None when the
        manifest holds no whole spec (a synthetic output's)."""
        return recorded_spec(self.spec)

    def planned_cells(self) -> set[tuple[int, int]]:
        """The cells the latest run's spec asks for (its `cells` selection applied); every checkpoint x chunk it
        lists when it is not a whole spec; none when it lists none."""
        if self.sweep_spec is not None:
            return set(self.sweep_spec.cell_list())
        try:
            ckpts, chunks = parse_id_list(self.spec.get("checkpoints", [])), parse_id_list(self.spec.get("chunks", []))
        except (ValueError, TypeError):
            return set()
        return {(c, j) for c in ckpts for j in chunks}

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.path.name)

    @property
    def continuation_len(self) -> int:
        return int(self.manifest["identity"].get("memorization.continuation_len") or 32)

    @property
    def prompt_len(self) -> int:
        return int(self.manifest["identity"].get("memorization.prompt_len") or 32)

    def sequences(self, ckpt: int | None = None) -> pl.LazyFrame:
        """One row per (ckpt, chunk, row) (of checkpoint `ckpt` alone if given): `ckpt` then SEQUENCE_SCHEMA.

        A file landed before `seen` existed reads it as `chunk <= ckpt`: such an output has no timeline section, and
        on a chunk-indexed timeline that is exactly what seen is (sweep/timeline.py)."""
        records = [record for _, record in self.ledgers.table_files("sequences", ckpt)]
        return scan_listed(self.layout, records, SEQUENCE_SCHEMA, partitioned=True).with_columns(
            pl.coalesce("seen", pl.col("chunk") <= pl.col("ckpt")).alias("seen"))

    def cells(self, ckpt: int | None = None) -> pl.LazyFrame:
        """One row per landed cell (of checkpoint `ckpt` alone if given): `ckpt` then CELL_SCHEMA (a file landed
        before `seen_fraction` existed reads it from `seen`: 1.0 or 0.0, as on Amber's timeline)."""
        records = [record for _, record in self.ledgers.table_files("cells", ckpt)]
        return scan_listed(self.layout, records, CELL_SCHEMA, partitioned=True).with_columns(
            pl.coalesce("seen_fraction", pl.col("seen").cast(pl.Float64)).alias("seen_fraction"))

    def probes(self) -> pl.LazyFrame:
        """One row per sampled (chunk, row): PROBE_SCHEMA (tokens = prompt followed by the true continuation)."""
        records = [record for _, record in self.ledgers.probe_files()]
        return scan_listed(self.layout, records, PROBE_SCHEMA, partitioned=False)

    def failures(self) -> list[dict]:
        """Failure records (ckpt, chunk, error, attempts, failed_at), ordered by (ckpt, chunk)."""
        return [read_json(path) for _, path in self.layout.failure_files()]

    # ---- exposure counts (sweep/exposures/scans.py) ---------------------------------------------

    def exposure_counts(self) -> pl.LazyFrame:
        """One row per (probe sequence, scanned chunk file) with an occurrence: EXPOSURE_COUNT_SCHEMA."""
        records = [record for _, record in self.ledgers.scan_files()]
        return scan_listed(self.layout, records, EXPOSURE_COUNT_SCHEMA, partitioned=False)

    def exposure_scans(self) -> pl.DataFrame:
        """One row per landed scan of a chunk file: EXPOSURE_SCAN_SCHEMA."""
        rows = [{"seen_chunk": seen_chunk, "data_file": entry.source.get("file"), "data_sha256": entry.sha256,
                 "probe_chunks": list(scan.probe_chunks), "probes": scan.probes, "rows": scan.rows,
                 "tokens": scan.tokens, "bytes": scan.bytes, "seconds": scan.seconds, "cpu_seconds": scan.cpu_seconds,
                 "cpus": scan.cpu_seconds / scan.seconds if scan.seconds else None, "scanned_at": scan.scanned_at}
                for seen_chunk, entry in sorted(self.ledgers.exposures.items()) for scan in entry.scans]
        return pl.DataFrame(rows, schema=EXPOSURE_SCAN_SCHEMA)

    def scanned_probe_chunks(self) -> dict[int, frozenset[int]]:
        """Chunk file -> the probe chunks its landed scans counted (files with none left out), by file."""
        scanned = {seen: frozenset(self.ledgers.scanned_probe_chunks(seen)) for seen in sorted(self.ledgers.exposures)}
        return {seen: chunks for seen, chunks in scanned.items() if chunks}

    def exposure_coverage(self) -> pl.DataFrame:
        """Per probe chunk, how many chunk files have been scanned for its sequences: `chunk`, `chunks_scanned`."""
        return files_scanned(self.scanned_probe_chunks())

    def exposures(self) -> pl.LazyFrame:
        """One row per probe sequence: its occurrences over every chunk file scanned for it (EXPOSURES_SCHEMA; the
        one computation of these totals, sweep/landed/exposure_totals.py).

        A sequence whose chunk no scan has covered yet has null counts and `chunks_scanned` null, never 0: a count
        not made is not a count of zero.
        """
        return sequence_totals(self.probes().select("chunk", "row"), self.exposure_counts(),
                               self.exposure_coverage().lazy())

    def exposure_chunks_listed(self) -> list[int]:
        """The chunk files the spec asks to scan (`exposure.chunks`), whether scanned yet or not."""
        exposure = self.spec.get("exposure") or {}
        return parse_id_list(exposure["chunks"]) if exposure.get("chunks") is not None else []

    def scan_failures(self) -> list[dict]:
        """Failed exposure scans (seen_chunk, error, failed_at), by chunk."""
        return [read_json(path) for _, path in self.layout.scan_failure_files()]

    def tables(self) -> dict[str, pl.LazyFrame]:
        """The output's tables by SQL name: sequences, cells, probes, failures when any cell failed, and the
        exposure tables (exposures, exposure_counts, exposure_scans) once a chunk file has been scanned."""
        tables = {"sequences": self.sequences(), "cells": self.cells(), "probes": self.probes()}
        failures = self.failures()
        if failures:
            tables["failures"] = pl.LazyFrame(failures)
        if self.ledgers.scan_files():
            tables.update(exposures=self.exposures(), exposure_counts=self.exposure_counts(),
                          exposure_scans=self.exposure_scans().lazy())
        return tables

    def done_cells(self) -> set[tuple[int, int]]:
        return self.ledgers.done_cells()

    def checkpoint_pin(self, ckpt: int) -> CheckpointPin | None:
        return self.ledgers.pin(ckpt)

    def landed_checkpoints(self) -> list[int]:
        """The checkpoints with a landed cell, in order."""
        return sorted(ckpt for ckpt, ledger in self.ledgers.checkpoints.items() if ledger.files)

    def last_checkpoint(self) -> int:
        """The last checkpoint with a landed cell."""
        landed = self.landed_checkpoints()
        if not landed:
            raise MemsweepError(f"{self.path}: no landed cells")
        return landed[-1]
