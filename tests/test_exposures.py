"""Exposure counts end to end: a sweep scans chunk files (scored and unscored) with Ray tasks and lands counts that
equal a brute-force count row for row, on a corpus with planted copies of every awkward kind; a killed or
extended sweep scans exactly what is missing and ends equal to a fresh run; scans are checked by `verify`; and every
view of the numbers (the reader's tables, the history, the analyses, `show`, the explorer) gives one count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from collections import Counter

from sweep.analysis.examples import find_examples
from sweep.data.probes import write_raw_chunk
from sweep.demo.world import chunk_path
from sweep.explorer.data import ExplorerData, SequenceQuery
from sweep.exposures.analyses import memorization_by_exposure, seen_per_sequence
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import open_output
from sweep.landed.store import repair_output
from sweep.landed.verify import verify_output
from sweep.run.driver import run_sweep
from sweep.spec import load_spec
from tests.sweeps import K as WORLD_K
from tests.sweeps import write_spec

pytestmark = pytest.mark.ray

K, L = 8, 8
ROWS, ROW_LEN = 24, 40
VOCAB = 1000  # the session world's model embeds 1024 ids


def plant(chunks: list[np.ndarray], rng: np.random.Generator) -> None:
    """Copies of chunk 0's and 1's first rows' windows (their first K + L ids) planted into every chunk:
    exact at odd offsets, changed in one continuation or prompt id, cut short by a row's end, prompt only,
    and overlapping (a periodic row). Modifies `chunks` (int[ROWS, ROW_LEN] each) in place."""
    window = lambda chunk, row: chunks[chunk][row, : K + L].copy()  # noqa: E731
    for target in range(len(chunks)):
        rows = chunks[target]
        rows[3, 5:5 + K + L] = window(0, 0)  # exact, mid-row
        rows[3, 21:21 + K + L] = window(0, 0)  # twice in one row
        changed = window(0, 1)
        changed[K + 2] += 1  # one continuation id differs: a prompt occurrence, not a window one
        rows[4, 0:K + L] = changed
        changed = window(1, 2)
        changed[1] += 1  # one prompt id differs: neither
        rows[5, 10:10 + K + L] = changed
        rows[6, ROW_LEN - K - 3:] = window(1, 0)[: K + 3]  # cut short by the row's end: prompt only
        rows[7, 2:2 + K] = window(1, 1)[:K]  # the prompt alone
        if target == 3:
            rows[8, :] = np.resize(window(0, 2)[:4], ROW_LEN)  # period 4: overlapping occurrences of chunk 0 row 2
    chunks[0][2, : K + L] = np.resize(chunks[0][2, :4], K + L)  # ... whose window is itself periodic


def brute_force(chunks: list[np.ndarray], probes: dict[tuple[int, int], np.ndarray]) -> pl.DataFrame:
    """(chunk, row, seen_chunk, window_count, prompt_count) for every nonzero pair, by sliding every window."""
    rows = []
    for (chunk, row), tokens in probes.items():
        for seen, data in enumerate(chunks):
            window = prompt = 0
            for line in data:
                for offset in range(ROW_LEN - K + 1):
                    if np.array_equal(line[offset:offset + K], tokens[:K]):
                        prompt += 1
                        if offset + K + L <= ROW_LEN and np.array_equal(line[offset:offset + K + L], tokens):
                            window += 1
            if window or prompt:
                rows.append((chunk, row, seen, window, prompt))
    return pl.DataFrame(rows, schema={"chunk": pl.Int32, "row": pl.Int64, "seen_chunk": pl.Int32,
                                      "window_count": pl.Int64, "prompt_count": pl.Int64}, orient="row")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, world) -> tuple[Path, list[np.ndarray]]:
    """Five chunk files beside the session world's model: chunks 0-1 scored, 2-4 only scanned."""
    rng = np.random.default_rng(7)
    chunks = [rng.integers(3, VOCAB, (ROWS, ROW_LEN)) for _ in range(5)]
    plant(chunks, rng)
    data = tmp_path_factory.mktemp("exposure-data")
    (data / "train").mkdir()
    for number, tokens in enumerate(chunks):
        write_raw_chunk(data / "train" / f"train_{number:03d}.jsonl", ((row.tolist(), "web") for row in tokens))
    return data, chunks


def spec_for(tmp_path: Path, world: Path, data: Path, name: str, chunks: str, scanned: str):
    return load_spec(write_spec(tmp_path, world, tmp_path / name, checkpoints=[0], chunks=chunks,
                                data={"source": str(data), "samples_per_chunk": ROWS},
                                memorization={"prompt_len": K, "continuation_len": L, "nll": False},
                                exposure={"chunks": scanned, "concurrent_scans": 2},
                                resources={"actors": 1, "batch_size": 32}))


