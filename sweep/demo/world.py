"""The embedded demo world: a miniature Amber that memsweep can sweep on a laptop, offline.

Amber itself is out of reach for a newcomer (27 GB per checkpoint, 20.8 GB per data chunk), so this
file builds a miniature of it that reads and behaves like a real training run:

- a corpus of ``chunks x rows_per_chunk`` rows. The documents are readable text written by
  :mod:`sweep.demo.text` in five Amber sources' styles (web articles with cookie and newsletter
  notices, directory pages of FAKE personal records, Python files under licence headers, LaTeX
  papers, biographies), tokenized with a byte-level BPE tokenizer trained on them, and packed
  LLaMA-style (``BOS body EOS``, BOS 1, EOS 2) into one stream sliced into rows: a row may start
  mid-document and hold several documents; its ``source`` is that of the document it starts in.
  A share of rows is copied verbatim within and across chunks, as in web corpora.
- the chunk files, in AmberDatasets' raw row format, ``data_dir/train/train_000.jsonl`` .. one JSON
  object per line, ``{"token_ids": [row_len ints], "source": "refinedweb"}``. As Amber's, they are
  the training stream: file i holds every row trained on while chunk i is the newest, in the order
  trained on (its corpus rows once per epoch, and the rehearsed rows below; :mod:`sweep.demo.stream`),
  and ``data_dir/stream.parquet`` records where each line comes from (its corpus row, why it is
  there, the row it is a planted copy of), so a scan of the files can be checked against it.
- the tokenizer, as a Hugging Face tokenizer directory (``tokenizer.json``,
  ``tokenizer_config.json``) in ``data_dir/tokenizer/`` and beside every checkpoint, so
  ``AutoTokenizer.from_pretrained(model_dir / "ckpt_003").decode(row["token_ids"])`` gives the text.
- a checkpoint family, ``model_dir/ckpt_000/`` .. (``LlamaForCausalLM.save_pretrained``,
  safetensors), from one small LLaMA trained through the chunk files in order, in batches of
  consecutive lines: checkpoint i is saved after file i and has trained on files 0..i only
  (Amber's convention).

Why it retains. A model this small forgets: trained only on chunk i for a few epochs, it recalls
chunk i almost perfectly and, a chunk later, scores it barely above text it never saw. The first
demo world was that picture, a bright diagonal over a flat floor, and without rehearsal it stayed
so here too: with 8 epochs per chunk (newest chunk 0.9-1.0) the chunks seen before the newest
averaged only 1.1-1.25x the unseen ones, with constant or cosine learning rates and AdamW beta2
0.95 or 0.999; with 2-3 epochs hardly anything was memorized at all (newest chunk 0.2-0.3); a
model 4x larger forgot a little slower at 3x the cost. A 7B model keeps most of what it
memorized. Three things make the miniature behave like the large model:

- rehearsal (``replay_fraction``): each epoch of chunk i also trains on 3 rows of chunks 0..i per
  row of its own, so what was memorized is refreshed, more rarely the older it is. This is the one
  knowing departure from Amber, which saw each row once; it is written into the chunk files, so a
  scan of them sees it, and no row of a later chunk is ever used (tests/test_demo_world.py checks
  that checkpoint i does not depend on file i+1). How the repetitions are spaced decides what the
  memorized set keeps. The previous world (a chunk's own rows 4 times while it was the newest,
  replays drawn at random with replacement) kept 55% of the lines fully memorized at some checkpoint
  before the last: 43% of them were memorized at one checkpoint alone (right after their own chunk,
  or after a chance burst of replays) and only 22% of those were still memorized at the last,
  against 92% of the lines memorized at 3 or more. Own rows in 2 epochs and replays in passes (every
  row seen so far once before any again; sweep/demo/stream.py) keep 77% (24% memorized once, 63% at
  3 or more checkpoints) in 11% fewer training steps, with the seen vs not-yet-seen and duplicated
  vs unique gaps near their old values (BENCHMARKS.md, "The demo", has both worlds side by side);
- a cosine learning-rate decay over the whole run, as in LLaMA-style runs, so late chunks disturb
  less;
- text whose words are drawn from long lists, so a passage's contexts rarely recur elsewhere and
  memories of different rows do not overwrite each other; boilerplate (licence headers, notices,
  LaTeX preambles, quoted sayings) and duplicated rows recur, are memorized early and stay.

What the default world gives when swept, and what building it costs, is in BENCHMARKS.md ("The demo").

Building is idempotent and crash-safe: each directory is built under a temporary sibling and
renamed into place, and a ``world.json`` marker holding the config is written last. A complete world
with the same config is left untouched; one with a different config is refused.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from sweep.demo import stream as demo_stream
from sweep.demo import text as demo_text
from sweep.demo.config import DemoWorldConfig
from sweep.errors import MemsweepError
from sweep.data.probes import write_raw_chunk

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as in LLaMA
BOS_ID = 1
EOS_ID = 2
SOURCE_NAMES = demo_text.SOURCE_NAMES
# Text drafted before the tokenizer is trained: 4.5 characters per corpus token (byte-level BPE
# measured 3.2 at 1,024 ids, 4.0 at 2,048), and at least 500 kB so that small test worlds get a
# tokenizer like the default one's.
CHARACTERS_PER_TOKEN = 4.5
TOKENIZER_MIN_CHARACTERS = 500_000
TOKENIZER_DIR = "tokenizer"  # in the data directory: the tokenizer the chunks were encoded with
MARKER_NAME = "world.json"
MARKER_KIND = "memsweep-demo-world"
MARKER_VERSION = 4  # bump when the generator or the training changes what a config produces


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChunkRows:
    """Rows of one chunk in memory: a chunk of the corpus, or what its file holds."""

    tokens: np.ndarray
    """int32[rows, row_len] token ids."""
    sources: tuple[str, ...]
    """Per row: the source of the document the row starts in."""


@dataclass(frozen=True)
class Corpus:
    """The whole miniature corpus and the tokenizer its ids belong to."""

    chunks: list[ChunkRows]
    tokenizer: Tokenizer
    """Byte-level BPE over ``config.vocab_size`` ids (see :func:`train_tokenizer`)."""
    original: np.ndarray
    """int64[chunks * rows_per_chunk]: per corpus row (``chunk * rows_per_chunk + row``), the row whose
    ids it holds: itself, or the row it is a planted verbatim copy of."""

    def rows(self, slots: np.ndarray) -> ChunkRows:
        """The corpus rows ``slots`` (int[n], ``chunk * rows_per_chunk + row``), in that order."""
        tokens = np.concatenate([chunk.tokens for chunk in self.chunks])
        sources = [source for chunk in self.chunks for source in chunk.sources]
        return ChunkRows(tokens[slots], tuple(sources[slot] for slot in slots.tolist()))


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style: every string encodes, decoding is exact) trained
    on ``texts``, with LLaMA's special ids: 0 ``<unk>``, 1 ``<s>`` (BOS), 2 ``</s>`` (EOS).
    Encoding a text prepends BOS, as LLaMA's tokenizer does. About 1 s per MB of text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS[BOS_ID]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, BOS_ID)])
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    """Save ``tokenizer`` as a Hugging Face tokenizer directory (``tokenizer.json`` +
    ``tokenizer_config.json``) that ``transformers.AutoTokenizer.from_pretrained`` loads."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=SPECIAL_TOKENS[BOS_ID], eos_token=SPECIAL_TOKENS[EOS_ID],
        unk_token=SPECIAL_TOKENS[0], model_max_length=2048)
    wrapped.save_pretrained(directory)


