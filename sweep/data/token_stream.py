"""What every binary training stream offers (a Megatron indexed dataset, numpy token files): items by stream
position, read by byte ranges of the files that hold them.

A *stream* is one ordered sequence of training items (Pythia: item i is training sequence i, 2049 tokens; OLMo:
position p is instance order[p] of the token files). Its files are described once (`StreamSource`: which files,
their sizes and identities, listed from a local folder or the Hub) and opened wherever it is read (a probe-set task,
an exposure scan) by the format's reader, a `TokenStream`:

- `read_items(positions, width, within)`: the first `width` tokens of each item at `positions` (a sample), reading
  the index entries of the `within` range (the chunk: one contiguous slice) and only those tokens of each item;
- `iter_items(start, stop)`: every token of the items at positions [start, stop) in batches of bounded size, in
  the order the bytes lie in the files (an exposure scan; counts do not depend on order);
- `iter_item_batches(start, stop, width, batch)`: [start, stop) in stream order, `batch` items at a time: what
  scoring every sequence of a chunk reads.

Every byte read is counted (`bytes_read`, `requests`) and hashed in the order it was read (`digest`): reading the
same items of the same files gives the same digest, which pins what a probe set or a scan was read from where a
Range read cannot hash a whole file (docs/architecture.md, "Pins").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from sweep.data.byte_ranges import HubFile, LocalFile, read_ranges_any
from sweep.errors import MemsweepError

# An exposure scan's batch: about this many bytes of tokens at a time (bounded memory, numpy overhead negligible).
SCAN_BATCH_BYTES = 8 * 1024 * 1024


class StreamError(MemsweepError):
    """A stream that cannot be read as its format says; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class StreamFile:
    """One file of a stream as it was listed: its path inside the source, size, and identity (the Hub's LFS sha256,
    or a local file's modification time)."""

    path: str
    size: int
    sha256: str | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class StreamSource:
    """A stream's files and how to read them; picklable (it travels to every task that reads the stream).

    `files` in the format's order: megatron: the `.idx`, then the `.bin` or its shards in order; numpy: the token
    files in stream order, then the order file if any (`order` names it).
    """

    format: str  # megatron | numpy
    kind: str  # local | hub
    data_source: str  # a local folder, or a Hub dataset repository id
    name: str  # data.file as the spec gives it (the Megatron prefix, or the token files' list or glob)
    files: tuple[StreamFile, ...]
    commit: str | None = None  # Hub: the dataset commit every file is read at
    dtype: str | None = None  # numpy: token id type
    sequence_len: int | None = None  # numpy: tokens per instance
    order: str | None = None  # numpy: the order file's path
    order_dtype: str = "uint32"

    def opener(self, file: StreamFile) -> LocalFile | HubFile:
        """A reader of one of the stream's files."""
        if self.kind == "local":
            return LocalFile(f"{self.data_source.rstrip('/')}/{file.path}", label=self.label_of(file))
        return HubFile(self.data_source, self.commit, file.path, file.size, label=self.label_of(file))

    def label_of(self, file: StreamFile) -> str:
        """How messages name one of the stream's files: its local path, or repo@commit:path."""
        if self.kind == "local":
            return f"{self.data_source.rstrip('/')}/{file.path}"
        return f"{self.data_source}@{(self.commit or '')[:12]}:{file.path}"

    @property
    def files_sha256(self) -> str:
        """One digest of every file's path, size and identity: equal only for the same files (Hub: the same LFS
        contents at any commit; local: the same sizes and modification times)."""
        listing = [[f.path, f.size, f.sha256, f.mtime_ns if f.sha256 is None else None] for f in self.files]
        return hashlib.sha256(json.dumps([self.format, listing]).encode()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)

    @property
    def token_bytes(self) -> int:
        """Bytes of the token data alone: a Megatron `.bin` or its shards (not the `.idx`), numpy's token files (not
        the order file)."""
        data = self.files[1:] if self.format == "megatron" else [f for f in self.files if f.path != self.order]
        return sum(file.size for file in data)

    @property
    def token_width(self) -> int:
        """Bytes of one token id: numpy's `dtype`; a Megatron stream's is in its index header, not read here: 2
        (uint16, Pythia's) for estimates."""
        return {"uint16": 2, "uint32": 4, "int32": 4, "int64": 8, "uint64": 8}.get(self.dtype or "uint16", 2)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ItemBatch:
    """Items of a stream, whole: item i of the batch is tokens[offsets[i]:offsets[i + 1]] (the file's dtype)."""

    tokens: np.ndarray  # 1-D, uint16 / uint32 / ... as stored
    offsets: np.ndarray  # int64[n + 1]
    positions: np.ndarray  # int64[n], stream positions of the items (in the batch's order)


