"""The demo world's files: raw Amber-format chunks that decode to readable text with the tokenizer
saved beside every checkpoint; chunk files that are the training stream, as Amber's are, with the
builder's record of where every line comes from, which an exposure scan of the files agrees with;
an Amber-style checkpoint family, a deterministic, crash-safe build.

How the family memorizes (from a real sweep's Parquet) is tests/test_demo_memorization.py.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from sweep.demo import world as demo
from sweep.demo import stream as demo_stream
from sweep.demo import text as demo_text
from sweep.demo.world import DemoWorldConfig, ensure_demo_world
from sweep.exposures.kernel import build_probe_index, scan_chunk
from sweep.errors import MemsweepError

# Small enough to build in a few seconds, with every source, licence header and record represented.
WORLD = DemoWorldConfig(chunks=3, rows_per_chunk=96, epochs_per_chunk=1)
# Trivial worlds for the file-handling tests (a second or two each).
TINY = DemoWorldConfig(chunks=2, rows_per_chunk=8, row_len=24, vocab_size=320, hidden_size=16,
                       intermediate_size=32, num_layers=1, num_heads=2, epochs_per_chunk=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_world")
    ensure_demo_world(WORLD, root / "model", root / "data", progress=False)
    return root / "model", root / "data"


@pytest.fixture(scope="module")
def files(world) -> list[demo.ChunkRows]:
    """What every chunk file holds, line by line."""
    _, data_dir = world
    return [demo.read_chunk(demo.chunk_path(data_dir, c), WORLD.row_len, WORLD.vocab_size)
            for c in range(WORLD.chunks)]


@pytest.fixture(scope="module")
def record(world) -> pl.DataFrame:
    _, data_dir = world
    return demo_stream.read_origin_record(data_dir)


@pytest.fixture(scope="module")
def corpus(files, record) -> list[demo.ChunkRows]:
    """The corpus, picked out of the files by the record: each chunk's own rows in its first epoch, in
    corpus order (test_each_file_is_its_chunks_training_stream checks the record)."""
    chunks = []
    for chunk, held in enumerate(files):
        lines = record.filter((pl.col("chunk") == chunk) & (pl.col("reason") == demo_stream.OWN)
                              & (pl.col("epoch") == 0)).sort("corpus_row")["row"].to_list()
        chunks.append(demo.ChunkRows(held.tokens[lines], tuple(held.sources[line] for line in lines)))
    return chunks


@pytest.fixture(scope="module")
def tokenizer(world):
    from transformers import AutoTokenizer

    model_dir, _ = world
    return AutoTokenizer.from_pretrained(demo.checkpoint_path(model_dir, WORLD.chunks - 1))


@pytest.fixture(scope="module")
def decoded(corpus, tokenizer) -> list[str]:
    """Every row of every chunk as text (special tokens dropped), chunk-major."""
    return [tokenizer.decode(row, skip_special_tokens=True) for rows in corpus for row in rows.tokens.tolist()]


def _lexicon() -> set[str]:
    """Every word the text generators can write, collected from a large sample of their output."""
    rng = random.Random(1234)
    words = set()
    for _, text in itertools.islice(demo_text.documents(rng), 5000):
        words.update(re.findall(r"[A-Za-z]+", text))
    return words


# --- the corpus --------------------------------------------------------------------------------

def test_chunks_are_raw_amber_rows(world):
    _, data_dir = world
    sources = collections.Counter()
    rows_with_eos = 0
    for chunk in range(WORLD.chunks):
        path = data_dir / "train" / f"train_{chunk:03d}.jsonl"
        lines = path.read_text().splitlines()
        assert len(lines) == demo_stream.rows_per_stream_chunk(WORLD) == 384, path  # 96 own + 288 replayed
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
    total = WORLD.chunks * demo_stream.rows_per_stream_chunk(WORLD)
    assert 0.1 * total < rows_with_eos < total  # rows pack several documents


def test_corpus_is_deterministic_in_the_seed():
    first, again = demo.generate_corpus(TINY), demo.generate_corpus(TINY)
    other = demo.generate_corpus(replace(TINY, seed=1))
    assert all(np.array_equal(a.tokens, b.tokens) and a.sources == b.sources
               for a, b in zip(first.chunks, again.chunks))
    assert first.tokenizer.to_str() == again.tokenizer.to_str()
    assert not all(np.array_equal(a.tokens, b.tokens) for a, b in zip(first.chunks, other.chunks))


def test_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "train_000.jsonl"
    path.write_text('{"token_ids": [3, 4], "source": "c4"}\n{"token_ids": [3, 999], "source": "c4"}\n')
    with pytest.raises(ValueError, match=r"train_000\.jsonl:2:"):
        demo.read_chunk(path, row_len=2, vocab_size=512)


# --- the files are the training stream, and the builder's record says what is where --------------

def _corpus_slot(chunk, row) -> np.ndarray:
    return chunk.to_numpy() * WORLD.rows_per_chunk + row.to_numpy()


def test_each_file_is_its_chunks_training_stream(files, record, corpus):
    """Per epoch: every own corpus row once, then as many rows replayed from chunks 0..i, mixed; every
    line holds its corpus row's ids and the record names the planted copies among them."""
    replayed = demo_stream.replayed_per_epoch(WORLD)
    assert record.columns == ["chunk", "row", "epoch", "reason", "corpus_chunk", "corpus_row", "original_chunk",
                              "original_row", "planted_copy"]
    assert record.select("chunk", "row").rows() == [(c, r) for c, held in enumerate(files)
                                                    for r in range(len(held.tokens))]
    corpus_tokens = np.concatenate([chunk.tokens for chunk in corpus])
    corpus_sources = [source for chunk in corpus for source in chunk.sources]
    for chunk, held in enumerate(files):
        lines = record.filter(pl.col("chunk") == chunk)
        assert lines["epoch"].to_list() == sorted(lines["epoch"])  # epochs follow each other
        for epoch in range(WORLD.epochs_per_chunk):
            this = lines.filter(pl.col("epoch") == epoch)
            own = this.filter(pl.col("reason") == demo_stream.OWN)
            assert (own["corpus_chunk"] == chunk).all()
            assert sorted(own["corpus_row"]) == list(range(WORLD.rows_per_chunk))
            again = this.filter(pl.col("reason") == demo_stream.REPLAY)
            assert again.height == replayed and again["corpus_chunk"].max() <= chunk
        slots = _corpus_slot(lines["corpus_chunk"], lines["corpus_row"])
        assert np.array_equal(held.tokens, corpus_tokens[slots])
        assert list(held.sources) == [corpus_sources[slot] for slot in slots]
        originals = _corpus_slot(lines["original_chunk"], lines["original_row"])
        assert np.array_equal(held.tokens, corpus_tokens[originals])
        assert lines["planted_copy"].to_list() == (originals != slots).tolist()
    last = record.filter((pl.col("chunk") == WORLD.chunks - 1) & (pl.col("reason") == demo_stream.REPLAY))
    assert last["corpus_chunk"].n_unique() == WORLD.chunks  # rehearsal reaches back to chunk 0


