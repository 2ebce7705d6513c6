"""Tests for sweep/analyses.py, sweep/report.py and the examples in docs/queries.md.

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

from sweep import analyses
from sweep.report import write_report
from sweep.store import DamagedOutputError, ResultStore

L = 32  # generated tokens per sequence
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("refinedweb", "starcoderdata", "c4", "arxiv")


def synthetic_sequences(n_ckpts: int, n_chunks: int, n_rows: int, seed: int = 0) -> list[dict]:
    """Per-sequence results: more training -> more matches; a few sequences forgotten later."""
    rng = np.random.default_rng(seed)
    records = []
    for chunk in range(n_chunks):
        for row in range(n_rows):
            # Each sequence gets memorized from some checkpoint on (maybe never), sometimes
            # before its chunk was seen (boilerplate), and 1 in 8 memorized ones is forgotten later.
            onset = chunk + int(rng.integers(-1, 4)) if rng.random() < 0.5 else None
            forget_at = onset + int(rng.integers(1, 3)) if onset is not None and rng.random() < 0.125 else None
            base = int(rng.integers(0, 12))
            for ckpt in range(n_ckpts):
                memorized = onset is not None and ckpt >= onset and (forget_at is None or ckpt < forget_at)
                matches = L if memorized else min(L - 1, base + 2 * ckpt + int(rng.integers(0, 4)))
                prefix = L if memorized else int(rng.integers(0, matches + 1))
                records.append(
                    {
                        "ckpt": ckpt,
                        "chunk": chunk,
                        "row": row * 7 + 3,  # row numbers are positions in the chunk file, not 0..n-1
                        "source": SOURCES[(row + chunk) % len(SOURCES)],
                        "matches": matches,
                        "full_match": matches == L,
                        "prefix_match": prefix,
                        "nll": float(rng.uniform(0.5, 3.0)),
                    }
                )
    return records


def write_landed(
    output: Path,
    records: list[dict],
    extractable: bool = False,
    with_nll: bool = True,
    spec_name: str = "synthetic",
) -> Path:
    """Write `records` in the landed layout: sequences/ and cells/ hive-partitioned, manifest.json."""
    frame = pl.DataFrame(records).with_columns(
        pl.col("chunk").cast(pl.Int32),
        pl.col("row").cast(pl.Int64),
        pl.col("matches").cast(pl.Int16),
        pl.col("prefix_match").cast(pl.Int16),
        (pl.col("matches") / L).cast(pl.Float32).alias("score"),
        pl.col("nll").cast(pl.Float32),
        pl.lit(None, dtype=pl.Float32).alias("tf_accuracy"),
        pl.lit(b"\x00\x00\x00\x00", dtype=pl.Binary).alias("match_mask"),
    )
    if extractable:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.Int16).alias("matches"), pl.lit(None, dtype=pl.Float32).alias("score")
        )
    if not with_nll:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float32).alias("nll"))
    columns = [name for name in analyses.SEQUENCES_SCHEMA if name in frame.columns]
    store = ResultStore(output)
    store.open(identity={"synthetic": spec_name}, spec={"name": spec_name, "prompt_len": 32, "generate_len": L},
               run_info={})
    for (ckpt,), part in frame.group_by(["ckpt"], maintain_order=True):
        cells = (
            part.group_by("chunk", maintain_order=True)
            .agg(
                pl.len().cast(pl.Int32).alias("n"),
                pl.col("score").cast(pl.Float64).mean().alias("score"),
                pl.col("full_match").cast(pl.Float64).mean().alias("full_match_rate"),
                pl.col("prefix_match").cast(pl.Float64).mean().alias("mean_prefix_match"),
                pl.col("nll").cast(pl.Float64).mean().alias("nll"),
                pl.col("tf_accuracy").cast(pl.Float64).mean().alias("tf_accuracy"),
            )
            .with_columns(
                (pl.col("chunk") <= ckpt).alias("seen"),
                pl.lit(1.5).alias("seconds"),
                (pl.col("n") / 1.5).alias("sequences_per_s"),
                pl.lit("cpu").alias("device"),
                pl.lit("float32").alias("dtype"),
                pl.lit(32, dtype=pl.Int32).alias("batch_size"),
                pl.lit(1, dtype=pl.Int32).alias("attempts"),
                pl.lit("2026-11-01T12:00:00+00:00").alias("finished_at"),
            )
        )
        store.write_partition(ckpt, part.select(columns), cells)
    return output


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
    with pytest.raises(ValueError, match="unknown cell metric 'bogus'"):
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
    with pytest.raises(ValueError, match=r"chunks \[99\]"):
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
    with pytest.raises(ValueError, match="final_ckpt=7"):
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


def test_first_memorized(landed: Path, records: list[dict]) -> None:
    sequences, _ = analyses.load_tables(landed)
    table = analyses.first_memorized(sequences)
    by_key: dict[tuple[int, int], list[tuple[int, bool]]] = {}
    for r in records:
        by_key.setdefault((r["chunk"], r["row"]), []).append((r["ckpt"], r["full_match"]))
    assert table.height == len(by_key)
    n_forgotten = 0
    for got in table.iter_rows(named=True):
        history = sorted(by_key[(got["chunk"], got["row"])])
        hits = [c for c, fm in history if fm]
        first = hits[0] if hits else None
        forgotten = first is not None and any(not fm and c > first for c, fm in history)
        n_forgotten += forgotten
        assert got["first_memorized_ckpt"] == first
        assert got["last_memorized_ckpt"] == (hits[-1] if hits else None)
        assert got["forgotten"] == forgotten
        assert got["memorized_at_last"] == history[-1][1]
        assert got["memorized_before_seen"] == (first is not None and first < got["chunk"])
    assert 0 < n_forgotten < table.height  # the fixture really has forgetting


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


def test_write_report_custom_dir_and_chunks(landed: Path, tmp_path: Path) -> None:
    index = write_report(landed, out_dir=tmp_path / "elsewhere", chunks=[0, 4])
    assert index.parent == tmp_path / "elsewhere"
    assert "chunks 0, 4" in index.read_text()
    with pytest.raises(ValueError, match=r"chunks \[9\]"):
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


# ---------------------------------------------------------------- docs/queries.md


def doc_blocks(language: str) -> list[str]:
    text = (REPO / "docs" / "queries.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_every_sql_example_runs(landed: Path) -> None:
    sequences, cells = analyses.load_tables(landed)
    context = pl.SQLContext(sequences=sequences, cells=cells)
    blocks = doc_blocks("sql")
    assert len(blocks) >= 6
    for sql in blocks:
        result = context.execute(sql).collect()
        assert result.height > 0, sql


def test_every_python_example_runs(landed: Path) -> None:
    blocks = doc_blocks("python")
    assert len(blocks) >= 6
    for code in blocks:
        exec(compile(code, "docs/queries.md", "exec"), {"output": str(landed)})


def test_sql_predictability_agrees_with_function(landed: Path) -> None:
    sequences, cells = analyses.load_tables(landed)
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


# ---------------------------------------------------------------- with the real writer


def test_reads_what_the_result_store_writes(tmp_path: Path) -> None:
    # The landed layout as sweep/store.py really writes it: per-cell files, one checkpoint
    # compacted, extractable-style null columns left out by the writer.
    from sweep.store import ResultStore

    store = ResultStore(tmp_path / "out")
    store.open(identity={"model": "tiny"}, spec={"name": "store-written"}, run_info={})
    frame = pl.DataFrame(synthetic_sequences(n_ckpts=3, n_chunks=3, n_rows=10)).with_columns(
        (pl.col("matches") / L).alias("score")
    )
    for (ckpt, chunk), part in frame.group_by(["ckpt", "chunk"], maintain_order=True):
        info = {"seconds": 0.5, "device": "cpu", "dtype": "float32", "batch_size": 8}
        store.write_cell(ckpt, chunk, part.drop("ckpt", "nll"), info)
    store.compact_checkpoint(1)
    sequences, cells = analyses.load_tables(store.output)
    order = ["ckpt", "chunk", "row"]
    assert sequences.collect().sort(order).equals(store.sequences().collect().sort(order))
    assert cells.collect().sort("ckpt", "chunk").equals(store.cells().collect().sort("ckpt", "chunk"))
    page = write_report(store.output).read_text()
    assert "store-written" in page and "heatmap_score.png" in page
