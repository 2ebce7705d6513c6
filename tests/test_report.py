"""Tests for sweep/analysis/memorization.py, sweep/report/page.py and the examples in docs/queries.md.

Each test builds a small landed dataset in tmp_path, in the exact layout the store writes, with
memorization that grows with training and some forgetting; expected numbers are recomputed here
in plain Python, independently of the Polars code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import polars as pl
import pytest

from sweep.analysis import memorization as analyses
from sweep.report.page import write_report
from sweep.landed.ledger import DamagedOutputError
from sweep.landed.schema import CellProvenance
from sweep.landed.store import ResultStore, ScoredCell
from sweep.errors import MemsweepError
from tests.landed_world import L, synthetic_sequences, write_landed
from tests.query_docs import doc_blocks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def records() -> list[dict]:
    return synthetic_sequences(n_ckpts=5, n_chunks=5, n_rows=40)


@pytest.fixture
def landed(tmp_path: Path, records: list[dict]) -> Path:
    return write_landed(tmp_path / "out", records)


# ---------------------------------------------------------------- load_tables


def test_load_tables_types_and_counts(landed: Path, records: list[dict]) -> None:
    sequences, cells = analyses.load_tables(landed)
    seq = sequences.collect()
    assert seq.schema["ckpt"] == pl.Int32 and seq.columns[0] == "ckpt"
    assert seq.schema["chunk"] == pl.Int32 and seq.schema["score"] == pl.Float32
    assert len(seq) == len(records)
    assert cells.collect().height == 25
    assert sorted(cells.collect()["ckpt"].unique().to_list()) == [0, 1, 2, 3, 4]


def test_load_tables_reads_only_listed_files_and_names_a_damaged_one(landed: Path) -> None:
    # a stray copy in a partition is not data; a truncated listed file is named, not half-read
    [part] = (landed / "sequences" / "ckpt=2").iterdir()
    (landed / "sequences" / "ckpt=2" / "stray copy.parquet").write_bytes(part.read_bytes())
    sequences, _ = analyses.load_tables(landed)
    assert sequences.filter(pl.col("ckpt") == 2).collect().height == 200
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(DamagedOutputError, match=re.escape(str(part))):
        analyses.load_tables(landed)[0].collect()


def test_load_tables_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such output folder"):
        analyses.load_tables(tmp_path / "nope")
    (tmp_path / "sequences" / "ckpt=0").mkdir(parents=True)
    pl.DataFrame({"chunk": [0], "score": [0.5]}).write_parquet(tmp_path / "sequences" / "ckpt=0" / "a.parquet")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        analyses.load_tables(tmp_path)


# ---------------------------------------------------------------- analyses


def test_score_matrix_matches_records(landed: Path, records: list[dict]) -> None:
    _, cells = analyses.load_tables(landed)
    matrix = analyses.score_matrix(cells)
    assert matrix["ckpt"].to_list() == [0, 1, 2, 3, 4]
    assert matrix.columns == ["ckpt", "0", "1", "2", "3", "4"]
    for ckpt, chunk in [(0, 0), (3, 1), (4, 4)]:
        cell = [r["matches"] / L for r in records if r["ckpt"] == ckpt and r["chunk"] == chunk]
        assert matrix.filter(pl.col("ckpt") == ckpt)[str(chunk)].item() == pytest.approx(np.mean(cell), rel=1e-6)
    rates = analyses.score_matrix(cells, metric="full_match_rate")
    cell = [r["full_match"] for r in records if r["ckpt"] == 2 and r["chunk"] == 1]
    assert rates.filter(pl.col("ckpt") == 2)["1"].item() == pytest.approx(np.mean(cell))
    with pytest.raises(MemsweepError, match="unknown cell metric 'bogus'"):
        analyses.score_matrix(cells, metric="bogus")


def test_score_matrix_sparse_and_unordered_chunks() -> None:
    cells = pl.DataFrame({"ckpt": [5, 0, 5], "chunk": [10, 2, 2], "score": [0.5, 0.1, 0.2]})
    matrix = analyses.score_matrix(cells)
    assert matrix.columns == ["ckpt", "2", "10"]
    assert matrix.rows() == [(0, 0.1, None), (5, 0.2, 0.5)]


def test_chunk_trajectories(landed: Path) -> None:
    _, cells = analyses.load_tables(landed)
    lines = analyses.chunk_trajectories(cells, [1, 3])
    assert lines.height == 10
    assert lines.filter(pl.col("chunk") == 3)["seen"].to_list() == [False, False, False, True, True]
    with pytest.raises(MemsweepError, match=r"chunks \[99\]"):
        analyses.chunk_trajectories(cells, [1, 99])


def test_score_distribution_counts(landed: Path, records: list[dict]) -> None:
    sequences, _ = analyses.load_tables(landed)
    histogram = analyses.score_distribution(sequences)  # default: last checkpoint
    final = [r["matches"] / L for r in records if r["ckpt"] == 4]
    values, counts = np.unique(np.array(final, dtype=np.float32), return_counts=True)
    assert histogram["score"].to_list() == pytest.approx(values.tolist())
    assert histogram["count"].to_list() == counts.tolist()
    assert histogram["fraction"].sum() == pytest.approx(1.0)


def test_per_source(landed: Path, records: list[dict]) -> None:
    sequences, _ = analyses.load_tables(landed)
    table = analyses.per_source(sequences)
    got = table.filter((pl.col("ckpt") == 2) & (pl.col("source") == "c4")).row(0, named=True)
    mine = [r for r in records if r["ckpt"] == 2 and r["source"] == "c4"]
    assert got["n"] == len(mine)
    assert got["score"] == pytest.approx(np.mean([r["matches"] / L for r in mine]), rel=1e-6)
    assert got["full_match_rate"] == pytest.approx(np.mean([r["full_match"] for r in mine]))


def test_predictability_tiny_hand_case() -> None:
    # ckpt 1 vs final ckpt 2. Sequences seen by ckpt 1: chunks 0 and 1 (chunk 2 must be ignored).
    # M_1 = {a, b, c}; M_2 on those = {a, b, d}; both = {a, b}: precision 2/3, recall 2/3.
    # ckpt 0 sees chunk 0 only: M_0 = {a}; M_2 there = {a, b}: precision 1, recall 1/2.
    rows = {  # (chunk, row): (fm at 0, fm at 1, fm at 2)
        (0, 0): (True, True, True),  # a
        (0, 1): (False, True, True),  # b
        (1, 0): (False, True, False),  # c
        (1, 1): (False, False, True),  # d
        (1, 2): (False, False, False),
        (2, 0): (True, True, True),  # unseen by ckpt 0 and 1: ignored
    }
    sequences = pl.DataFrame(
        [{"ckpt": c, "chunk": k, "row": r, "full_match": fm[c]} for (k, r), fm in rows.items() for c in range(3)]
    )
    table = analyses.predictability(sequences)
    assert table["ckpt"].to_list() == [0, 1]
    first, second = table.rows(named=True)
    assert (first["n_sequences"], first["n_memorized"], first["n_memorized_final"], first["n_both"]) == (2, 1, 2, 1)
    assert first["precision"] == 1.0 and first["recall"] == 0.5
    assert (second["n_sequences"], second["n_memorized"], second["n_memorized_final"]) == (5, 3, 3)
    assert second["precision"] == pytest.approx(2 / 3) and second["recall"] == pytest.approx(2 / 3)
    # Against ckpt 1 as the final one only ckpt 0 is earlier.
    assert analyses.predictability(sequences, final_ckpt=1)["ckpt"].to_list() == [0]
    with pytest.raises(MemsweepError, match="final_ckpt=7"):
        analyses.predictability(sequences, final_ckpt=7)


def test_predictability_matches_independent_computation(landed: Path, records: list[dict]) -> None:
    sequences, _ = analyses.load_tables(landed)
    table = analyses.predictability(sequences)
    final = {(r["chunk"], r["row"]): r["full_match"] for r in records if r["ckpt"] == 4}
    for ckpt in range(4):
        earlier = {(r["chunk"], r["row"]): r["full_match"] for r in records if r["ckpt"] == ckpt and r["chunk"] <= ckpt}
        memorized = {key for key, fm in earlier.items() if fm}
        memorized_final = {key for key in earlier if final[key]}
        got = table.filter(pl.col("ckpt") == ckpt).row(0, named=True)
        assert got["n_sequences"] == len(earlier)
        assert got["n_both"] == len(memorized & memorized_final)
        if memorized:
            assert got["precision"] == pytest.approx(len(memorized & memorized_final) / len(memorized))
        else:
            assert got["precision"] is None
        assert got["recall"] == pytest.approx(len(memorized & memorized_final) / len(memorized_final))


def test_predictability_single_checkpoint_is_empty() -> None:
    sequences = pl.DataFrame({"ckpt": [0, 0], "chunk": [0, 0], "row": [1, 2], "full_match": [True, False]})
    table = analyses.predictability(sequences)
    assert table.height == 0 and "precision" in table.columns


def longest_miss_runs(records: list[dict]) -> dict[tuple[int, int], int]:
    """(chunk, row) -> longest run of consecutive scored misses after the first full match, in plain Python."""
    histories: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for r in records:
        if r["full_match"] is not None:
            histories.setdefault((r["chunk"], r["row"]), []).append((r["ckpt"], r["full_match"]))
    longest = {}
    for key, history in histories.items():
        run = best = 0
        seen_hit = False
        for _, hit in sorted(history):
            seen_hit = seen_hit or hit
            run = 0 if hit or not seen_hit else run + 1
            best = max(best, run)
        longest[key] = best
    return longest


def test_first_memorized(landed: Path, records: list[dict]) -> None:
    sequences, _ = analyses.load_tables(landed)
    table = analyses.first_memorized(sequences)
    assert table.schema == pl.Schema(analyses.FIRST_MEMORIZED_SCHEMA)
    by_key: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for r in records:
        by_key.setdefault((r["chunk"], r["row"]), []).append((r["ckpt"], r["full_match"]))
    runs = longest_miss_runs(records)
    assert table.height == len(by_key)
    assert table.select("chunk", "row").rows() == sorted(by_key)
    for got in table.iter_rows(named=True):
        key = (got["chunk"], got["row"])
        history = sorted(by_key[key])
        hits = [c for c, fm in history if fm]
        first = hits[0] if hits else None
        assert got["first_memorized_ckpt"] == first
        assert got["last_memorized_ckpt"] == (hits[-1] if hits else None)
        assert got["n_ckpts"] == len(history) and got["n_memorized_ckpts"] == len(hits)
        assert got["longest_miss_run"] == runs[key]
        assert got["forgotten"] == (runs[key] >= analyses.FORGET_MIN_MISSES)
        assert got["memorized_at_last"] == history[-1][1]
        assert got["memorized_before_seen"] == (first is not None and first < got["chunk"])
        assert got["source"] == next(r["source"] for r in records if (r["chunk"], r["row"]) == key)
    # The report's bounded form: the same rows for every sequence memorized at least once, and no others.
    memorized_only = analyses.first_memorized(sequences, memorized_only=True)
    ever = table.filter(pl.col("first_memorized_ckpt").is_not_null())
    assert 0 < memorized_only.height == ever.height < table.height
    assert memorized_only["n_ckpts"].null_count() == memorized_only.height
    assert memorized_only.drop("n_ckpts").equals(ever.drop("n_ckpts"))
    # The fixture forgets after 1-2 checkpoints and has 5: min_misses decides what counts.
    counts = [analyses.first_memorized(sequences, min_misses=m)["forgotten"].sum() for m in (1, 2, 3)]
    assert counts == [sum(run >= m for run in runs.values()) for m in (1, 2, 3)]
    assert counts[0] > counts[1] > 0


def test_forgetting_needs_consecutive_misses() -> None:
    # 360 checkpoints; each sequence memorized from checkpoint 10 on except where `misses` says.
    n_ckpts = 360
    misses = {
        0: {200},  # one miss: a flicker, not forgetting
        1: {200, 201},  # two in a row: still not
        2: {200, 201, 202},  # three in a row: forgotten (then relearned)
        3: {n_ckpts - 1},  # missed only at the last checkpoint: not forgotten, not memorized at last
        4: set(range(11, n_ckpts - 1, 2)),  # every other checkpoint: never two misses in a row
        5: set(range(10, n_ckpts)),  # never memorized at all
    }
    rows = [
        {"ckpt": ckpt, "chunk": 3, "row": row, "source": "c4", "full_match": ckpt >= 10 and ckpt not in missed}
        for row, missed in misses.items()
        for ckpt in range(n_ckpts)
    ]
    # Row 6 is scored only from checkpoint 5 on and with gaps: hit at 5, unscored until 349, then
    # three scored misses: consecutive among the checkpoints that scored it, so forgotten. Row 7's
    # null full_match (not scored) rows are no misses.
    rows += [{"ckpt": c, "chunk": 3, "row": 6, "source": "book", "full_match": c == 5} for c in (5, 350, 351, 352)]
    rows += [
        {"ckpt": c, "chunk": 1, "row": 7, "source": "arxiv", "full_match": None if 1 <= c <= 300 else True}
        for c in range(n_ckpts)
    ]
    frame = pl.DataFrame(rows, schema={"ckpt": pl.Int32, "chunk": pl.Int32, "row": pl.Int64, "source": pl.String,
                                       "full_match": pl.Boolean})
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=1)  # no order is promised by a reader
    for sequences in (shuffled, shuffled.lazy()):
        table = analyses.first_memorized(sequences)
        assert table.select("chunk", "row").rows() == [(1, 7), *[(3, row) for row in range(7)]]
        got = {row["row"]: row for row in table.iter_rows(named=True)}
        assert [got[row]["longest_miss_run"] for row in range(8)] == [1, 2, 3, 1, 1, 0, 3, 0]
        assert [got[row]["forgotten"] for row in range(8)] == [False, False, True, False, False, False, True, False]
        at_last = [True, True, True, False, True, False, False, True]
        assert [got[row]["memorized_at_last"] for row in range(8)] == at_last
        assert got[5]["first_memorized_ckpt"] is None and got[6]["first_memorized_ckpt"] == 5
        assert got[7]["n_ckpts"] == n_ckpts - 300 and got[7]["source"] == "arxiv"
        assert got[6]["n_ckpts"] == 4 and got[6]["last_memorized_ckpt"] == 5
    with pytest.raises(MemsweepError, match="min_misses must be at least 1"):
        analyses.first_memorized(frame, min_misses=0)


def test_first_memorized_rejects_rows_it_cannot_key() -> None:
    frame = pl.DataFrame({"ckpt": [0], "chunk": [0], "row": [1 << 40], "source": ["c4"], "full_match": [True]})
    with pytest.raises(MemsweepError, match=r"row numbers must lie in 0\.\.2\*\*32-1"):
        analyses.first_memorized(frame)


def test_extractable_mode_detection(tmp_path: Path, records: list[dict]) -> None:
    output = write_landed(tmp_path / "x", records, extractable=True)
    sequences, cells = analyses.load_tables(output)
    assert analyses.is_extractable_mode(cells) and analyses.is_extractable_mode(sequences)
    assert analyses.score_distribution(sequences).height == 0
    assert analyses.score_distribution(sequences, column="prefix_match")["count"].sum() == 200


# ---------------------------------------------------------------- report


def assert_readable_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path
    rgb = (image[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert colours.size > 10, f"{path} is (nearly) a single colour"


def referenced_images(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_write_report_full(landed: Path) -> None:
    index = write_report(landed)
    assert index == landed / "report" / "index.html"
    images = referenced_images(index)
    expected = {
        "heatmap_score.png",
        "heatmap_full_match_rate.png",
        "trajectories.png",
        "score_distribution.png",
        "per_source.png",
        "predictability.png",
        "first_memorized.png",
    }
    assert expected <= set(images)
    for name in images:
        assert_readable_png(index.parent / name)
    assert set(p.name for p in index.parent.glob("*.png")) == set(images)  # every figure on the page
    page = index.read_text()
    manifest = json.loads((landed / "manifest.json").read_text())
    assert "synthetic" in page and manifest["identity_hash"] in page and "forgotten" in page.lower()
    assert "Exposure counts" not in page  # none landed: no exposure section


def test_report_shows_exposure_sections_with_their_coverage(tmp_path: Path, records: list[dict]) -> None:
    from sweep.report.exposure_sections import EXPOSURE_FIGURE_NAMES

    full = write_report(write_landed(tmp_path / "scanned", records, exposures=True))
    images = referenced_images(full)
    assert set(EXPOSURE_FIGURE_NAMES) <= set(images)
    for name in EXPOSURE_FIGURE_NAMES:
        assert_readable_png(full.parent / name)
    page = full.read_text()
    assert "exposure counts cover 5 of the 5 chunk files listed in exposure.chunks" in page.lower()
    assert "Partial counts" not in page and "Recitation, reconstruction, recollection" in page
    # a partial scan is never presented as complete: every exposure section says what the counts cover
    partial = write_landed(tmp_path / "partial", records, exposures=True, scanned=[0, 1, 2, 4])
    ResultStore(partial).record_scan_failure(3, "train/train_003.jsonl:7: not JSON")
    page = write_report(partial).read_text()
    note = ("Partial counts: exposure counts cover 4 of the 5 chunk files listed in exposure.chunks; failed: chunk 3: "
            "train/train_003.jsonl:7: not JSON.")
    assert page.count(note) == 6  # each exposure section after the overview
    assert "the sequences of 4 of the 5 probe chunks" in page


def test_write_report_custom_dir_and_chunks(landed: Path, tmp_path: Path) -> None:
    index = write_report(landed, out_dir=tmp_path / "elsewhere", chunks=[0, 4])
    assert index.parent == tmp_path / "elsewhere"
    assert "chunks 0, 4" in index.read_text()
    with pytest.raises(MemsweepError, match=r"chunks \[9\]"):
        write_report(landed, out_dir=tmp_path / "bad", chunks=[9])


def test_write_report_single_checkpoint(tmp_path: Path) -> None:
    records = [r for r in synthetic_sequences(3, 3, 30) if r["ckpt"] == 2]
    index = write_report(write_landed(tmp_path / "one", records))
    page = index.read_text()
    assert "predictability.png" not in page and "needs at least two checkpoints" in page
    for name in referenced_images(index):
        assert_readable_png(index.parent / name)


def test_write_report_single_cell(tmp_path: Path) -> None:
    records = [r for r in synthetic_sequences(1, 1, 30)]
    index = write_report(write_landed(tmp_path / "cell", records))
    for name in referenced_images(index):
        assert (index.parent / name).stat().st_size > 0


def test_write_report_extractable_mode_without_nll(tmp_path: Path, records: list[dict]) -> None:
    output = write_landed(tmp_path / "x", records, extractable=True, with_nll=False)
    index = write_report(output)
    page = index.read_text()
    assert "extractable mode" in page
    assert "heatmap_score.png" not in page and "heatmap_mean_prefix_match.png" in page
    for name in referenced_images(index):
        assert_readable_png(index.parent / name)


def heatmap_matrix(ckpts: list[int], chunks: list[int], seed: int = 0) -> pl.DataFrame:
    """A score_matrix-shaped frame: `ckpt` then one Float64 column per chunk, some cells missing."""
    rng = np.random.default_rng(seed)
    values = rng.random((len(ckpts), len(chunks)))
    values[rng.random(values.shape) < 0.01] = np.nan
    columns = {str(chunk): values[:, j] for j, chunk in enumerate(chunks)}
    return pl.DataFrame({"ckpt": ckpts, **columns}).with_columns(pl.col(str(c)).fill_nan(None) for c in chunks)


@pytest.mark.parametrize(
    "ckpts, chunks",
    [
        (list(range(360)), list(range(360))),  # the whole Amber matrix
        (list(range(8)), list(range(8))),
        ([*range(0, 360, 10), 359], list(range(0, 360, 10))),  # every 10th, plus the last checkpoint
        ([359], list(range(360))),  # one checkpoint
    ],
)
def test_heatmap_shows_every_cell(ckpts: list[int], chunks: list[int]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from sweep.report.figures import DPI, heatmap_figure

    figure, layout = heatmap_figure(heatmap_matrix(ckpts, chunks), "title", "colour")
    FigureCanvasAgg(figure).draw()
    width, height = layout.size
    assert (figure.get_figwidth() * DPI, figure.get_figheight() * DPI) == pytest.approx((width, height))
    axes = figure.axes[0]
    box = axes.get_window_extent()
    # Whole pixels per cell, at least 2 each way, so each of 360 x 360 cells is drawn.
    assert min(layout.cell_width, layout.cell_height) >= 2
    assert box.width == pytest.approx(layout.cell_width * len(chunks))
    assert box.height == pytest.approx(layout.cell_height * len(ckpts))
    # Nothing is drawn over the cells: the legend and the colorbar lie outside the axes.
    for other in (figure.legends[0], figure.axes[1]):
        outside = other.get_window_extent()
        assert not box.overlaps(outside), (box, outside)
        assert 0 <= outside.x0 and outside.x1 <= width and 0 <= outside.y0 and outside.y1 <= height
    # The first and last ids are always labelled.
    for ticks, ids in ((axes.get_xticklabels(), chunks), (axes.get_yticklabels(), ckpts)):
        labels = [label.get_text() for label in ticks]
        assert labels[0] == str(ids[0]) and labels[-1] == str(ids[-1]), labels
    # The seen/unseen line is thin: a quarter of a cell, 1 px at the least, never more than 2 px.
    line_px = axes.get_lines()[0].get_linewidth() * DPI / 72
    assert line_px <= max(1.0, min(layout.cell_width, layout.cell_height) / 4) + 1e-9 and line_px <= 2 + 1e-9


@pytest.mark.parametrize("n_ckpts, step", [(8, 1), (60, 1), (61, 2), (360, 6)])
def test_first_memorized_bars_stay_readable(n_ckpts: int, step: int) -> None:
    from sweep.analysis.memorization import MAX_BARS, first_memorized_counts

    rng = np.random.default_rng(n_ckpts)
    first = np.concatenate([np.arange(n_ckpts), rng.integers(0, n_ckpts, 500)])  # every checkpoint, then more
    forgotten = rng.random(first.size) < 0.3
    memorized = pl.DataFrame({"first_memorized_ckpt": first.astype(np.int32), "forgotten": forgotten})
    counts, got_step = first_memorized_counts(memorized)
    assert got_step == step and counts.height <= MAX_BARS + 1
    assert counts["all"].sum() == first.size and counts["forgotten"].sum() == memorized["forgotten"].sum()
    bins = counts["bin"].to_list()
    for start, total in zip(bins, counts["all"]):
        assert total == int(((first >= start) & (first < start + step)).sum())


# ---------------------------------------------------------------- docs/queries.md


@pytest.fixture
def docs_landed(tmp_path: Path, records: list[dict]) -> Path:
    """The fixture's dataset with its last checkpoint numbered 359, as Amber's, which the SQL examples name, and
    exposure counts of every chunk file."""
    renumbered = [{**r, "ckpt": 359 if r["ckpt"] == 4 else r["ckpt"]} for r in records]
    return write_landed(tmp_path / "docs", renumbered, exposures=True)


def docs_labels(output: Path) -> Path:
    """A memorized-only list of the output's last checkpoint, as the labels the compare examples read (its tokens the
    probes', its positions those `stream_positions` gives)."""
    from sweep.analysis.label_agreement import stream_positions
    from sweep.landed.reader import open_output

    landed = open_output(output)
    positions, _ = stream_positions(landed)
    memorized = (landed.sequences(landed.last_checkpoint()).filter("full_match").select("chunk", "row").collect()
                 .join(positions.collect(), on=["chunk", "row"]))
    path = output.parent / "labels.parquet"
    memorized.select("index", "tokens").write_parquet(path)
    return path


