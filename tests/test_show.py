"""What was memorized, in words: `memsweep show` and the report's examples, decoded with the checkpoint's own
sentencepiece tokenizer (built offline here, as Amber ships one), from local folders and through a local Hub."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from sweep.cli import main
from sweep.run.driver import run_sweep
from sweep.report.page import write_report
from sweep.spec import load_spec
from sweep.landed.reader import open_output
from sweep.landed.store import ResultStore
from tests.sweeps import write_spec
from tests.tiny_lm import train_memorizing_llama

pytestmark = pytest.mark.ray
spm = pytest.importorskip("sentencepiece", reason="sentencepiece (a runtime dependency) decodes Amber's tokenizer")

K = L = 16
ROW_TOKENS, ROWS = 40, 24
SCRIPT = "<script>alert('memsweep')</script>"
DOCUMENTS = [
    "Licensed under the Apache License, Version 2.0 (the License); you may not use this file except in "
    "compliance with the License. You may obtain a copy of the License at the project site.",
    "def main():\n    parser = argparse.ArgumentParser()\n    args = parser.parse_args()\n    return run(args)",
    "Name: Jane Doe\nEmail: jane.doe@example.com\nPhone: +1 555 0100\nAddress: 12 Elm Street, Springfield",
    f"Click here to continue reading {SCRIPT} and the rest of the page.",
    *[f"The quick brown fox number {i} jumps over the lazy dog near river {i % 7}." for i in range(40)],
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """chunks of packed, tokenized documents (BOS doc EOS ...) and two checkpoints with tokenizer.model beside them."""
    root = tmp_path_factory.mktemp("spm-world")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(doc.replace("\n", " ") for doc in DOCUMENTS * 3))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "tok"), vocab_size=512,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    tokenizer = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    stream: list[int] = []
    for repeat in range(4):
        for doc in DOCUMENTS[3:] + DOCUMENTS[:3] if repeat % 2 else DOCUMENTS:
            stream += [1, *tokenizer.encode(doc), 2]
    rows = [stream[i : i + ROW_TOKENS] for i in range(0, 2 * ROWS * ROW_TOKENS, ROW_TOKENS)]
    (root / "data" / "train").mkdir(parents=True)
    for chunk in range(2):
        part = rows[chunk * ROWS : (chunk + 1) * ROWS]
        (root / "data" / "train" / f"train_{chunk:03d}.jsonl").write_text("".join(
            json.dumps({"token_ids": row, "source": ["web", "code", "records"][i % 3]}) + "\n"
            for i, row in enumerate(part)))
    for ckpt in range(2):
        seen = torch.tensor(rows[: (ckpt + 1) * ROWS])
        model = train_memorizing_llama(seen, vocab_size=512, steps=40 + 20 * ckpt, seed=ckpt)
        folder = root / "model" / f"ckpt_{ckpt:03d}"
        model.save_pretrained(folder)
        shutil.copy(root / "tok.model", folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "add_bos_token": False, "add_eos_token": False}))
    return root


def sweep(tmp_path: Path, name: str, model_source: str, data_source: str, **model) -> Path:
    spec = load_spec(write_spec(
        tmp_path, Path("/unused"), tmp_path / name, checkpoints=[0, 1], chunks=[0, 1],
        model={"source": model_source, "dtype": "bfloat16", "download_dir": str(tmp_path / "downloads"), **model},
        data={"source": data_source, "samples_per_chunk": 12, "seed": 42, "cache_dir": str(tmp_path / "cache")},
        memorization={"prompt_len": K, "continuation_len": L}, resources={"actors": 1, "batch_size": 12}))
    summary = run_sweep(spec, progress=False)
    assert summary.ok, summary.describe()
    return tmp_path / name


def show(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", *args, "--color", "never"]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def local_output(world, module_ray, tmp_path_factory) -> Path:
    return sweep(tmp_path_factory.mktemp("show-local"), "out", str(world / "model"), str(world / "data"))


def test_show_prints_prompt_truth_and_model_text_with_misses_marked(local_output, world):
    from transformers import AutoTokenizer

    # the checkpoint's own tokenizer, as transformers loads it (special tokens such as the <s> that opens each
    # packed document are shown: they are part of what the model saw and said) ...
    hf = AutoTokenizer.from_pretrained(str(world / "model" / "ckpt_001"))

    def decode(ids):
        return hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ... which is sentencepiece's own decoding once the special tokens are set aside
    sentencepiece = spm.SentencePieceProcessor(model_file=str(world / "tok.model"))
    store = open_output(local_output)
    text = show(str(local_output), "--top", "3")
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 3
    sequences = store.sequences().filter(pl_ckpt(1)).collect().sort(
        ["full_match", "prefix_match", "matches", "chunk", "row"], descending=[True, True, True, False, False])
    probes = {(c, r): t for c, r, t in store.probes().collect().select("chunk", "row", "tokens").iter_rows()}
    for block, expected in zip(blocks, sequences.head(3).iter_rows(named=True)):
        headline, prompt, truth, model = block.splitlines()
        assert headline.startswith(f"ckpt 1 · chunk {expected['chunk']} · row {expected['row']} · {expected['source']} · "
                                   f"{expected['matches']}/{L} tokens")
        ids = probes[(expected["chunk"], expected["row"])]
        visible = str.maketrans({"\n": "↵"})
        assert prompt == "  prompt │ " + decode(ids[:K]).translate(visible)
        squeeze = str.maketrans({" ": None, "↵": None, "\n": None})
        without_specials = prompt.replace("<s>", "").replace("</s>", "").translate(squeeze)
        assert without_specials == ("prompt│" + sentencepiece.decode(ids[:K])).translate(squeeze)
        plain_truth = truth.removeprefix("  truth  │ ").replace("⟦", "").replace("⟧", "")
        assert plain_truth.translate(squeeze) == decode(ids[K:]).translate(visible).translate(squeeze)
        plain_model = model.removeprefix("  model  │ ").replace("⟦", "").replace("⟧", "")
        assert plain_model.translate(squeeze) == decode(expected["generated"]).translate(visible).translate(squeeze)
        assert ("⟦" in truth) == (not expected["full_match"]) == ("⟦" in model)
    missed = show(str(local_output), "--not-full-match", "--top", "1")
    assert "⟦" in missed and "first miss at" in missed
    memorized = show(str(local_output), "--full-match", "--top", "50")
    assert memorized.count("full match, k-extractable") == int(sequences["full_match"].sum()) > 0


def pl_ckpt(ckpt: int):
    import polars as pl

    return pl.col("ckpt") == ckpt


def test_the_report_shows_examples_and_escapes_training_text(local_output):
    store = open_output(local_output)
    planted = store.probes().collect()
    assert planted.height > 0
    page = write_report(local_output).read_text()
    assert "Examples: most memorized per source, checkpoint 1" in page
    assert "Licensed" in page or "quick brown fox" in page  # decoded text, not ids
    body = page.split("<body>", 1)[1]
    assert "<script" not in body  # the planted markup is text on the page, never markup
    if "alert(" in body:
        assert "&lt;script&gt;" in body


@pytest.mark.skipif(shutil.which("git") is None or importlib.util.find_spec("olah") is None,
                    reason="needs git and olah to serve a local Hub")
def test_show_through_the_hub_decodes_with_the_pinned_revisions_tokenizer(world, local_output, module_ray, tmp_path):
    from tests.hub_world import apply_hub_client_env, build_amber_world, hub_client_env, serve_hub

    checkpoints = [world / "model" / f"ckpt_{c:03d}" for c in range(2)]
    chunks = [world / "data" / "train" / f"train_{c:03d}.jsonl" for c in range(2)]
    build_amber_world(tmp_path / "mirrors", checkpoints, chunks, model_id="testorg/spm", data_id="testorg/spm-data")
    with serve_hub(tmp_path / "mirrors", tmp_path / "server") as server, pytest.MonkeyPatch.context() as patch:
        apply_hub_client_env(patch, hub_client_env(server.endpoint, tmp_path / "hf-home"))
        hub_output = sweep(tmp_path, "hub", "testorg/spm", "testorg/spm-data", revision_overrides={1: "main"})
        from_hub = show(str(hub_output), "--top", "5")
        tokenizer_requests = [r for r in server.requests() if r.path.endswith("tokenizer.model")]
    assert from_hub == show(str(local_output), "--top", "5")  # the same sequences, decoded the same way
    main_commit = ResultStore(hub_output).ledgers.pin(1).model_commit
    assert tokenizer_requests and all(main_commit in r.path for r in tokenizer_requests[-1:])
