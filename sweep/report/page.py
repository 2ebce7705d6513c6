"""A self-contained HTML report (PNG figures + index.html) from a landed memsweep dataset.

    write_report(Path("runs/amber")) -> runs/amber/report/index.html

The page shows the run (name, spec, identity hash), checkpoint x chunk heatmaps of the mean
memorization score and of the full-match (k-extractable) rate, score trajectories of a few
chunks, the per-sequence score distribution at the last checkpoint, a per-source breakdown,
predictability of the final memorized set from earlier checkpoints, and when sequences were
first memorized (and how many were forgotten: not reproduced at analyses.FORGET_MIN_MISSES
consecutive checkpoints after the first full match). Numbers come from sweep/analysis/memorization.py. Once
exposure counts have landed, sweep/report/exposure_sections.py adds their sections (what they cover, then
one figure per analysis of sweep/exposures/analyses.py), and each example says how often it was seen.

Figures are drawn on matplotlib `Figure` objects (Agg, no pyplot), so making a report neither
needs a display nor touches global plotting state. Heatmaps give every cell whole pixels (3 x 3
at 360 x 360, a 1310 x 1215 px PNG; the page scales it, the image links to itself). The cells table
(129.6k rows at full size) is the only table held whole; what a report costs at full size is in
BENCHMARKS.md, "Report and queries at full size".
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sweep.analysis import memorization as analyses
from sweep.errors import MemsweepError
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import LandedOutput, open_output

# Every file name this module may write, so a rewrite removes figures that no longer apply.
FIGURE_NAMES = (
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
DEFAULT_TRAJECTORY_CHUNKS = 5
MAX_TABLE_ROWS = 15
MAX_BARS = 60  # first-memorized histogram: more checkpoints than this are binned
HEATMAP_LARGE_PX = 1080  # the longer side of a heatmap's cells with more than 120 rows or columns
HEATMAP_SMALL_PX = 720  # ... and with fewer
MIN_CELL_PX = 2
MIN_AXES_PX = 300  # the colorbar label (wrapped) fits beside an axes this tall
DPI = 110

METRIC_LABELS = {
    "score": "mean memorization score (fraction of l tokens matched)",
    "full_match_rate": "full-match (k-extractable) rate",
    "mean_prefix_match": "mean exact prefix length (tokens)",
    "nll": "mean NLL of the true continuation (nats/token)",
}
METRIC_TITLES = {
    "score": "Mean memorization score",
    "full_match_rate": "Full-match (k-extractable) rate",
    "mean_prefix_match": "Mean exact prefix length",
    "nll": "Mean NLL of the true continuation",
}


@dataclass
class Section:
    """One block of the page: a heading, optional figure, explanatory notes and HTML tables."""

    title: str
    image: str | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


def write_report(output: Path, out_dir: Path | None = None, chunks: list[int] | None = None,
                 example_cells: list[tuple[int, int]] | None = None) -> Path:
    """Write figures and index.html for the landed dataset in `output`; returns index.html's path.

    out_dir defaults to `<output>/report`. `chunks` picks the chunks whose score trajectories are
    drawn (default: a few spread over the chunk range); an unknown chunk raises MemsweepError.
    `example_cells` picks (ckpt, chunk) cells whose most memorized sequences are shown as text (default:
    the oldest and the newest chunk at the last checkpoint).
    """
    output = Path(output)
    out_dir = Path(out_dir) if out_dir is not None else output / "report"
    landed = open_output(output)
    sequences = landed.sequences()
    cells = landed.cells().collect()
    if cells.height == 0:
        raise MemsweepError(f"{output / 'cells'}: the cells table is empty")
    from sweep.report.exposure_sections import EXPOSURE_FIGURE_NAMES, exposure_sections  # it imports this module

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURE_NAMES + EXPOSURE_FIGURE_NAMES:
        (out_dir / name).unlink(missing_ok=True)

    extractable = analyses.is_extractable_mode(cells)
    # Extractable mode stores no per-token matches, so the score is null: the prefix length is
    # the closest graded measure left.
    main_metric = "mean_prefix_match" if extractable else "score"
    last_ckpt = int(cells["ckpt"].max())
    all_chunks = sorted(cells["chunk"].unique().to_list())
    if chunks is None:
        chunks = spread(all_chunks, DEFAULT_TRAJECTORY_CHUNKS)
    trajectories = analyses.chunk_trajectories(cells, chunks, metric=main_metric)

    sections = [_overview_section(landed, cells, extractable)]
    sections.append(_heatmap_section(cells, main_metric, out_dir))
    sections.append(_heatmap_section(cells, "full_match_rate", out_dir))
    if cells["nll"].is_not_null().any():
        sections.append(_heatmap_section(cells, "nll", out_dir))
    sections.append(_trajectory_section(trajectories, main_metric, out_dir))
    sections.append(_distribution_section(sequences, last_ckpt, extractable, out_dir))
    sections.append(_per_source_section(sequences, last_ckpt, extractable, out_dir))
    sections.append(_predictability_section(sequences, last_ckpt, out_dir))
    first_memorized = analyses.first_memorized(sequences)
    sections.append(_first_memorized_section(first_memorized, out_dir))
    decoder = _last_decoder(landed, last_ckpt)
    history = ExposureHistory.read(landed)
    sections.extend(exposure_sections(landed, history, sequences, last_ckpt, extractable, out_dir,
                                      decoder.text if decoder.tokenizer is not None else None))
    if example_cells is None:
        example_cells = sorted({(last_ckpt, all_chunks[0]), (last_ckpt, all_chunks[-1])})
    sections.extend(_example_sections(landed, last_ckpt, first_memorized, example_cells, decoder,
                                      history if history.coverage.has_counts else None))

    index = out_dir / "index.html"
    index.write_text(_render_page(landed.name, sections))
    return index


# ---------------------------------------------------------------- sections


def run_facts(landed: LandedOutput, cells: pl.DataFrame) -> list[tuple[str, str]]:
    """The run's facts as (fact, value) lines: what the report's "Run" table and the explorer's overview show.

    `cells`: the landed cells table (at least one row).
    """
    ckpts = cells["ckpt"].unique().sort()
    chunk_ids = cells["chunk"].unique().sort()
    extractable = analyses.is_extractable_mode(cells)
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


@dataclass(frozen=True)
class HeatmapLayout:
    """Pixel geometry of a checkpoint x chunk heatmap: whole pixels per cell, margins around it.

    The axes are exactly n_chunks x cell_width by n_ckpts x cell_height pixels, so every cell is
    drawn as a block of whole pixels (no resampling drops a row or column): at 360 x 360 that is
    3 px per cell and a 1080 px square, at 8 x 8 90 px per cell. The legend and the colorbar sit
    in margins of their own, outside the axes, so no cell is hidden.
    """

    cell_width: int
    cell_height: int
    n_cols: int
    n_rows: int
    left: int = 80  # y tick labels and label
    bottom: int = 95  # x tick labels and label, then the legend band
    top: int = 40  # title
    gap: int = 20  # axes to colorbar
    colorbar: int = 20
    right: int = 110  # colorbar tick labels and label

    @classmethod
    def for_matrix(cls, n_rows: int, n_cols: int) -> HeatmapLayout:
        # Square cells; a large matrix gets a larger canvas so that cells stay >= 2 px.
        larger = max(n_rows, n_cols, 1)
        target = HEATMAP_LARGE_PX if larger > 120 else HEATMAP_SMALL_PX
        cell = max(MIN_CELL_PX, target // larger)
        # A very flat or very narrow matrix still gets an axes the colorbar label fits beside.
        return cls(
            cell_width=max(cell, -(-MIN_AXES_PX // max(n_cols, 1))),
            cell_height=max(cell, -(-MIN_AXES_PX // max(n_rows, 1))),
            n_cols=n_cols,
            n_rows=n_rows,
        )

    @property
    def axes_width(self) -> int:
        return self.cell_width * self.n_cols

    @property
    def axes_height(self) -> int:
        return self.cell_height * self.n_rows

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole figure in pixels."""
        width = self.left + self.axes_width + self.gap + self.colorbar + self.right
        return width, self.bottom + self.axes_height + self.top

    def rect(self, x: int, width: int) -> list[float]:
        """A figure-fraction rectangle spanning the axes' height, `width` px wide from `x` px."""
        figure_width, figure_height = self.size
        return [x / figure_width, self.bottom / figure_height, width / figure_width, self.axes_height / figure_height]