def test_every_sql_example_runs(docs_landed: Path) -> None:
    from sweep.analysis.label_agreement import stream_positions
    from sweep.analysis.query import open_tables
    from sweep.data.published_labels import read_labels
    from sweep.landed.reader import open_output

    context = pl.SQLContext(frames=open_tables(docs_landed))  # the tables `memsweep query` gives
    # ... and the two the compare example registers (docs/queries.md, "Against published labels")
    context.register("positions", stream_positions(open_output(docs_landed))[0])
    context.register("labels", read_labels(docs_labels(docs_landed)).frame.lazy())
    blocks = doc_blocks("sql")
    assert len(blocks) >= 6
    for sql in blocks:
        result = context.execute(sql).collect()
        assert result.height > 0, sql


def test_every_python_example_runs(docs_landed: Path) -> None:
    blocks = doc_blocks("python")
    assert len(blocks) >= 6
    for code in blocks:
        exec(compile(code, "docs/queries.md", "exec"), {"output": str(docs_landed),
                                                        "labels_file": str(docs_labels(docs_landed))})


def test_sql_predictability_agrees_with_function(docs_landed: Path) -> None:
    sequences, cells = analyses.load_tables(docs_landed)
    context = pl.SQLContext(sequences=sequences, cells=cells)
    (sql,) = [block for block in doc_blocks("sql") if "-- predictability" in block]
    from_sql = context.execute(sql).collect().sort("ckpt")
    from_function = analyses.predictability(sequences)
    assert from_sql["ckpt"].to_list() == from_function["ckpt"].to_list()
    for column in ("n_sequences", "n_memorized", "n_memorized_final", "n_both", "precision", "recall"):
        as_floats = [
            frame[column].cast(pl.Float64).fill_null(float("nan")).to_list() for frame in (from_sql, from_function)
        ]
        assert as_floats[0] == pytest.approx(as_floats[1], nan_ok=True), column


