"""`memsweep compare` (issue 23, part 2): a census held against published labels in both published forms.

The outputs are the session's census of the stream of tests/stream_world.py (3 chunks of 32 sequences, every one
scored; tests/conftest.py `stream_census`, shared with tests/test_census.py), compared at their last checkpoint. Once
as Pythia's Megatron stream at step 12 (the landed `index` is the stream position), once as Amber's JSONL files at
ckpt_002 (no `index`: compare places file c's row r after the rows of files 0..c-1, known from the census cells'
row counts). A census lands no probe rows, so the data check reads the labelled sequences' tokens again from the
pinned source. The labels files are written here in the published forms (a memorized-only list: `index`, `tokens`,
`__index_level_0__`; a labelled sample: `index`, `tokens` uint16, `is_memorized`), their tokens read from the stream
itself (tests/stream_world.py's sequences, all 40 ids), their decisions memsweep's own, flipped or shifted on
purpose. A Hub dataset laid out as the Hub lays out pushed Parquet splits is served locally
(tests/hub_world_server.py) and read at its commit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweep.analysis.label_agreement import CompareError, compare_labels, stream_positions
from sweep.cli import main
from sweep.data.published_labels import LabelsError, read_labels, split_files
from sweep.landed.reader import LandedOutput, open_output
from sweep.run.driver import run_sweep
from sweep.spec import load_spec
from tests.census_world import LAST_CKPT
from tests.hub_world import apply_hub_client_env, commit_files, hub_client_env, serve_hub
from tests.stream_world import CHUNKS, K, L, PER_CHUNK
from tests.sweeps import write_spec

pytestmark = pytest.mark.ray

CAN_SERVE_HUB = shutil.which("git") is not None and importlib.util.find_spec("olah") is not None


@pytest.fixture(scope="module")
def outputs(module_ray, stream_census, stream_family):
    """({"megatron": output, "jsonl": output}, the stream world): the session's census, every sequence of the stream."""
    return {name: Path(stream_census[name].output) for name in ("megatron", "jsonl")}, stream_family.world


def memsweep_decisions(output: Path, name: str) -> pl.DataFrame:
    """index (the stream position), memorized (full_match) of every sequence of the output at its last checkpoint."""
    landed = open_output(output)
    positions, _ = stream_positions(landed)
    return (landed.sequences(LAST_CKPT[name]).select("chunk", "row", "full_match").collect()
            .join(positions.select("chunk", "row", "index").collect(), on=["chunk", "row"]).sort("index"))


def stream_tokens(world, index: pl.Series) -> pl.Series:
    """The stream's own first ids of each position (all 40 of tests/stream_world.py's sequences, more than k + l)."""
    return pl.Series("tokens", world.sequences[index.to_numpy()].tolist(), dtype=pl.List(pl.UInt16))


def memorized_only_list(decided: pl.DataFrame, world, path: Path) -> Path:
    """Pythia's memorized-evals form: `index`, `tokens` (int64 lists), `__index_level_0__`, memorized rows only."""
    listed = decided.filter("full_match")
    pl.DataFrame({"index": listed["index"], "tokens": stream_tokens(world, listed["index"]).cast(pl.List(pl.Int64)),
                  "__index_level_0__": listed["index"]}).write_parquet(path)
    return path


def labelled_sample(decided: pl.DataFrame, world, path: Path) -> Path:
    """The random-sampled form: `index`, `tokens` (uint16 lists), `is_memorized`."""
    pl.DataFrame({"index": decided["index"], "tokens": stream_tokens(world, decided["index"]),
                  "is_memorized": decided["full_match"]}).write_parquet(path)
    return path


def compare_json(capsys, output: Path, labels: Path, *flags: str) -> tuple[int, dict]:
    """`memsweep compare OUTPUT LABELS --format json FLAGS`: (exit status, the object printed)."""
    capsys.readouterr()  # what ran before
    status = main(["compare", str(output), str(labels), "--format", "json", *flags])
    printed = capsys.readouterr()
    assert printed.out.startswith("{"), printed.err
    return status, json.loads(printed.out)


