"""The analyses that use exposure counts (sweep/exposures/analyses.py, sweep/exposures/history.py,
sweep/exposures/kinds.py) on a hand-made output whose exposures, full matches and templates are known: the
numbers are asserted literally where they can be read off the construction, and against a plain-Python recount
everywhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweep.exposures import analyses as ea
from sweep.exposures.history import ExposureCoverage, ExposureHistory
from sweep.exposures.kinds import increments_a_pattern, reconstructable, repeats_its_prompt
from sweep.landed.reader import open_output
from sweep.landed.store import ResultStore
from sweep.errors import MemsweepError
from tests.landed_world import L, write_landed

CKPTS = CHUNKS = [0, 1, 2, 3]
ROWS = [100, 101, 102]
K = 32
# window occurrences beyond each sequence's own row: (chunk, row, seen_chunk, count)
COPIES = [(0, 100, 2, 4), (2, 100, 0, 3), (2, 100, 1, 2), (3, 100, 1, 1), (3, 101, 0, 7), (1, 101, 3, 1)]
MEMORIZED_ANYWAY = {(1, 1, 101), (0, 3, 102)}  # (ckpt, chunk, row): memorized with fewer than 2 exposures
TEMPLATES = {(2, 100): [5, 6, 7, 8] * 16,  # repeats its prompt
             (1, 101): list(range(100, 164))}  # increments (as text: "100 101 102 ...")


def decode(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


def count_rows(scanned: list[int]) -> list[tuple[int, int, int, int]]:
    rows = [(chunk, row, chunk, 1) for chunk in CHUNKS for row in ROWS]
    return [r for r in rows + COPIES if r[2] in scanned]


def exposures(chunk: int, row: int, ckpt: int, scanned: list[int]) -> int:
    return sum(n for c, r, seen, n in count_rows(scanned) if (c, r) == (chunk, row) and seen <= ckpt)


def memorized(ckpt: int, chunk: int, row: int) -> bool:
    return exposures(chunk, row, ckpt, CHUNKS) >= 2 or (ckpt, chunk, row) in MEMORIZED_ANYWAY


def records() -> list[dict]:
    return [{"ckpt": ckpt, "chunk": chunk, "row": row, "source": "web",
             "matches": L if memorized(ckpt, chunk, row) else 8 + row - 100,
             "full_match": memorized(ckpt, chunk, row), "prefix_match": L if memorized(ckpt, chunk, row) else 2,
             "nll": 1.0} for ckpt in CKPTS for chunk in CHUNKS for row in ROWS]


def landed(tmp_path: Path, scanned: list[int] = CHUNKS) -> Path:
    counts = pl.DataFrame(count_rows(scanned), schema=["chunk", "row", "seen_chunk", "window_count"], orient="row")
    return write_landed(tmp_path / "out", records(), exposures=counts, scanned=scanned, tokens=TEMPLATES)


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return landed(tmp_path)


def read(output: Path) -> tuple[pl.LazyFrame, ExposureHistory]:
    reader = open_output(output)
    return reader.sequences(), ExposureHistory.read(reader)


# ---- the history ---------------------------------------------------------------------------------------------------


def test_exposures_at_a_checkpoint_count_the_scanned_files_up_to_it(output):
    _, history = read(output)
    for ckpt in CKPTS:
        frame = history.exposures_at(ckpt)
        assert frame.height == 12
        for chunk, row, count, last in frame.select("chunk", "row", "exposures", "last_exposure_chunk").rows():
            assert count == exposures(chunk, row, ckpt, CHUNKS)
            held = [seen for c, r, seen, _ in count_rows(CHUNKS) if (c, r) == (chunk, row) and seen <= ckpt]
            assert last == (max(held) if held else None)
    assert history.exposures_at(0, chunk=2).select("row", "exposures", "last_exposure_chunk").rows() == [
        (100, 3, 0), (101, 0, None), (102, 0, None)]
    assert history.exposures_at(3, chunk=0)["exposures"].to_list() == [5, 1, 1]
    # the totals are the reader's `exposures` table, row for row
    totals = history.exposures_at(0).drop("exposures", "last_exposure_chunk")
    assert totals.equals(open_output(output).exposures().collect().sort("chunk", "row").select(totals.columns))
    assert totals.filter((pl.col("chunk") == 2) & (pl.col("row") == 100)).row(0) == (2, 100, 6, 6, 0, 2, 4)


def test_a_partial_scan_covers_only_sequences_whose_own_file_was_scanned_and_says_so(tmp_path):
    output = landed(tmp_path, scanned=[0, 1, 2])
    ResultStore(output).record_scan_failure(3, "train/train_003.jsonl:5: not JSON\nat line 5")
    reader = open_output(output)
    coverage = ExposureCoverage.read(reader)
    assert coverage.covered_chunks == [0, 1, 2] and not coverage.is_complete
    assert coverage.describe() == ("exposure counts cover 3 of the 4 chunk files listed in exposure.chunks; "
                                   "failed: chunk 3: train/train_003.jsonl:5: not JSON at line 5")
    assert "3 of the 4 probe chunks" in coverage.describe_sequences()
    history = ExposureHistory.read(reader)
    assert sorted(set(history.chunks.tolist())) == [0, 1, 2]  # chunk 3's sequences: own file not scanned
    table = ea.memorization_by_exposure(reader.sequences(), history).filter(pl.col("ckpt") == 3)
    assert table["n"].sum() == 9
    # (1, 101)'s copy in chunk 3 was not counted: a lower bound, never invented
    assert history.exposures_at(3, chunk=1)["exposures"].to_list() == [1, 1, 1]
    complete = ExposureCoverage.read(open_output(landed(tmp_path / "full")))
    assert complete.is_complete and complete.describe() == (
        "exposure counts cover 4 of the 4 chunk files listed in exposure.chunks")


def test_nothing_scanned_gives_empty_tables(tmp_path):
    output = write_landed(tmp_path / "plain", records())
    sequences, history = read(output)
    assert len(history) == 0 and not history.coverage.has_counts
    assert ea.memorization_by_exposure(sequences, history).height == 0
    assert ea.memorization_profile(sequences, history).height == 0


# ---- memorization against exposures --------------------------------------------------------------------------------


def test_memorization_by_exposure_bins(output):
    table = ea.memorization_by_exposure(*read(output))
    last = table.filter(pl.col("ckpt") == 3)
    assert last.select("exposure_bin", "exposures_min", "exposures_max", "n", "n_memorized").rows() == [
        (1, 1, 1, 7, 0), (2, 2, 2, 2, 2), (4, 5, 8, 3, 3)]
    assert last["full_match_rate"].to_list() == [0.0, 1.0, 1.0]
    assert last["score"].to_list() == pytest.approx([np.mean([9, 10, 8, 10, 9, 10, 10]) / L, 1.0, 1.0])
    for ckpt in CKPTS:  # every checkpoint against a recount
        expected: dict[int, list[int]] = {}
        for chunk in CHUNKS:
            for row in ROWS:
                count = exposures(chunk, row, ckpt, CHUNKS)
                low = 0 if count == 0 else 1 + int(np.ceil(np.log2(count)))
                expected.setdefault(low, [0, 0])
                expected[low][0] += 1
                expected[low][1] += memorized(ckpt, chunk, row)
        got = table.filter(pl.col("ckpt") == ckpt).select("exposure_bin", "n", "n_memorized").rows()
        assert got == [(b, n, m) for b, (n, m) in sorted(expected.items())]


def test_exposure_bins_and_their_bounds():
    counts = np.array([0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 2**40 + 1])
    bins = ea.exposure_bin(counts)
    assert bins.tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 42]
    low, high = ea.bin_bounds(bins)
    assert ((low <= counts) & (counts <= high)).all()
    assert [ea.bin_label(a, b) for a, b in zip(low[:8], high[:8])] == ["0", "1", "2", "3-4", "3-4", "5-8", "5-8",
                                                                       "9-16"]


# ---- seen per sequence ---------------------------------------------------------------------------------------------


def test_seen_per_sequence_splits_unseen_cells_by_copies(output):
    table = ea.seen_per_sequence(*read(output))
    assert table.height == 16
    cell = table.filter((pl.col("ckpt") == 0) & (pl.col("chunk") == 3)).row(0, named=True)
    # (3, 101) was copied 7 times into chunk 0 and memorized; (3, 102) never seen yet memorized; (3, 100) neither
    assert (cell["chunk_seen"], cell["n"], cell["n_seen"], cell["n_memorized"], cell["n_memorized_seen"]) == (
        False, 3, 1, 2, 1)
    assert cell["full_match_rate_never_seen"] == 0.5 and cell["full_match_rate_seen"] == 1.0
    for row in table.iter_rows(named=True):
        keys = [(row["chunk"], r) for r in ROWS]
        seen = [k for k in keys if exposures(*k, row["ckpt"], CHUNKS) > 0]
        assert row["n_seen"] == len(seen) and row["chunk_seen"] == (row["chunk"] <= row["ckpt"])
        assert row["n_memorized"] == sum(memorized(row["ckpt"], *k) for k in keys)
        assert row["n_memorized_seen"] == sum(memorized(row["ckpt"], *k) for k in seen)
        if row["chunk_seen"]:
            assert row["n_seen"] == 3 and row["full_match_rate_never_seen"] is None
    summary = ea.unseen_cells_summary(table)
    assert summary.filter(pl.col("ckpt") == 0).select("n", "n_seen", "n_memorized", "n_memorized_seen").row(0) == (
        9, 2, 3, 2)
    assert summary["ckpt"].to_list() == [0, 1, 2]  # checkpoint 3 has trained on every chunk


# ---- forgetting against recency ------------------------------------------------------------------------------------


def test_forgetting_by_recency_pools_checkpoints_since_the_last_copy(output):
    table = ea.forgetting_by_recency(*read(output))
    expected: dict[tuple[int, int], list[int]] = {}
    for ckpt in CKPTS:
        for chunk in CHUNKS:
            for row in ROWS:
                count = exposures(chunk, row, ckpt, CHUNKS)
                if not count:
                    continue
                last = max(seen for c, r, seen, _ in count_rows(CHUNKS) if (c, r) == (chunk, row) and seen <= ckpt)
                key = (int(ea.exposure_bin(np.array([count]))[0]), ckpt - last)
                expected.setdefault(key, [0, 0])
                expected[key][0] += 1
                expected[key][1] += memorized(ckpt, chunk, row)
    got = table.select("exposure_bin", "checkpoints_since", "n", "n_memorized").rows()
    assert got == [(b, s, n, m) for (b, s), (n, m) in sorted(expected.items())]
    # 5-8 exposures, the last one checkpoint ago: (0, 100) and (2, 100) at checkpoint 3, (3, 101) at checkpoint 1
    assert table.filter((pl.col("exposure_bin") == 4) & (pl.col("checkpoints_since") == 1))["n"].item() == 3


# ---- the memorization profile --------------------------------------------------------------------------------------


def recount_profile(metric) -> dict[tuple[int, int], tuple]:
    """(cohort, ckpt) -> (n_treated, treated, n_control, control, did), in plain Python."""
    values = {(r["ckpt"], r["chunk"], r["row"]): metric(r) for r in records()}
    first = {(c, r): min(seen for cc, rr, seen, _ in count_rows(CHUNKS) if (cc, rr) == (c, r))
             for c in CHUNKS for r in ROWS}

    def mean(keys, ckpt):
        return float(np.mean([values[(ckpt, *key)] for key in keys])) if keys else None

    expected = {}
    for g in CHUNKS:
        cohort = [(g, r) for r in ROWS if first[(g, r)] == g]
        for c in [c for c in CKPTS if c >= g and cohort]:
            control = [key for key, f in first.items() if f > c]
            did = None
            if g > 0 and control:
                did = (mean(cohort, c) - mean(control, c)) - (mean(cohort, g - 1) - mean(control, g - 1))
            expected[(g, c)] = (len(cohort), mean(cohort, c), len(control), mean(control, c), did)
    return expected


@pytest.mark.parametrize("metric, value", [("score", lambda r: r["matches"] / L),
                                           ("full_match", lambda r: float(r["full_match"]))])
def test_memorization_profile_is_a_difference_in_differences_against_the_not_yet_seen(output, metric, value):
    profile = ea.memorization_profile(*read(output), metric=metric)
    expected = recount_profile(value)
    assert sorted(profile.select("cohort", "ckpt").rows()) == sorted(expected)
    for row in profile.iter_rows(named=True):
        n_treated, treated, n_control, control, did = expected[(row["cohort"], row["ckpt"])]
        assert (row["n_treated"], row["n_control"]) == (n_treated, n_control)
        assert row["treated"] == pytest.approx(treated) and row["checkpoints_since"] == row["ckpt"] - row["cohort"]
        assert row["control"] == (pytest.approx(control) if control is not None else None)
        assert row["did"] == (pytest.approx(did) if did is not None else None)
    # cohort 2 is (2, 101) and (2, 102): (2, 100) was seen through copies in chunks 0 and 1 before chunk 2
    assert profile.filter(pl.col("cohort") == 2)["n_treated"].to_list() == [2, 2]
    assert profile.filter(pl.col("cohort") == 0)["did"].null_count() == 4  # no checkpoint before chunk 0
    path = ea.profile_path(profile)
    assert path["checkpoints_since"].to_list() == [0, 1, 2, 3]
    with pytest.raises(MemsweepError, match="unknown profile metric 'bogus'"):
        ea.memorization_profile(*read(output), metric="bogus")


# ---- recitation, reconstruction, recollection ----------------------------------------------------------------------


def test_memorization_kinds_per_checkpoint(output):
    sequences, history = read(output)
    probes = open_output(output).probes()
    kinds = ea.memorization_kinds(sequences, history, probes, prompt_len=K, decode=decode)
    assert kinds.filter(pl.col("ckpt") == 3).row(0) == (3, 5, 2, 1, 2)
    # (2, 100) is a template seen 3 then 5 times (reconstruction), then 6 (recitation); (3, 101) seen 7 times
    assert kinds.filter(pl.col("ckpt") == 0).row(0) == (0, 3, 1, 1, 1)
    assert kinds.filter(pl.col("ckpt") == 1).row(0) == (1, 3, 1, 2, 0)  # (1, 101) increments: reconstruction
    without_text = ea.memorization_kinds(sequences, history, probes, prompt_len=K)
    assert without_text.filter(pl.col("ckpt") == 1).row(0) == (1, 3, 1, 1, 1)  # incrementing needs the tokenizer
    assert (kinds["recitation"] + kinds["reconstruction"] + kinds["recollection"] == kinds["n_memorized"]).all()


def test_templates_repeat_the_prompt_or_increment_numbers():
    windows = np.array([[1, 2, 3, 1, 2, 3, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8], [5, 6, 7, 8, 5, 6, 7, 8],
                        [0, 0, 0, 0, 9, 9, 9, 9], [4, 4, 4, 4, 4, 4, 4, 4]])
    assert repeats_its_prompt(windows, 4).tolist() == [True, False, True, False, True]
    assert increments_a_pattern("Row 1: a, Row 2: a, Row 3: a") and increments_a_pattern("1, 2, 3, 4, 5")
    assert increments_a_pattern("id=10; id=12; id=14; id=16;")
    for text in ("1, 2, 4, 8, 16", "7, 7, 7, 7", "hello world", "", "page 1 of the book, page 2"):
        assert not increments_a_pattern(text), text
    assert reconstructable(windows[1:2], 4, decode).tolist() == [True]  # "1 2 3 ... 8" as text
    assert reconstructable(windows[1:2], 4, None).tolist() == [False]


def test_one_pass_gives_what_each_function_gives(output):
    sequences, history = read(output)
    probes = open_output(output).probes()
    together = ea.exposure_analyses(sequences, history, probes, prompt_len=K, decode=decode)
    assert together.by_exposure.equals(ea.memorization_by_exposure(sequences, history))
    assert together.seen.equals(ea.seen_per_sequence(sequences, history))
    assert together.recency.equals(ea.forgetting_by_recency(sequences, history))
    assert together.profile.equals(ea.memorization_profile(sequences, history))
    assert together.kinds.equals(ea.memorization_kinds(sequences, history, probes, K, decode))