def test_sql_forgetting_agrees_with_function(tmp_path: Path) -> None:
    # More checkpoints than the shared fixture, so that runs of 3 and more misses occur.
    records = synthetic_sequences(n_ckpts=9, n_chunks=4, n_rows=60, seed=3)
    sequences, cells = analyses.load_tables(write_landed(tmp_path / "nine", records))
    context = pl.SQLContext(sequences=sequences, cells=cells)
    (sql,) = [block for block in doc_blocks("sql") if "longest_miss_run" in block]
    from_sql = context.execute(sql).collect()
    columns = ["chunk", "row", "first_memorized_ckpt", "last_memorized_ckpt", "n_memorized_ckpts",
               "longest_miss_run", "forgotten", "memorized_before_seen"]
    from_function = (
        analyses.first_memorized(sequences).filter(pl.col("first_memorized_ckpt").is_not_null()).select(columns)
    )
    assert from_sql.select(columns).cast(from_function.schema).equals(from_function)
    assert from_function["forgotten"].any() and not from_function["forgotten"].all()


def test_sql_exposure_examples_agree_with_the_functions(docs_landed: Path) -> None:
    from sweep.exposures import analyses as ea
    from sweep.exposures.history import ExposureHistory
    from sweep.landed.reader import open_output
    from sweep.analysis.query import open_tables

    context = pl.SQLContext(frames=open_tables(docs_landed))

    def sql(marker: str) -> pl.DataFrame:
        (block,) = [block for block in doc_blocks("sql") if marker in block]
        return context.execute(block).collect()

    def same(from_sql: pl.DataFrame, from_function: pl.DataFrame) -> None:
        assert from_sql.columns == from_function.columns and from_sql.height == from_function.height
        for column in from_sql.columns:
            assert from_sql[column].cast(pl.Float64).to_list() == pytest.approx(
                from_function[column].cast(pl.Float64).to_list()), column

    landed = open_output(docs_landed)
    sequences, history = landed.sequences(), ExposureHistory.read(landed)
    assert len(history) == 200 and history.coverage.is_complete
    by_exposure = ea.memorization_by_exposure(sequences, history).filter(pl.col("ckpt") == 359)
    same(sql("-- memorization against exposures"),
         by_exposure.select("exposure_bin", "n", "n_memorized", "full_match_rate", "score"))
    assert by_exposure.height > 2  # planted copies: several bins
    summary = ea.unseen_cells_summary(ea.seen_per_sequence(sequences, history))
    same(sql("-- memorized sequences of unseen cells"), summary.select("ckpt", "n", "n_seen", "n_memorized",
                                                                         "n_memorized_seen"))
    assert summary["n_memorized_seen"].sum() > 0
    profile = ea.memorization_profile(sequences, history).filter((pl.col("cohort") == 2) & (pl.col("ckpt") == 3))
    one = sql("-- memorization profile of chunk 2").row(0, named=True)
    assert (one["n_treated"], one["n_control"]) == (profile["n_treated"].item(), profile["n_control"].item())
    assert one["gap"] == pytest.approx(profile["gap"].item()) and one["did"] == pytest.approx(profile["did"].item())
    kinds = ea.memorization_kinds(sequences, history, landed.probes(), prompt_len=32).filter(pl.col("ckpt") == 359)
    assert sql("-- memorized sequences seen at least 6").row(0) == (kinds["n_memorized"].item(),
                                                                     kinds["recitation"].item())
    recency = sql("-- forgetting against recency")  # one checkpoint of what forgetting_by_recency pools
    at_last = history.exposures_at(359)
    assert recency["n"].sum() == at_last.filter(pl.col("exposures") > 0).height


