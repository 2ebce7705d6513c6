"""A census chunk (`data.samples_per_chunk: all`): every sequence of one chunk, in the stream's order, read from its
pinned source a piece at a time, for the actor that scores it.

A sampled sweep builds a probe set per chunk (sweep/data/probes.py), lands it and hands the actors its tokens. A
census would make that probe set the whole chunk (Pythia: 1,024,000 sequences, 256 MB of uint32 tokens a chunk,
37 GB for the 146M of the stream), so it builds none: the driver hands the actor a `CensusChunk` (a few hundred
bytes: what to read, pinned) and the actor reads the chunk's sequences itself, `piece_rows` at a time, scoring each
piece before it reads the next. Memory is one piece wherever it is read, whatever the chunk's size, and the reads
are spread over the nodes that score instead of passing through the driver.

- a JSONL chunk file is streamed once (local read or Hub download at the pinned commit), each line parsed and checked
  as a sampled row is (`row` = its line number), its sha256 and size checked against the pin at the end: a file that
  is not what was pinned fails the cell before anything of it lands;
- a Megatron or numpy chunk is read in stream order (`TokenStream.iter_item_batches`): each piece's index entries,
  then its items' first k + l tokens, coalesced into a few large reads (`row` = position in the chunk, `index` =
  the stream position).

The last piece carries the sha256 of every byte read for the cell (`ProbeBatch.sha256`): what the cell's
`data_sha256` records. Nothing of the tokens lands: `show` and the report's examples read the few rows they print
again from the pinned source (`read_census_rows`: a stream's items by range; a JSONL file streamed up to the last row
asked for), and refuse a source that changed since the census.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from actors.protocol import ProbeBatch
from sweep.data.probes import (ProbeSetError, _GZIP_MAGIC, _row_tokens, check_streamed, detect_format, open_chunk,
                               parse_line)
from sweep.data.sources import ChunkFile
from sweep.data.stream_chunks import StreamChunk, describe_spec_chunks, open_stream, pinned_source
from sweep.errors import MemsweepError
from sweep.spec import SweepSpec

# Sequences read and scored at a time: 8,192 x 64 int64 tokens = 4 MB to score, and for Pythia about 34 MB of item
# bytes read (the gaps between items' first 64 tokens are coalesced into whole reads).
CENSUS_PIECE_ROWS = 8192


@dataclass(frozen=True)
class CensusChunk:
    """Every sequence of chunk `chunk` (`source`, as the output pinned it), `piece_rows` at a time; picklable and small
    (it travels to the actor through Ray's object store)."""

    chunk: int
    source: ChunkFile | StreamChunk
    prompt_len: int  # k
    continuation_len: int  # l: k + l tokens are read of each sequence
    vocab_size: int | None = None  # data.vocab_size: an id at or above it is an error naming the row
    piece_rows: int = CENSUS_PIECE_ROWS

    @property
    def width(self) -> int:
        return self.prompt_len + self.continuation_len

    @property
    def label(self) -> str:
        return self.source.label

    def pieces(self) -> Iterator[ProbeBatch]:
        """The chunk's sequences in order, as ProbeBatches of at most `piece_rows` rows (a fresh read each call); the
        last one's `sha256` is the digest of every byte read. Raises ProbeSetError or StreamError (one line naming the
        file and row) for a sequence that cannot be read."""
        return self._stream_pieces() if isinstance(self.source, StreamChunk) else self._jsonl_pieces()

    def _stream_pieces(self) -> Iterator[ProbeBatch]:
        chunk = self.source
        if chunk.stream is None:
            raise ValueError(f"{chunk.label}: a chunk rebuilt from a ledger record cannot be read (no stream description)")
        stream = open_stream(chunk.stream)
        last = None
        for positions, tokens in stream.iter_item_batches(chunk.start, chunk.stop, self.width, self.piece_rows):
            if self.vocab_size is not None and tokens.size and tokens.max() >= self.vocab_size:
                slot, position = np.argwhere(tokens >= self.vocab_size)[0]
                raise ProbeSetError(f"{stream.label}: item {int(positions[slot]):,} token {int(position)} = "
                                    f"{int(tokens[slot, position])} is outside [0, {self.vocab_size - 1}] "
                                    "(data.vocab_size)")
            if last is not None:
                yield last
            last = ProbeBatch(self.chunk, positions - chunk.start, tokens)
        if last is not None:
            last.sha256 = stream.digest()
            yield last

    def _jsonl_pieces(self) -> Iterator[ProbeBatch]:
        reader = open_chunk(self.source)
        label = reader.label
        digest, size, row, read = hashlib.sha256(), 0, 0, 0
        row_format: str | None = None
        blank_at: int | None = None  # the first blank line: an error unless only blank lines follow it
        rows: list[int] = []
        sources: list[str] = []
        tokens = np.empty((self.piece_rows, self.width), dtype=np.int64)

        def take(line: bytes) -> None:
            nonlocal row_format, read
            if blank_at is not None:
                raise ProbeSetError(f"{label}:{blank_at + 1}: empty line (would shift every later row number)")
            record = parse_line(label, row, line)
            row_format = row_format or detect_format(label, row, record)
            ids, source = _row_tokens(label, row, record, row_format, self.prompt_len, self.continuation_len,
                                      self.vocab_size)
            tokens[len(rows)] = ids
            rows.append(row)
            sources.append(sys.intern(source))  # a handful of corpus labels: one string object each
            read += 1

        pending = b""
        for block in reader.blocks():
            if not block:
                continue
            if size == 0 and bytes(block[:2]) == _GZIP_MAGIC:
                raise ProbeSetError(f"{label}: file is gzip-compressed; decompress it (JSON lines are expected)")
            digest.update(block)
            size += len(block)
            *lines, pending = (pending + bytes(block)).split(b"\n")
            for line in lines:
                if line:
                    take(line)
                elif blank_at is None:
                    blank_at = row
                row += 1
                if len(rows) == self.piece_rows:
                    yield ProbeBatch(self.chunk, np.array(rows, dtype=np.int64), tokens.copy(), sources=sources)
                    rows, sources = [], []
        if pending:  # a last line without a newline
            take(pending)
        if read == 0:
            raise ProbeSetError(f"{label}: file is empty" + (" (only blank lines)" if size else ""))
        check_streamed(self.source, digest.hexdigest(), size, label)
        yield ProbeBatch(self.chunk, np.array(rows, dtype=np.int64), tokens[:len(rows)].copy(), sources=sources,
                         sha256=digest.hexdigest())


def census_chunk(chunk: int, source: ChunkFile | StreamChunk, prompt_len: int, continuation_len: int,
                 vocab_size: int | None = None, piece_rows: int = CENSUS_PIECE_ROWS) -> CensusChunk:
    """The census of one described chunk (sweep/data/stream_chunks.py `describe_spec_chunks`)."""
    return CensusChunk(chunk, source, prompt_len, continuation_len, vocab_size, piece_rows)


def read_census_rows(spec: SweepSpec, pinned: dict, chunk: int, rows: list[int]) -> dict[int, list[int]]:
    """Row -> k + l token ids of `rows` of census chunk `chunk`, read again from the source the output pinned
    (`pinned`: its `ledger/probes.json` record). Raises MemsweepError (one line) if the source changed since."""
    described, _ = describe_spec_chunks(spec, [chunk])
    source = described[chunk]
    if isinstance(source, Exception):
        raise MemsweepError(f"chunk {chunk}: {source}")
    if not source.stat_matches(pinned_source(pinned)):
        raise MemsweepError(f"chunk {chunk}: {source.label} changed since the census read it; its rows cannot be "
                            "shown from it")
    memorization = spec.memorization
    width = memorization.prompt_len + memorization.continuation_len
    wanted = sorted(set(int(row) for row in rows))
    if isinstance(source, StreamChunk):
        tokens = open_stream(source.stream).read_items(source.start + np.array(wanted, dtype=np.int64), width)
        return {row: ids.tolist() for row, ids in zip(wanted, tokens)}
    found: dict[int, list[int]] = {}
    census = census_chunk(chunk, source, memorization.prompt_len, memorization.continuation_len)
    for piece in census.pieces():  # streamed only as far as the last row asked for
        for row, ids in zip(piece.rows.tolist(), piece.tokens):
            if row in wanted:
                found[row] = ids.tolist()
        if len(found) == len(wanted):
            break
    return found