def generate_corpus(config: DemoWorldConfig) -> Corpus:
    """The whole miniature corpus, deterministic in ``config``: readable documents from
    :mod:`sweep.demo.text`, a BPE tokenizer trained on them, packed into rows, then duplicated."""
    rng = random.Random(config.seed)
    stream_of_documents = demo_text.documents(rng)
    needed = config.chunks * config.rows_per_chunk * config.row_len
    drafted: list[tuple[str, str]] = []  # (source, text)
    characters = 0
    while characters < max(CHARACTERS_PER_TOKEN * needed, TOKENIZER_MIN_CHARACTERS):
        drafted.append(next(stream_of_documents))
        characters += len(drafted[-1][1])
    tokenizer = train_tokenizer([text for _, text in drafted], config.vocab_size)

    stream: list[int] = []
    stream_sources: list[int] = []  # index into SOURCE_NAMES of the document each position is in
    source_index = {name: i for i, name in enumerate(demo_text.SOURCE_NAMES)}
    pending = iter(drafted)
    while len(stream) < needed:
        source, text = next(pending, None) or next(stream_of_documents)
        document = tokenizer.encode(text).ids + [EOS_ID]  # BOS body EOS
        stream.extend(document)
        stream_sources.extend([source_index[source]] * len(document))
    shape = (config.chunks, config.rows_per_chunk, config.row_len)
    tokens = np.asarray(stream[:needed], dtype=np.int32).reshape(shape)
    row_starts = np.asarray(stream_sources[:needed: config.row_len]).reshape(shape[:2])
    sources = np.asarray(demo_text.SOURCE_NAMES, dtype=object)[row_starts]
    original = _copy_duplicates(config, np.random.default_rng([config.seed, 0xA3BE]), tokens, sources)
    chunks = [ChunkRows(tokens[c], tuple(sources[c])) for c in range(config.chunks)]
    return Corpus(chunks, tokenizer, original)