def landed_counts(output: Path) -> pl.DataFrame:
    return open_output(output).exposure_counts().collect().sort("chunk", "row", "seen_chunk")


def test_landed_counts_equal_a_brute_force_count(corpus, world, module_ray, tmp_path):
    data, chunks = corpus
    summary = run_sweep(spec_for(tmp_path, world, data, "out", "0-1", "0-4"), progress=False)
    assert summary.ok and summary.scans.scanned == 5, summary.describe()
    landed = open_output(tmp_path / "out")
    probes = {(c, r): np.asarray(t) for c, r, t in landed.probes().collect().select("chunk", "row", "tokens").rows()}
    assert len(probes) == 2 * ROWS
    expected = brute_force(chunks, probes).sort("chunk", "row", "seen_chunk")
    counts = landed_counts(tmp_path / "out")
    assert counts["window_index"].null_count() == counts.height  # occurrence positions: binary streams only
    assert counts.drop("window_index").equals(expected)
    # the planted cases are really there (not a vacuous equality)
    by_key = {(c, r, s): (w, p) for c, r, s, w, p in expected.rows()}
    assert by_key[(0, 0, 3)] == (2, 2)  # two exact copies in one row
    assert by_key[(0, 1, 4)] == (0, 1)  # continuation changed: prompt only
    assert (1, 2, 2) not in by_key  # prompt changed: nothing
    assert by_key[(1, 0, 4)] == (0, 1) and by_key[(1, 1, 2)] == (0, 1)  # cut short / prompt only
    assert by_key[(0, 2, 3)][0] > 4  # overlapping occurrences in the periodic row each count

    exposures = landed.exposures().collect().sort("chunk", "row")
    assert exposures.height == 2 * ROWS and exposures["chunks_scanned"].to_list() == [5] * (2 * ROWS)
    totals = expected.group_by("chunk", "row").agg(pl.col("window_count").sum(), pl.col("prompt_count").sum())
    joined = exposures.join(totals, on=["chunk", "row"], how="left", suffix="_expected").fill_null(0)
    assert (joined["window_count"] == joined["window_count_expected"]).all()
    assert (joined["prompt_count"] == joined["prompt_count_expected"]).all()
    first = expected.filter(pl.col("window_count") > 0).group_by("chunk", "row").agg(
        pl.col("seen_chunk").min().alias("first"), pl.col("seen_chunk").max().alias("last"))
    checked = exposures.join(first, on=["chunk", "row"])
    assert checked.height == 2 * ROWS  # every probe occurs at least in its own row
    assert (checked["first_chunk"] == checked["first"]).all() and (checked["last_chunk"] == checked["last"]).all()
    scans = landed.exposure_scans()
    assert sorted(scans["seen_chunk"].to_list()) == [0, 1, 2, 3, 4]
    assert (scans["rows"] == ROWS).all() and (scans["tokens"] == ROWS * ROW_LEN).all() and (scans["probes"] == 48).all()
    assert verify_output(tmp_path / "out").ok


def test_an_extended_or_resumed_sweep_scans_only_what_is_missing_and_equals_a_fresh_run(corpus, world, module_ray,
                                                                                         tmp_path):
    data, _ = corpus
    fresh = run_sweep(spec_for(tmp_path, world, data, "fresh", "0-1", "0-4"), progress=False)
    assert fresh.ok
    first = run_sweep(spec_for(tmp_path, world, data, "grown", "0", "0-2"), progress=False)
    assert first.ok and first.scans.scanned == 3
    extended = run_sweep(spec_for(tmp_path, world, data, "grown", "0-1", "0-4"), progress=False)
    assert extended.ok and extended.scans.scanned == 5  # 0-2 again for chunk 1's probes only, 3-4 for both
    scans = open_output(tmp_path / "grown").exposure_scans().sort("seen_chunk", "scanned_at")
    assert scans.filter(pl.col("seen_chunk") == 0)["probe_chunks"].to_list() == [[0], [1]]
    assert scans.filter(pl.col("seen_chunk") == 4)["probe_chunks"].to_list() == [[0, 1]]
    assert landed_counts(tmp_path / "grown").equals(landed_counts(tmp_path / "fresh"))
    again = run_sweep(spec_for(tmp_path, world, data, "grown", "0-1", "0-4"), progress=False)
    assert again.ok and again.scans.scanned == 0  # nothing missing: nothing streamed

    # a damaged scan is found by verify, forgotten by --repair, and scanned again by the next run
    output = tmp_path / "grown"
    [victim] = [path for path in (output / "exposures" / "seen=3").iterdir()]
    victim.write_bytes(victim.read_bytes()[:20])
    report = verify_output(output)
    assert not report.ok and [path for path, _ in report.damaged] == [victim.relative_to(output).as_posix()]
    assert "(the next run redoes the exposure scan of chunk file 3 for the sequences of chunks 0-1)" in report.describe()
    repair_output(output)
    healed = run_sweep(spec_for(tmp_path, world, data, "grown", "0-1", "0-4"), progress=False)
    assert healed.ok and healed.scans.scanned == 1
    assert landed_counts(output).equals(landed_counts(tmp_path / "fresh"))

    # a probe set lost after its cells landed is sampled again by the next run, which scores and scans nothing else
    probes = open_output(output).probes().collect()
    [victim] = [path for path in (output / "probes").iterdir() if path.name == "probe-00001.parquet"]
    victim.unlink()
    repaired = repair_output(output)
    assert "(the next run redoes the probe set of chunk 1, sampled again from its pinned chunk file)" in \
        repaired.describe() and repaired.repaired_cells == []
    again = run_sweep(spec_for(tmp_path, world, data, "grown", "0-1", "0-4"), progress=False)
    assert again.ok and again.schedule.cells_scored == 0 and again.scans.scanned == 0
    assert again.supply.built + again.supply.reused == 1
    assert open_output(output).probes().collect().equals(probes) and verify_output(output).ok