def test_partition_examples_read_one_partition(docs_landed: Path) -> None:
    from sweep.analysis.query import open_tables

    # The single-checkpoint examples must let Polars prune to one partition's files.
    sequences, cells = analyses.load_tables(docs_landed)
    context = pl.SQLContext(sequences=sequences, cells=cells)
    markers = ("-- score distribution", "-- memorization against exposures", "-- forgetting against recency",
               "-- memorized sequences seen at least 6")
    exposure_tables = {name: frame for name, frame in open_tables(docs_landed).items() if name.startswith("exposure")}
    context.register_many(exposure_tables)
    plans = [context.execute(sql).explain() for sql in doc_blocks("sql") if sql.lstrip().startswith(markers)]
    assert len(plans) == len(markers)
    (code,) = [block for block in doc_blocks("python") if "match_mask" in block]
    query = code.split("last = ")[1].split(".collect()")[0]  # the LazyFrame the example collects
    namespace = {"pl": pl, "sequences": sequences, "last_ckpt": 359}
    plans.append(eval(query, namespace).explain())
    for plan in plans:
        scanned = re.findall(r"ckpt=(\d+)/", plan)
        assert scanned == ["359"], plan
        assert not any("other sources" in line for line in plan.splitlines() if "/sequences/" in line), plan


