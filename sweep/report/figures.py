"""What the report's sections draw with: a `Section` (one block of the page), checkpoint x chunk heatmaps with their
pixel layout and tick labels, line charts, and HTML tables.

Figures are matplotlib `Figure` objects (Agg, no pyplot), so making a report neither needs a display nor touches
global plotting state. Heatmaps give every cell whole pixels (`HeatmapLayout`: 3 x 3 at 360 x 360, a 1310 x 1215 px
PNG; the page scales it, the image links to itself). Every section module imports this one; none imports the page
(sweep/report/page.py), which imports them.
"""

from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sweep.timeline import Timeline
from sweep.analysis.labels import format_value

MAX_TABLE_ROWS = 15  # spread_rows: longer tables show this many rows, spread over them
HEATMAP_LARGE_PX = 1080  # the longer side of a heatmap's cells with more than 120 rows or columns
HEATMAP_SMALL_PX = 720  # ... and with fewer
MIN_CELL_PX = 2
MIN_AXES_PX = 300  # the colorbar label (wrapped) fits beside an axes this tall
DPI = 110


@dataclass
class Section:
    """One block of the page: a heading, optional figure, explanatory notes and HTML tables."""

    title: str
    image: str | None = None
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


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


def heatmap_figure(matrix: pl.DataFrame, title: str, colour_label: str, missing_label: str = "cell not in the dataset",
                   timeline: Timeline = Timeline()) -> tuple[Figure, HeatmapLayout]:
    """Draw a score_matrix (`ckpt` + one column per chunk) as a heatmap with the seen/unseen staircase of `timeline`
    (sweep/timeline.py: a row's line lies after the chunks its checkpoint trained on, inside a chunk it is inside).

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
    label_positions(axes.set_xticks, chunk_ids)
    label_positions(axes.set_yticks, ckpts)
    axes.set_xlabel("data chunk")
    axes.set_ylabel("checkpoint")
    axes.set_title(title)
    # Staircase between seen (left) and unseen (right) cells of each row, on the cell edges (inside the cell of a chunk
    # its checkpoint is part way through) and thinner than a cell, so it marks the boundary without covering cells.
    seen_counts = [timeline.staircase(ckpt, chunk_ids) for ckpt in ckpts]
    xs = [count - 0.5 for count in seen_counts for _ in (0, 1)]
    ys = [row + offset for row in range(len(ckpts)) for offset in (-0.5, 0.5)]
    line_px = min(2.0, max(1.0, min(layout.cell_width, layout.cell_height) / 4))
    (boundary,) = axes.plot(xs, ys, color="red", linewidth=line_px * 72 / DPI, solid_joinstyle="miter")
    axes.set_xlim(-0.5, len(chunk_ids) - 0.5)
    axes.set_ylim(-0.5, len(ckpts) - 0.5)
    handles = [boundary, Patch(facecolor=missing_colour, edgecolor="0.5", linewidth=0.5)]
    labels = [f"seen | unseen (left of the line: {'trained on' if timeline.step_indexed else 'chunk <= ckpt'})",
              missing_label]
    figure.legend(
        handles, labels, loc="lower left", bbox_to_anchor=(layout.left / width, 4 / height),
        ncols=2, frameon=False, fontsize="small",
    )
    return figure, layout


def html_table(frame: pl.DataFrame) -> str:
    header = "".join(f"<th>{html.escape(name)}</th>" for name in frame.columns)
    rows = [
        "<tr>" + "".join(f"<td>{html.escape(format_value(value))}</td>" for value in row) + "</tr>"
        for row in frame.iter_rows()
    ]
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def spread(values: list[int], count: int) -> list[int]:
    """Up to `count` entries of sorted `values`, evenly spread and including both ends."""
    positions = np.unique(np.linspace(0, len(values) - 1, min(count, len(values))).round().astype(int))
    return [values[i] for i in positions]


def spread_rows(frame: pl.DataFrame) -> pl.DataFrame:
    if frame.height <= MAX_TABLE_ROWS:
        return frame
    return frame[spread(list(range(frame.height)), MAX_TABLE_ROWS)]


def label_positions(set_ticks, ids: list[int], max_ticks: int = 10) -> None:
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


def lines_figure(frame: pl.DataFrame, x: str, lines: list[tuple[str, str, str]], xlabel: str, ylabel: str,
                 title: str) -> Figure:
    """One line per (column, colour, label) of `frame` against its column `x` (integers); nulls leave gaps."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    marker = "o" if frame.height <= 40 else None
    for column, colour, label in lines:
        values = frame[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        axes.plot(frame[x], values, color=colour, marker=marker, markersize=3, label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    return figure
