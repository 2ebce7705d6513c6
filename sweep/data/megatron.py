"""A Megatron / GPT-NeoX indexed dataset as a training stream (Pythia's preshuffled Pile: item i is training sequence
i, 2049 uint16 tokens, in training order).

The index `<prefix>.idx` (GPT-NeoX `indexed_dataset.py`, Pythia's `utils/mmap_dataset.py`):

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    u64       version (1)
    u8        dtype code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float32, 7 float64, 8 uint16
    u64       item count n
    u64       document count d
    int32[n]  sizes (tokens of each item)
    int64[n]  pointers (byte offset of each item in the .bin)
    int64[d]  document index

all little-endian. The tokens are `<prefix>.bin`, or that file cut into byte-range shards
`<prefix>-00000-of-000NN.bin` ... (Pythia's release: 21 shards numbered 00000..00020 "of 00020"); a shard's
boundaries are read from the listed file sizes, never assumed, and an item may straddle two shards.

What is read, never more: the 34-byte header and the last item's entry (to check the shards add up to the index)
when the stream is opened; for a sample, the chunk's slice of sizes and pointers (12 bytes an item, one contiguous
range each) and the first k + l tokens of each sampled item; for a scan, the chunk's entries and its items' bytes.
Every way the files can disagree with the format is a StreamError naming the file: a wrong magic, version or dtype
code, an index of the wrong size, a pointer past the shards, shards that do not add up, a missing shard (found when
the files are listed: sweep/data/stream_chunks.py), an item shorter than asked.
"""

from __future__ import annotations

import struct
from pathlib import PurePosixPath
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sweep.data.token_stream import (SCAN_BATCH_BYTES, ItemBatch, StreamError, StreamFile, StreamSource, TokenStream,
                                     batches_of, spans_over_files)

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, items, documents: 34 bytes
VERSION = 1
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64, 8: np.uint16}
# Entries read at a time while scanning a chunk: 12 bytes each, so 786 KB.
ENTRIES_PER_READ = 65536


@dataclass(frozen=True)
class IndexHeader:
    items: int
    documents: int
    dtype: np.dtype

    @property
    def index_bytes(self) -> int:
        """The size a well-formed index of this header has."""
        return HEADER.size + 12 * self.items + 8 * self.documents

    def sizes_at(self, start: int) -> int:
        """Byte offset of sizes[start] in the index."""
        return HEADER.size + 4 * start

    def pointers_at(self, start: int) -> int:
        return HEADER.size + 4 * self.items + 8 * start


