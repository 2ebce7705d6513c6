"""The report's sections on memorization scores: the run, checkpoint x chunk heatmaps, trajectories of a few
chunks, the per-sequence score distribution and the per-source breakdown at the last checkpoint, predictability
of the final memorized set from earlier checkpoints, and when sequences were first memorized (and how many were
forgotten: not reproduced at analyses.FORGET_MIN_MISSES consecutive checkpoints after the first full match).

    memorization_sections(landed, cells, sequences, trajectories, first_memorized, ...) -> [Section, ...]

Numbers come from sweep/analysis/memorization.py, drawing from sweep/report/figures.py.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep.timeline import Timeline
from sweep.analysis import memorization as analyses
from sweep.analysis.labels import METRIC_LABELS, METRIC_TITLES, format_value, run_facts
from sweep.landed.reader import LandedOutput
from sweep.report.figures import DPI, Section, heatmap_figure, html_table, spread_rows

# Every file name these sections may write, so a rewrite removes figures that no longer apply.
MEMORIZATION_FIGURE_NAMES = (
    "heatmap_score.png",
    "heatmap_mean_prefix_match.png",
    "heatmap_full_match_rate.png",
    "heatmap_nll.png",
    "trajectories.png",
    "score_distribution.png",
    "per_source.png",
    "predictability.png",
    "first_memorized.png",
)


def memorization_sections(landed: LandedOutput, cells: pl.DataFrame, sequences: pl.LazyFrame,
                          trajectories: pl.DataFrame, first_memorized: pl.DataFrame, main_metric: str,
                          last_ckpt: int, extractable: bool, out_dir: Path) -> list[Section]:
    """The run's facts, then one section per figure of the scores. `cells`: the landed cells table (collected);
    `trajectories`: analyses.chunk_trajectories of the chunks to draw, in `main_metric` (the score, or in
    extractable mode the mean exact prefix); `first_memorized`: analyses.first_memorized(sequences,
    memorized_only=True), the sequences memorized at least once."""
    timeline = Timeline.from_spec_dict(landed.spec)
    sections = [_overview_section(landed, cells, extractable)]
    sections.append(_heatmap_section(cells, main_metric, out_dir, timeline))
    sections.append(_heatmap_section(cells, "full_match_rate", out_dir, timeline))
    if cells["nll"].is_not_null().any():
        sections.append(_heatmap_section(cells, "nll", out_dir, timeline))
    sections.append(_trajectory_section(trajectories, main_metric, out_dir))
    sections.append(_distribution_section(sequences, last_ckpt, extractable, out_dir))
    sections.append(_per_source_section(sequences, last_ckpt, extractable, out_dir))
    sections.append(_predictability_section(sequences, last_ckpt, out_dir))
    # every sequence scored: a chunk's cells all score the same rows (its probe set, or the whole chunk in a census)
    scored = int(cells.group_by("chunk").agg(pl.col("n").max())["n"].sum())
    sections.append(_first_memorized_section(first_memorized, scored, out_dir))
    return sections


def _overview_section(landed: LandedOutput, cells: pl.DataFrame, extractable: bool) -> Section:
    facts = run_facts(landed, cells)
    section = Section("Run", tables=[html_table(pl.DataFrame(facts, schema=["fact", "value"], orient="row"))])
    spec = json.dumps(landed.spec, indent=2, sort_keys=True, default=str)
    section.tables.append(f"<details><summary>spec</summary><pre>{html.escape(spec)}</pre></details>")
    if extractable:
        section.notes.append(
            "This sweep ran in extractable mode: the memorization score is null, so the figures use "
            "the full-match rate and the exact prefix length (prefix_match) instead."
        )
    return section


def _heatmap_section(cells: pl.DataFrame, metric: str, out_dir: Path, timeline: Timeline) -> Section:
    matrix = analyses.score_matrix(cells, metric=metric)
    title = f"{METRIC_TITLES[metric]}, checkpoint x chunk"
    name = f"heatmap_{metric}.png"
    figure, layout = heatmap_figure(matrix, title, METRIC_LABELS[metric], timeline=timeline)
    figure.savefig(out_dir / name, dpi=DPI)

    section = Section(title, image=name)
    section.notes.append(
        f"{matrix.height} checkpoints x {matrix.width - 1} chunks, {layout.cell_width} x {layout.cell_height} px "
        "per cell (click the image for full size); grey = cell not in the dataset. Cells left of the red line "
        f"were trained on by that checkpoint ({_seen_rule(timeline)})."
    )
    seen = cells.filter(pl.col("seen"))  # the timeline's: the checkpoint trained on at least part of the chunk
    unseen = cells.filter(~pl.col("seen"))
    means = [
        f"{label} cells: {format_value(part[metric].mean())}"
        for label, part in (("seen", seen), ("unseen", unseen))
        if part.height
    ]
    section.notes.append(f"Mean over {'; over '.join(means)}.")
    return section


def _seen_rule(timeline: Timeline) -> str:
    if not timeline.step_indexed:
        return "chunk <= ckpt"
    return (f"checkpoint N has trained on sequences [0, {timeline.sequences_per_step:,} N); a checkpoint inside a "
            "chunk crosses its cell at the share it trained on")


def _trajectory_section(trajectories: pl.DataFrame, metric: str, out_dir: Path) -> Section:
    chunk_ids = trajectories["chunk"].unique().sort().to_list()
    name = "trajectories.png"
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for index, chunk in enumerate(chunk_ids):
        line = trajectories.filter(pl.col("chunk") == chunk)
        colour = colours(index % 10)
        marker = "o" if line.height <= 40 else None
        axes.plot(line["ckpt"], line[metric], color=colour, marker=marker, markersize=3, label=f"chunk {chunk}")
        axes.axvline(chunk, color=colour, linestyle=":", linewidth=1)
    axes.set_xlabel("checkpoint (dotted: the checkpoint that first trained on the chunk)")
    axes.set_ylabel(METRIC_LABELS[metric])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{METRIC_TITLES[metric]} over checkpoints")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    section = Section(f"Over training: chunks {', '.join(str(c) for c in chunk_ids)}", image=name)
    return section


def _distribution_section(sequences: pl.LazyFrame, last_ckpt: int, extractable: bool, out_dir: Path) -> Section:
    column = "prefix_match" if extractable else "score"
    histogram = analyses.score_distribution(sequences, ckpt=last_ckpt, column=column)
    title = f"Distribution of per-sequence {'exact prefix length' if extractable else 'score'}, checkpoint {last_ckpt}"
    if histogram.height == 0:
        return Section(title, notes=[f"No non-null {column} at checkpoint {last_ckpt}."])
    name = "score_distribution.png"
    values = histogram[column].cast(pl.Float64).to_numpy()
    total = int(histogram["count"].sum())
    top = histogram.filter(pl.col(column) == histogram[column].max())
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if extractable:
        axes.bar(values, histogram["count"].to_numpy(), width=0.8, color="tab:blue")
        axes.set_xlim(-1, max(values.max(), 1) + 1)
    else:
        # One bar per possible score k / l; l is read off the data (matches / score).
        generated = analyses.generated_length(sequences)
        axes.bar(values, histogram["count"].to_numpy(), width=0.8 / generated if generated else 0.02, color="tab:blue")
        axes.set_xlim(-0.03, 1.03)
    axes.set_yscale("log")
    axes.set_ylim(bottom=0.7)
    axes.set_xlabel("exact prefix length (tokens)" if extractable else "memorization score (matched / l)")
    axes.set_ylabel("sequences (log scale)")
    axes.set_title(f"{title} ({total} sequences)")
    axes.grid(alpha=0.3, axis="y")
    figure.savefig(out_dir / name, dpi=DPI)
    note = (
        f"{total} sequences; the highest value ({format_value(top[column].item())}) holds "
        f"{int(top['count'].item())} ({100 * top['fraction'].item():.2f}%)."
    )
    return Section(title, image=name, notes=[note])


def _per_source_section(sequences: pl.LazyFrame, last_ckpt: int, extractable: bool, out_dir: Path) -> Section:
    # Filtering before per_source reads one checkpoint's partition, not all of them.
    table = analyses.per_source(sequences.filter(pl.col("ckpt") == last_ckpt)).drop("ckpt")
    title = f"By data source, checkpoint {last_ckpt}"
    name = "per_source.png"
    first_metric = "mean_prefix_match" if extractable else "score"
    ordered = table.sort("n")  # barh draws bottom-up: largest source on top
    labels = [f"{source} (n={n})" for source, n in zip(ordered["source"], ordered["n"])]
    figure = Figure(figsize=(9, 0.45 * len(labels) + 1.8), layout="constrained")
    for position, (metric, colour) in enumerate([(first_metric, "tab:blue"), ("full_match_rate", "tab:orange")]):
        axes = figure.add_subplot(1, 2, position + 1)
        axes.barh(labels, ordered[metric].fill_null(0).to_numpy(), color=colour)
        axes.set_xlabel(METRIC_LABELS[metric])
        axes.set_title(METRIC_TITLES[metric])
        axes.grid(alpha=0.3, axis="x")
        if position == 1:
            axes.set_yticklabels([])
    figure.suptitle(title)
    figure.savefig(out_dir / name, dpi=DPI)
    return Section(title, image=name, tables=[html_table(table)])


def _predictability_section(sequences: pl.LazyFrame, last_ckpt: int, out_dir: Path) -> Section:
    table = analyses.predictability(sequences, final_ckpt=last_ckpt)
    title = f"Predictability of checkpoint {last_ckpt}'s memorized set"
    if table.height == 0:
        return Section(
            title,
            notes=[
                "No earlier checkpoint shares seen sequences with the last one: predictability needs at "
                "least two checkpoints (and an earlier checkpoint whose seen chunks were scored)."
            ],
        )
    name = "predictability.png"
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    marker = "o" if table.height <= 40 else None
    for metric, colour in (("precision", "tab:blue"), ("recall", "tab:green")):
        values = table[metric].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        axes.plot(table["ckpt"], values, marker=marker, markersize=3, color=colour, label=metric)
    axes.set_ylim(-0.02, 1.02)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("earlier checkpoint c (compared on sequences with chunk <= c)")
    axes.set_ylabel("precision / recall")
    axes.set_title(f"Memorized at c -> memorized at checkpoint {last_ckpt}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    notes = [
        "Precision = |M_c & M_final| / |M_c|, recall = |M_c & M_final| / |M_final|, where M is the set of "
        "fully memorized sequences (Biderman et al. 2023). Gaps: an empty set makes the ratio undefined."
    ]
    return Section(title, image=name, notes=notes, tables=[html_table(spread_rows(table))])


def _first_memorized_section(table: pl.DataFrame, scored: int, out_dir: Path) -> Section:
    """`table`: first_memorized's rows of the sequences memorized at least once; `scored`: every sequence scored."""
    runs = analyses.FORGET_MIN_MISSES
    memorized = table.filter(pl.col("first_memorized_ckpt").is_not_null())
    forgotten = int(memorized["forgotten"].sum())
    title = "When sequences were first memorized"
    summary = pl.DataFrame(
        [
            ("sequences", scored),
            ("ever memorized", memorized.height),
            (f"forgotten: after the first full match, missed at >= {runs} checkpoints in a row", forgotten),
            ("memorized at some checkpoint, not at the last that scored it",
             int((~memorized["memorized_at_last"]).sum())),
            ("missed at some checkpoint after the first full match (single misses included)",
             int((memorized["longest_miss_run"] > 0).sum())),
            ("memorized at their last checkpoint", int(table["memorized_at_last"].sum())),
            ("first memorized before their chunk was trained on", int(table["memorized_before_seen"].sum())),
        ],
        schema=["sequences", "count"],
        orient="row",
    )
    definition = (
        f"Forgotten means not reproduced at {runs} or more consecutive checkpoints (of those that scored the "
        "sequence) after its first full match. A single miss is more likely the greedy continuation flickering "
        "than forgetting, and with hundreds of checkpoints nearly every memorized sequence has one."
    )
    if memorized.height == 0:
        note = "No sequence was fully memorized at any checkpoint."
        return Section(title, notes=[note], tables=[html_table(summary)])
    name = "first_memorized.png"
    counts, step = analyses.first_memorized_counts(memorized)
    ckpts = counts["bin"].to_numpy() + (step - 1) / 2  # bar centre: the middle of its checkpoints
    gaps = np.diff(counts["bin"].to_numpy())
    width = 0.8 * (min(step, int(gaps.min())) if len(gaps) else step)
    kept = (counts["all"] - counts["forgotten"]).to_numpy()
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(ckpts, kept, width=width, color="tab:blue", label="not forgotten")
    axes.bar(
        ckpts, counts["forgotten"].to_numpy(), width=width, bottom=kept, color="tab:red",
        label=f"forgotten later (>= {runs} misses in a row)",
    )
    axes.set_xlabel("checkpoint of first full match" + (f" (bars of {step} checkpoints)" if step > 1 else ""))
    axes.set_ylabel("sequences")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"First memorized: {memorized.height} sequences, {forgotten} forgotten later")
    axes.legend()
    axes.grid(alpha=0.3, axis="y")
    figure.savefig(out_dir / name, dpi=DPI)
    return Section(title, image=name, notes=[definition], tables=[html_table(summary)])