def _copy_duplicates(config: DemoWorldConfig, rng: np.random.Generator, tokens: np.ndarray,
                     sources: np.ndarray) -> np.ndarray:
    """Overwrite ``duplicate_fraction`` of all rows with copies of other rows, in place; returns
    int64[chunks * rows_per_chunk], each row's original (itself unless it became a copy).

    Originals get 1-4 copies (popular rows are copied more, as on the web); half the copies land in
    the original's chunk, the rest in a random other chunk. An original is never overwritten.
    """
    total = config.chunks * config.rows_per_chunk
    copied_from = np.arange(total, dtype=np.int64)
    n_copies = int(round(config.duplicate_fraction * total))
    free = rng.permutation(total).tolist()  # slots not yet an original or a copy
    by_chunk: dict[int, list[int]] = {}
    for slot in free:
        by_chunk.setdefault(slot // config.rows_per_chunk, []).append(slot)
    taken: set[int] = set()

    def take(chunk: int) -> int | None:
        slots = by_chunk.get(chunk, [])
        while slots:
            slot = slots.pop()
            if slot not in taken:
                taken.add(slot)
                return slot
        return None

    placed = 0
    while placed < n_copies and len(taken) < total - 1:
        original = take(int(rng.integers(config.chunks)))
        if original is None:
            continue
        copies = min(int(rng.integers(1, 5)), n_copies - placed)
        for _ in range(copies):
            home = original // config.rows_per_chunk
            chunk = home if (rng.random() < 0.5 or config.chunks == 1) else int(rng.integers(config.chunks))
            slot = take(chunk)
            if slot is None:
                slot = next((s for c in by_chunk for s in [take(c)] if s is not None), None)
            if slot is None:
                return copied_from
            copied_from[slot] = original
            oc, orow = divmod(original, config.rows_per_chunk)
            c, r = divmod(slot, config.rows_per_chunk)
            tokens[c, r] = tokens[oc, orow]
            sources[c, r] = sources[oc, orow]
            placed += 1
    return copied_from


def chunk_path(data_dir: Path, chunk: int) -> Path:
    """Where chunk ``chunk`` lives, as in AmberDatasets: ``train/train_007.jsonl``."""
    return Path(data_dir) / "train" / f"train_{chunk:03d}.jsonl"


def checkpoint_path(model_dir: Path, checkpoint: int) -> Path:
    """Where checkpoint ``checkpoint`` lives, named like Amber's revisions: ``ckpt_007``."""
    return Path(model_dir) / f"ckpt_{checkpoint:03d}"


def write_chunk(path: Path, chunk: ChunkRows) -> None:
    """Write one chunk as raw AmberDatasets rows (one JSON object per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_raw_chunk(path, zip(chunk.tokens.tolist(), chunk.sources))


def read_chunk(path: Path, row_len: int, vocab_size: int) -> ChunkRows:
    """Read raw rows back; a bad line raises ValueError naming the file and line."""
    ids: list[list[int]] = []
    sources: list[str] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                tokens = row["token_ids"]
                if len(tokens) != row_len or min(tokens) < 0 or max(tokens) >= vocab_size:
                    raise ValueError(f"token_ids must be {row_len} ids in [0, {vocab_size})")
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: bad demo row: {error}") from None
            ids.append(tokens)
            sources.append(str(row.get("source", "")))
    return ChunkRows(np.asarray(ids, dtype=np.int32).reshape(-1, row_len), tuple(sources))


# ---------------------------------------------------------------------------------------------
# The checkpoint family
# ---------------------------------------------------------------------------------------------

WARMUP_STEPS = 20


def _model_config(config: DemoWorldConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,  # no GQA, like LLaMA-7B
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )


def learning_rate_at(config: DemoWorldConfig, step: int, total_steps: int) -> float:
    """Linear warmup to ``learning_rate``, then cosine decay to ``final_learning_rate`` at the last step."""
    if step < WARMUP_STEPS:
        return config.learning_rate * (step + 1) / WARMUP_STEPS
    done = (step - WARMUP_STEPS) / max(1, total_steps - 1 - WARMUP_STEPS)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return config.final_learning_rate + (config.learning_rate - config.final_learning_rate) * cosine


def train_family(config: DemoWorldConfig, chunk_files: Iterable[np.ndarray],
                 on_checkpoint: Callable[[int, object], None], progress: bool = False) -> None:
    """Train one small LLaMA through ``chunk_files`` (int[lines, row_len] each: what each chunk file
    holds, taken one at a time, in order) in batches of ``batch_size`` consecutive lines; after file i,
    call ``on_checkpoint(i, model)``. The model has trained on files 0..i only when it is called."""
    import torch
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    threads = torch.get_num_threads()
    # One thread: bit-for-bit reproducible on any machine, and tiny matmuls gain little from more
    # (on a busy 2-core machine, 2 threads ran 5x slower than 1).
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(_model_config(config)).float().train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      betas=(0.9, 0.95), weight_decay=0.0)
        steps = demo_stream.total_steps(config)
        bar = tqdm(total=steps, desc="demo training", unit="step", disable=not progress, leave=False)
        step = 0
        for chunk, lines in enumerate(chunk_files):
            expected = (demo_stream.rows_per_stream_chunk(config), config.row_len)
            if lines.shape != expected:
                raise ValueError(f"chunk file {chunk}: {lines.shape[0]} lines of {lines.shape[1]} ids; the config "
                                 f"makes {expected[0]} of {expected[1]}")
            for batch in torch.as_tensor(lines, dtype=torch.long).split(config.batch_size):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate_at(config, step, steps)
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update()
                bar.set_postfix(chunk=chunk, loss=f"{loss.item():.2f}")
            on_checkpoint(chunk, model)
        bar.close()
    finally:
        torch.set_num_threads(threads)


def train_checkpoints(config: DemoWorldConfig, data_dir: Path, model_dir: Path,
                      progress: bool = False) -> None:
    """Train through the chunk files in ``data_dir`` in order, saving ``ckpt_i`` after file i: the
    weights (safetensors), the generation config and the corpus's tokenizer, as a Hub checkpoint has."""
    from transformers import AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(Path(data_dir) / TOKENIZER_DIR)
    generation = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, do_sample=False)
    chunk_files = (read_chunk(chunk_path(data_dir, c), config.row_len, config.vocab_size).tokens
                   for c in range(config.chunks))  # each read when training reaches it

    def save(chunk: int, model) -> None:
        target = checkpoint_path(model_dir, chunk)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint is noise
        try:
            model.save_pretrained(target, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        generation.save_pretrained(target)
        tokenizer.save_pretrained(target)

    train_family(config, chunk_files, save, progress)


def write_data(config: DemoWorldConfig, data_dir: Path) -> None:
    """Generate the corpus and write the world's data into ``data_dir``: each chunk's training stream
    as its chunk file, the record of where every line comes from, and the tokenizer."""
    corpus = generate_corpus(config)
    streams = demo_stream.plan_stream(config)
    for chunk, stream in enumerate(streams):
        write_chunk(chunk_path(data_dir, chunk), corpus.rows(stream.corpus_slot))
    demo_stream.origin_record(streams, corpus.original, config.rows_per_chunk).write_parquet(
        data_dir / demo_stream.RECORD_NAME)
    save_tokenizer(corpus.tokenizer, data_dir / TOKENIZER_DIR)


# ---------------------------------------------------------------------------------------------
# Building a world, once
# ---------------------------------------------------------------------------------------------

def _marker(config: DemoWorldConfig, role: str) -> dict:
    return {"kind": MARKER_KIND, "version": MARKER_VERSION, "role": role, "config": asdict(config)}


def is_built(directory: Path, config: DemoWorldConfig, role: str) -> bool:
    """True if ``directory`` holds this exact world; raise if it holds a different one."""
    path = directory / MARKER_NAME
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text())
    except ValueError as error:
        raise MemsweepError(f"{path}: unreadable demo-world marker ({error}); delete {directory} to rebuild") from None
    expected = _marker(config, role)
    if found != expected:
        differences = sorted(
            key for key in {f.name for f in fields(DemoWorldConfig)}
            if found.get("config", {}).get(key) != expected["config"][key])
        what = f"config differs in {', '.join(differences)}" if differences else "marker differs"
        raise MemsweepError(
            f"{directory}: already holds a different demo world ({what}); "
            f"delete it or point the spec elsewhere")
    return True


