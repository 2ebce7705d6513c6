"""The training timeline (sweep/timeline.py) and the spec keys that make it: every answer against a brute-force count
over the stream's positions, the spec's cell selection following it, one-line errors for each new key, and the
identity of every spec written before the keys existed unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweep.spec import SpecError, load_spec
from sweep.timeline import Timeline

REPO = Path(__file__).resolve().parents[1]

# The identity keys every spec had before issue 22 added format and timeline keys: a jsonl spec without a timeline
# must name exactly these, so the hash of every landed output stays what it was.
IDENTITY_BEFORE_STREAMS = ("model.source", "model.revision", "model.revision_overrides", "model.dtype", "data.source",
                           "data.file", "data.revision", "data.samples_per_chunk", "data.seed",
                           "memorization.prompt_len", "memorization.continuation_len", "memorization.mode",
                           "memorization.eos", "memorization.nll")


def brute_force(per_step: int, steps_per_chunk: int, ckpt: int, chunk: int) -> tuple[float, np.ndarray]:
    """(seen fraction, per-position seen flags) of one cell, by walking the stream position by position."""
    trained = [position for step in range(ckpt) for position in range(step * per_step, (step + 1) * per_step)]
    size = per_step * steps_per_chunk
    positions = np.arange(chunk * size, (chunk + 1) * size)
    flags = np.isin(positions, trained)
    return flags.mean(), flags


@pytest.mark.parametrize("per_step,steps_per_chunk", [(1, 1), (3, 4), (4, 3), (8, 5)])
def test_step_timeline_equals_a_brute_force_walk_of_the_stream(per_step, steps_per_chunk):
    timeline = Timeline(per_step, steps_per_chunk)
    chunks = range(4)
    # steps at the start of the stream, inside chunks and at both edges of every chunk
    steps = sorted({0, 1} | {c * steps_per_chunk + d for c in range(5) for d in (-1, 0, 1, steps_per_chunk // 2)} - {-1})
    for ckpt, chunk in itertools.product(steps, chunks):
        fraction, flags = brute_force(per_step, steps_per_chunk, ckpt, chunk)
        start, stop = timeline.chunk_range(chunk)
        assert timeline.seen_fraction(ckpt, chunk) == pytest.approx(fraction), (ckpt, chunk)
        assert timeline.is_seen(ckpt, chunk) == bool(flags.any())
        assert np.array_equal(timeline.sequences_seen(ckpt, chunk, np.arange(start, stop)), flags)
    for chunk, row in itertools.product(chunks, range(0, per_step * steps_per_chunk, 3)):
        first = timeline.first_trained_by(chunk, row)
        assert brute_force(per_step, steps_per_chunk, first, chunk)[1][row]
        assert first == 0 or not brute_force(per_step, steps_per_chunk, first - 1, chunk)[1][row]
    for ckpt in steps:
        seen = [chunk for chunk in range(8) if brute_force(per_step, steps_per_chunk, ckpt, chunk)[1].any()]
        assert timeline.newest_chunk(ckpt) == (max(seen) if seen else None), ckpt
        whole = [chunk for chunk in range(8) if brute_force(per_step, steps_per_chunk, ckpt, chunk)[1].all()]
        assert timeline.whole_chunks(ckpt) == (max(whole) if whole else -1), ckpt
        assert timeline.staircase(ckpt, list(chunks)) == pytest.approx(
            sum(brute_force(per_step, steps_per_chunk, ckpt, chunk)[0] for chunk in chunks))


def test_chunk_timeline_is_ambers():
    timeline = Timeline()
    assert not timeline.step_indexed and timeline.chunk_range(3) is None and timeline.trained(3) is None
    for ckpt, chunk in itertools.product(range(5), range(5)):
        assert timeline.seen_fraction(ckpt, chunk) == float(chunk <= ckpt)
        assert timeline.sequences_seen(ckpt, chunk, np.zeros(3)).tolist() == [chunk <= ckpt] * 3
    assert [timeline.newest_chunk(c) for c in range(3)] == [0, 1, 2] == [timeline.whole_chunks(c) for c in range(3)]
    assert timeline.first_trained_by(4, 123) == 4
    assert Timeline.from_spec_dict({"name": "old manifest"}) == timeline
    assert Timeline.from_spec_dict({"timeline": {"sequences_per_step": 1024, "steps_per_chunk": 1000}}) == \
        Timeline(1024, 1000)


def test_pythias_checkpoints_are_positions_in_its_stream():
    pythia = Timeline(1024, 1000)
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 1000)]
    assert len(steps) == 154
    assert pythia.trained(143000) == 146_432_000 and pythia.chunk_range(142) == (145_408_000, 146_432_000)
    assert pythia.seen_fraction(512, 0) == 0.512 and pythia.seen_fraction(1000, 0) == 1.0
    assert pythia.seen_fraction(1000, 1) == 0.0 and pythia.newest_chunk(1000) == 0 and pythia.newest_chunk(1001) == 1
    assert pythia.check_within(146_432_000, steps, list(range(143))) == {"checkpoints": [], "chunks": []}
    assert pythia.check_within(146_432_000, [143000, 143001], [142, 143]) == {"checkpoints": [143001], "chunks": [143]}


# ---- the spec ---------------------------------------------------------------------------------------------------

PYTHIA = {
    "name": "pythia",
    "model": {"source": "EleutherAI/pythia-70m-deduped", "revision": "step{ckpt}"},
    "data": {"source": "EleutherAI/pile-deduped-pythia-preshuffled", "format": "megatron", "file": "document"},
    "timeline": {"sequences_per_step": 4, "steps_per_chunk": 10},
    "checkpoints": [0, 5, 10, 15, 20],
    "chunks": "0-2",
    "output": "results/pythia",
}


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def with_changes(base: dict, **changes) -> dict:
    spec = yaml.safe_load(yaml.safe_dump(base))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


def test_cells_follow_the_timeline(tmp_path):
    cells = {kind: load_spec(write(tmp_path, with_changes(PYTHIA, cells=kind))).cell_list()
             for kind in ("all", "seen", "unseen", "diagonal")}
    timeline = Timeline(4, 10)
    assert cells["seen"] == [(c, j) for c, j in cells["all"] if timeline.seen_fraction(c, j) > 0]
    assert sorted(cells["seen"] + cells["unseen"]) == sorted(cells["all"])
    # step 5 is half-way through chunk 0, step 10 its end, step 15 half-way through chunk 1; step 0 has no diagonal
    assert cells["diagonal"] == [(5, 0), (10, 0), (15, 1), (20, 1)]
    assert (15, 1) in cells["seen"] and (10, 1) in cells["unseen"]


def test_revision_templates_over_steps_and_tokens(tmp_path):
    spec = load_spec(write(tmp_path, PYTHIA))
    assert [spec.revision_for(c) for c in (0, 15)] == ["step0", "step15"]
    olmo = with_changes(PYTHIA, model__revision="step{ckpt}-tokens{tokens_b}B", data__format="numpy",
                        data__file=["part-0.npy", "part-1.npy"], data__dtype="uint16", data__sequence_len=2048,
                        timeline={"sequences_per_step": 2048, "steps_per_chunk": 1000}, checkpoints=[20000, 100000])
    spec = load_spec(write(tmp_path, olmo))
    assert [spec.revision_for(c) for c in (20000, 100000)] == ["step20000-tokens84B", "step100000-tokens419B"]


BAD = [
    # (what is wrong, spec, key the message names, words it holds)
    ("unknown format", with_changes(PYTHIA, data__format="parquet"), "data.format", "jsonl"),
    ("no timeline for megatron", with_changes(PYTHIA, timeline=None), "timeline", "required for data.format megatron"),
    ("timeline for jsonl", with_changes(PYTHIA, data__format="jsonl", data__file="train_{chunk}.jsonl"), "timeline",
     "applies to data.format megatron or numpy"),
    ("a Megatron file with a suffix", with_changes(PYTHIA, data__file="document.idx"), "data.file", "'document'"),
    ("a Megatron file as a template", with_changes(PYTHIA, data__file="doc_{chunk}"), "data.file", "prefix"),
    ("dtype for megatron", with_changes(PYTHIA, data__dtype="uint16"), "data.dtype", "numpy only"),
    ("numpy without dtype", with_changes(PYTHIA, data__format="numpy", data__file=["a.npy"], data__sequence_len=8),
     "data.dtype", "required for data.format numpy"),
    ("numpy without sequence_len", with_changes(PYTHIA, data__format="numpy", data__file="*.npy", data__dtype="uint16"),
     "data.sequence_len", "required"),
    ("numpy without files", with_changes(PYTHIA, data__format="numpy", data__file=None, data__dtype="uint16",
                                         data__sequence_len=8), "data.file", "required for data.format numpy"),
    ("bad token dtype", with_changes(PYTHIA, data__format="numpy", data__file=["a.npy"], data__dtype="int8",
                                     data__sequence_len=8), "data.dtype", "uint16"),
    ("bad order dtype", with_changes(PYTHIA, data__format="numpy", data__file=["a.npy"], data__dtype="uint16",
                                     data__sequence_len=8, data__order="o.npy", data__order_dtype="float32"),
     "data.order_dtype", "uint32"),
    ("zero sequences a step", with_changes(PYTHIA, timeline__sequences_per_step=0), "timeline.sequences_per_step",
     "greater than or equal to 1"),
    ("missing steps a chunk", with_changes(PYTHIA, timeline__steps_per_chunk=None), "timeline.steps_per_chunk",
     "missing"),
    ("tokens without numpy", with_changes(PYTHIA, model__revision="step{ckpt}-tokens{tokens_b}B"), "model.revision",
     "{tokens}"),
    ("a jsonl list", with_changes(PYTHIA, data__format="jsonl", timeline=None, data__file=["a.jsonl"]), "data.file",
     "not a list"),
]


@pytest.mark.parametrize("what,spec,key,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_stream_key_is_one_line_naming_file_line_and_key(tmp_path, what, spec, key, words):
    path = write(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:"), message
    assert f": {key}: " in message and words in message, message


JSONL_CONFIGS = [path for path in sorted((REPO / "configs").glob("*.yaml")) if load_spec(path).data.format == "jsonl"]


@pytest.mark.parametrize("config", JSONL_CONFIGS, ids=lambda p: p.name)
def test_a_jsonl_spec_without_timeline_keeps_the_identity_it_had(config):
    assert sorted(load_spec(config).identity()) == sorted(IDENTITY_BEFORE_STREAMS)


def test_the_format_and_timeline_are_part_of_the_identity(tmp_path):
    base = load_spec(write(tmp_path, PYTHIA))
    assert base.identity()["data.format"] == "megatron" and base.identity()["timeline.steps_per_chunk"] == 10
    for changes in ({"timeline__steps_per_chunk": 20}, {"timeline__sequences_per_step": 8}):
        assert load_spec(write(tmp_path, with_changes(PYTHIA, **changes))).identity_hash() != base.identity_hash()
    assert load_spec(write(tmp_path, with_changes(PYTHIA, chunks="0-5"))).identity_hash() == base.identity_hash()
