"""The report's sections on exposure counts (sweep/exposures/analyses.py), shown only when counts have landed.

    exposure_sections(landed, history, sequences, last_ckpt, extractable, out_dir, decode) -> [Section, ...]

First what the counts cover (`ExposureCoverage.describe`: how many of the chunk files listed in exposure.chunks,
failed scans named, which sequences the analyses use), then one figure per analysis: memorization against
exposure bins (at the last checkpoint and over checkpoints), seen per sequence in the cells whose chunk a checkpoint
had not trained on, forgetting against checkpoints since the last exposure, Lesci et al.'s memorization profile and
its path, and Prashanth et al.'s recitation / reconstruction / recollection over checkpoints. The five analyses
share one pass over the checkpoints (`exposure_analyses`). Figures are drawn with sweep/report/figures.py, as every
section's are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep.analysis.labels import format_value
from sweep.exposures import analyses as ea
from sweep.exposures.history import ExposureHistory
from sweep.timeline import Timeline
from sweep.exposures.kinds import KINDS, RECITATION_MIN_EXPOSURES
from sweep.landed.reader import LandedOutput
from sweep.report.figures import DPI, Section, heatmap_figure, html_table, lines_figure, spread_rows

EXPOSURE_FIGURE_NAMES = (
    "exposure_memorization.png",
    "seen_per_sequence.png",
    "forgetting_by_recency.png",
    "memorization_profile.png",
    "profile_path.png",
    "memorization_kinds.png",
)
MIN_LINE_N = 20  # a bin's point is drawn over checkpoints (or checkpoints since) only with this many sequences
KIND_COLOURS = {"recitation": "tab:red", "reconstruction": "tab:orange", "recollection": "tab:blue"}


def exposure_sections(landed: LandedOutput, history: ExposureHistory, sequences: pl.LazyFrame, last_ckpt: int,
                      extractable: bool, out_dir: Path, decode: Callable[[list[int]], str] | None) -> list[Section]:
    """Every exposure section, or none when no exposure count has landed. `history`: ExposureHistory.read(landed);
    `decode`: token ids -> text with the last checkpoint's tokenizer (None: incrementing templates are not looked
    for)."""
    coverage = history.coverage
    if not coverage.has_counts:
        return []
    overview = _coverage_section(landed, history, last_ckpt)
    if len(history) == 0:
        return [overview]
    metric = "full_match" if extractable else "score"
    results = ea.exposure_analyses(sequences, history, landed.probes(), landed.prompt_len, decode, metric=metric)
    sections = [_by_exposure_section(results.by_exposure, last_ckpt, extractable, out_dir),
                _seen_section(results.seen, out_dir),
                _recency_section(results.recency, out_dir),
                *_profile_sections(results.profile, metric, out_dir, history.timeline),
                _kinds_section(results.kinds, decode is not None, out_dir)]
    if not coverage.is_complete:  # a partial scan is never presented as complete
        for section in sections:
            section.notes.insert(0, f"Partial counts: {coverage.describe()}.")
    return [overview, *sections]


def _coverage_section(landed: LandedOutput, history: ExposureHistory, last_ckpt: int) -> Section:
    coverage = history.coverage
    notes = [_sentence(coverage.describe()), _sentence(coverage.describe_sequences()),
             "A sequence's exposures at checkpoint c are the occurrences of its k + l tokens in the scanned chunk "
             "files <= c (what checkpoint c has trained on), its own row included; a file not scanned makes them a "
             "lower bound."]
    scans = landed.exposure_scans()
    table = pl.DataFrame([
        ("chunk files scanned", str(scans["seen_chunk"].n_unique())),
        ("tokens scanned", f"{int(scans['tokens'].sum()):,}"),
        ("scan CPU time", f"{scans['cpu_seconds'].sum() / 3600:.2f} core-hours"),
        ("sequences with known exposures", f"{len(history):,}"),
        (f"... seen more than once by checkpoint {last_ckpt}",
         f"{int((history.exposures_at(last_ckpt)['exposures'] > 1).sum()):,}"),
    ], schema=["exposure counts", "value"], orient="row")
    return Section("Exposure counts", notes=notes, tables=[html_table(table)])


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _bin_labels(frame: pl.DataFrame) -> list[str]:
    return [ea.bin_label(low, high) for low, high in frame.select("exposures_min", "exposures_max").rows()]


def _by_exposure_section(table: pl.DataFrame, last_ckpt: int, extractable: bool, out_dir: Path) -> Section:
    title = "Memorization against exposures"
    last = table.filter(pl.col("ckpt") == last_ckpt).sort("exposure_bin")
    name = "exposure_memorization.png"
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    bars, lines = figure.subplots(1, 2)
    positions = np.arange(last.height)
    bars.bar(positions, last["full_match_rate"].to_numpy(), color="tab:blue", label="full-match rate")
    if not extractable:
        bars.plot(positions, last["score"].to_numpy(), "o", color="tab:orange", label="mean score")
    for x, (n, rate) in enumerate(last.select("n", "full_match_rate").rows()):
        bars.annotate(f"n={n}", (x, rate), textcoords="offset points", xytext=(0, 3), ha="center", fontsize="x-small")
    bars.set_xticks(positions, _bin_labels(last), rotation=45)
    bars.set_xlabel(f"exposures by checkpoint {last_ckpt} (occurrences in scanned chunk files <= it)")
    bars.set_ylabel("fraction")
    bars.set_ylim(0, 1.08)
    bars.set_title(f"Checkpoint {last_ckpt}")
    bars.legend(fontsize="small", loc="upper left")
    colours = matplotlib.colormaps["viridis"]
    top = max(int(table["exposure_bin"].max() or 0), 1)
    # In bin order: group_by's own order varies run to run, and lines drawn later cover earlier ones.
    for (exposure_bin,), line in sorted(table.filter(pl.col("n") >= MIN_LINE_N).group_by(["exposure_bin"]),
                                        key=lambda item: item[0]):
        line = line.sort("ckpt")
        label = ea.bin_label(*line.select("exposures_min", "exposures_max").row(0))
        lines.plot(line["ckpt"], line["full_match_rate"], color=colours(exposure_bin / top), label=label,
                   marker="o" if line.height <= 40 else None, markersize=3)
    handles, labels = lines.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: int(labels[i].split("-")[0]))
    lines.legend([handles[i] for i in order], [labels[i] for i in order], title="exposures", fontsize="x-small")
    lines.set_xlabel("checkpoint")
    lines.set_ylabel("full-match rate")
    lines.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines.set_title(f"Over checkpoints (bins with >= {MIN_LINE_N} sequences)")
    lines.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    note = ("Bins: 0 (never seen), 1, 2, 3-4, 5-8, ...: 1 + ceil(log2(exposures)). Carlini et al. (2022) found "
            "memorization to grow log-linearly with the number of duplicates.")
    shown = last.select(pl.Series("exposures", _bin_labels(last)), "n", "n_memorized", "full_match_rate",
                        *([] if extractable else ["score"]))
    return Section(title, image=name, notes=[note], tables=[html_table(shown)])


def _seen_section(seen: pl.DataFrame, out_dir: Path) -> Section:
    title = "Seen per sequence: copies in chunks not yet trained on"
    summary = ea.unseen_cells_summary(seen)
    if summary.height == 0:
        return Section(title, notes=["Every landed cell's chunk had been trained on by its checkpoint: no cell to "
                                     "split."])
    memorized, copied = int(summary["n_memorized"].sum()), int(summary["n_memorized_seen"].sum())
    share = f" ({100 * copied / memorized:.1f}%)" if memorized else ""
    notes = [f"In the cells whose chunk the checkpoint had not trained on (chunk > ckpt, 'unseen' per chunk), "
             f"{copied:,} of the {memorized:,} memorized (sequence, checkpoint) pairs{share} were of sequences seen "
             f"earlier through copies in chunks the checkpoint had trained on; {int(summary['n_seen'].sum()):,} of "
             f"{int(summary['n'].sum()):,} pairs were such copies. Per sequence, 'seen by checkpoint c' means "
             "exposures at c >= 1."]
    name = "seen_per_sequence.png"
    figure = lines_figure(summary, "ckpt", [("full_match_rate_never_seen", "tab:blue", "never seen"),
                                             ("full_match_rate_seen", "tab:red", "seen earlier through copies")],
                           "checkpoint", "full-match rate",
                           "Sequences of chunks not yet trained on, by whether a copy was")
    figure.savefig(out_dir / name, dpi=DPI)
    return Section(title, image=name, notes=notes, tables=[html_table(spread_rows(summary))])


def _recency_section(recency: pl.DataFrame, out_dir: Path) -> Section:
    title = "Forgetting against recency"
    definition = ("Each (sequence, checkpoint) with exposures >= 1 is one observation, pooled over checkpoints: the "
                  "full-match rate against the checkpoints since its latest exposure (0: the checkpoint saved right "
                  f"after the chunk holding it), one line per exposure bin (points with >= {MIN_LINE_N} observations).")
    shown = recency.filter(pl.col("n") >= MIN_LINE_N)
    if shown.height == 0:
        return Section(title, notes=[definition, f"No (bin, checkpoints since) has {MIN_LINE_N} observations."])
    name = "forgetting_by_recency.png"
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    colours = matplotlib.colormaps["viridis"]
    top = max(int(shown["exposure_bin"].max()), 1)
    for (exposure_bin,), line in sorted(shown.group_by(["exposure_bin"]), key=lambda item: item[0]):
        line = line.sort("checkpoints_since")
        label = ea.bin_label(*line.select("exposures_min", "exposures_max").row(0))
        axes.plot(line["checkpoints_since"], line["full_match_rate"], color=colours(exposure_bin / top), label=label,
                  marker="o" if line.height <= 40 else None, markersize=3)
    axes.set_xlabel("checkpoints since the latest exposure")
    axes.set_ylabel("full-match rate")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Memorization against recency, per exposure bin")
    axes.legend(title="exposures", fontsize="x-small")
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    return Section(title, image=name, notes=[definition])


PROFILE_LABELS = {"score": "memorization score", "full_match": "full-match rate"}


def _profile_sections(profile: pl.DataFrame, metric: str, out_dir: Path, timeline: Timeline) -> list[Section]:
    title = "Memorization profile (Lesci et al. 2024)"
    what = PROFILE_LABELS.get(metric, metric)
    definition = (f"Difference in differences of the mean {what}: for the sequences of chunk g not seen before it "
                  "(the cohort) against every sequence not yet seen at checkpoint c (the control), did(g, c) = "
                  "[cohort - control at c] - [cohort - control at the last checkpoint before g]: the effect at c of "
                  "having trained on chunk g (Lesci et al., ACL 2024, with not-yet-seen sequences as the control; "
                  "Amber has no never-trained set). Grey: no estimate (c < g, no checkpoint before g, or nothing "
                  "left unseen at c).")
    known = profile.filter(pl.col("did").is_not_null())
    if known.height == 0:
        return [Section(title, notes=[definition, "No estimate: it needs a checkpoint before a cohort's chunk and "
                                                  "sequences not yet seen at a later one."])]
    matrix = known.pivot(on="cohort", index="ckpt", values="did", sort_columns=True).sort("ckpt")
    matrix = matrix.select("ckpt", *sorted(matrix.columns[1:], key=int))
    figure, _ = heatmap_figure(matrix, f"Memorization profile: did of the {what}", f"did ({what})",
                               missing_label="no estimate", timeline=timeline)
    figure.axes[0].set_xlabel("cohort (the chunk trained at its checkpoint)")
    figure.savefig(out_dir / "memorization_profile.png", dpi=DPI)
    path = ea.profile_path(profile)
    figure = lines_figure(path, "checkpoints_since", [("did", "tab:blue", "did (difference in differences)"),
                                                       ("gap", "tab:gray", "gap (cohort - control at c)")],
                           "checkpoints since the cohort's chunk was trained on", what,
                           "Memorization path: the profile averaged over cohorts (weighted by their size)")
    figure.axes[0].axhline(0, color="black", linewidth=0.8)
    figure.savefig(out_dir / "profile_path.png", dpi=DPI)
    first = path.filter(pl.col("did").is_not_null()).head(1)
    note = (f"Right after training on it the cohorts' {what} rose by {format_value(first['did'].item())} more than the "
            "not-yet-seen sequences' did." if first.height else "")
    return [Section(title, image="memorization_profile.png", notes=[definition]),
            Section("Memorization path", image="profile_path.png", notes=[note] if note else [],
                    tables=[html_table(spread_rows(path))])]


def _kinds_section(kinds: pl.DataFrame, decoded: bool, out_dir: Path) -> Section:
    title = "Recitation, reconstruction, recollection (Prashanth et al. 2024)"
    definition = (f"A memorized sequence is recitation when it was seen at least {RECITATION_MIN_EXPOSURES} times by "
                  "the checkpoint (the paper's 'more than 5 duplicates', counted here as exposures of the whole k + l "
                  "window up to that checkpoint), else reconstruction when it is a template (its continuation repeats "
                  "the prompt's last tokens, or its text increments numbers), else recollection.")
    notes = [definition]
    if not decoded:
        notes.append("No tokenizer could be loaded: incrementing templates were not looked for, only repeating ones.")
    if kinds.height == 0 or int(kinds["n_memorized"].sum()) == 0:
        return Section(title, notes=notes + ["No covered sequence was memorized at any checkpoint."])
    name = "memorization_kinds.png"
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.stackplot(kinds["ckpt"].to_numpy(), *[kinds[kind].to_numpy() for kind in KINDS], labels=list(KINDS),
                   colors=[KIND_COLOURS[kind] for kind in KINDS], alpha=0.85)
    axes.set_xlabel("checkpoint")
    axes.set_ylabel("memorized sequences")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Memorized sequences by kind")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / name, dpi=DPI)
    return Section(title, image=name, notes=notes, tables=[html_table(spread_rows(kinds))])