def test_replays_bring_every_row_seen_so_far_back_at_an_even_pace(record):
    """Replays come in passes over the rows seen so far (sweep/demo/stream.py), so within a file every seen row is
    replayed about equally often. Drawn with replacement, some would come back twice as often as the mean or more
    and others not at all (a burst memorizes a row for a checkpoint, a drought forgets it)."""
    for chunk in range(WORLD.chunks):
        seen_rows = (chunk + 1) * WORLD.rows_per_chunk
        again = record.filter((pl.col("chunk") == chunk) & (pl.col("reason") == demo_stream.REPLAY))
        counts = np.bincount(_corpus_slot(again["corpus_chunk"], again["corpus_row"]), minlength=seen_rows)
        mean = again.height / seen_rows
        assert len(counts) == seen_rows and mean >= 1  # replays of chunks 0..i only, each seen row due at least once
        assert math.floor(mean) - 1 <= counts.min() and counts.max() <= math.ceil(mean) + 1, (chunk, mean, counts)


def test_corpus_has_duplicates_within_and_across_chunks(corpus, record):
    where = collections.defaultdict(list)
    for chunk, rows in enumerate(corpus):
        for row in rows.tokens.tolist():
            where[tuple(row)].append(chunk)
    copies = sum(len(chunks) - 1 for chunks in where.values())
    total = WORLD.chunks * WORLD.rows_per_chunk
    assert abs(copies / total - WORLD.duplicate_fraction) < 0.03
    assert any(len(set(chunks)) < len(chunks) for chunks in where.values())  # within a chunk
    assert any(len(set(chunks)) > 1 for chunks in where.values())  # across chunks
    # The record names the planted copies; the rest recur naturally (a licence header cut alike in two rows).
    planted = record.filter(pl.col("planted_copy")).unique(["corpus_chunk", "corpus_row"]).height
    assert copies - 0.01 * total <= planted <= copies