# ---------------------------------------------------------------- with the real writer


def test_reads_what_the_result_store_writes(tmp_path: Path) -> None:
    # The landed layout as sweep/landed/store.py really writes it: per-cell files, one checkpoint
    # compacted, extractable-style null columns left out by the writer.
    store = ResultStore(tmp_path / "out")
    store.open(identity={"model": "tiny"}, spec={"name": "store-written"}, run_info={})
    frame = pl.DataFrame(synthetic_sequences(n_ckpts=3, n_chunks=3, n_rows=10)).with_columns(
        (pl.col("matches") / L).alias("score")
    )
    for (ckpt, chunk), part in frame.group_by(["ckpt", "chunk"], maintain_order=True):
        info = {"seconds": 0.5, "device": "cpu", "dtype": "float32", "batch_size": 8}
        store.write_cells(ckpt, [ScoredCell(chunk, part.drop("ckpt", "nll"), CellProvenance.from_dict(info))])
    store.compact_checkpoint(1)
    sequences, cells = analyses.load_tables(store.output)
    order = ["ckpt", "chunk", "row"]
    written = frame.select(order + ["matches", "prefix_match", "full_match"]).sort(order)
    read = sequences.select(order + ["matches", "prefix_match", "full_match"]).collect().sort(order)
    assert read.rows() == written.rows() and read["ckpt"].dtype == pl.Int32
    assert read.height == frame.height and sequences.collect()["nll"].null_count() == frame.height
    assert cells.collect().sort("ckpt", "chunk").select("ckpt", "chunk").rows() == \
        frame.select("ckpt", "chunk").unique().sort("ckpt", "chunk").rows()
    page = write_report(store.output).read_text()
    assert "store-written" in page and "heatmap_score.png" in page


