"""One token stream written in the three layouts memsweep reads (test helper, no tests here):

- Amber JSONL chunk files: `jsonl/train/train_00c.jsonl`, file c holding the sequences of chunk c in order;
- a Megatron / GPT-NeoX indexed dataset, Pythia's layout: `megatron/document.idx` and the `.bin` cut into byte-range
  shards `document-0000k-of-0000N.bin` (numbered 0..N as Pythia's release is) at boundaries that fall inside items,
  so reading an item may cross two shards;
- OLMo's layout: `numpy/tokens/part-k.npy`, raw uint16 arrays (no `.npy` header) holding the sequences as
  instances in a shuffled storage order, each file with a remainder of tokens after its last whole instance (which
  the reader must ignore), and `numpy/global_indices.npy`, the raw uint32 order: position p is instance order[p],
  the instance holding sequence p.

`build_stream_family` adds the checkpoints trained through the stream (a session fixture, tests/conftest.py), under
two names each: Amber's (`model/ckpt_00c`, saved after chunk c) and Pythia's (`model/step{N}`, symlinks to them).

The writers follow the formats' own descriptions (sweep/data/megatron.py's header table; OLMo's `MemMapDataset`),
not memsweep's readers, so a reader that disagrees with the format fails the tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MEGATRON_DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
                        np.dtype(np.int64): 5, np.dtype(np.uint16): 8}


@dataclass(frozen=True)
class StreamWorld:
    root: Path
    sequences: np.ndarray  # int64[n, length]: sequence p is stream position p
    sequences_per_chunk: int

    @property
    def jsonl(self) -> Path:
        return self.root / "jsonl"

    @property
    def megatron(self) -> Path:
        return self.root / "megatron"

    @property
    def numpy(self) -> Path:
        return self.root / "numpy"


def megatron_index(sizes: np.ndarray, pointers: np.ndarray, dtype_code: int, documents: np.ndarray | None = None,
                   magic: bytes = b"MMIDIDX\x00\x00", version: int = 1) -> bytes:
    """The bytes of a Megatron `.idx`: header, int32 sizes, int64 pointers, int64 document index."""
    documents = np.arange(len(sizes) + 1, dtype=np.int64) if documents is None else documents
    header = struct.pack("<9sQBQQ", magic, version, dtype_code, len(sizes), len(documents))
    return (header + np.asarray(sizes, dtype="<i4").tobytes() + np.asarray(pointers, dtype="<i8").tobytes()
            + np.asarray(documents, dtype="<i8").tobytes())


def megatron_pointers(index: Path) -> np.ndarray:
    """int64[n]: the byte pointer of every item of a Megatron `.idx`, read by the format's table."""
    raw = index.read_bytes()
    _, _, _, items, _ = struct.unpack("<9sQBQQ", raw[:34])
    return np.frombuffer(raw, dtype="<i8", count=items, offset=34 + 4 * items).astype(np.int64)


def write_megatron(folder: Path, items: list[np.ndarray], dtype=np.uint16, shard_bytes: int | None = None,
                   prefix: str = "document") -> list[Path]:
    """`<prefix>.idx` and the tokens of `items` (in order), whole (`<prefix>.bin`) or in shards of `shard_bytes`
    (the last shorter), numbered 0..N "of N" as Pythia's are. Returns the token files written."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    data = b"".join(np.asarray(item, dtype=dtype).tobytes() for item in items)
    sizes = np.array([len(item) for item in items], dtype=np.int64)
    pointers = np.concatenate([[0], np.cumsum(sizes * dtype.itemsize)[:-1]]).astype(np.int64)
    (folder / f"{prefix}.idx").write_bytes(megatron_index(sizes, pointers, MEGATRON_DTYPE_CODES[dtype]))
    if shard_bytes is None:
        (folder / f"{prefix}.bin").write_bytes(data)
        return [folder / f"{prefix}.bin"]
    pieces = [data[start:start + shard_bytes] for start in range(0, len(data), shard_bytes)]
    last = len(pieces) - 1
    paths = [folder / f"{prefix}-{k:05d}-of-{last:05d}.bin" for k in range(len(pieces))]
    for path, piece in zip(paths, pieces):
        path.write_bytes(piece)
    return paths


def write_token_files(folder: Path, sequences: np.ndarray, files: int, seed: int, remainder: int = 3,
                      dtype=np.uint16) -> tuple[list[str], str]:
    """OLMo's layout of `sequences` (int[n, length], position p = sequences[p]): the instances in a shuffled storage
    order split over `files` raw token files, each followed by `remainder` stray tokens, and the uint32 order file.
    Returns (token file paths relative to `folder`, order file path relative to it)."""
    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    n = len(sequences)
    storage = np.random.default_rng(seed).permutation(n)  # instance j holds sequence storage[j]
    names = []
    for k, part in enumerate(np.array_split(np.arange(n), files)):
        tokens = np.concatenate([sequences[storage[part]].reshape(-1), np.full(remainder, 7)]).astype(dtype)
        name = f"tokens/part-{k}.npy"
        tokens.tofile(folder / name)  # raw: no .npy header, as OLMo writes them
        names.append(name)
    order = np.argsort(storage).astype(np.uint32)  # position p -> the instance holding sequence p
    order.tofile(folder / "global_indices.npy")
    return names, "global_indices.npy"


def write_jsonl_chunks(folder: Path, sequences: np.ndarray, per_chunk: int) -> list[Path]:
    """Amber's layout: `train/train_00c.jsonl`, file c holding sequences [c per_chunk, (c + 1) per_chunk)."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    paths = []
    for chunk, start in enumerate(range(0, len(sequences), per_chunk)):
        path = folder / "train" / f"train_{chunk:03d}.jsonl"
        path.write_text("".join(json.dumps({"token_ids": row.tolist(), "source": "stream"}) + "\n"
                                for row in sequences[start:start + per_chunk]))
        paths.append(path)
    return paths