def test_an_exposure_scan_finds_exactly_the_copies_the_builder_planted(world, files, record, corpus):
    """Probes: every corpus row's first k + l ids. In every file the scan counts the lines the record says
    hold the probe's original (its epochs, replays and planted copies) plus what recurs by chance, which
    a brute-force count of every window of every line finds."""
    _, data_dir = world
    k, width = 32, 64
    probes = np.concatenate([chunk.tokens[:, :width] for chunk in corpus])
    index = build_probe_index(probes, k)
    originals = record.filter(pl.col("reason") == demo_stream.OWN).unique(["corpus_chunk", "corpus_row"]).sort(
        "corpus_chunk", "corpus_row")
    probe_original = _corpus_slot(originals["original_chunk"], originals["original_row"])
    by_chance = 0
    for chunk, held in enumerate(files):
        found = scan_chunk([demo.chunk_path(data_dir, chunk).read_bytes()], index, f"train_{chunk:03d}.jsonl")
        window, prompt = (np.zeros(len(probes), dtype=np.int64) for _ in range(2))
        window[found.probe], prompt[found.probe] = found.window_count, found.prompt_count

        lines = record.filter(pl.col("chunk") == chunk)
        held_original = np.bincount(_corpus_slot(lines["original_chunk"], lines["original_row"]),
                                    minlength=len(probes))
        recorded = held_original[probe_original]
        every = {size: collections.Counter(map(bytes, sliding_window_view(held.tokens, size, axis=1)
                                                .reshape(-1, size).astype(np.int32)))
                 for size in (k, width)}
        brute = {size: np.array([every[size][bytes(probe[:size].astype(np.int32))] for probe in probes])
                 for size in (k, width)}
        assert np.array_equal(window, brute[width]) and np.array_equal(prompt, brute[k]), chunk
        assert (window >= recorded).all(), chunk  # every line the record names is found ...
        by_chance += int((window > recorded).sum())  # ... and what else is, is text recurring by chance
        if chunk == 0:
            assert (window[:WORLD.rows_per_chunk] >= WORLD.epochs_per_chunk).all()
    planted = record.filter(pl.col("planted_copy"))
    assert planted["chunk"].n_unique() == WORLD.chunks  # copies are in every file, found as above
    assert by_chance <= 0.02 * len(probes) * WORLD.chunks, by_chance


# --- the tokenizer: rows read as text ----------------------------------------------------------

def test_the_tokenizer_is_a_llama_style_hf_tokenizer_beside_every_checkpoint(world, tokenizer):
    from transformers import AutoTokenizer

    model_dir, data_dir = world
    expected = (data_dir / demo.TOKENIZER_DIR / "tokenizer.json").read_bytes()
    for checkpoint in range(WORLD.chunks):
        path = demo.checkpoint_path(model_dir, checkpoint)
        assert (path / "tokenizer.json").read_bytes() == expected  # the corpus's own tokenizer
        assert (path / "tokenizer_config.json").is_file()
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (demo.BOS_ID, demo.EOS_ID)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == list(demo.SPECIAL_TOKENS)
    assert len(tokenizer) <= WORLD.vocab_size
    ids = tokenizer("Name: Alice Crane").input_ids
    assert ids[0] == demo.BOS_ID  # BOS first, as LLaMA's tokenizer does
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Name: Alice Crane"
    assert AutoTokenizer.from_pretrained(data_dir / demo.TOKENIZER_DIR).decode(ids) == tokenizer.decode(ids)


