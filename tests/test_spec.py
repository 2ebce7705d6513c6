"""The sweep spec: every shipped config validates, and bad specs fail with the file, line and key."""

from pathlib import Path

import pytest
import yaml

from typing import Annotated

from sweep.spec import (IDENTITY, IDENTITY_UNLESS_DEFAULT, NOT_IDENTITY, SpecError, SpecSection, SweepSpec,
                        identity_hash, identity_of, load_spec, meaning_of, parse_id_list, section_of)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

GOOD = {
    "name": "t",
    "model": {"source": "org/model", "revision": "ckpt_{ckpt:03d}", "dtype": "bfloat16"},
    "data": {"source": "org/data", "file": "train/train_{chunk:03d}.jsonl", "samples_per_chunk": 10, "seed": 42},
    "checkpoints": "0-359:10",
    "chunks": [143, 355],
    "memorization": {"prompt_len": 32, "continuation_len": 32},
    "resources": {"gpus_per_actor": "auto", "batch_size": "auto"},
    "output": "results/t",
}


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def edited(**changes) -> dict:
    """GOOD with dotted keys replaced (value None deletes the key)."""
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = spec
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return spec


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path):
    spec = load_spec(path)
    assert spec.cell_list(), path
    assert spec.name == path.stem


def test_shipped_configs_cover_the_documented_sweeps():
    names = {p.stem for p in CONFIGS}
    assert {"demo", "amber-reference-cells", "amber-diagonal", "amber-full-matrix"} <= names
    reference = load_spec(REPO / "configs/amber-reference-cells.yaml")
    assert reference.cell_list() == [(355, 143), (355, 355)]
    full = load_spec(REPO / "configs/amber-full-matrix.yaml")
    assert len(full.cell_list()) == 360 * 360
    assert full.model.revision_for(359) == "main" and full.model.revision_for(7) == "ckpt_007"