def test_a_chunk_that_cannot_be_scanned_fails_only_its_scan(corpus, world, module_ray, tmp_path):
    data, _ = corpus
    broken = tmp_path / "data"
    (broken / "train").mkdir(parents=True)
    for number in range(3):
        (broken / "train" / f"train_{number:03d}.jsonl").write_bytes(
            (data / "train" / f"train_{number:03d}.jsonl").read_bytes())
    lines = (broken / "train" / "train_002.jsonl").read_text().splitlines()
    lines[4] = lines[4].replace("[", "[\"x\",", 1)
    (broken / "train" / "train_002.jsonl").write_text("\n".join(lines) + "\n")
    summary = run_sweep(spec_for(tmp_path, world, broken, "out", "0", "0-3"), progress=False)
    assert not summary.ok and summary.schedule.cells_scored == 1 and summary.scans.scanned == 2
    failed = {f["seen_chunk"]: f["error"] for f in summary.failed_scans}
    assert sorted(failed) == [2, 3]
    assert "train_002.jsonl:5:" in failed[2] and "\n" not in failed[2]
    assert "train_003.jsonl" in failed[3]
    assert json.loads((tmp_path / "out" / "failures" / "scan-chunk=2.json").read_text())["seen_chunk"] == 2
    assert "FAILED exposure scan of chunk 2" in summary.describe()


def counted_by_hand(probes: pl.DataFrame, data_dir: Path, files: list[int]) -> pl.DataFrame:
    """`chunk, row, seen_chunk, window_count, prompt_count` of every probe in every file with an occurrence, from
    every k + l and every k ids of every line of the demo world's chunk files, counted in Python dicts."""
    rows = []
    for seen in files:
        windows, prompts = Counter(), Counter()
        for line in chunk_path(data_dir, seen).read_text().splitlines():
            ids = tuple(json.loads(line)["token_ids"])
            windows.update(ids[i:i + 2 * WORLD_K] for i in range(len(ids) - 2 * WORLD_K + 1))
            prompts.update(ids[i:i + WORLD_K] for i in range(len(ids) - WORLD_K + 1))
        for chunk, row, tokens in probes.select("chunk", "row", "tokens").rows():
            window, prompt = windows[tuple(tokens)], prompts[tuple(tokens[:WORLD_K])]
            if window or prompt:
                rows.append((chunk, row, seen, window, prompt))
    return pl.DataFrame(rows, schema={"chunk": pl.Int32, "row": pl.Int64, "seen_chunk": pl.Int32,
                                      "window_count": pl.Int64, "prompt_count": pl.Int64}, orient="row")