def test_every_row_decodes_to_words_of_the_generators(decoded):
    lexicon = _lexicon()
    known = unknown = 0
    for text in decoded:
        assert text.isascii() and all(c.isprintable() or c == "\n" for c in text), text[:200]
        words = re.findall(r"[A-Za-z]+", text)[1:-1]  # a row may start and end mid-word
        hits = sum(word in lexicon for word in words)
        known, unknown = known + hits, unknown + len(words) - hits
    assert known > 20 * WORLD.chunks * WORLD.rows_per_chunk  # rows are mostly words ...
    assert unknown < 0.01 * known  # ... and nearly all of them real ones


def test_row_ids_are_the_tokenizers_encoding_of_the_text(corpus, tokenizer):
    """Every document that starts in a row re-encodes to the row's ids: exactly when it also ends
    there (EOS), up to its last, possibly cut, word when the row cuts it off."""
    whole = cut = 0
    for row in (row for rows in corpus for row in rows.tokens.tolist()):
        for start in (i for i, token in enumerate(row) if token == demo.BOS_ID):
            end = row.index(demo.EOS_ID, start) if demo.EOS_ID in row[start:] else None
            ids = row[start:end]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if end is not None:  # a whole document in one row (rare at the default row length)
                assert tokenizer(text).input_ids == ids, text
                whole += 1
            elif " " in text:
                encoded = tokenizer(text[: text.rstrip().rfind(" ")]).input_ids
                assert ids[: len(encoded)] == encoded, text
                cut += 1
    assert cut >= 10, (whole, cut)


def test_a_licence_header_row_decodes_to_the_licence(decoded):
    licence_lines = {line for licence in demo_text.LICENCES for line in licence.split("\n")
                     if line and "{" not in line}
    best = max(sum(f"# {line}" in text for line in licence_lines) for text in decoded)
    assert best >= 2  # whole lines of a licence header, comment markers and all


def test_a_personal_record_row_decodes_with_its_fake_fields(decoded):
    person = re.compile(
        r"Name: (?P<first>[A-Z][a-z]+) (?P<last>[A-Z][a-z]+)\n"
        r"Email: (?P<email>[a-z]+\.[a-z]+\d\d@(?:mail\.)?example\.(?:com|org|net))\n"
        r"Phone: \+1 \(\d{3}\) 555-01\d\d\n")  # reserved domains, fictional numbers
    address = re.compile(r"Address: \d+ [A-Z][a-z]+ (?:Street|Avenue|Lane|Road|Court|Way), "
                         r"[A-Z][A-Za-z ]+, [A-Z][A-Za-z ]+ \d{5}\n")
    people = [match for text in decoded for match in person.finditer(text)]
    assert len(people) >= 5
    for match in people:  # the email belongs to the name
        assert match["email"].startswith(f"{match['first'].lower()}.{match['last'].lower()}"), match[0]
    assert sum(len(address.findall(text)) for text in decoded) >= 5


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


