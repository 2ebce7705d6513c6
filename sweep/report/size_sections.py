"""The report's section across model sizes (`memsweep report OUT --smaller SMALLER_OUT ...`): how well each smaller
model's memorized set predicts the report's own model's, by checkpoint (Biderman et al. 2023; the numbers are
sweep/analysis/sizes.py `size_predictability` against the largest, the report's output).

    size_section(joint, out_dir) -> Section
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep.analysis.joint_outputs import JointOutputs
from sweep.analysis.sizes import size_predictability
from sweep.report.figures import DPI, Section, html_table, spread_rows

SIZE_FIGURE_NAMES = ("size_predictability.png",)


def size_section(joint: JointOutputs, out_dir: Path) -> Section:
    """Precision and recall of each smaller output's memorized set for the last output's (the report's), as lines
    over the checkpoints both landed, and the table (spread over its rows when long)."""
    table = size_predictability(joint, against_largest=True)
    target = joint.labels[-1]
    title = f"Predictability of {target}'s memorized set from smaller models"
    if table.height == 0:
        return Section(title, notes=[f"No checkpoint was landed by both {target} and a smaller model's output: "
                                     "nothing to compare."])
    name = SIZE_FIGURE_NAMES[0]
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    marker = "o" if table.height <= 40 * (len(joint.labels) - 1) else None
    for index, ((predictor,), rows) in enumerate(table.group_by("predictor", maintain_order=True)):
        colour = f"C{index}"
        for metric, style in (("precision", "-"), ("recall", "--")):
            values = rows[metric].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            axes.plot(rows["ckpt"], values, style, color=colour, marker=marker, markersize=3,
                      label=f"{metric}: {predictor}")
    axes.set_ylim(-0.02, 1.02)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("checkpoint (compared on the sequences it had trained on)")
    axes.set_ylabel("precision / recall")
    axes.set_title(f"Memorized by the smaller model -> memorized by {target}")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    notes = [
        f"At each checkpoint, M_small and M_large are the sequences the smaller model and {target} fully memorized "
        "(all l tokens: k-extractable) among those both scored that the checkpoint had trained on. Precision = |M_small & M_large| "
        "/ |M_small| (how many of the smaller model's memorized the larger memorized too), recall = |M_small & "
        "M_large| / |M_large| (how much of the larger model's set the smaller one finds), as Biderman et al. 2023 "
        "ask. Gaps: an empty set makes the ratio undefined. The outputs probe the same sequences (checked).",
        "Models: " + "; ".join(f"{label}: {joint.model(index)}" for index, label in enumerate(joint.labels)) + ".",
    ]
    shown = table.drop("predictor_model", "target_model")
    return Section(title, image=name, notes=notes, tables=[html_table(spread_rows(shown))])