def test_good_spec_parses_into_typed_objects(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.checkpoints == list(range(0, 360, 10))
    assert spec.chunks == [143, 355]
    assert spec.model.revision_for(5) == "ckpt_005"
    assert spec.data.file_for(143) == "train/train_143.jsonl"
    assert spec.resources.batch_size == "auto"
    assert spec.memorization.mode == "greedy" and spec.memorization.eos == "ordinary"


def test_id_lists():
    assert parse_id_list("0-10:5") == [0, 5, 10]
    assert parse_id_list([3, "1-2", 3]) == [1, 2, 3]
    assert parse_id_list("7") == [7]
    assert parse_id_list("0-3,8") == [0, 1, 2, 3, 8]


def test_cells_selection(tmp_path):
    spec = load_spec(write(tmp_path, edited(checkpoints="0-2", chunks="0-2", cells="seen")))
    assert spec.cell_list() == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    spec = load_spec(write(tmp_path, edited(checkpoints="0-2", chunks="0-2", cells="diagonal")))
    assert spec.cell_list() == [(0, 0), (1, 1), (2, 2)]


def test_identity_ignores_resources_but_not_meaning(tmp_path):
    base = load_spec(write(tmp_path, GOOD))
    more_cells = load_spec(write(tmp_path, edited(chunks=[1, 2, 3], resources__batch_size=7)))
    assert base.identity_hash() == more_cells.identity_hash()
    other_k = load_spec(write(tmp_path, edited(memorization__prompt_len=16)))
    assert base.identity_hash() != other_k.identity_hash()


def test_a_census_is_its_own_identity_keeps_no_generated_tokens_and_counts_no_exposures(tmp_path):
    sampled = load_spec(write(tmp_path, GOOD))
    census = load_spec(write(tmp_path, edited(data__samples_per_chunk="all")))
    assert census.data.census and not sampled.data.census
    assert census.identity()["data.samples_per_chunk"] == "all" and census.identity_hash() != sampled.identity_hash()
    assert census.sequences_per_cell() is None and sampled.sequences_per_cell() == 10  # a JSONL census: rows unread
    assert sampled.keeps_generated() and not census.keeps_generated()  # auto: 128 bytes a sequence of a census
    with pytest.raises(SpecError, match=r"exposure: .*census"):
        load_spec(write(tmp_path, edited(data__samples_per_chunk="all", exposure={"chunks": [0]})))
    with pytest.raises(SpecError, match="data.samples_per_chunk"):
        load_spec(write(tmp_path, edited(data__samples_per_chunk="every")))


def test_build_and_scan_concurrency_default_to_auto_and_a_number_is_kept(tmp_path):
    """Issue 25: `auto` paces them to the cluster; a spec that names a number keeps it; neither is identity."""
    base = load_spec(write(tmp_path, edited(exposure={"chunks": "0-3"})))
    assert base.data.concurrent_builds == "auto" and base.exposure.concurrent_scans == "auto"
    fixed = load_spec(write(tmp_path, edited(exposure={"chunks": "0-3", "concurrent_scans": 2},
                                             data__concurrent_builds=4)))
    assert fixed.data.concurrent_builds == 4 and fixed.exposure.concurrent_scans == 2
    assert fixed.identity_hash() == base.identity_hash()


def identity_as_kept_by_hand(spec: SweepSpec) -> dict:
    """`SweepSpec.identity()` as it was written out key by key until the keys declared their meaning (issue 24): every
    output landed before then carries this identity's hash in its manifest."""
    return {
        "model.source": spec.model.source,
        "model.revision": spec.model.revision,
        "model.revision_overrides": {str(k): v for k, v in sorted(spec.model.revision_overrides.items())},
        "model.dtype": spec.model.dtype,
        "data.source": spec.data.source,
        "data.file": spec.data.file,
        "data.revision": spec.data.revision,
        "data.samples_per_chunk": spec.data.samples_per_chunk,
        "data.seed": spec.data.seed,
        "memorization.prompt_len": spec.memorization.prompt_len,
        "memorization.continuation_len": spec.memorization.continuation_len,
        "memorization.mode": spec.memorization.mode,
        "memorization.eos": spec.memorization.eos,
        "memorization.nll": spec.memorization.nll,
        **stream_identity_as_kept_by_hand(spec),
    }


def stream_identity_as_kept_by_hand(spec: SweepSpec) -> dict:
    """The training-stream keys (issue 22) as they joined the identity before the keys declared their meaning: only
    where a spec differs from Amber's JSONL files and chunk-per-checkpoint timeline."""
    data, keys = spec.data, {}
    if data.format != "jsonl":
        keys["data.format"] = data.format
    if data.format == "numpy":
        keys.update({"data.dtype": data.dtype, "data.sequence_len": data.sequence_len, "data.order": data.order,
                     "data.order_dtype": data.order_dtype if data.order is not None else None})
    if spec.timeline is not None:
        keys.update({"timeline.sequences_per_step": spec.timeline.sequences_per_step,
                     "timeline.steps_per_chunk": spec.timeline.steps_per_chunk})
    return keys


IDENTITY_CASES = [
    {},
    {"model__revision_overrides": {9: "main", 10: "ckpt_x", 359: "main"}},  # numeric key order, not text order
    {"model__dtype": "float32", "memorization__nll": True, "memorization__mode": "extractable"},
    {"memorization__eos": "reference", "memorization__keep_generated": False, "data__revision": "v2"},
    {"exposure": {"chunks": "0-359", "concurrent_scans": 3}},  # an optional section, present
    {"exposure": {"chunks": [1, 2]}, "resources__decode": "static", "data__vocab_size": 32000, "cells": "seen"},
]


@pytest.mark.parametrize("changes", IDENTITY_CASES)
def test_the_derived_identity_is_the_one_existing_outputs_carry(tmp_path, changes):
    spec = load_spec(write(tmp_path, edited(**changes)))
    assert spec.identity() == identity_as_kept_by_hand(spec)
    assert list(spec.identity()) == list(identity_as_kept_by_hand(spec))  # the manifest's key order too
    assert spec.identity_hash() == identity_hash(identity_as_kept_by_hand(spec))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_keeps_its_identity(config):
    spec = load_spec(config)
    assert spec.identity() == identity_as_kept_by_hand(spec)


def _sections(section: type[SpecSection], prefix: str = ""):
    yield prefix, section
    for name, field in section.model_fields.items():
        inner = section_of(field)
        if inner is not None:
            yield from _sections(inner, f"{prefix}{name}.")


def test_every_key_of_every_section_declares_what_it_means():
    unclassified = [f"{prefix}{name}" for prefix, section in _sections(SweepSpec)
                    for name, field in section.model_fields.items()
                    if section_of(field) is None and meaning_of(field) is None]
    assert unclassified == []
    sections = [prefix for prefix, _ in _sections(SweepSpec)]
    assert sections == ["", "model.", "data.", "timeline.", "memorization.", "resources.", "exposure."]


def test_a_key_added_after_outputs_exist_joins_the_identity_only_when_set():
    """How a new key (issue 22's data.format) is declared: its default leaves every existing identity as it was."""

    class Section(SpecSection):
        kept: Annotated[int, IDENTITY] = 1
        added: Annotated[str, IDENTITY_UNLESS_DEFAULT] = "jsonl"
        how: Annotated[int, NOT_IDENTITY] = 4

    assert identity_of(Section()) == {"kept": 1}
    assert identity_of(Section(how=8)) == {"kept": 1}
    assert identity_of(Section(added="tokens")) == {"kept": 1, "added": "tokens"}

    class Undeclared(SpecSection):
        forgot: int = 0

    with pytest.raises(TypeError, match="forgot declares no Meaning"):
        identity_of(Undeclared())


BAD = [
    # (what is wrong, edits, key the message must name, words it must contain)
    ("unknown top-level key", {"bogus": 1}, "bogus", "unknown key"),
    ("unknown nested key", {"memorization__promt_len": 3}, "memorization.promt_len", "unknown key"),
    ("wrong type", {"data__samples_per_chunk": "many"}, "data.samples_per_chunk", "integer"),
    ("empty range", {"checkpoints": "10-3"}, "checkpoints", "empty range"),
    ("empty list", {"chunks": []}, "chunks", "empty"),
    ("prompt_len < 1", {"memorization__prompt_len": 0}, "memorization.prompt_len", "greater than or equal to 1"),
    ("continuation_len < 1", {"memorization__continuation_len": -4}, "memorization.continuation_len", "greater than or equal to 1"),
    ("missing output", {"output": None}, "output", "missing"),
    ("missing model source", {"model__source": None}, "model.source", "missing"),
    ("bad dtype", {"model__dtype": "float8"}, "model.dtype", "float32"),
    ("bad template", {"model__revision": "ckpt_{step}"}, "model.revision", "{ckpt}"),
    ("bad data template", {"data__file": "train_{ckpt}.jsonl"}, "data.file", "{chunk}"),
    ("negative gpus", {"resources__gpus_per_actor": -1}, "resources.gpus_per_actor", ""),
    ("zero batch", {"resources__batch_size": 0}, "resources.batch_size", ""),
    ("zero scans", {"exposure": {"chunks": "0-3", "concurrent_scans": 0}}, "exposure.concurrent_scans", ""),
    ("builds neither auto nor a number", {"data__concurrent_builds": "many"}, "data.concurrent_builds", ""),
    ("bad mode", {"memorization__mode": "beam"}, "memorization.mode", "greedy"),
    ("junk range", {"checkpoints": "1..5"}, "checkpoints", "'1..5'"),
    ("bad name", {"name": "my sweep!"}, "name", ""),
    ("no cells selected", {"checkpoints": [0], "chunks": [5], "cells": "seen"}, "cells", "selects no"),
]


@pytest.mark.parametrize("what,edits,key,words", BAD, ids=[b[0] for b in BAD])
def test_bad_spec_names_file_line_and_key(tmp_path, what, edits, key, words):
    path = write(tmp_path, edited(**edits))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    assert f": {key}:" in message, message
    assert words in message, message


def test_error_gives_the_yaml_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(GOOD, sort_keys=False).replace("prompt_len: 32", "prompt_len: 0"))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "prompt_len" in text)
    with pytest.raises(SpecError, match=rf"spec.yaml:{line}: memorization.prompt_len:"):
        load_spec(path)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match=r"broken.yaml:\d+: invalid YAML"):
        load_spec(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="broken.yaml: a spec is a YAML mapping"):
        load_spec(path)


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, GOOD)
    assert load_spec(path, {"output": "/abs/out"}).output == "/abs/out"
    with pytest.raises(SpecError, match="memorization.prompt_len"):
        load_spec(path, {"memorization.prompt_len": 0})