def test_the_staircase_follows_a_step_timeline_into_a_partly_seen_cell():
    """Checkpoints at steps 0, 2, 4, 6 of chunks of 4 steps: the seen | unseen line of each row lies after the chunks
    its checkpoint trained on, and inside the cell of the chunk it is half way through."""
    import polars as pl

    from sweep.report.figures import heatmap_figure
    from sweep.timeline import Timeline

    matrix = pl.DataFrame({"ckpt": [0, 2, 4, 6], "0": [0.1, 0.2, 0.3, 0.4], "1": [0.1] * 4, "2": [0.0] * 4})
    figure, _ = heatmap_figure(matrix, "t", "score", timeline=Timeline(8, 4))
    line = figure.axes[0].lines[0]
    assert list(line.get_xdata()) == [x - 0.5 for x in (0.0, 0.5, 1.0, 1.5) for _ in (0, 1)]
    figure, _ = heatmap_figure(matrix.with_columns(pl.Series("ckpt", [0, 1, 2, 3])), "t", "score")  # Amber's rule
    assert list(figure.axes[0].lines[0].get_xdata()) == [x - 0.5 for x in (1, 2, 3, 3) for _ in (0, 1)]


def test_sql_label_agreement_agrees_with_compare(docs_landed: Path) -> None:
    from sweep.analysis.label_agreement import compare_labels, stream_positions
    from sweep.data.published_labels import read_labels
    from sweep.landed.reader import open_output

    landed = open_output(docs_landed)
    labels = read_labels(docs_labels(docs_landed))
    context = pl.SQLContext(sequences=landed.sequences(), positions=stream_positions(landed)[0],
                            labels=labels.frame.lazy())
    (sql,) = [block for block in doc_blocks("sql") if "-- agreement with published labels" in block]
    from_sql = context.execute(sql).collect()
    from_compare = [row.to_json() for row in compare_labels(landed, labels).checkpoints]
    assert from_sql["ckpt"].to_list() == [row["ckpt"] for row in from_compare] and len(from_compare) > 1
    for column, key in (("covered", "covered"), ("both_memorized", "both"), ("only_memsweep", "only_memsweep"),
                        ("only_labels", "only_labels"), ("neither", "neither"), ("precision", "precision"),
                        ("recall", "recall")):
        assert from_sql[column].to_list() == pytest.approx([row[key] for row in from_compare]), column
    assert any(row["only_memsweep"] for row in from_compare) and any(row["only_labels"] for row in from_compare)


