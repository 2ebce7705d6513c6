"""The report's section on published labels (`memsweep report OUT --labels LABELS`): the data check, then the 2 x 2
table, precision and recall per checkpoint, computed by sweep/analysis/label_agreement.py as `memsweep compare`
computes them."""

from __future__ import annotations

import polars as pl

from sweep.analysis.label_agreement import MISMATCHES_NAMED, NEAR_TIES_UNKNOWN, compare_labels
from sweep.data.published_labels import PublishedLabels
from sweep.landed.reader import LandedOutput
from sweep.report.figures import Section, html_table


def label_sections(landed: LandedOutput, labels: PublishedLabels) -> list[Section]:
    """One section: the comparison of every landed checkpoint with `labels`."""
    comparison = compare_labels(landed, labels)
    section = Section("Against published labels", notes=[
        f"Labels: {comparison.labels}. Stream positions: {comparison.positions}.",
        f"Data check: {comparison.checked:,} labelled sequences the output also holds, their published tokens "
        "against memsweep's reading of the same position."])
    if not comparison.data_matches:
        section.notes.append(f"DATA MISMATCH: {comparison.mismatches.height:,} of them differ (a wrong data order, "
                             "offset or file), so no agreement is shown. The first ones:")
        section.tables.append(html_table(comparison.mismatches.head(MISMATCHES_NAMED)))
        return [section]
    section.notes[-1] += " All equal."
    section.notes.append("Memorized by both, only by memsweep (full_match), only by the labels, or by neither, on the "
                         "sequences both cover; precision and recall of memsweep's memorized set against the labels'.")
    if comparison.near_ties() is None:
        section.notes.append(f"Near-ties: {NEAR_TIES_UNKNOWN}.")
    else:
        section.notes.append(
            f"Near-ties: covered sequences whose decision margin (the top-1 minus top-2 logit at a greedy position "
            f"that decides full_match) is under {comparison.tie_margin:g} (`memsweep compare --tie-margin`); "
            "near_ties_only_memsweep and near_ties_only_labels are the disagreements among them, expected numerics "
            "(the reference ran fp16), while a disagreement far from a tie is a real difference. margins: the covered "
            "sequences with a recorded margin (cells landed before it was recorded have none).")
    table = pl.DataFrame([row.to_json() for row in comparison.checkpoints]).with_columns(
        pl.col("precision", "recall").cast(pl.Float64),
        pl.col("near_ties", "near_ties_only_memsweep", "near_ties_only_labels").cast(pl.Int64))
    section.tables.append(html_table(table))
    return [section]