class TokenStream:
    """The reader protocol (see the module docstring); the formats subclass it (sweep/data/megatron.py,
    sweep/data/token_files.py) and implement `length`, `read_items` and `iter_items`."""

    def __init__(self, source: StreamSource):
        self.source = source
        self.label = f"{source.data_source.rstrip('/')}:{source.name}"
        self._digest = hashlib.sha256()
        self._files: dict[str, LocalFile | HubFile] = {}

    # ---- what a format implements ------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Items (training sequences) in the stream."""
        raise NotImplementedError

    def read_items(self, positions: np.ndarray, width: int, within: tuple[int, int] | None = None) -> np.ndarray:
        """int64[n, width]: the first `width` tokens of the items at `positions` (any order, no repeats needed).
        `within`: the range of positions whose index entries to read (the chunk); default the positions' span.
        Raises StreamError naming the item for one shorter than `width`."""
        raise NotImplementedError

    def iter_items(self, start: int, stop: int, batch_bytes: int = SCAN_BATCH_BYTES) -> Iterator[ItemBatch]:
        """Every token of the items at positions [start, stop), whole, about `batch_bytes` at a time, in the order
        their bytes lie in the files."""
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------------------

    def iter_item_batches(self, start: int, stop: int, width: int,
                          batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions int64[b], tokens int64[b, width]) for positions [start, stop) in stream order, `batch` items at
        a time: every sequence of a range, with memory bounded by one batch."""
        for first in range(start, stop, batch):
            positions = np.arange(first, min(first + batch, stop), dtype=np.int64)
            yield positions, self.read_items(positions, width)

    def check_positions(self, positions: np.ndarray) -> None:
        if len(positions) and (positions.min() < 0 or positions.max() >= self.length):
            bad = int(positions.max() if positions.max() >= self.length else positions.min())
            raise StreamError(f"{self.label}: stream position {bad} is outside the stream's {self.length:,} items")

    @property
    def bytes_read(self) -> int:
        return sum(file.bytes_read for file in self._files.values())

    @property
    def requests(self) -> int:
        return sum(file.requests for file in self._files.values())

    def digest(self) -> str:
        """sha256 of every byte this reader has read, in the order it read them."""
        return self._digest.hexdigest()

    def read(self, file: StreamFile, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (start, length) of one of the stream's files (counted and hashed); a range past the
        file's listed size is an error naming the file."""
        for start, length in ranges:
            if start < 0 or start + length > file.size:
                raise StreamError(f"{self.source.label_of(file)}: bytes {start}-{start + length - 1} asked, but it "
                                  f"holds {file.size} bytes")
        reader = self._files.get(file.path)
        if reader is None:
            reader = self._files[file.path] = self.source.opener(file)
        parts = read_ranges_any(reader, ranges)
        for part in parts:
            self._digest.update(part)
        return parts


def spans_over_files(ends: np.ndarray, starts: np.ndarray, lengths: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split byte ranges of a concatenation of files (file f holds bytes [ends[f - 1], ends[f]) of it) at the files'
    boundaries: (range number, file number, start within the file, length) of each piece, in range order. A range that
    straddles a boundary becomes two pieces (or more)."""
    first = np.searchsorted(ends, starts, side="right")
    last = np.searchsorted(ends, starts + lengths - 1, side="right")
    pieces = last - first + 1
    owner = np.repeat(np.arange(len(starts)), pieces)
    file = np.repeat(first, pieces) + (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    begins = np.concatenate([[0], ends[:-1]])
    lo = np.maximum(np.repeat(starts, pieces), begins[file])
    hi = np.minimum(np.repeat(starts + lengths, pieces), ends[file])
    return owner, file, lo - begins[file], hi - lo


def batches_of(order: np.ndarray, nbytes: np.ndarray, batch_bytes: int) -> Iterator[np.ndarray]:
    """`order` cut into consecutive pieces of about `batch_bytes` (`nbytes`: each entry's bytes, in `order`'s
    order); a piece holds at least one entry."""
    cumulative = np.cumsum(nbytes)
    begin = 0
    while begin < len(order):
        reached = cumulative[begin - 1] if begin else 0
        end = max(begin + 1, int(np.searchsorted(cumulative, reached + batch_bytes, side="right")))
        yield order[begin:end]
        begin = end