def _heatmap_section(cells: pl.DataFrame, metric: str, out_dir: Path) -> Section:
    matrix = analyses.score_matrix(cells, metric=metric)
    title = f"{METRIC_TITLES[metric]}, checkpoint x chunk"
    name = f"heatmap_{metric}.png"
    figure, layout = heatmap_figure(matrix, title, METRIC_LABELS[metric])
    figure.savefig(out_dir / name, dpi=DPI)

    section = Section(title, image=name)
    section.notes.append(
        f"{matrix.height} checkpoints x {matrix.width - 1} chunks, {layout.cell_width} x {layout.cell_height} px "
        "per cell (click the image for full size); grey = cell not in the dataset. Cells left of the red line "
        "were trained on by that checkpoint (chunk <= ckpt)."
    )
    seen = cells.filter(pl.col("chunk") <= pl.col("ckpt"))
    unseen = cells.filter(pl.col("chunk") > pl.col("ckpt"))
    means = [
        f"{label} cells: {format_value(part[metric].mean())}"
        for label, part in (("seen", seen), ("unseen", unseen))
        if part.height
    ]
    section.notes.append(f"Mean over {'; over '.join(means)}.")
    return section


def heatmap_figure(matrix: pl.DataFrame, title: str, colour_label: str,
                   missing_label: str = "cell not in the dataset") -> tuple[Figure, HeatmapLayout]:
    """Draw a score_matrix (`ckpt` + one column per chunk) as a heatmap with the seen/unseen staircase.

    The figure is layout.size pixels at DPI; the axes hold exactly the cells (HeatmapLayout), the
    legend sits below the x axis label and the colorbar right of the axes, so no cell is covered.
    Null cells are grey, `missing_label` in the legend.
    """
    ckpts = matrix["ckpt"].to_list()
    chunk_ids = [int(name) for name in matrix.columns[1:]]
    values = matrix.select(matrix.columns[1:]).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    layout = HeatmapLayout.for_matrix(len(ckpts), len(chunk_ids))
    width, height = layout.size
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    axes = figure.add_axes(layout.rect(layout.left, layout.axes_width))
    colour_axes = figure.add_axes(layout.rect(layout.left + layout.axes_width + layout.gap, layout.colorbar))
    missing_colour = "0.85"
    colours = matplotlib.colormaps["viridis"].with_extremes(bad=missing_colour)
    image = axes.imshow(
        np.ma.masked_invalid(values), origin="lower", aspect="auto", interpolation="nearest", cmap=colours
    )
    # The colorbar label runs along the axes' height; a short heatmap gets it on two or more lines.
    figure.colorbar(image, cax=colour_axes, label=textwrap.fill(colour_label, max(20, layout.axes_height // 8)))
    # Rows and columns are positions, not ids (a sweep may skip checkpoints): label with the ids.
    _label_positions(axes.set_xticks, chunk_ids)
    _label_positions(axes.set_yticks, ckpts)
    axes.set_xlabel("data chunk")
    axes.set_ylabel("checkpoint")
    axes.set_title(title)
    # Staircase between seen (chunk <= ckpt, left) and unseen (right) cells of each row, on the
    # cell edges and thinner than a cell, so it marks the boundary without covering cells.
    seen_counts = [sum(1 for chunk in chunk_ids if chunk <= ckpt) for ckpt in ckpts]
    xs = [count - 0.5 for count in seen_counts for _ in (0, 1)]
    ys = [row + offset for row in range(len(ckpts)) for offset in (-0.5, 0.5)]
    line_px = min(2.0, max(1.0, min(layout.cell_width, layout.cell_height) / 4))
    (boundary,) = axes.plot(xs, ys, color="red", linewidth=line_px * 72 / DPI, solid_joinstyle="miter")
    axes.set_xlim(-0.5, len(chunk_ids) - 0.5)
    axes.set_ylim(-0.5, len(ckpts) - 0.5)
    handles = [boundary, Patch(facecolor=missing_colour, edgecolor="0.5", linewidth=0.5)]
    labels = ["seen | unseen (left of the line: chunk <= ckpt)", missing_label]
    figure.legend(
        handles, labels, loc="lower left", bbox_to_anchor=(layout.left / width, 4 / height),
        ncols=2, frameon=False, fontsize="small",
    )
    return figure, layout


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
        generated = _generated_length(sequences)
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


def _first_memorized_section(table: pl.DataFrame, out_dir: Path) -> Section:
    runs = analyses.FORGET_MIN_MISSES
    memorized = table.filter(pl.col("first_memorized_ckpt").is_not_null())
    forgotten = int(memorized["forgotten"].sum())
    title = "When sequences were first memorized"
    summary = pl.DataFrame(
        [
            ("sequences", table.height),
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
    counts, step = first_memorized_counts(memorized)
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


EXAMPLES_PER_SOURCE = 2
EXAMPLES_PER_CELL = 3
EXAMPLES_OVER_TIME = 5


def _last_decoder(landed: LandedOutput, last_ckpt: int):
    """The last checkpoint's TokenDecoder (examples.py), shared by the examples and the exposure sections."""
    from sweep.analysis.examples import TokenDecoder

    return TokenDecoder.for_checkpoint(landed, last_ckpt)


def _example_sections(landed: LandedOutput, last_ckpt: int, first_memorized: pl.DataFrame,
                      example_cells: list[tuple[int, int]], last_decoder, history: ExposureHistory | None
                      ) -> list[Section]:
    """What was memorized, as text (sweep/analysis/examples.py): the most memorized sequences per source at the last
    checkpoint and in the chosen cells, the sequences memorized earliest that are still memorized at the end, and
    the earliest memorized ones that were forgotten (what the model says now), each with its exposures when a
    `history` is given. Every text is HTML-escaped."""
    from sweep.analysis.examples import TokenDecoder, find_examples, render_html

    title = "What was memorized, in words"
    if not landed.ledgers.probe_files():
        return [Section(title, notes=["This output holds no probe sets (prompts and true continuations), so no "
                                      "example can be shown."])]
    decoders: dict[int, TokenDecoder] = {last_ckpt: last_decoder}

    def block(examples) -> str:
        if not examples:
            return "<p><em>none</em></p>"
        rendered = []
        for example in examples:
            if example.ckpt not in decoders:
                decoders[example.ckpt] = TokenDecoder.for_checkpoint(landed, example.ckpt)
            rendered.append(render_html(example, decoders[example.ckpt]))
        return "".join(rendered)

    def earliest(frame: pl.DataFrame) -> list[tuple[int, int]]:
        ordered = frame.sort("first_memorized_ckpt", "chunk", "row").head(EXAMPLES_OVER_TIME)
        return list(ordered.select("chunk", "row").iter_rows())

    def chosen(ckpt: int, **which) -> str:
        return block(find_examples(landed, ckpt, history=history, **which))

    memorized = first_memorized.filter(pl.col("first_memorized_ckpt").is_not_null())
    kept = earliest(memorized.filter(pl.col("memorized_at_last")))
    lost = earliest(memorized.filter(pl.col("forgotten")))
    sections = [Section(f"Examples: most memorized per source, checkpoint {last_ckpt}",
                        notes=[_EXAMPLE_LEGEND],
                        tables=[chosen(last_ckpt, per_source=EXAMPLES_PER_SOURCE)])]
    for ckpt, chunk in example_cells:
        sections.append(Section(f"Examples: checkpoint {ckpt} x chunk {chunk}",
                                tables=[chosen(ckpt, chunk=chunk, top=EXAMPLES_PER_CELL)]))
    sections.append(Section("Examples: memorized earliest, still memorized at the end",
                            notes=[f"As checkpoint {last_ckpt} reproduces them; ordered by the checkpoint of their "
                                   "first full match."],
                            tables=[chosen(last_ckpt, rows=kept, top=len(kept)) if kept else block([])]))
    sections.append(Section("Examples: memorized, then forgotten",
                            notes=[f"Memorized early, then missed at >= {analyses.FORGET_MIN_MISSES} checkpoints in a "
                                   f"row; shown as checkpoint {last_ckpt} continues them now."],
                            tables=[chosen(last_ckpt, rows=lost, top=len(lost)) if lost else block([])]))
    missing = {ckpt: d.why_not for ckpt, d in decoders.items() if d.tokenizer is None}
    if missing:
        sections[0].notes.append("No tokenizer could be loaded for checkpoints "
                                 f"{sorted(missing)} ({next(iter(missing.values()))}): their examples show token ids.")
    return sections


_EXAMPLE_LEGEND = ("Prompt (the k tokens given), the true continuation and the model's greedy continuation, decoded "
                   "with the checkpoint's own tokenizer. Green: the model's token equals the truth at that position; "
                   "red, underlined: it does not.")


def first_memorized_counts(memorized: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Sequences first memorized per checkpoint bin, and the bin width in checkpoints.

    `memorized`: first_memorized rows with a first_memorized_ckpt. One bin per checkpoint while
    the first checkpoints span at most MAX_BARS; beyond, bins of `step` checkpoints (360
    checkpoints: 60 bars of 6 instead of 360 hairlines). Returns (`bin`: first checkpoint of the
    bin, `all`, `forgotten`) sorted by bin, and step.
    """
    first_ckpts = memorized["first_memorized_ckpt"]
    step = max(1, -(-(int(first_ckpts.max()) - int(first_ckpts.min()) + 1) // MAX_BARS))
    counts = (
        memorized.group_by((pl.col("first_memorized_ckpt") // step * step).alias("bin"))
        .agg(pl.len().alias("all"), pl.col("forgotten").sum().alias("forgotten"))
        .sort("bin")
    )
    return counts, step


# ---------------------------------------------------------------- page and helpers


def _render_page(name: str, sections: list[Section]) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>memsweep report: {html.escape(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}"
        "td:first-child{text-align:left}pre{background:#f6f6f6;padding:.5em;overflow-x:auto}"
        ".example{font-family:monospace;white-space:pre-wrap;border-left:3px solid #ccc;margin:.6em 0;padding:.2em .6em}"
        ".example .headline{font-family:sans-serif;font-weight:bold}.example .label{display:inline-block;width:4em;"
        "color:#777}.example .prompt{color:#555}.hit{background:#dff5df}.miss{background:#fadcdc;"
        "text-decoration:underline}</style>",
        "</head><body>",
        f"<h1>memsweep report: {html.escape(name)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.image is not None:
            # Linked to itself: the page scales figures to its width, a click shows every pixel.
            parts.append(
                f'<a href="{section.image}"><img src="{section.image}" alt="{html.escape(section.title)}"></a>'
            )
        parts.extend(f"<p>{html.escape(note)}</p>" for note in section.notes)
        parts.extend(section.tables)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def html_table(frame: pl.DataFrame) -> str:
    header = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(format_value(value))}</td>" for value in row) + "</tr>"
        for row in frame.iter_rows()
    ]
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def format_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def spread(values: list[int], count: int) -> list[int]:
    """Up to `count` entries of sorted `values`, evenly spread and including both ends."""
    positions = np.unique(np.linspace(0, len(values) - 1, min(count, len(values))).round().astype(int))
    return [values[i] for i in positions]


def spread_rows(frame: pl.DataFrame) -> pl.DataFrame:
    if frame.height <= MAX_TABLE_ROWS:
        return frame
    return frame[spread(list(range(frame.height)), MAX_TABLE_ROWS)]


def _label_positions(set_ticks, ids: list[int], max_ticks: int = 10) -> None:
    """Tick an axis whose positions 0..n-1 stand for `ids`: the first and last id, and round ids between."""
    if not ids:
        return
    wanted = MaxNLocator(nbins=max_ticks, integer=True).tick_values(min(ids), max(ids))
    position_of = {value: position for position, value in enumerate(ids)}
    positions = sorted({position_of[int(value)] for value in wanted if int(value) in position_of})
    if len(positions) < min(3, len(ids)):  # irregular ids (a sparse sweep): spread positions instead
        positions = spread(list(range(len(ids))), max_ticks)
    # The ends are always labelled; a round tick crowding an end label gives way to it.
    last = len(ids) - 1
    crowded = max(1, round(len(ids) / (2 * max_ticks)))
    positions = sorted(
        {0, last} | {p for p in positions if min(p, last - p) >= crowded}
    )
    set_ticks(positions, [str(ids[p]) for p in positions])


def _generated_length(sequences: pl.LazyFrame) -> int | None:
    """l, the generated tokens per sequence, as matches / score of one scored row (None if none)."""
    row = (
        sequences.filter(pl.col("score") > 0)
        .select((pl.col("matches").cast(pl.Float64) / pl.col("score").cast(pl.Float64)).round().cast(pl.Int64))
        .drop_nulls()
        .head(1)
        .collect()
    )
    return int(row.item()) if row.height else None