def write_stream_world(root: Path, sequences: np.ndarray, sequences_per_chunk: int, shard_bytes: int,
                       token_files: int = 2, seed: int = 0) -> StreamWorld:
    """`sequences` (int[n, length]) as the three layouts under `root` (see the module docstring)."""
    write_jsonl_chunks(root / "jsonl", sequences, sequences_per_chunk)
    write_megatron(root / "megatron", list(sequences), shard_bytes=shard_bytes)
    write_token_files(root / "numpy", sequences, token_files, seed)
    return StreamWorld(root, sequences, sequences_per_chunk)


# The family: 96 sequences of 40 ids, 3 chunks of 4 steps x 8 sequences, k = l = 16.
K = L = 16
VOCAB = 64
PER_STEP, STEPS_PER_CHUNK, CHUNKS = 8, 4, 3
PER_CHUNK = PER_STEP * STEPS_PER_CHUNK
SAMPLES = 16
SEQUENCE_LEN = K + L + 8
STEP_CHECKPOINTS = [0, 2, 4, 6, 8, 12]  # 4, 8, 12 end chunks 0, 1, 2; 2 and 6 lie inside chunks 0 and 1; 0 before all
WEIGHTS_OF_STEP = {0: 0, 2: 0, 4: 0, 6: 1, 8: 1, 12: 2}  # the trained folder (ckpt_00c) each step's revision holds
COPY_AT = 2 * PER_CHUNK + 5  # a position of chunk 2 that holds a copy of `copied` (a sampled sequence of chunk 0)


@dataclass(frozen=True)
class StreamFamily:
    world: StreamWorld
    model: Path  # ckpt_00c/ and step{N}/ (symlinks)
    copied: int  # the stream position whose sequence is copied to COPY_AT


def build_stream_family(root: Path) -> StreamFamily:
    """The stream (with one planted copy) in three formats under `root`, and checkpoint c trained on chunks 0..c."""
    import os

    import torch

    from sweep.data.probes import sample_rows
    from tests.tiny_lm import make_sequences, train_memorizing_llama

    sequences = make_sequences(CHUNKS * PER_CHUNK, SEQUENCE_LEN, VOCAB, seed=5).numpy()
    copied = int(sample_rows(PER_CHUNK, SAMPLES, 42)[0])  # sampled in chunk 0 with the tests' seed
    sequences[COPY_AT] = sequences[copied]
    world = write_stream_world(root, sequences, PER_CHUNK, shard_bytes=1000)
    model = root / "model"
    for chunk in range(CHUNKS):
        trained = torch.from_numpy(sequences[: (chunk + 1) * PER_CHUNK])
        train_memorizing_llama(trained, VOCAB, steps=30, seed=chunk).save_pretrained(model / f"ckpt_{chunk:03d}")
    for step, folder in WEIGHTS_OF_STEP.items():  # Pythia's names for the same weights
        os.symlink(model / f"ckpt_{folder:03d}", model / f"step{step}")
    return StreamFamily(world, model, copied)
