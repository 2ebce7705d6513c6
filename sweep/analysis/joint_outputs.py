"""Several outputs analysed together: the same data and probe sets scored by different models (Pythia 70M to 12B), or
by different scoring settings.

    joint = open_joint_outputs([Path("results/pythia-70m"), Path("results/pythia-12b")])
    joint.tables()  # {"sequences": ..., "cells": ..., ...}: every output's rows, each led by output, model, identity

Opening refuses outputs that probe different sequences, in one line naming what differs: an identity key declared
`probed` in sweep/spec.py (`probe_differences`: the data, its sampling, the timeline, the k + l window), or a chunk
whose probe set was sampled from other bytes (its chunk file's sha256 in `ledger/probes.json`). So a (chunk, row)
is the same training sequence in every output, and a join on it compares the models on that sequence. The model
(`model.*`) and the scoring keys that leave the probed sequences alone (`memorization.mode`, `eos`, `nll`) may differ.

Cost: opening reads each output's manifest and ledgers (361 small files at Amber's size); the tables are lazy, and
each is the outputs' tables one after the other (a query over them scans each output's files once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import polars as pl

from sweep.errors import MemsweepError
from sweep.landed.catalog import SQL_TABLES
from sweep.landed.reader import LandedOutput, open_output
from sweep.spec import probe_differences

# The columns that lead every row of a joint table: which output it comes from (its folder's name), the model that
# scored it (`model.source`) and the output's identity hash (what its numbers mean, sweep/spec.py).
OUTPUT_COLUMNS: dict[str, pl.DataType] = {"output": pl.String(), "model": pl.String(), "identity": pl.String()}


class DifferentProbesError(MemsweepError):
    """Two outputs given together probe different sequences (different data, sampling or k + l window)."""


@dataclass(frozen=True)
class JointOutputs:
    """Outputs that probe the same sequences, in the order given, each with the name its rows carry (`label`)."""

    outputs: tuple[LandedOutput, ...]
    labels: tuple[str, ...]

    def model(self, index: int) -> str:
        """The model output `index` scored: its spec's `model.source` (the Hub repo or local folder)."""
        landed = self.outputs[index]
        return str(landed.manifest["identity"].get("model.source") or landed.name)

    def tables(self) -> dict[str, pl.LazyFrame]:
        """Every table any of the outputs has, by SQL name: each output's rows in turn, led by OUTPUT_COLUMNS (a
        column one output lacks reads as nulls in the others' rows)."""
        per_output = [landed.tables() for landed in self.outputs]
        names = [name for name in SQL_TABLES if any(name in tables for tables in per_output)]
        joint = {}
        for name in names:
            parts = [self._labelled(tables[name], index) for index, tables in enumerate(per_output) if name in tables]
            joint[name] = pl.concat(parts, how="diagonal_relaxed")
        return joint

    def _labelled(self, table: pl.LazyFrame, index: int) -> pl.LazyFrame:
        values = (self.labels[index], self.model(index), self.outputs[index].identity_hash)
        leading = [pl.lit(value, dtype=dtype).alias(name) for (name, dtype), value in zip(OUTPUT_COLUMNS.items(), values)]
        return table.select(*leading, pl.all())


def open_joint_outputs(paths: Sequence[Path]) -> JointOutputs:
    """The outputs at `paths`, read-only, checked to probe the same sequences (DifferentProbesError otherwise, naming
    the key or the chunk); OutputNotFoundError names a path that is not an output. Each output's rows are labelled
    with its folder's name, or with its path as given where two folders share a name."""
    paths = [Path(path) for path in paths]
    resolved = [path.resolve() for path in paths]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise MemsweepError(f"{paths[index]}: given twice; each output is analysed once")
    outputs = tuple(open_output(path) for path in paths)
    first = outputs[0]
    for other in outputs[1:]:
        _refuse_different_probes(first, other)
    names = [path.name for path in paths]
    labels = tuple(names if len(set(names)) == len(names) else [str(path) for path in paths])
    return JointOutputs(outputs, labels)


def _refuse_different_probes(first: LandedOutput, other: LandedOutput) -> None:
    differences = probe_differences(first.manifest["identity"], other.manifest["identity"])
    if differences:
        raise DifferentProbesError(f"{first.path} and {other.path} probe different sequences: they differ in "
                                   f"{'; '.join(differences)}; outputs are analysed together only on the same data "
                                   f"and probe sets (the model and the scoring mode may differ)")
    for chunk in sorted(first.ledgers.probes.keys() & other.ledgers.probes.keys()):
        ours, theirs = first.ledgers.probes[chunk].sha256, other.ledgers.probes[chunk].sha256
        if ours is not None and theirs is not None and ours != theirs:
            raise DifferentProbesError(f"{first.path} and {other.path} probe different sequences: chunk {chunk} was "
                                       f"sampled from different bytes (sha256 {ours[:12]} vs {theirs[:12]}); the data "
                                       f"changed between their runs")