def _ours(entry: Path) -> bool:
    """Could ``entry`` have been left by an interrupted build (so it is safe to delete)?"""
    built = {"train", TOKENIZER_DIR, demo_stream.RECORD_NAME, MARKER_NAME,
             "reference-labels"}  # sweep/demo/reference_labels.py LABELS_DIR, written into the model directory
    return entry.name in built or entry.name.startswith("ckpt_")


def _install(built: Path, directory: Path) -> None:
    """Move a finished temporary build into place, clearing leftovers of an interrupted one."""
    if directory.exists():
        leftovers = list(directory.iterdir())
        foreign = [entry.name for entry in leftovers if not _ours(entry)]
        if foreign:
            raise MemsweepError(f"{directory}: not empty and not a demo world (holds {foreign[0]!r}); "
                             f"refusing to overwrite it")
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, directory)


def _scratch(directory: Path) -> Path:
    scratch = directory.parent / f".{directory.name}.building"
    if scratch.exists():
        shutil.rmtree(scratch)  # an interrupted earlier build
    scratch.mkdir(parents=True)
    return scratch


def build_checkpoints(config: DemoWorldConfig, model_dir: Path, data_dir: Path, progress: bool = True) -> None:
    """Train `config`'s model through the chunk files in ``data_dir`` into ``model_dir``: built under a temporary
    sibling, its ``world.json`` marker written last, then renamed into place (an interrupted build leaves nothing
    that counts as built)."""
    scratch = _scratch(model_dir)
    train_checkpoints(config, data_dir, scratch, progress)
    (scratch / MARKER_NAME).write_text(json.dumps(_marker(config, "model"), indent=2))
    _install(scratch, model_dir)