@pytest.mark.parametrize("sort, descending", [("memorized", True), ("memorized", False), ("exposures", True)])
def test_the_per_source_examples_are_the_sorted_checkpoints_first_rows_per_source(sort, descending) -> None:
    # select_per_source takes one top-n per source instead of sorting the checkpoint: the same rows, in the same order
    from sweep.analysis.selection import SequenceSelection, select_per_source, select_sequences

    rng = np.random.default_rng(5)
    n = 400
    frame = pl.DataFrame({
        "chunk": rng.integers(0, 4, n).astype(np.int32), "row": np.arange(n, dtype=np.int64),
        "source": pl.Series(rng.choice(["web", "code", "books", ""], n)).replace("", None),
        "full_match": rng.random(n) < 0.2, "prefix_match": rng.integers(0, 33, n).astype(np.int16),
        "matches": rng.integers(0, 33, n).astype(np.int16),
        "exposures": pl.Series(rng.integers(0, 5, n)).scatter(list(range(0, n, 7)), None)})
    columns = ["chunk", "row", "source", "full_match", "prefix_match", "exposures"]
    for selection in (SequenceSelection(sort=sort, descending=descending),
                      SequenceSelection(sort=sort, descending=descending, min_prefix=10)):
        expected = (select_sequences(frame.lazy(), selection).group_by("source", maintain_order=True).head(3)
                    .select(columns).collect())
        got = select_per_source(frame.lazy(), selection, columns, 3)
        assert got.equals(expected) and got["source"].n_unique() == 4 and got.height == 12