def parse_header(raw: bytes, label: str, index_size: int) -> IndexHeader:
    """The header of an index file of `index_size` bytes whose first bytes are `raw`; StreamError if it is not one."""
    if len(raw) < HEADER.size:
        raise StreamError(f"{label}: {index_size} bytes, too short for a Megatron index header ({HEADER.size} bytes)")
    magic, version, code, items, documents = HEADER.unpack(raw[:HEADER.size])
    if magic != MAGIC:
        raise StreamError(f"{label}: not a Megatron index: it starts with {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise StreamError(f"{label}: index version {version}, but only version {VERSION} is known")
    if code not in DTYPES:
        known = ", ".join(f"{c} {np.dtype(t).name}" for c, t in DTYPES.items())
        raise StreamError(f"{label}: dtype code {code} is not a Megatron dtype ({known})")
    dtype = np.dtype(DTYPES[code])
    if dtype.kind == "f":
        raise StreamError(f"{label}: dtype code {code} ({dtype.name}) cannot hold token ids")
    header = IndexHeader(items, documents, dtype.newbyteorder("<"))
    if index_size != header.index_bytes:
        raise StreamError(f"{label}: {index_size:,} bytes, but a header of {items:,} items and {documents:,} documents "
                          f"needs {header.index_bytes:,} (a truncated or foreign index)")
    return header


class MegatronStream(TokenStream):
    """A Megatron indexed dataset (`source.files`: the `.idx`, then the `.bin` or its shards in order)."""

    def __init__(self, source: StreamSource):
        super().__init__(source)
        self.index_file, self.bin_files = source.files[0], source.files[1:]
        self.bin_ends = np.cumsum([file.size for file in self.bin_files], dtype=np.int64)
        self.bin_bytes = int(self.bin_ends[-1]) if len(self.bin_ends) else 0
        (raw,) = self.read(self.index_file, [(0, min(HEADER.size, self.index_file.size))])
        self.index_label = source.label_of(self.index_file)
        self.header = parse_header(raw, self.index_label, self.index_file.size)
        if self.header.items:
            sizes, pointers = self._entries(self.header.items - 1, self.header.items)
            end = int(pointers[0]) + int(sizes[0]) * self.header.dtype.itemsize
            if end != self.bin_bytes:
                raise StreamError(f"{self._bins_label()}: the shards hold {self.bin_bytes:,} bytes, but the index's "
                                  f"last item ends at byte {end:,} (a missing, truncated or foreign shard, or another "
                                  "index)")

    @property
    def length(self) -> int:
        return self.header.items

    def _bins_label(self) -> str:
        names = [self.source.label_of(file) for file in self.bin_files]
        return names[0] if len(names) == 1 else f"{names[0]} .. {PurePosixPath(names[-1]).name} ({len(names)} shards)"

    def _entries(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(sizes int64[stop - start], pointers int64[...]) of items [start, stop): two contiguous ranges."""
        header = self.header
        sizes, pointers = self.read(self.index_file, [(header.sizes_at(start), 4 * (stop - start)),
                                                      (header.pointers_at(start), 8 * (stop - start))])
        return (np.frombuffer(sizes, dtype="<i4").astype(np.int64),
                np.frombuffer(pointers, dtype="<i8").astype(np.int64))

    def _check_extent(self, positions: np.ndarray, sizes: np.ndarray, pointers: np.ndarray) -> None:
        """Each item lies inside the shards; raise naming the first that does not."""
        ends = pointers + sizes * self.header.dtype.itemsize
        bad = np.flatnonzero((pointers < 0) | (sizes < 0) | (ends > self.bin_bytes))
        if len(bad):
            i = bad[0]
            raise StreamError(f"{self.index_label}: item {int(positions[i]):,} lies at bytes {int(pointers[i]):,}-"
                              f"{int(ends[i]):,}, past the end of {self._bins_label()} ({self.bin_bytes:,} bytes)")

    def _read_spans(self, starts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
        """Bytes [starts[i], starts[i] + lengths[i]) of the concatenated shards, each assembled across a boundary."""
        owner, file, lo, length = spans_over_files(self.bin_ends, starts, lengths)
        parts: list[bytes] = [b""] * len(owner)
        for f in np.unique(file):
            mine = np.flatnonzero(file == f)
            got = self.read(self.bin_files[int(f)], list(zip(lo[mine].tolist(), length[mine].tolist())))
            for slot, body in zip(mine, got):
                parts[slot] = body
        pieces: list[list[bytes]] = [[] for _ in starts]
        for slot, i in enumerate(owner):
            pieces[i].append(parts[slot])
        return [piece[0] if len(piece) == 1 else b"".join(piece) for piece in pieces]

    def read_items(self, positions: np.ndarray, width: int, within: tuple[int, int] | None = None) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        self.check_positions(positions)
        if not len(positions):
            return np.zeros((0, width), dtype=np.int64)
        start, stop = within or (int(positions.min()), int(positions.max()) + 1)
        sizes, pointers = self._entries(start, stop)
        sizes, pointers = sizes[positions - start], pointers[positions - start]
        self._check_extent(positions, sizes, pointers)
        short = np.flatnonzero(sizes < width)
        if len(short):
            i = short[0]
            raise StreamError(f"{self.index_label}: item {int(positions[i]):,} has {int(sizes[i])} tokens, fewer "
                              f"than the {width} asked (k + l)")
        itemsize = self.header.dtype.itemsize
        bodies = self._read_spans(pointers, np.full(len(positions), width * itemsize, dtype=np.int64))
        tokens = np.frombuffer(b"".join(bodies), dtype=self.header.dtype)
        self._refuse_negative(tokens, positions, np.arange(len(positions) + 1, dtype=np.int64) * width)
        return tokens.reshape(len(positions), width).astype(np.int64)

    def _refuse_negative(self, tokens: np.ndarray, positions: np.ndarray, offsets: np.ndarray) -> None:
        """A signed dtype can hold ids below 0, which no vocabulary has: name the first item holding one."""
        if self.header.dtype.kind == "i" and tokens.size and tokens.min() < 0:
            item = int(np.searchsorted(offsets, int(np.argmax(tokens < 0)), side="right")) - 1
            raise StreamError(f"{self.index_label}: item {int(positions[item]):,} holds a negative token id")

    def iter_items(self, start: int, stop: int, batch_bytes: int = SCAN_BATCH_BYTES) -> Iterator[ItemBatch]:
        itemsize = self.header.dtype.itemsize
        for first in range(start, stop, ENTRIES_PER_READ):
            positions = np.arange(first, min(first + ENTRIES_PER_READ, stop), dtype=np.int64)
            sizes, pointers = self._entries(first, first + len(positions))
            self._check_extent(positions, sizes, pointers)
            order = np.argsort(pointers, kind="stable")  # storage order (Megatron writes items in order: a no-op)
            for chosen in batches_of(order, sizes[order] * itemsize, batch_bytes):
                nbytes = sizes[chosen] * itemsize
                if np.array_equal(pointers[chosen[1:]], pointers[chosen[:-1]] + nbytes[:-1]):
                    # back to back, as Megatron writes them: one range (the same bytes, so the same digest)
                    bodies = self._read_spans(pointers[chosen[:1]], np.array([nbytes.sum()], dtype=np.int64))
                else:
                    bodies = self._read_spans(pointers[chosen], nbytes)
                tokens = np.frombuffer(bodies[0] if len(bodies) == 1 else b"".join(bodies), dtype=self.header.dtype)
                offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
                np.cumsum(sizes[chosen], out=offsets[1:])
                self._refuse_negative(tokens, positions[chosen], offsets)
                yield ItemBatch(tokens, offsets, positions[chosen])


def megatron_files(prefix: str, listing: dict[str, StreamFile]) -> list[StreamFile]:
    """The index and the token files of prefix `prefix` among the `listing` (path -> file) of its folder, in order:
    `<prefix>.idx`, then `<prefix>.bin` or every shard `<prefix>-NNNNN-of-MMMMM.bin` by number. Raises StreamError
    naming what is missing: the index, the tokens, or a shard inside the numbered run."""
    import re

    index = listing.get(f"{prefix}.idx")
    if index is None:
        raise StreamError(f"{prefix}.idx: not found (data.file names the prefix of a Megatron dataset)")
    if f"{prefix}.bin" in listing:
        return [index, listing[f"{prefix}.bin"]]
    pattern = re.compile(re.escape(prefix) + r"-(\d+)-of-(\d+)\.bin")
    shards = sorted(((int(m[1]), int(m[2]), file) for path, file in listing.items() if (m := pattern.fullmatch(path))),
                    key=lambda shard: shard[0])
    if not shards:
        raise StreamError(f"{prefix}.bin: not found, nor shards {prefix}-NNNNN-of-NNNNN.bin beside {prefix}.idx")
    totals = sorted({total for _, total, _ in shards})
    if len(totals) > 1:
        raise StreamError(f"{prefix}-*.bin: shards of different sets ('of' {', '.join(f'{t:05d}' for t in totals)})")
    numbers = {number for number, _, _ in shards}
    # Numbered 0..M-1 or, as Pythia's release, 0..M "of M": either way none of 0..M-1 may be absent.
    missing = sorted(set(range(max(max(numbers) + 1, totals[0]))) - numbers)
    if missing:
        raise StreamError(f"{prefix}-{missing[0]:05d}-of-{totals[0]:05d}.bin: missing (shards "
                          f"{', '.join(f'{n:05d}' for n in sorted(numbers))} of {totals[0]:05d} are listed)")
    return [index, *(file for _, _, file in shards)]
