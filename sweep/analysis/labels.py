"""What the pages call the numbers, how they print them, and the run's facts: one home for the report and the
explorer alike.

Nothing here draws, so `memsweep serve` (sweep/explorer/) takes its labels and run facts from here without loading
matplotlib, which the report (sweep/report/) needs for its figures.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sweep.analysis.memorization import is_extractable_mode
from sweep.landed.reader import LandedOutput

# A cell metric as a colour scale or an axis names it (units in brackets where it has some).
METRIC_LABELS = {
    "score": "mean memorization score (fraction of l tokens matched)",
    "full_match_rate": "full-match (k-extractable) rate",
    "mean_prefix_match": "mean exact prefix length (tokens)",
    "nll": "mean NLL of the true continuation (nats/token)",
    "tf_accuracy": "mean teacher-forced next-token accuracy of the true continuation",
}
# ... and as a figure's title.
METRIC_TITLES = {
    "score": "Mean memorization score",
    "full_match_rate": "Full-match (k-extractable) rate",
    "mean_prefix_match": "Mean exact prefix length",
    "nll": "Mean NLL of the true continuation",
}


def format_value(value: object) -> str:
    """A number as a table shows it: 4 significant digits for floats, "-" for a missing one."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def run_facts(landed: LandedOutput, cells: pl.DataFrame) -> list[tuple[str, str]]:
    """The run's facts as (fact, value) lines: what the report's "Run" table and the explorer's overview show.

    `cells`: the landed cells table (at least one row).
    """
    ckpts = cells["ckpt"].unique().sort()
    chunk_ids = cells["chunk"].unique().sort()
    extractable = is_extractable_mode(cells)
    return [
        ("run", landed.name),
        ("identity hash", landed.identity_hash),
        ("checkpoints", f"{len(ckpts)} ({ckpts.min()} .. {ckpts.max()})"),
        ("chunks", f"{len(chunk_ids)} ({chunk_ids.min()} .. {chunk_ids.max()})"),
        ("cells", f"{cells.height}"),
        ("sequences scored", f"{int(cells['n'].sum())}"),
        ("mode", "extractable (full match only; no per-token score)" if extractable else "memorization score"),
        ("compute time", f"{cells['seconds'].sum():.1f} s (sum over cells)"),
        ("mean sequences/s per cell", format_value(cells["sequences_per_s"].mean())),
        ("devices", ", ".join(str(d) for d in cells["device"].unique().sort().to_list())),
        ("dtypes", ", ".join(str(d) for d in cells["dtype"].unique().sort().to_list())),
        ("failed cells", str(len(landed.failures()))),
    ]
