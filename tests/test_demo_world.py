"""The demo world: raw Amber-format chunks, an Amber-style checkpoint family that memorizes for real."""

from __future__ import annotations

import collections
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sweep import demo
from sweep.demo import DemoWorldConfig, ensure_demo_world

PROMPT_LEN = 32
CONTINUATION_LEN = 32
SAMPLE_ROWS = 48  # per chunk; enough for stable means, cheap to generate on a CPU

# Small enough to build in ~15-20 s, large enough to show memorization; built once per session.
WORLD = DemoWorldConfig(chunks=4, rows_per_chunk=128)
# Trivial worlds for the file-handling tests (a second or two each).
TINY = DemoWorldConfig(chunks=2, rows_per_chunk=8, row_len=24, vocab_size=128, hidden_size=16,
                       num_layers=1, num_heads=2, epochs_per_chunk=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_world")
    ensure_demo_world(WORLD, root / "model", root / "data", progress=False)
    return root / "model", root / "data"


@pytest.fixture(scope="module")
def corpus(world) -> list[demo.CorpusChunk]:
    _, data_dir = world
    return [demo.read_chunk(demo.chunk_path(data_dir, c), WORLD.row_len, WORLD.vocab_size)
            for c in range(WORLD.chunks)]


@pytest.fixture(scope="module")
def scores(world, corpus) -> dict[tuple[int, int], np.ndarray]:
    """Memorization scores, float[SAMPLE_ROWS], per (checkpoint, chunk) for a middle and the last checkpoint."""
    from transformers import LlamaForCausalLM

    model_dir, _ = world
    torch.set_num_threads(1)
    result = {}
    for checkpoint in (WORLD.chunks // 2, WORLD.chunks - 1):
        model = LlamaForCausalLM.from_pretrained(demo.checkpoint_path(model_dir, checkpoint)).eval()
        model.generation_config.eos_token_id = None  # exactly 32 argmax tokens, EOS included
        for chunk, rows in enumerate(corpus):
            tokens = torch.from_numpy(rows.tokens[:SAMPLE_ROWS, : PROMPT_LEN + CONTINUATION_LEN]).long()
            prompt = tokens[:, :PROMPT_LEN]
            with torch.no_grad():
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                     do_sample=False, max_new_tokens=CONTINUATION_LEN, pad_token_id=0)
            assert out.shape[1] == PROMPT_LEN + CONTINUATION_LEN
            truth = tokens[:, PROMPT_LEN:]
            result[checkpoint, chunk] = (out[:, PROMPT_LEN:] == truth).float().mean(dim=1).numpy()
    return result


def _seen_unseen(scores, checkpoint: int) -> tuple[float, float]:
    seen = np.concatenate([scores[checkpoint, c] for c in range(WORLD.chunks) if c <= checkpoint])
    unseen = [scores[checkpoint, c] for c in range(WORLD.chunks) if c > checkpoint]
    return float(seen.mean()), float(np.concatenate(unseen).mean()) if unseen else float("nan")


# --- the corpus --------------------------------------------------------------------------------

def test_chunks_are_raw_amber_rows(world):
    _, data_dir = world
    sources = collections.Counter()
    rows_with_eos = 0
    for chunk in range(WORLD.chunks):
        path = data_dir / "train" / f"train_{chunk:03d}.jsonl"
        lines = path.read_text().splitlines()
        assert len(lines) == WORLD.rows_per_chunk, path
        for line in lines:
            row = json.loads(line)
            assert set(row) == {"token_ids", "source"}
            ids = row["token_ids"]
            assert len(ids) == WORLD.row_len and all(isinstance(t, int) for t in ids)
            assert 0 <= min(ids) and max(ids) < WORLD.vocab_size
            assert row["source"] in demo.SOURCE_NAMES
            sources[row["source"]] += 1
            rows_with_eos += demo.EOS_ID in ids
    assert len(sources) >= 4, sources  # several sources, web text the largest
    assert sources.most_common(1)[0][0] == "refinedweb"
    total = WORLD.chunks * WORLD.rows_per_chunk
    assert 0.1 * total < rows_with_eos < total  # rows pack several documents


def test_corpus_has_duplicates_within_and_across_chunks(corpus):
    where = collections.defaultdict(list)
    for chunk, rows in enumerate(corpus):
        for row in rows.tokens.tolist():
            where[tuple(row)].append(chunk)
    copies = sum(len(chunks) - 1 for chunks in where.values())
    total = WORLD.chunks * WORLD.rows_per_chunk
    assert abs(copies / total - WORLD.duplicate_fraction) < 0.03
    assert any(len(set(chunks)) < len(chunks) for chunks in where.values())  # within a chunk
    assert any(len(set(chunks)) > 1 for chunks in where.values())  # across chunks


def test_corpus_is_deterministic_in_the_seed():
    first, again = demo.generate_corpus(TINY), demo.generate_corpus(TINY)
    other = demo.generate_corpus(replace(TINY, seed=1))
    assert all(np.array_equal(a.tokens, b.tokens) and a.sources == b.sources for a, b in zip(first, again))
    assert not all(np.array_equal(a.tokens, b.tokens) for a, b in zip(first, other))


def test_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "train_000.jsonl"
    path.write_text('{"token_ids": [3, 4], "source": "c4"}\n{"token_ids": [3, 999], "source": "c4"}\n')
    with pytest.raises(ValueError, match=r"train_000\.jsonl:2:"):
        demo.read_chunk(path, row_len=2, vocab_size=512)


# --- the checkpoint family ---------------------------------------------------------------------

def test_checkpoints_are_hf_model_directories(world):
    model_dir, _ = world
    for checkpoint in range(WORLD.chunks):
        path = model_dir / f"ckpt_{checkpoint:03d}"
        assert (path / "model.safetensors").is_file()
        config = json.loads((path / "config.json").read_text())
        assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
        assert config["vocab_size"] == WORLD.vocab_size
        assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not (model_dir / f"ckpt_{WORLD.chunks:03d}").exists()


@pytest.mark.parametrize("which", ["middle", "last"])
def test_seen_chunks_score_clearly_above_unseen(scores, which):
    checkpoint = WORLD.chunks // 2 if which == "middle" else WORLD.chunks - 1
    if which == "last":
        # Every chunk is seen by the last checkpoint: compare against the middle one's unseen chunks.
        seen, _ = _seen_unseen(scores, checkpoint)
        _, unseen = _seen_unseen(scores, WORLD.chunks // 2)
    else:
        seen, unseen = _seen_unseen(scores, checkpoint)
    assert seen > unseen + 0.05 and seen > 1.5 * unseen, (seen, unseen)


def test_the_newest_chunk_is_memorized_most(scores):
    checkpoint = WORLD.chunks - 1
    newest = scores[checkpoint, checkpoint].mean()
    later_unseen = scores[WORLD.chunks // 2, WORLD.chunks - 1].mean()
    assert newest > later_unseen + 0.2, (newest, later_unseen)


def test_duplicated_rows_are_memorized_more(scores, corpus):
    counts = collections.Counter(tuple(row) for rows in corpus for row in rows.tokens.tolist())
    checkpoint = WORLD.chunks - 1
    duplicated, unique = [], []
    for chunk, rows in enumerate(corpus):
        for score, row in zip(scores[checkpoint, chunk], rows.tokens[:SAMPLE_ROWS].tolist()):
            (duplicated if counts[tuple(row)] > 1 else unique).append(score)
    assert len(duplicated) >= 10
    assert np.mean(duplicated) > np.mean(unique) + 0.1, (np.mean(duplicated), np.mean(unique))


# --- building once, safely ---------------------------------------------------------------------

def _snapshot(*directories: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for d in directories for p in d.rglob("*")}


def test_second_call_is_a_no_op(world):
    model_dir, data_dir = world
    before = _snapshot(model_dir, data_dir)
    started = time.perf_counter()
    ensure_demo_world(WORLD, model_dir, data_dir, progress=False)
    assert time.perf_counter() - started < 1.0
    assert _snapshot(model_dir, data_dir) == before


def test_a_different_config_is_refused_naming_the_directory(world, tmp_path):
    model_dir, data_dir = world
    with pytest.raises(ValueError, match=str(data_dir)):
        ensure_demo_world(replace(WORLD, seed=7), model_dir, data_dir, progress=False)
    with pytest.raises(ValueError, match=str(model_dir)):
        # Same data, other training: the model directory is the one that disagrees.
        ensure_demo_world(replace(WORLD, learning_rate=1e-4), model_dir, tmp_path / "data", progress=False)


def test_builds_are_reproducible(tmp_path):
    ensure_demo_world(TINY, tmp_path / "a" / "model", tmp_path / "a" / "data", progress=False)
    ensure_demo_world(TINY, tmp_path / "b" / "model", tmp_path / "b" / "data", progress=False)
    for relative in ["data/train/train_001.jsonl", "model/ckpt_001/model.safetensors"]:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


def test_an_interrupted_build_is_rebuilt(tmp_path, monkeypatch):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    real_train = demo.train_checkpoints

    def crash_after_first_checkpoint(config, data, model, progress=False):
        real_train(replace(config, chunks=1), data, model, progress)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(demo, "train_checkpoints", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_world(TINY, model_dir, data_dir, progress=False)
    assert (data_dir / "world.json").is_file()  # the data finished before the crash
    assert not (model_dir / "world.json").exists()

    monkeypatch.setattr(demo, "train_checkpoints", real_train)
    ensure_demo_world(TINY, model_dir, data_dir, progress=False)
    assert sorted(p.name for p in model_dir.iterdir()) == ["ckpt_000", "ckpt_001", "world.json"]
    assert not list(tmp_path.glob(".*building"))


def test_leftovers_without_a_marker_are_replaced_but_foreign_files_are_not(tmp_path):
    model_dir, data_dir = tmp_path / "model", tmp_path / "data"
    (model_dir / "ckpt_005").mkdir(parents=True)  # as if an older build died midway
    ensure_demo_world(TINY, model_dir, data_dir, progress=False)
    assert not (model_dir / "ckpt_005").exists() and (model_dir / "world.json").is_file()

    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="precious"):
        ensure_demo_world(TINY, other, tmp_path / "data2", progress=False)
    assert (other / "notes.txt").read_text() == "mine"