def ensure_demo_world(config: DemoWorldConfig, model_dir: Path, data_dir: Path,
                      progress: bool = True) -> None:
    """Build the miniature Amber into ``data_dir`` (chunks) and ``model_dir`` (checkpoints), once.

    A no-op when both directories already hold this config's world (their ``world.json`` markers,
    written last, say so); raises MemsweepError naming the directory when one holds another config.
    What building costs is in BENCHMARKS.md ("The demo").
    """
    model_dir, data_dir = Path(model_dir).expanduser(), Path(data_dir).expanduser()
    if model_dir.resolve() == data_dir.resolve():
        raise MemsweepError(f"{model_dir}: the demo world needs separate model and data directories")
    data_ready = is_built(data_dir, config, "data")
    model_ready = is_built(model_dir, config, "model")
    if data_ready and model_ready:
        return

    started = time.perf_counter()
    if not data_ready:
        scratch = _scratch(data_dir)
        write_data(config, scratch)
        (scratch / MARKER_NAME).write_text(json.dumps(_marker(config, "data"), indent=2))
        _install(scratch, data_dir)
    if not model_ready:
        build_checkpoints(config, model_dir, data_dir, progress)
    if progress:
        print(f"demo world: {config.chunks} chunks x {config.rows_per_chunk} rows and "
              f"{config.chunks} checkpoints built in {time.perf_counter() - started:.1f} s "
              f"({data_dir}, {model_dir})")