def _keys(model, prefix=""):
    from pydantic import BaseModel

    """Dotted leaf keys of a spec model (sections themselves are not keys users set)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        sections = [c for c in (annotation, *getattr(annotation, "__args__", ()))
                    if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            yield prefix + name
        for section in sections:
            yield from _keys(section, prefix + name + ".")


def test_every_spec_key_is_documented():
    from sweep.spec import SweepSpec

    documented = (REPO / "docs/spec.md").read_text()
    missing = [key for key in _keys(SweepSpec) if f"`{key}`" not in documented]
    assert not missing, f"keys missing from docs/spec.md: {missing}"


def test_an_unknown_key_inside_a_section_is_named_before_the_key_it_leaves_missing(tmp_path):
    spec = edited()
    spec["exposure"] = {"chunk": [0]}
    path = write(tmp_path, spec)
    line = path.read_text().splitlines().index("  chunk:") + 1
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:{line}: exposure.chunk: unknown key (did you mean chunks?)"
    with pytest.raises(SpecError) as info:  # the same from --set, and with another problem on the same line
        load_spec(write(tmp_path, edited(model__source=None)), {"resources.batchsize": 8})
    assert str(info.value) == ("--set resources.batchsize=8: resources.batchsize: unknown key (did you mean "
                               "batch_size?); model.source: required key is missing")
    with pytest.raises(SpecError) as info:  # nothing close: the section's keys
        load_spec(write(tmp_path, edited(memorization__zzz=1)))
    assert str(info.value).endswith("memorization.zzz: unknown key (memorization has prompt_len, continuation_len, "
                                    "mode, eos, nll, keep_generated)")


def _section_keys():
    """(section name, its keys) for the top level ("") and every section of a spec."""
    return [(prefix.rstrip("."), list(section.model_fields)) for prefix, section in _sections(SweepSpec)]


@pytest.mark.parametrize("section,keys", _section_keys(), ids=[name or "top" for name, _ in _section_keys()])
def test_a_misspelt_key_anywhere_names_the_key_it_is_closest_to(tmp_path, section, keys):
    for key in keys:
        typo = key[:-1]  # the last letter dropped: `chunk` for `chunks`
        spec = edited()
        node = spec.setdefault(section, {}) if section else spec
        node[typo] = node.pop(key, 1)
        path = write(tmp_path, spec)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        message, dotted = str(info.value), f"{section}.{typo}".lstrip(".")
        assert "\n" not in message and message.startswith(f"{path}:"), message
        assert f": {dotted}: unknown key (did you mean {key}?)" in message, message


STREAM_CASES = [
    {"data__format": "megatron", "data__file": "document", "model__revision": "step{ckpt}",
     "timeline": {"sequences_per_step": 1024, "steps_per_chunk": 1000}},
    {"data__format": "numpy", "data__file": ["part-0.npy", "part-1.npy"], "data__dtype": "uint16",
     "data__sequence_len": 2048, "timeline": {"sequences_per_step": 2048, "steps_per_chunk": 1000}},
    {"data__format": "numpy", "data__file": ["part-0.npy"], "data__dtype": "uint32", "data__sequence_len": 4096,
     "data__order": "global_indices.npy", "data__order_dtype": "uint64",
     "timeline": {"sequences_per_step": 512, "steps_per_chunk": 100}},
]


@pytest.mark.parametrize("changes", STREAM_CASES, ids=["megatron", "numpy", "numpy with an order file"])
def test_the_derived_identity_of_a_stream_is_the_one_its_outputs_carry(tmp_path, changes):
    spec = load_spec(write(tmp_path, edited(**changes)))
    assert spec.identity() == identity_as_kept_by_hand(spec)
    assert spec.identity_hash() == identity_hash(identity_as_kept_by_hand(spec))
