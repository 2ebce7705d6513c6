"""A tiny landed output for the explorer's tests, written through the store, whose text holds planted markup.

    build_explorer_output(root) -> root/out (the output), root/model/ckpt_00N/ (a tokenizer per checkpoint)

Checkpoints 0..3 x chunks 0..2 are planned; every cell lands except (3, 2), which is recorded as failed. Each
cell holds ROWS sequences of k + l = 2 x PROMPT_LEN tokens, encoded with a byte-level BPE tokenizer trained here
(sweep.demo.world's), saved beside every checkpoint so `TokenDecoder.for_checkpoint` finds it as `memsweep show` would.
Row PLANTED_ROW of every chunk is training text that is also markup: its prompt holds SCRIPT and its true
continuation (which every checkpoint reproduces) holds IMAGE; a page that let either run would set
`window.__pwned`. The other rows are memorized more with each checkpoint once their chunk is trained on.
Exposure counts (unless `scans=False`): every chunk file is scanned; each row occurs once in its own chunk, the
planted row (the same tokens in every chunk) once in each, and COPIES adds copies elsewhere.
A few milliseconds to a second (the tokenizer); no model, no Ray.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from sweep.demo.world import save_tokenizer, train_tokenizer
from sweep.spec import SweepSpec
from sweep.landed.schema import CellProvenance
from sweep.landed.store import ResultStore, ScoredCell
from tests.landed_world import land_scans

CHECKPOINTS, CHUNKS = [0, 1, 2, 3], [0, 1, 2]
FAILED_CELL = (3, 2)
ROWS = 6
PLANTED_ROW = 1000  # a row number no other row has
PROMPT_LEN = 24  # k = l
SOURCES = ("web", "code", "records")
SCRIPT = "<script>window.__pwned=1</script>"
IMAGE = '<img src=x onerror="window.__pwned=1">'
# (chunk, row) -> {chunk file: (window occurrences, prompt occurrences)} beyond each row's own one
COPIES = {(1, 1): {0: (4, 4)}, (2, 12): {0: (2, 2), 1: (1, 3)}, (0, 20): {2: (0, 3)}}
FILLER = ("the quick brown fox jumps over the lazy dog while seven wizards quietly box and judge "
          "every bright river near the old mill ")


def build_explorer_output(root: Path, scans: bool = True) -> Path:
    """Write the output under `root/out` and the tokenizers under `root/model` (with exposure scans unless `scans`
    is False); returns the output's path."""
    tokenizer = train_tokenizer([SCRIPT, IMAGE, FILLER] * 20, vocab_size=400)
    for ckpt in CHECKPOINTS:
        save_tokenizer(tokenizer, root / "model" / f"ckpt_{ckpt:03d}")
    output = root / "out"
    store = open_explorer_output(root, **({"exposure": {"chunks": CHUNKS}} if scans else {}))
    rows = {chunk: _rows(tokenizer, chunk) for chunk in CHUNKS}
    for chunk in CHUNKS:
        probes = pl.DataFrame({"chunk": [chunk] * len(rows[chunk]), "row": list(rows[chunk]),
                               "source": [SOURCES[i % 3] for i in range(len(rows[chunk]))],
                               "tokens": list(rows[chunk].values())},
                              schema={"chunk": pl.Int32, "row": pl.Int64, "source": pl.String,
                                      "tokens": pl.List(pl.UInt32)})
        store.write_probe_set(chunk, probes, {"file": f"train/train_{chunk:03d}.jsonl", "sha256": f"{chunk:064x}"})
    for ckpt in CHECKPOINTS:
        cells = [ScoredCell(chunk, _sequences(ckpt, chunk, rows[chunk]), _info(ckpt, chunk))
                 for chunk in CHUNKS if (ckpt, chunk) != FAILED_CELL]
        store.write_cells(ckpt, cells)
    store.record_failure(*FAILED_CELL, "RuntimeError: CUDA out of memory <b>at batch 1</b>", attempts=3)
    if scans:
        land_scans(store, exposure_counts(rows), CHUNKS, CHUNKS)
    return output