@pytest.mark.parametrize("name", ["megatron", "jsonl"])
def test_labels_that_are_memsweeps_own_agree_fully_in_both_forms(outputs, name, tmp_path, capsys):
    output, world = outputs[0][name], outputs[1]
    decided = memsweep_decisions(output, name)
    assert decided.height == CHUNKS * PER_CHUNK and decided["index"].to_list() == list(range(CHUNKS * PER_CHUNK))
    memorized = int(decided["full_match"].sum())
    assert 0 < memorized < decided.height  # the scores say something
    for labels, checked in ((memorized_only_list(decided, world, tmp_path / "list.parquet"), memorized),
                            (labelled_sample(decided, world, tmp_path / "sample.parquet"), decided.height)):
        status, result = compare_json(capsys, output, labels, "--checkpoint", str(LAST_CKPT[name]))
        assert status == 0 and result["data_mismatches"] == 0 and result["checked"] == checked
        [row] = result["checkpoints"]
        assert (row["covered"], row["both"], row["only_memsweep"], row["only_labels"], row["neither"]) == \
            (decided.height, memorized, 0, 0, decided.height - memorized)
        assert row["precision"] == row["recall"] == 1.0
    main(["compare", str(output), str(labels), "--checkpoint", str(LAST_CKPT[name])])
    text = capsys.readouterr().out
    assert "all equal" in text and "100.0%" in text and "near-ties: decision margin" in text
    assert result["near_ties"]["margins"] == decided.height  # every covered sequence has its margin
    assert result["near_ties"]["near_ties_only_memsweep"] == result["near_ties"]["near_ties_only_labels"] == 0


def landed_margins(output: Path, name: str) -> pl.DataFrame:
    """index, full_match, margin (the landed decision_margin) of every sequence of the output at its last checkpoint."""
    landed = open_output(output)
    margins = (landed.sequences(LAST_CKPT[name]).select("chunk", "row", pl.col("decision_margin").alias("margin"))
               .collect())
    return memsweep_decisions(output, name).join(margins, on=["chunk", "row"])


def test_near_ties_among_planted_disagreements_are_counted_exactly(outputs, tmp_path, capsys):
    """Labels flip two memorized sequences nearest a tie and the one farthest, and the unmemorized sequence nearest
    a tie and the one farthest: under a tie margin between them, 2 of the 3 and 1 of the 2 are near-ties."""
    name = "megatron"
    output, world = outputs[0][name], outputs[1]
    decided = landed_margins(output, name).sort("margin")
    assert decided["margin"].null_count() == 0 and decided["margin"].n_unique() > 10
    memorized, not_memorized = decided.filter("full_match"), decided.filter(~pl.col("full_match"))
    near = memorized["margin"][:2].to_list() + not_memorized["margin"][:1].to_list()
    far = memorized["margin"][-1:].to_list() + not_memorized["margin"][-1:].to_list()
    assert max(near) < min(far), (near, far)  # the world has margins to tell them apart
    tie_margin = (max(near) + min(far)) / 2
    flipped = memorized["index"][:2].to_list() + memorized["index"][-1:].to_list() + \
        not_memorized["index"][:1].to_list() + not_memorized["index"][-1:].to_list()
    sample = decided.with_columns(full_match=pl.col("full_match") ^ pl.col("index").is_in(flipped))
    status, result = compare_json(capsys, output, labelled_sample(sample, world, tmp_path / "sample.parquet"),
                                  "--tie-margin", str(tie_margin), "--checkpoint", str(LAST_CKPT[name]))
    [row] = result["checkpoints"]
    assert status == 0 and (row["only_memsweep"], row["only_labels"]) == (3, 2)
    assert (row["near_ties_only_memsweep"], row["near_ties_only_labels"]) == (2, 1)
    assert row["margins"] == decided.height and row["near_ties"] == int((decided["margin"] < tie_margin).sum())
    assert result["near_ties"] == {"tie_margin": tie_margin, "margins": decided.height, "near_ties": row["near_ties"],
                                   "near_ties_only_memsweep": 2, "near_ties_only_labels": 1}
    main(["compare", str(output), str(tmp_path / "sample.parquet"), "--tie-margin", str(tie_margin),
          "--checkpoint", str(LAST_CKPT[name])])
    assert f"{'2/3':>18} {'1/2':>16}" in capsys.readouterr().out


