"""A self-contained HTML report (PNG figures + index.html) from a landed memsweep dataset.

    write_report(Path("runs/amber")) -> runs/amber/report/index.html

The page shows the run (name, spec, identity hash) and the figures of the memorization scores
(sweep/report/memorization_sections.py: checkpoint x chunk heatmaps, trajectories, the score distribution,
per source, predictability, first memorized and forgotten); once exposure counts have landed, their sections
(sweep/report/exposure_sections.py: what they cover, then one figure per analysis of
sweep/exposures/analyses.py); then examples of what was memorized, in words, each saying how often it was seen
(sweep/report/example_sections.py); given the outputs of smaller models on the same data (`smaller`), how well their
memorized sets predict this one's (sweep/report/size_sections.py). This module picks what is shown (the metric, the chunks, the example cells),
reads what the sections share once, and writes the page; the sections draw with sweep/report/figures.py.

The cells table (129.6k rows at full size) is the only table held whole; what a report costs at full size is in
BENCHMARKS.md, "Report and queries at full size".
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from sweep.analysis import memorization as analyses
from sweep.analysis.examples import TokenDecoder
from sweep.analysis.joint_outputs import open_joint_outputs
from sweep.errors import MemsweepError
from sweep.exposures.history import ExposureHistory
from sweep.data.published_labels import PublishedLabels
from sweep.landed.reader import open_output
from sweep.report.example_sections import example_sections
from sweep.report.exposure_sections import EXPOSURE_FIGURE_NAMES, exposure_sections
from sweep.report.figures import Section, spread
from sweep.report.label_sections import label_sections
from sweep.report.memorization_sections import MEMORIZATION_FIGURE_NAMES, memorization_sections
from sweep.report.size_sections import SIZE_FIGURE_NAMES, size_section

# Every file name the report may write, so a rewrite removes figures that no longer apply.
FIGURE_NAMES = MEMORIZATION_FIGURE_NAMES + EXPOSURE_FIGURE_NAMES + SIZE_FIGURE_NAMES
DEFAULT_TRAJECTORY_CHUNKS = 5


def write_report(output: Path, out_dir: Path | None = None, chunks: list[int] | None = None,
                 example_cells: list[tuple[int, int]] | None = None, labels: PublishedLabels | None = None,
                 smaller: Sequence[Path] = ()) -> Path:
    """Write figures and index.html for the landed dataset in `output`; returns index.html's path.

    out_dir defaults to `<output>/report`. `chunks` picks the chunks whose score trajectories are
    drawn (default: a few spread over the chunk range); an unknown chunk raises MemsweepError.
    `example_cells` picks (ckpt, chunk) cells whose most memorized sequences are shown as text (default:
    the oldest and the newest chunk at the last checkpoint). `labels` (sweep/data/published_labels.py) adds the
    section that holds the output against them (sweep/report/label_sections.py). `smaller`: outputs of smaller
    models on the same data and probe sets, smallest first, for the section across model sizes (refused, before
    anything is written, where they probe different sequences).
    """
    output = Path(output)
    out_dir = Path(out_dir) if out_dir is not None else output / "report"
    landed = open_output(output)
    sizes = open_joint_outputs([*smaller, output]) if smaller else None
    sequences = landed.sequences()
    cells = landed.cells().collect()
    if cells.height == 0:
        raise MemsweepError(f"{output / 'cells'}: the cells table is empty")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURE_NAMES:
        (out_dir / name).unlink(missing_ok=True)

    extractable = analyses.is_extractable_mode(cells)
    # Extractable mode stores no per-token matches, so the score is null: the prefix length is
    # the closest graded measure left.
    main_metric = "mean_prefix_match" if extractable else "score"
    last_ckpt = int(cells["ckpt"].max())
    all_chunks = sorted(cells["chunk"].unique().to_list())
    if chunks is None:
        chunks = spread(all_chunks, DEFAULT_TRAJECTORY_CHUNKS)
    trajectories = analyses.chunk_trajectories(cells, chunks, metric=main_metric)  # an unknown chunk: refused now

    first_memorized = analyses.first_memorized(sequences, memorized_only=True)  # bounded by the memorized sequences
    sections = memorization_sections(landed, cells, sequences, trajectories, first_memorized, main_metric, last_ckpt,
                                     extractable, out_dir)
    if sizes is not None:
        sections.append(size_section(sizes, out_dir))
    # The last checkpoint's tokenizer serves the exposure sections (templates are found in text) and the examples.
    decoder = TokenDecoder.for_checkpoint(landed, last_ckpt)
    history = ExposureHistory.read(landed)
    sections.extend(exposure_sections(landed, history, sequences, last_ckpt, extractable, out_dir,
                                      decoder.text if decoder.tokenizer is not None else None))
    if example_cells is None:
        example_cells = sorted({(last_ckpt, all_chunks[0]), (last_ckpt, all_chunks[-1])})
    sections.extend(example_sections(landed, last_ckpt, first_memorized, example_cells, decoder,
                                     history if history.coverage.has_counts else None))
    if labels is not None:
        sections.extend(label_sections(landed, labels))

    index = out_dir / "index.html"
    index.write_text(_render_page(landed.name, sections))
    return index


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
