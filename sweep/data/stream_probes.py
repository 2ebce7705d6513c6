"""Probe sets from a binary training stream: a chunk's items sampled as the reference tool samples rows, and only
their first k + l tokens read.

A chunk of a Megatron or numpy stream is the range of stream positions [start, stop) the timeline gives it
(sweep/timeline.py). Its probe set takes the same rows a JSONL chunk of that many rows would give
(`numpy.random.default_rng(seed).permutation(stop - start)[:n]`, sweep/data/probes.py `sample_rows`): `row` is the
position inside the chunk, `index` = start + row the global stream position (Pythia's published sets call it
`index`), so results join with them. Nothing is streamed: the chunk's index entries are one contiguous read, the
sampled tokens one small read each (coalesced where they are close), and the bytes read are recorded with the
chunk's pin (sweep/data/stream_chunks.py). `source` is null: binary streams carry no corpus label.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from sweep.data.probes import ProbeBuild, ProbeSetError, sample_rows
from sweep.data.stream_chunks import StreamChunk, open_stream
from sweep.landed.schema import probe_frame

logger = logging.getLogger(__name__)


def build_stream_probe_set(chunk: StreamChunk, n: int, seed: int, prompt_len: int, continuation_len: int,
                           vocab_size: int | None = None) -> ProbeBuild:
    """Sample `n` items of one stream chunk (fewer if it holds fewer: all of them, in permutation order).

    Raises StreamError (one line naming the file and what is wrong: see sweep/data/megatron.py,
    sweep/data/token_files.py) for a stream that cannot give these items, ProbeSetError for a token id outside
    [0, vocab_size)."""
    if chunk.stream is None:
        raise ValueError(f"{chunk.label}: a chunk rebuilt from a ledger record cannot be read (no stream description)")
    began = time.perf_counter()
    stream = open_stream(chunk.stream)
    opened = time.perf_counter() - began
    rows = sample_rows(chunk.size, n, seed)
    if chunk.size < n:
        logger.warning("%s has only %d items, fewer than the %d asked for: taking all of them, in permutation order",
                       chunk.label, chunk.size, n)
    began = time.perf_counter()
    index = chunk.start + rows
    tokens = stream.read_items(index, prompt_len + continuation_len, within=(chunk.start, chunk.stop))
    if vocab_size is not None and tokens.size and tokens.max() >= vocab_size:
        slot, position = np.argwhere(tokens >= vocab_size)[0]
        raise ProbeSetError(f"{stream.label}: item {int(index[slot]):,} token {int(position)} = "
                            f"{int(tokens[slot, position])} is outside [0, {vocab_size - 1}] (data.vocab_size)")
    read_seconds = time.perf_counter() - began
    read = replace(chunk, sha256=stream.digest(), bytes_read=stream.bytes_read, requests=stream.requests)
    logger.info("%s: %d of %d items sampled, %d bytes read in %d requests (%.2f s)", chunk.label, len(rows),
                chunk.size, stream.bytes_read, stream.requests, opened + read_seconds)
    frame = probe_frame(chunk.chunk, rows, [None] * len(rows), tokens, index=index)
    return ProbeBuild(frame, read, None, opened, read_seconds)