def landed_before_margins(output: Path, copy: Path) -> Path:
    """A copy of `output` as memsweep landed it before it recorded decision margins: its sequences files without the
    `decision_margin` column, their ledger records (bytes, sha256) to match."""
    shutil.copytree(output, copy)
    for ledger in (copy / "ledger").glob("ckpt=*.json"):
        entry = json.loads(ledger.read_text())
        for pair in entry["files"]:
            record = pair["sequences"]
            path = copy / record["path"]
            pl.read_parquet(path).drop("decision_margin").write_parquet(path)
            record.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        ledger.write_text(json.dumps(entry, indent=1) + "\n")
    return copy


def test_an_output_landed_before_margins_compares_with_near_ties_not_recorded(outputs, tmp_path, capsys):
    name = "jsonl"
    output, world = outputs[0][name], outputs[1]
    old = landed_before_margins(output, tmp_path / "old")
    decided = memsweep_decisions(old, name)
    labels = labelled_sample(decided, world, tmp_path / "sample.parquet")
    status, result = compare_json(capsys, old, labels, "--checkpoint", str(LAST_CKPT[name]))
    [row] = result["checkpoints"]
    assert status == 0 and row["both"] == int(decided["full_match"].sum()) and row["margins"] == 0
    assert result["near_ties"] is None and row["near_ties"] is None and "not recorded" in result["near_ties_note"]
    main(["compare", str(old), str(labels)])
    assert "near-ties: not recorded" in capsys.readouterr().out


def test_planted_disagreements_are_counted_exactly(outputs, tmp_path, capsys):
    name = "megatron"
    output, world = outputs[0][name], outputs[1]
    decided = memsweep_decisions(output, name)
    memorized = decided.filter("full_match")["index"].to_list()
    not_memorized = decided.filter(~pl.col("full_match"))["index"].to_list()
    dropped, added = set(memorized[:3]), set(not_memorized[:2])  # labels say: not memorized / memorized

    sample = decided.with_columns(full_match=pl.col("full_match") ^ pl.col("index").is_in(dropped | added))
    last = str(LAST_CKPT[name])
    status, result = compare_json(capsys, output, labelled_sample(sample, world, tmp_path / "sample.parquet"),
                                  "--checkpoint", last)
    [row] = result["checkpoints"]
    assert status == 0 and result["data_mismatches"] == 0
    assert (row["both"], row["only_memsweep"], row["only_labels"]) == (len(memorized) - 3, 3, 2)
    assert row["neither"] == len(not_memorized) - 2
    assert row["precision"] == pytest.approx((len(memorized) - 3) / len(memorized))
    assert row["recall"] == pytest.approx((len(memorized) - 3) / (len(memorized) - 3 + 2))

    # a memorized-only list: a memorized sequence left out of the list, two unmemorized ones listed
    listed = decided.with_columns(full_match=(pl.col("full_match") & ~pl.col("index").is_in(dropped))
                                  | pl.col("index").is_in(added))
    status, result = compare_json(capsys, output, memorized_only_list(listed, world, tmp_path / "list.parquet"),
                                  "--checkpoint", last)
    [row] = result["checkpoints"]
    assert (row["ckpt"], row["both"], row["only_memsweep"], row["only_labels"], row["covered"]) == \
        (LAST_CKPT[name], len(memorized) - 3, 3, 2, decided.height)