def test_the_files_are_what_training_consumes(tmp_path, monkeypatch):
    """Every batch the model is trained on is the next batch_size lines of the chunk files, read in order."""
    from transformers import LlamaForCausalLM

    trained: list[np.ndarray] = []
    forward = LlamaForCausalLM.forward

    def recording(self, *args, input_ids=None, **kwargs):
        trained.append(input_ids.numpy().copy())
        return forward(self, *args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", recording)
    config = replace(TINY, chunks=3, batch_size=5)  # 32 lines a file (8 own, 24 replayed): 7 batches, the last short
    ensure_demo_world(config, tmp_path / "model", tmp_path / "data", progress=False)
    expected = []
    for chunk in range(config.chunks):
        lines = demo.read_chunk(demo.chunk_path(tmp_path / "data", chunk), config.row_len, config.vocab_size).tokens
        expected += np.array_split(lines, range(config.batch_size, len(lines), config.batch_size))
    assert len(trained) == len(expected) == demo_stream.total_steps(config) == 21
    assert all(np.array_equal(got, want) for got, want in zip(trained, expected))


def test_checkpoint_i_depends_on_files_0_to_i_only():
    """Checkpoint i is trained on files 0..i: changing file 1 leaves checkpoint 0 bit-identical, not 1. (What
    file i holds comes from chunks 0..i only: test_each_file_is_its_chunks_training_stream.)"""
    corpus = demo.generate_corpus(TINY)
    files = [corpus.rows(stream.corpus_slot).tokens for stream in demo_stream.plan_stream(TINY)]
    changed = [files[0], np.roll(files[1], 1, axis=1)]
    saved: dict[tuple[str, int], dict] = {}

    def keep(run):
        return lambda i, model: saved.__setitem__((run, i), {k: v.clone() for k, v in model.state_dict().items()})

    demo.train_family(TINY, files, keep("a"))
    demo.train_family(TINY, changed, keep("b"))
    same = [all(saved["a", i][k].equal(saved["b", i][k]) for k in saved["a", i]) for i in range(TINY.chunks)]
    assert same == [True, False]


def test_learning_rate_warms_up_then_decays_to_the_final_rate():
    config = DemoWorldConfig(learning_rate=1e-2, final_learning_rate=1e-3)
    total = 1000
    rates = [demo.learning_rate_at(config, step, total) for step in range(total)]
    warmup, decay = rates[: demo.WARMUP_STEPS], rates[demo.WARMUP_STEPS - 1:]
    assert all(a < b for a, b in zip(warmup, warmup[1:])) and warmup[-1] == pytest.approx(1e-2)
    assert all(a >= b - 1e-15 for a, b in zip(decay, decay[1:]))
    assert max(rates) == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3)


# --- building once, safely ---------------------------------------------------------------------

def _snapshot(*directories: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for d in directories for p in d.rglob("*")}


def test_second_call_is_a_no_op(world, monkeypatch):
    model_dir, data_dir = world
    before = _snapshot(model_dir, data_dir)

    def builds(*args, **kwargs):
        raise AssertionError("the second call built the world again")

    monkeypatch.setattr(demo, "write_data", builds)
    monkeypatch.setattr(demo, "train_checkpoints", builds)
    ensure_demo_world(WORLD, model_dir, data_dir, progress=False)
    assert _snapshot(model_dir, data_dir) == before


def test_a_different_config_is_refused_naming_the_directory(world, tmp_path):
    model_dir, data_dir = world
    with pytest.raises(MemsweepError, match=str(data_dir)):
        ensure_demo_world(replace(WORLD, seed=7), model_dir, data_dir, progress=False)
    with pytest.raises(MemsweepError, match=str(model_dir)):
        # Same data, other training: the model directory is the one that disagrees.
        ensure_demo_world(replace(WORLD, learning_rate=1e-4, final_learning_rate=1e-4), model_dir,
                          tmp_path / "data", progress=False)


def test_builds_are_reproducible(tmp_path):
    ensure_demo_world(TINY, tmp_path / "a" / "model", tmp_path / "a" / "data", progress=False)
    ensure_demo_world(TINY, tmp_path / "b" / "model", tmp_path / "b" / "data", progress=False)
    for relative in ["data/train/train_001.jsonl", "data/stream.parquet", "data/tokenizer/tokenizer.json",
                     "model/ckpt_001/model.safetensors", "model/ckpt_001/tokenizer.json"]:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


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
    with pytest.raises(MemsweepError, match="precious"):
        ensure_demo_world(TINY, other, tmp_path / "data2", progress=False)
    assert (other / "notes.txt").read_text() == "mine"