def exposure_counts(rows: dict[int, dict[int, list[int]]]) -> pl.DataFrame:
    """chunk, row, seen_chunk, window_count, prompt_count: each row in its own chunk, the planted row in every chunk
    (its tokens are the same in all), and COPIES."""
    counts = [(chunk, row, chunk, 1, 1) for chunk in CHUNKS for row in rows[chunk] if row != PLANTED_ROW]
    counts += [(chunk, PLANTED_ROW, seen, 1, 1) for chunk in CHUNKS for seen in CHUNKS]
    counts += [(chunk, row, seen, window, prompt) for (chunk, row), files in COPIES.items()
               for seen, (window, prompt) in files.items()]
    return pl.DataFrame(counts, schema=["chunk", "row", "seen_chunk", "window_count", "prompt_count"], orient="row")


def open_explorer_output(root: Path, **spec_keys) -> ResultStore:
    """`root/out` opened for writing with this world's spec (`spec_keys` override its top-level keys); nothing
    landed yet."""
    spec = SweepSpec.model_validate({
        "name": "explorer-test", "model": {"source": str(root / "model"), "dtype": "float32"},
        "data": {"source": str(root / "data"), "samples_per_chunk": ROWS},
        "checkpoints": CHECKPOINTS, "chunks": CHUNKS,
        "memorization": {"prompt_len": PROMPT_LEN, "continuation_len": PROMPT_LEN, "nll": True},
        "output": str(root / "out"), **spec_keys})
    store = ResultStore(root / "out")
    store.open(spec.identity(), spec.model_dump(mode="json"), {"writer": "tests/explorer_world.py"})
    return store


def _rows(tokenizer, chunk: int) -> dict[int, list[int]]:
    """row number -> k + l token ids (BOS first, as the demo corpus encodes)."""
    width = 2 * PROMPT_LEN
    words = FILLER.split()
    rows = {}
    for i in range(ROWS - 1):
        rng = random.Random(chunk * 100 + i)
        text = " ".join(rng.choice(words) for _ in range(3 * width))
        rows[10 * i + chunk] = tokenizer.encode(text).ids[:width]
    prompt = tokenizer.encode(f"{SCRIPT} {FILLER}").ids[:PROMPT_LEN]
    truth = tokenizer.encode(f" {IMAGE} {FILLER}", add_special_tokens=False).ids[:PROMPT_LEN]
    assert SCRIPT in tokenizer.decode(prompt) and IMAGE in tokenizer.decode(truth), "k too short for the markup"
    rows[PLANTED_ROW] = prompt + truth
    return rows


def _sequences(ckpt: int, chunk: int, rows: dict[int, list[int]]) -> pl.DataFrame:
    """What a checkpoint generated: the planted row exactly; the others right up to a prefix that grows with
    training once their chunk is seen, wrong after it (a token id shifted by one)."""
    records = []
    for i, (row, tokens) in enumerate(sorted(rows.items())):
        truth = tokens[PROMPT_LEN:]
        trained = 6 * (ckpt - chunk + 1) if chunk <= ckpt else 0
        prefix = PROMPT_LEN if row == PLANTED_ROW else min(PROMPT_LEN, 2 * i + trained)
        generated = truth[:prefix] + [token + 1 for token in truth[prefix:]]
        matches = sum(a == b for a, b in zip(generated, truth))
        records.append({"chunk": chunk, "row": row, "source": SOURCES[i % 3], "matches": matches,
                        "score": matches / PROMPT_LEN, "full_match": matches == PROMPT_LEN, "prefix_match": prefix,
                        "nll": 3.0 * (1 - matches / PROMPT_LEN) + 0.01 * i, "tf_accuracy": matches / PROMPT_LEN,
                        "generated": generated})
    return pl.DataFrame(records)


def _info(ckpt: int, chunk: int) -> CellProvenance:
    return CellProvenance(seconds=1.0 + chunk, device="cpu", dtype="float32", batch_size=8,
                          model_revision=f"ckpt_{ckpt:03d}")