@pytest.mark.parametrize("name", ["megatron", "jsonl"])
def test_a_shifted_sequence_is_a_named_data_mismatch_and_no_agreement_is_printed(outputs, name, tmp_path, capsys):
    output, world = outputs[0][name], outputs[1]
    decided = memsweep_decisions(output, name)
    labels = labelled_sample(decided, world, tmp_path / "sample.parquet")
    frame = pl.read_parquet(labels)
    shifted = 37  # its tokens from offset 5 on taken one position later, as an off-by-one read would give them
    ids = list(world.sequences[shifted])
    frame = frame.with_columns(tokens=pl.when(pl.col("index") == shifted)
                               .then(pl.lit(pl.Series([ids[:5] + ids[6:] + [ids[-1]]], dtype=pl.List(pl.UInt16))))
                               .otherwise("tokens"))
    frame.write_parquet(labels)
    first = next(i for i in range(5, K + L) if ids[i] != ids[i + 1])
    status, result = compare_json(capsys, output, labels, "--checkpoint", str(LAST_CKPT[name]))
    assert status == 1 and result["data_mismatches"] == 1 and result["checkpoints"] is None
    [mismatch] = result["mismatches"]
    assert (mismatch["index"], mismatch["chunk"], mismatch["row"], mismatch["offset"]) == \
        (shifted, shifted // PER_CHUNK, shifted % PER_CHUNK, first)
    assert main(["compare", str(output), str(labels)]) == 1
    text = capsys.readouterr().out
    assert f"index {shifted} (chunk 1, row {shifted % PER_CHUNK}): first differs at offset {first}" in text
    assert "DATA MISMATCH: 1 " in text and "precision" not in text and "%" not in text


def test_a_jsonl_output_without_row_counts_is_refused_naming_the_file(outputs, monkeypatch):
    landed = open_output(outputs[0]["jsonl"])
    positions, how = stream_positions(landed)
    positions = positions.collect()
    assert "JSONL" in how and (positions["index"] == positions["chunk"] * PER_CHUNK + positions["row"]).all()
    assert positions.height == CHUNKS * PER_CHUNK
    for table in ("cells", "sequences"):  # as if the census covered chunks 1 and 2 alone, with no exposure scan
        read = getattr(LandedOutput, table)
        monkeypatch.setattr(landed, table, lambda ckpt=None, read=read: read(landed, ckpt).filter(pl.col("chunk") > 0))
    with pytest.raises(CompareError, match="chunk file 0's row count is unknown, so chunk 1's rows"):
        stream_positions(landed)


def test_bad_labels_are_one_line_errors(outputs, tmp_path, capsys):
    pl.DataFrame({"index": [1], "ids": [[1, 2]]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(LabelsError, match="bad.parquet: no column 'tokens'"):
        read_labels(tmp_path / "bad.parquet")
    pl.DataFrame({"index": [1, 1], "tokens": [[1], [2]]}).write_parquet(tmp_path / "twice.parquet")
    with pytest.raises(LabelsError, match="index 1 is listed more than once"):
        read_labels(tmp_path / "twice.parquet")
    assert main(["compare", str(outputs[0]["jsonl"]), str(tmp_path / "missing.parquet")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_the_report_holds_the_comparison(outputs, tmp_path):
    from sweep.report.page import write_report

    name = "jsonl"
    output, world = outputs[0][name], outputs[1]
    decided = memsweep_decisions(output, name)
    labels = read_labels(labelled_sample(decided, world, tmp_path / "sample.parquet"))
    page = write_report(output, tmp_path / "report", labels=labels).read_text()
    section = page[page.index("<h2>Against published labels</h2>"):]
    assert "All equal." in section and "<th>only_memsweep</th>" in section
    assert "Near-ties: covered sequences whose decision margin" in section and "<th>near_ties_only_labels</th>" in section
    assert compare_labels(open_output(output), labels, LAST_CKPT[name]).checkpoints[0].both == \
        int(decided["full_match"].sum())


def test_split_files_follow_the_hubs_layouts():
    names = ["README.md", "data/deduped.70m-00000-of-00002-4f1c.parquet", "data/deduped.70m-00001-of-00002-77ab.parquet",
             "data/deduped.160m-00000-of-00001.parquet", "data/duped.70m-00000-of-00001.parquet"]
    assert split_files(names, "deduped.70m") == names[1:3]
    assert split_files(["default/train/0000.parquet", "default/test/0000.parquet"], "train") == \
        ["default/train/0000.parquet"]


@pytest.mark.skipif(not CAN_SERVE_HUB, reason="needs git and olah to serve a local Hub")
def test_labels_from_a_hub_dataset_split_at_its_commit(outputs, tmp_path, capsys, monkeypatch):
    name = "megatron"
    output, world = outputs[0][name], outputs[1]
    decided = memsweep_decisions(output, name)
    mirrors = tmp_path / "mirrors"
    repo = mirrors / "datasets" / "EleutherAI" / "pythia-memorized-evals"
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "--quiet", "--initial-branch", "main", str(repo)], check=True)
    commit_files(repo, "main", {"README.md": b"---\nlicense: mit\n---\n"}, "initial commit")
    ours = memorized_only_list(decided, world, tmp_path / "ours.parquet")
    other = memorized_only_list(decided.with_columns(full_match=~pl.col("full_match")), world, tmp_path / "other.parquet")
    commit = commit_files(repo, "main", {"data/deduped.tiny-00000-of-00001-5a1b.parquet": ours,
                                         "data/duped.tiny-00000-of-00001-9c2d.parquet": other}, "Upload splits")
    with serve_hub(mirrors, tmp_path / "server") as server:
        apply_hub_client_env(monkeypatch, hub_client_env(server.endpoint, tmp_path / "hf-home"))
        labels = read_labels("EleutherAI/pythia-memorized-evals", "deduped.tiny")
        assert labels.source == f"EleutherAI/pythia-memorized-evals@{commit[:12]}:deduped.tiny"
        assert labels.form == "memorized-only" and labels.frame.height == int(decided["full_match"].sum())
        status, result = compare_json(capsys, output, "EleutherAI/pythia-memorized-evals", "--split", "deduped.tiny",
                                      "--checkpoint", str(LAST_CKPT[name]))
        assert status == 0 and result["checkpoints"][0]["precision"] == 1.0
        with pytest.raises(LabelsError, match=r"no Parquet files for split 'deduped\.big' \(splits found: "
                                              r"deduped\.tiny, duped\.tiny\)"):
            read_labels("EleutherAI/pythia-memorized-evals", "deduped.big")
    assert np.array_equal(labels.frame["index"].to_numpy(), decided.filter("full_match")["index"].to_numpy())


def test_the_demo_reference_labels_are_hf_generates_and_memsweep_agrees_with_them(world, module_ray, tmp_path,
                                                                                   capsys):
    """The demo world's labels (sweep/demo/reference_labels.py: HF generate over every line of the stream, a
    memorized-only list) against a sweep of its last checkpoint: the data check passes and, in fp32, memsweep's kernel
    and `generate` decide every covered sequence alike."""
    from sweep.demo.config import DemoWorldConfig
    from sweep.demo.reference_labels import reference_labels

    config = DemoWorldConfig(chunks=3, rows_per_chunk=96)  # tests/conftest.py's world
    labels = reference_labels(config, world / "model", world / "data")
    path = tmp_path / "labels.parquet"
    labels.write_parquet(path)
    assert labels.columns == ["index", "tokens", "__index_level_0__"]
    stream = [json.loads(line)["token_ids"][:64] for c in range(3)
              for line in (world / "data" / "train" / f"train_{c:03d}.jsonl").read_text().splitlines()]
    assert labels["tokens"].to_list() == [stream[index] for index in labels["index"]]  # index: the line in the stream
    assert 0 < labels.height < len(stream)

    # chunk file 0 alone: its rows' stream positions need no earlier file's row count
    spec = load_spec(write_spec(tmp_path, world, tmp_path / "demo-out", checkpoints=[2], chunks=[0]))
    assert run_sweep(spec, progress=False).ok
    status, result = compare_json(capsys, tmp_path / "demo-out", path)
    assert status == 0 and result["data_mismatches"] == 0 and "JSONL" in result["positions"]
    [row] = result["checkpoints"]
    assert row["covered"] == 96 and row["both"] > 0 and result["checked"] == row["both"] + row["only_labels"]
    assert row["only_memsweep"] == row["only_labels"] == 0
