"""The embedded demo world: a miniature Amber that memsweep can sweep on a laptop, offline.

Amber itself is out of reach for a newcomer (27 GB per checkpoint, 20.8 GB per data chunk), so this
file builds a faithful miniature of it:

- a corpus in AmberDatasets' raw row format, ``data_dir/train/train_000.jsonl`` .. one JSON object
  per line, ``{"token_ids": [row_len ints], "source": "refinedweb"}``. Rows are consecutive slices
  of a packed stream of documents (``BOS body EOS``), so a row may start mid-document and may hold
  several documents; its ``source`` is the source of the document it starts in. Five sources with
  different statistics (Markov "natural" text, templated code, boilerplate-headed papers and
  articles), and a share of rows copied verbatim within and across chunks, as web corpora have.
- a checkpoint family, ``model_dir/ckpt_000/`` .. (``LlamaForCausalLM.save_pretrained``,
  safetensors), from one small LLaMA trained through the chunks in order: checkpoint i is saved
  after chunk i, so it has seen chunks 0..i (Amber's convention).

Amber sees each row once; a miniature model only memorizes measurably if it sees each chunk a few
times, so every chunk is trained for ``epochs_per_chunk`` passes before its checkpoint is saved.

Building is idempotent and crash-safe: each directory is built under a temporary sibling and
renamed into place, and a ``world.json`` marker holding the config is written last. A complete world
with the same config is left untouched; one with a different config is refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

BOS_ID = 1
EOS_ID = 2
FIRST_CONTENT_ID = 3  # 0 is LLaMA's <unk>; 1 and 2 are BOS / EOS
MARKER_NAME = "world.json"
MARKER_KIND = "memsweep-demo-world"
MARKER_VERSION = 1  # bump when the generator or the training changes what a config produces


@dataclass(frozen=True)
class DemoWorldConfig:
    """Every knob of the miniature world; the whole config is its identity (kept in ``world.json``)."""

    chunks: int = 8
    """Number of data chunks == number of checkpoints."""
    rows_per_chunk: int = 256
    """Rows (JSON lines) per chunk file."""
    row_len: int = 96
    """Tokens per row; memorization probes read the first k+l (64 by default)."""
    vocab_size: int = 512
    """Token ids are in [0, vocab_size); 1 = BOS, 2 = EOS as in LLaMA."""
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    epochs_per_chunk: int = 8
    """Passes over each chunk before its checkpoint is saved (Amber: 1; a tiny model needs more)."""
    learning_rate: float = 5e-3
    """AdamW peak learning rate (linear warmup, then constant)."""
    duplicate_fraction: float = 0.1
    """Share of rows that are verbatim copies of another row (half in its chunk, half elsewhere)."""
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a world."""
        checks = [
            ("chunks", self.chunks >= 1, "must be >= 1"),
            ("chunks", self.chunks <= 1000, "must be <= 1000 (three-digit file names)"),
            ("rows_per_chunk", self.rows_per_chunk >= 1, "must be >= 1"),
            ("row_len", self.row_len >= 2, "must be >= 2"),
            ("vocab_size", 64 <= self.vocab_size <= 65536, "must be in [64, 65536]"),
            ("hidden_size", self.hidden_size >= 8, "must be >= 8"),
            ("num_layers", self.num_layers >= 1, "must be >= 1"),
            ("num_heads", self.num_heads >= 1 and self.hidden_size % self.num_heads == 0,
             "must be >= 1 and divide hidden_size"),
            ("epochs_per_chunk", self.epochs_per_chunk >= 1, "must be >= 1"),
            ("learning_rate", self.learning_rate > 0, "must be > 0"),
            ("duplicate_fraction", 0 <= self.duplicate_fraction <= 0.5, "must be in [0, 0.5]"),
            ("seed", self.seed >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"DemoWorldConfig.{name}={getattr(self, name)!r}: {why}")


# ---------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceStyle:
    """How one source writes: its share of documents and what its documents look like."""

    name: str
    weight: float
    """Share of documents."""
    kind: str
    """"markov": order-1 chain over a Zipf vocabulary; "code": templated lines over few identifiers."""
    mean_doc_len: int
    """Mean body length in tokens (lengths are geometric-ish, at least 8)."""
    header_len: int
    """Length of the source's fixed boilerplate header (0: none)."""
    header_share: float
    """Share of the source's documents that open with the header."""
    zipf_exponent: float
    """Steepness of the unigram distribution (kept flat enough that no token exceeds ~6%, as in text)."""


# Shares roughly follow the Amber samples in ../shared (refinedweb > starcoderdata > c4 > arxiv...).
SOURCES: tuple[SourceStyle, ...] = (
    SourceStyle("refinedweb", 0.50, "markov", 160, 0, 0.0, 0.8),
    SourceStyle("starcoderdata", 0.20, "code", 200, 40, 0.4, 0.9),
    SourceStyle("c4", 0.17, "markov", 120, 0, 0.0, 0.75),
    SourceStyle("arxiv", 0.07, "markov", 240, 24, 0.6, 0.9),
    SourceStyle("wikipedia", 0.06, "markov", 180, 16, 0.5, 0.85),
)
SOURCE_NAMES = tuple(style.name for style in SOURCES)

# Tuned so that a greedy continuation of unseen text derails within a token or two (unseen rows
# score ~0.08) while a row seen 8 times is mostly recalled: steeper chains make every text
# guessable, flatter ones make memorization too slow for a CPU-minute of training.
MARKOV_BRANCHING = 8  # successors per token in a source's chain
MARKOV_BRANCH_EXPONENT = 1.0  # Zipf steepness over those successors
MARKOV_FOLLOW = 0.6  # chance the next token follows the chain rather than a fresh unigram draw
CODE_SYNTAX_SIZE = 24  # ids at the top of the vocabulary are code keywords / punctuation
CODE_IDENTIFIERS_PER_DOC = 6
# Code lines as patterns over syntax-token positions (0..CODE_SYNTAX_SIZE-1); -1 is an identifier.
CODE_LINE_PATTERNS: tuple[tuple[int, ...], ...] = (
    (0, -1, 1, -1, 2, -1, 3, 4, 5),          # def f(a, b):
    (6, 7, -1, 8, -1, 5),                     #     return a + b
    (7, -1, 9, -1, 10, -1, 11, 5),            #     x = y.z()
    (7, 12, -1, 13, -1, 4, 5),                # if a == b:
    (7, 7, -1, 9, -1, 14, -1, 15, 5),         #         x = y[i]
    (16, -1, 17, -1, 4, 5),                   # for a in b:
    (18, -1, 10, -1, 5),                      # import a.b
    (19, -1, 1, -1, 3, 4, 5),                 # class A(B):
    (7, 20, -1, 1, 21, -1, 22, 3, 5),         #     print(f"..{x}")
    (23, 5),                                  # blank line / comment
)


@dataclass(frozen=True)
class CorpusChunk:
    """One data chunk in memory."""

    tokens: np.ndarray
    """int32[rows_per_chunk, row_len] token ids."""
    sources: tuple[str, ...]
    """Per row: the source of the document the row starts in."""


class _DocumentWriter:
    """Writes whole documents (``BOS body EOS``) for every source from one seeded generator."""

    def __init__(self, config: DemoWorldConfig, rng: np.random.Generator):
        self.rng = rng
        content = np.arange(FIRST_CONTENT_ID, config.vocab_size - CODE_SYNTAX_SIZE)
        self.syntax = np.arange(config.vocab_size - CODE_SYNTAX_SIZE, config.vocab_size)
        self.unigram: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.successors: dict[str, np.ndarray] = {}
        self.headers: dict[str, list[int]] = {}
        for style in SOURCES:
            # Each source ranks the shared vocabulary differently: its own "dialect".
            ranked = rng.permutation(content)
            weights = 1.0 / np.arange(1, len(ranked) + 1) ** style.zipf_exponent
            self.unigram[style.name] = (ranked, weights / weights.sum())
            self.successors[style.name] = rng.choice(
                ranked, size=(config.vocab_size, MARKOV_BRANCHING), p=weights / weights.sum())
            self.headers[style.name] = [int(t) for t in rng.choice(ranked[:64], size=style.header_len)]
        branch = 1.0 / np.arange(1, MARKOV_BRANCHING + 1) ** MARKOV_BRANCH_EXPONENT
        self.branch_weights = branch / branch.sum()

    def document(self, style: SourceStyle) -> list[int]:
        rng = self.rng
        length = max(8, int(rng.exponential(style.mean_doc_len)))
        body: list[int] = []
        if style.header_len and rng.random() < style.header_share:
            body.extend(self.headers[style.name])
        if style.kind == "code":
            body.extend(self._code(length))
        else:
            body.extend(self._markov(style.name, length))
        return [BOS_ID, *body, EOS_ID]

    def _markov(self, source: str, length: int) -> list[int]:
        ranked, probs = self.unigram[source]
        fresh = rng_choice(self.rng, ranked, probs, length)
        branch = self.rng.choice(MARKOV_BRANCHING, size=length, p=self.branch_weights)
        follow = self.rng.random(length) < MARKOV_FOLLOW
        table = self.successors[source]
        out = [int(fresh[0])]
        for i in range(1, length):
            out.append(int(table[out[-1], branch[i]]) if follow[i] else int(fresh[i]))
        return out

    def _code(self, length: int) -> list[int]:
        ranked, probs = self.unigram["starcoderdata"]
        identifiers = rng_choice(self.rng, ranked, probs, CODE_IDENTIFIERS_PER_DOC)
        out: list[int] = []
        while len(out) < length:
            pattern = CODE_LINE_PATTERNS[int(self.rng.integers(len(CODE_LINE_PATTERNS)))]
            for slot in pattern:
                out.append(int(identifiers[self.rng.integers(len(identifiers))]) if slot < 0
                           else int(self.syntax[slot]))
        return out[:length]


def rng_choice(rng: np.random.Generator, values: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws from ``values`` with probabilities ``probs`` (inverse CDF: faster than choice)."""
    index = np.searchsorted(np.cumsum(probs), rng.random(n) * probs.sum(), side="right")
    return values[np.minimum(index, len(values) - 1)]


def generate_corpus(config: DemoWorldConfig, progress: bool = False) -> list[CorpusChunk]:
    """All chunks of the miniature corpus, deterministic in ``config`` (numpy, seeded)."""
    from tqdm import tqdm

    config.validate()
    rng = np.random.default_rng([config.seed, 0xA3BE])
    writer = _DocumentWriter(config, rng)
    weights = np.array([style.weight for style in SOURCES])
    weights = weights / weights.sum()

    tokens = np.empty((config.chunks, config.rows_per_chunk, config.row_len), dtype=np.int32)
    sources = np.empty((config.chunks, config.rows_per_chunk), dtype=object)
    # One packed stream across the whole corpus, sliced into rows: a document can straddle rows.
    stream: list[int] = []
    stream_sources: list[int] = []  # source index of the document each stream position belongs to
    rows = tqdm(total=config.chunks * config.rows_per_chunk, desc="demo corpus", unit="row",
                disable=not progress, leave=False)
    for chunk in range(config.chunks):
        for row in range(config.rows_per_chunk):
            while len(stream) < config.row_len:
                source = int(rng.choice(len(SOURCES), p=weights))
                document = writer.document(SOURCES[source])
                stream.extend(document)
                stream_sources.extend([source] * len(document))
            tokens[chunk, row] = stream[: config.row_len]
            sources[chunk, row] = SOURCE_NAMES[stream_sources[0]]
            del stream[: config.row_len], stream_sources[: config.row_len]
            rows.update()
    rows.close()
    _copy_duplicates(config, rng, tokens, sources)
    return [CorpusChunk(tokens[c], tuple(sources[c])) for c in range(config.chunks)]


def _copy_duplicates(config: DemoWorldConfig, rng: np.random.Generator, tokens: np.ndarray,
                     sources: np.ndarray) -> None:
    """Overwrite ``duplicate_fraction`` of all rows with copies of other rows, in place.

    Originals get 1-4 copies (popular rows are copied more, as on the web); half the copies land in
    the original's chunk, the rest in a random other chunk.
    """
    total = config.chunks * config.rows_per_chunk
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
                return
            oc, orow = divmod(original, config.rows_per_chunk)
            c, r = divmod(slot, config.rows_per_chunk)
            tokens[c, r] = tokens[oc, orow]
            sources[c, r] = sources[oc, orow]
            placed += 1


def chunk_path(data_dir: Path, chunk: int) -> Path:
    """Where chunk ``chunk`` lives, as in AmberDatasets: ``train/train_007.jsonl``."""
    return Path(data_dir) / "train" / f"train_{chunk:03d}.jsonl"


def checkpoint_path(model_dir: Path, checkpoint: int) -> Path:
    """Where checkpoint ``checkpoint`` lives, named like Amber's revisions: ``ckpt_007``."""
    return Path(model_dir) / f"ckpt_{checkpoint:03d}"


def write_chunk(path: Path, chunk: CorpusChunk) -> None:
    """Write one chunk as raw AmberDatasets rows (one JSON object per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for ids, source in zip(chunk.tokens.tolist(), chunk.sources):
            out.write(json.dumps({"token_ids": ids, "source": source}, separators=(",", ":")) + "\n")


def read_chunk(path: Path, row_len: int, vocab_size: int) -> CorpusChunk:
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
    return CorpusChunk(np.asarray(ids, dtype=np.int32).reshape(-1, row_len), tuple(sources))


# ---------------------------------------------------------------------------------------------
# The checkpoint family
# ---------------------------------------------------------------------------------------------

BATCH_SIZE = 16  # rows per step: small batches = more updates per epoch = faster memorization
WARMUP_STEPS = 20


def _model_config(config: DemoWorldConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,  # no GQA, like LLaMA-7B
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )


def train_checkpoints(config: DemoWorldConfig, data_dir: Path, model_dir: Path,
                      progress: bool = False) -> None:
    """Train one small LLaMA through the chunk files in order, saving ``ckpt_i`` after chunk i."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    # One thread: bit-for-bit reproducible on any machine, and tiny matmuls gain little from more
    # (on a busy 2-core machine, 2 threads ran 5x slower than 1).
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(_model_config(config)).float().train()
        generation = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, do_sample=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                      betas=(0.9, 0.95), weight_decay=0.0)
        shuffle = torch.Generator().manual_seed(config.seed)
        step = 0
        steps_per_epoch = math.ceil(config.rows_per_chunk / BATCH_SIZE)
        bar = tqdm(total=config.chunks * config.epochs_per_chunk * steps_per_epoch,
                   desc="demo training", unit="step", disable=not progress, leave=False)
        for chunk in range(config.chunks):
            rows = torch.from_numpy(read_chunk(chunk_path(data_dir, chunk), config.row_len,
                                               config.vocab_size).tokens).long()
            for _ in range(config.epochs_per_chunk):
                for batch in torch.randperm(len(rows), generator=shuffle).split(BATCH_SIZE):
                    for group in optimizer.param_groups:
                        group["lr"] = config.learning_rate * min(1.0, (step + 1) / WARMUP_STEPS)
                    loss = model(input_ids=rows[batch], labels=rows[batch]).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    bar.update()
                    bar.set_postfix(chunk=chunk, loss=f"{loss.item():.2f}")
            target = checkpoint_path(model_dir, chunk)
            model.save_pretrained(target, safe_serialization=True)
            generation.save_pretrained(target)
        bar.close()
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Building a world, once
# ---------------------------------------------------------------------------------------------

def _marker(config: DemoWorldConfig, role: str) -> dict:
    return {"kind": MARKER_KIND, "version": MARKER_VERSION, "role": role, "config": asdict(config)}


def _is_complete(directory: Path, config: DemoWorldConfig, role: str) -> bool:
    """True if ``directory`` holds this exact world; raise if it holds a different one."""
    path = directory / MARKER_NAME
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: unreadable demo-world marker ({error}); delete {directory} to rebuild") from None
    expected = _marker(config, role)
    if found != expected:
        differences = sorted(
            key for key in {f.name for f in fields(DemoWorldConfig)}
            if found.get("config", {}).get(key) != expected["config"][key])
        what = f"config differs in {', '.join(differences)}" if differences else "marker differs"
        raise ValueError(
            f"{directory}: already holds a different demo world ({what}); "
            f"delete it or point the spec elsewhere")
    return True


def _ours(entry: Path) -> bool:
    """Could ``entry`` have been left by an interrupted build (so it is safe to delete)?"""
    return entry.name in {"train", MARKER_NAME} or entry.name.startswith("ckpt_")


def _install(built: Path, directory: Path) -> None:
    """Move a finished temporary build into place, clearing leftovers of an interrupted one."""
    if directory.exists():
        leftovers = list(directory.iterdir())
        foreign = [entry.name for entry in leftovers if not _ours(entry)]
        if foreign:
            raise ValueError(f"{directory}: not empty and not a demo world (holds {foreign[0]!r}); "
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


def ensure_demo_world(config: DemoWorldConfig, model_dir: Path, data_dir: Path,
                      progress: bool = True) -> None:
    """Build the miniature Amber into ``data_dir`` (chunks) and ``model_dir`` (checkpoints), once.

    A no-op when both directories already hold this config's world (their ``world.json`` markers,
    written last, say so); raises ValueError naming the directory when one holds another config.
    Default config: about a minute on a 2-core CPU.
    """
    config.validate()
    model_dir, data_dir = Path(model_dir).expanduser(), Path(data_dir).expanduser()
    if model_dir.resolve() == data_dir.resolve():
        raise ValueError(f"{model_dir}: the demo world needs separate model and data directories")
    data_ready = _is_complete(data_dir, config, "data")
    model_ready = _is_complete(model_dir, config, "model")
    if data_ready and model_ready:
        return

    started = time.perf_counter()
    if not data_ready:
        scratch = _scratch(data_dir)
        for chunk_id, chunk in enumerate(generate_corpus(config, progress)):
            write_chunk(chunk_path(scratch, chunk_id), chunk)
        (scratch / MARKER_NAME).write_text(json.dumps(_marker(config, "data"), indent=2))
        _install(scratch, data_dir)
    if not model_ready:
        scratch = _scratch(model_dir)
        train_checkpoints(config, data_dir, scratch, progress)
        (scratch / MARKER_NAME).write_text(json.dumps(_marker(config, "model"), indent=2))
        _install(scratch, model_dir)
    if progress:
        print(f"demo world: {config.chunks} chunks x {config.rows_per_chunk} rows and "
              f"{config.chunks} checkpoints built in {time.perf_counter() - started:.1f} s "
              f"({data_dir}, {model_dir})")
