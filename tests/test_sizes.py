"""Several outputs analysed together (issue 23, part 3): `memsweep query OUT --with OTHER`, Biderman et al.'s
predictability across model sizes (sweep/analysis/sizes.py, the report's `--smaller` section), and the refusal of
outputs that probe different sequences, naming the spec key. On small synthetic outputs landed through the store
(tests/landed_world.py), and once on the demo's data with a smaller model trained on its stream."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from sweep.analysis.joint_outputs import DifferentProbesError, open_joint_outputs
from sweep.analysis.sizes import size_predictability
from sweep.cli import main
from sweep.spec import probe_differences
from tests.landed_world import L, write_landed
from tests.query_docs import doc_blocks

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"model.source": "EleutherAI/pythia-70m", "model.dtype": "float16", "data.source": "EleutherAI/pile",
            "data.file": "document", "data.seed": 42, "data.samples_per_chunk": 4, "memorization.prompt_len": 32,
            "memorization.continuation_len": 32, "memorization.mode": "greedy"}

# Which (chunk, row) each model fully memorized at each checkpoint; checkpoint c has trained on chunks <= c.
# (1, 3) is memorized by both at checkpoint 0, before its chunk was trained on: it must not count there.
MEMORIZED = {
    "small": {0: {(0, 0), (1, 3)}, 1: {(0, 0), (0, 1), (1, 0)}},
    "large": {0: {(0, 0), (0, 2), (1, 3)}, 1: {(0, 0), (1, 0), (1, 1), (1, 2)}},
    "larger": {0: {(0, 0)}, 1: {(0, 0), (0, 1)}},
}


def land(path: Path, memorized: dict[int, set], **identity) -> Path:
    records = [{"ckpt": ckpt, "chunk": chunk, "row": row, "source": "pile", "matches": L if hit else 3,
                "full_match": hit, "prefix_match": L if hit else 1, "nll": 1.0}
               for ckpt in (0, 1) for chunk in (0, 1) for row in range(4)
               for hit in [(chunk, row) in memorized[ckpt]]]
    return write_landed(path, records, identity={**IDENTITY, **identity})


@pytest.fixture(scope="module")
def sizes(tmp_path_factory) -> dict[str, Path]:
    """Three outputs landed once for the module (the tests only read them; a report refused writes nothing)."""
    root = tmp_path_factory.mktemp("sizes")
    return {name: land(root / name, memorized, **{"model.source": f"EleutherAI/pythia-{name}"})
            for name, memorized in MEMORIZED.items()}


def test_the_smaller_models_memorized_set_predicts_the_larger_ones_by_checkpoint(sizes):
    table = size_predictability(open_joint_outputs([sizes["small"], sizes["large"]]))
    expected = pl.DataFrame(
        {"predictor": ["small"] * 2, "target": ["large"] * 2, "ckpt": [0, 1], "n_sequences": [4, 8],
         "n_memorized": [1, 3], "n_memorized_target": [2, 4], "n_both": [1, 2], "precision": [1.0, 2 / 3],
         "recall": [0.5, 0.5]})
    assert table.select(expected.columns).cast(expected.schema).equals(expected)
    assert table["predictor_model"].unique().to_list() == ["EleutherAI/pythia-small"]


def test_each_pair_or_each_against_the_largest(sizes):
    joint = open_joint_outputs([sizes["small"], sizes["large"], sizes["larger"]])
    pairs = lambda table: sorted(set(table.select("predictor", "target").iter_rows()))
    assert pairs(size_predictability(joint)) == [("large", "larger"), ("small", "large"), ("small", "larger")]
    against = size_predictability(joint, against_largest=True)
    assert pairs(against) == [("large", "larger"), ("small", "larger")]
    # large -> larger at checkpoint 1: larger memorized {(0,0), (0,1)}, large {(0,0), (1,0), (1,1), (1,2)}
    row = against.filter((pl.col("predictor") == "large") & (pl.col("ckpt") == 1)).row(0, named=True)
    assert (row["n_both"], row["precision"], row["recall"]) == (1, 0.25, 0.5)


def test_outputs_with_different_seeds_are_refused_naming_the_key(sizes, tmp_path, capsys):
    other = land(tmp_path / "reseeded", MEMORIZED["large"], **{"data.seed": 7})
    with pytest.raises(DifferentProbesError, match=r"data\.seed \(42 vs 7\)"):
        open_joint_outputs([sizes["small"], other])
    for command in (["query", str(sizes["small"]), "--with", str(other), "SELECT * FROM cells"],
                    ["report", str(other), "--smaller", str(sizes["small"])]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "data.seed" in error and "memsweep: error:" in error
    assert not (other / "report").exists()  # refused before anything was written


def test_model_and_scoring_keys_may_differ_data_and_window_keys_may_not():
    same = probe_differences(IDENTITY, {**IDENTITY, "model.source": "EleutherAI/pythia-12b", "model.dtype": "bfloat16",
                                        "memorization.mode": "extractable", "memorization.nll": True})
    assert same == []
    # a key left out of an identity while at its default (data.format: jsonl) equals that default written out
    assert probe_differences(IDENTITY, {**IDENTITY, "data.format": "jsonl"}) == []
    changed = probe_differences(IDENTITY, {**IDENTITY, "data.format": "megatron", "memorization.prompt_len": 16,
                                           "timeline.steps_per_chunk": 1000})
    assert changed == ['data.format ("jsonl" vs "megatron")', "memorization.prompt_len (32 vs 16)",
                       "timeline.steps_per_chunk (<absent> vs 1000)"]


def test_the_demos_two_sizes_probe_the_same_sequences():
    """configs/demo-small.yaml scores what configs/demo.yaml scores, with another model: `memsweep demo --smaller`'s
    report is not refused."""
    from sweep.spec import load_spec

    demo, smaller = (load_spec(REPO / "configs" / name) for name in ("demo.yaml", "demo-small.yaml"))
    assert probe_differences(demo.identity(), smaller.identity()) == []
    assert demo.model.source != smaller.model.source


def test_query_over_several_outputs_labels_every_row(sizes, capsys):
    sql = "SELECT output, model, identity, ckpt, SUM(CAST(full_match AS INT)) AS memorized FROM sequences " \
          "WHERE seen GROUP BY output, model, identity, ckpt ORDER BY output, ckpt"
    assert main(["query", str(sizes["small"]), "--with", str(sizes["large"]), sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    identities = {row["output"]: row["identity"] for row in rows}
    assert [(row["output"], row["model"], row["ckpt"], row["memorized"]) for row in rows] == [
        ("large", "EleutherAI/pythia-large", 0, 2), ("large", "EleutherAI/pythia-large", 1, 4),
        ("small", "EleutherAI/pythia-small", 0, 1), ("small", "EleutherAI/pythia-small", 1, 3)]
    assert identities["small"] != identities["large"]
    # one output alone: its tables as before, without the joint columns
    assert main(["query", str(sizes["small"]), "SELECT * FROM cells LIMIT 1", "--format", "json"]) == 0
    assert "output" not in json.loads(capsys.readouterr().out)[0]


def test_the_documented_examples_over_several_outputs_give_the_functions_table(sizes, capsys):
    """docs/queries.md's SQL for the predictability across sizes, run as written through `memsweep query --with`
    (its output names replaced by these), and its Python example."""
    (sql,) = doc_blocks("sql", several_outputs=True)
    sql = sql.replace("'pythia-70m'", "'small'").replace("'pythia-12b'", "'large'")
    assert main(["query", str(sizes["small"]), "--with", str(sizes["large"]), sql, "--format", "json"]) == 0
    from_sql = pl.DataFrame(json.loads(capsys.readouterr().out))
    expected = size_predictability(open_joint_outputs([sizes["small"], sizes["large"]]))
    columns = ["ckpt", "n_sequences", "n_memorized", "n_memorized_target", "n_both", "precision", "recall"]
    assert from_sql.select(columns).cast(expected.select(columns).schema).equals(expected.select(columns))
    for code in doc_blocks("python", several_outputs=True):
        exec(compile(code, "docs/queries.md", "exec"),
             {"smaller_output": str(sizes["small"]), "larger_output": str(sizes["large"])})
    assert "precision" in capsys.readouterr().out


@pytest.mark.ray
def test_two_model_sizes_on_the_demo_data_give_the_size_table(world, clean_run, tmp_path, capsys):
    """The demo's smaller model (sweep/demo/sizes.py) trained on the session world's stream, swept on the same probe
    sets as the session's clean run of the larger one: the table counts exactly the sets the two outputs landed, and
    the report draws it. (Training the smaller family is most of this test's time.)"""
    from sweep.demo.config import DemoWorldConfig
    from sweep.demo.sizes import ensure_smaller_model
    from sweep.landed.reader import open_output
    from sweep.report.page import write_report
    from sweep.run.driver import run_sweep
    from sweep.spec import load_spec
    from tests.sweeps import WORLD_KNOBS, write_spec

    _, _, larger = clean_run
    ensure_smaller_model(DemoWorldConfig(**WORLD_KNOBS), tmp_path / "model-small", world / "data", progress=False)
    spec = write_spec(tmp_path, world, tmp_path / "small", model={"source": str(tmp_path / "model-small")},
                      memorization={"nll": False}, checkpoints="1-2", cells="seen")
    assert run_sweep(load_spec(spec), progress=False).ok

    table = size_predictability(open_joint_outputs([tmp_path / "small", larger]))
    # the checkpoints both landed (the larger has 0-2), on the sequences each had trained on
    assert table["ckpt"].to_list() == [1, 2] and table["n_sequences"].to_list() == [192, 288]

    def memorized(output: Path, ckpt: int) -> set[tuple[int, int]]:
        rows = open_output(output).sequences(ckpt).filter(pl.col("seen") & pl.col("full_match")).collect()
        return set(rows.select("chunk", "row").iter_rows())

    for row in table.iter_rows(named=True):
        small, large = memorized(tmp_path / "small", row["ckpt"]), memorized(larger, row["ckpt"])
        assert (row["n_memorized"], row["n_memorized_target"], row["n_both"]) == (len(small), len(large),
                                                                                  len(small & large))
    assert table["n_memorized_target"].sum() > 0  # the larger model memorized something to predict
    page = write_report(larger, tmp_path / "report", smaller=[tmp_path / "small"]).read_text()
    assert "Predictability of out&#x27;s memorized set from smaller models" in page
    assert (tmp_path / "report" / "size_predictability.png").stat().st_size > 0
    # the README's query after `memsweep demo --smaller`, as written, over these two outputs
    (sql,) = re.findall(r'memsweep query results/demo-small --with results/demo "([^"]+)"', (REPO / "README.md").read_text())
    capsys.readouterr()  # what the sweep printed
    assert main(["query", str(tmp_path / "small"), "--with", str(larger), sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(row["output"], row["ckpt"]) for row in rows} == {("small", 1), ("small", 2), ("out", 0), ("out", 1),
                                                              ("out", 2)}