def test_the_reader_the_analyses_show_and_the_explorer_give_one_count(world, module_ray, tmp_path):
    # The demo world's files are its training stream: rows recur once per epoch, replayed in later files and as
    # planted copies in other chunks, so exposures grow over checkpoints and some "unseen" cells hold seen rows.
    spec = load_spec(write_spec(tmp_path, world, tmp_path / "out", exposure={"chunks": "0-2"},
                                data={"samples_per_chunk": 32}))
    assert run_sweep(spec, progress=False).ok
    landed = open_output(tmp_path / "out")
    ckpts = [0, 1, 2]
    truth = counted_by_hand(landed.probes().collect(), world / "data", ckpts)
    expected = landed.probes().collect().select("chunk", "row").join(
        truth.group_by("chunk", "row").agg(
            pl.col("window_count").sum(), pl.col("prompt_count").sum(),
            pl.col("seen_chunk").filter(pl.col("window_count") > 0).min().alias("first_chunk"),
            pl.col("seen_chunk").filter(pl.col("window_count") > 0).max().alias("last_chunk"),
            *[pl.col("window_count").filter(pl.col("seen_chunk") <= c).sum().alias(f"at_{c}") for c in ckpts]),
        on=["chunk", "row"], how="left").sort("chunk", "row")
    assert expected["window_count"].min() >= 1  # every sampled row occurs in its own file (a true count, not 0)
    exposed = {(c, chunk, row): n for chunk, row, *at in expected.select("chunk", "row", *[f"at_{c}" for c in ckpts])
               .rows() for c, n in zip(ckpts, at)}
    assert any(n > 1 for n in exposed.values()) and any(n == 0 for n in exposed.values())
    assert any(exposed[(c, chunk, row)] > 0 for c, chunk, row in exposed if chunk > c)  # seen through a copy

    # the reader's tables
    totals = landed.exposures().collect().sort("chunk", "row")
    assert totals.drop("chunks_scanned").equals(expected.select(totals.drop("chunks_scanned").columns))
    assert totals["chunks_scanned"].to_list() == [3] * totals.height
    # the history: its totals are the reader's, and its exposures at each checkpoint the files' up to it
    history = ExposureHistory.read(landed)
    for c in ckpts:
        at = history.exposures_at(c)
        assert at.drop("exposures", "last_exposure_chunk").equals(totals)
        assert at["exposures"].to_list() == expected[f"at_{c}"].to_list()

    # the analyses: every cell split into seen and never seen, and the exposure bins, against the hand count
    sequences = landed.sequences().collect()
    counted = sequences.with_columns(exposures=pl.struct("ckpt", "chunk", "row").map_elements(
        lambda key: exposed[(key["ckpt"], key["chunk"], key["row"])], return_dtype=pl.Int64))
    by_hand = counted.group_by("ckpt", "chunk").agg(
        pl.len().cast(pl.Int64).alias("n"), (pl.col("exposures") > 0).sum().cast(pl.Int64).alias("n_seen"),
        pl.col("full_match").filter(pl.col("exposures") > 0).mean().alias("full_match_rate_seen"),
        pl.col("full_match").filter(pl.col("exposures") == 0).mean().alias("full_match_rate_never_seen"))
    split = seen_per_sequence(landed.sequences(), history)
    assert split.select(by_hand.columns).equals(by_hand.sort("ckpt", "chunk"))
    assert int(counted["full_match"].sum()) > 0  # the world's model memorized some: the rates are not all 0
    bins = memorization_by_exposure(landed.sequences(), history)
    assert bins["n"].sum() == sequences.height
    for c, chunk in [(0, 2), (2, 0)]:
        # `memsweep show`: each example's counts
        for example in find_examples(landed, c, chunk, top=10**6, history=history):
            assert example.exposures.exposures == exposed[(c, chunk, example.row)]
            row = totals.filter((pl.col("chunk") == chunk) & (pl.col("row") == example.row)).row(0, named=True)
            assert {name: getattr(example.exposures, name) for name in row if name not in ("chunk", "row")} == \
                {name: value for name, value in row.items() if name not in ("chunk", "row")}
        # the explorer: a cell's sequences and its seen summary, the heatmap's seen share
        explorer = ExplorerData(tmp_path / "out")
        view = explorer.cell_view(c, chunk, SequenceQuery(limit=1000))
        assert {s.numbers["row"]: s.numbers["exposures"] for s in view.sequences} == {
            row: n for (ckpt, j, row), n in exposed.items() if (ckpt, j) == (c, chunk)}
        cell = split.filter((pl.col("ckpt") == c) & (pl.col("chunk") == chunk)).row(0, named=True)
        assert view.seen == {"covered": cell["n"], "n_seen": cell["n_seen"],
                             "full_match_rate_seen": cell["full_match_rate_seen"],
                             "full_match_rate_never_seen": cell["full_match_rate_never_seen"]}
        matrix = explorer.exposure_matrix()
        share = matrix.values["seen_share"][matrix.ckpts.index(c), matrix.chunks.index(chunk)]
        assert share == pytest.approx(cell["n_seen"] / cell["n"])
    # the explorer's sequence page: a row copied into other files, across checkpoints and file by file
    chunk, row = expected.sort("window_count", "chunk", "row", descending=[True, False, False]).select("chunk", "row").row(0)
    page = ExplorerData(tmp_path / "out").sequence_view(chunk, row)
    assert [point.numbers["exposures"] for point in page.checkpoints] == [exposed[(c, chunk, row)] for c in ckpts]
    assert page.exposures.totals == {name: value for name, value in totals.filter(
        (pl.col("chunk") == chunk) & (pl.col("row") == row)).row(0, named=True).items() if name not in ("chunk", "row")}
    assert page.exposures.files == truth.filter((pl.col("chunk") == chunk) & (pl.col("row") == row)).sort(
        "seen_chunk").select("seen_chunk", "window_count", "prompt_count").to_dicts()

