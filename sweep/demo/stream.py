"""The demo's training stream: every row its model trains on while chunk i is the newest, in order.

Amber's chunk files are its training stream: each row is trained on once, in file order, so a scan of
the files finds every time the model saw a sequence. The demo's small model trains on more than its
corpus (sweep/demo/world.py says why): each chunk's rows once per epoch, and rehearsal, rows replayed from
chunks 0..i. So the demo writes that stream itself as its chunk files: chunk file i holds, for each
epoch k of chunk i, the chunk's own corpus rows and ``replayed_per_epoch`` replayed rows of chunks 0..i (never
a later one), shuffled together. Training reads each file in consecutive batches, nothing else, and the files
are its stream as Amber's are.

Replays come in passes: a pass visits every corpus row seen so far once, in random order, before any row is
replayed again, and a new chunk's rows join the pass in progress. So every row comes back at a steady pace, about
once per pass, where drawing with replacement brought some back three times within one chunk and left others out
for several: a burst memorizes a row for a checkpoint or two, a drought then forgets it, and the memorized set
churned (sweep/demo/world.py, "Why it retains").

The plan is index arithmetic only (which corpus row goes where), deterministic in the config's sizes
and seed and independent of what the rows say.

The builder's record of it, ``stream.parquet`` beside the chunk files, has one row per line of every
chunk file, sorted by (chunk, row):

| column | type | meaning |
| --- | --- | --- |
| ``chunk``, ``row`` | Int32, Int64 | the chunk file and its 0-based line |
| ``epoch`` | Int32 | the pass k over the chunk's rows the line belongs to |
| ``reason`` | String | ``own``: a corpus row of this chunk (each is in every epoch); ``replay``: rehearsal |
| ``corpus_chunk``, ``corpus_row`` | Int32, Int64 | the corpus row the line is |
| ``original_chunk``, ``original_row`` | Int32, Int64 | the corpus row whose ids it holds: the corpus row itself, or the one it is a planted verbatim copy of (``planted_copy``) |
| ``planted_copy`` | Boolean | the corpus row is one the builder overwrote with a copy of another |

Lines with the same original hold the same ids. What an exposure scan of a probe finds beyond those
is text that recurs by chance (boilerplate written twice), never a planted copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sweep.demo.config import DemoWorldConfig

RECORD_NAME = "stream.parquet"  # in the data directory, beside train/
OWN, REPLAY = "own", "replay"


@dataclass(frozen=True)
class ChunkStream:
    """What chunk file i holds: corpus rows, in the order training consumes them."""

    corpus_slot: np.ndarray
    """int64[n]: the corpus row of each line, as ``corpus_chunk * rows_per_chunk + corpus_row``."""
    epoch: np.ndarray
    """int32[n]: the pass over the chunk's own rows each line belongs to."""
    replayed: np.ndarray
    """bool[n]: rehearsal, not one of the chunk's own rows."""


def replayed_per_epoch(config: DemoWorldConfig) -> int:
    """Rows replayed from chunks 0..i in each epoch of chunk i."""
    return round(config.replay_fraction * config.rows_per_chunk)


def rows_per_stream_chunk(config: DemoWorldConfig) -> int:
    """Lines in every chunk file: the chunk's own rows plus the replayed ones, once per epoch."""
    return config.epochs_per_chunk * (config.rows_per_chunk + replayed_per_epoch(config))


def total_steps(config: DemoWorldConfig) -> int:
    """Optimizer steps of the whole run (each chunk file in batches of ``batch_size`` consecutive lines).
    Derived from the config, not the files, so the learning rate at a step never depends on a later file."""
    return config.chunks * math.ceil(rows_per_stream_chunk(config) / config.batch_size)


def plan_stream(config: DemoWorldConfig) -> list[ChunkStream]:
    """The corpus rows of every chunk file, in training order; chunk i's only ever come from chunks 0..i."""
    rng = np.random.default_rng([config.seed, 0x57EA])
    rows, replayed = config.rows_per_chunk, replayed_per_epoch(config)
    streams = []
    pass_left = np.zeros(0, dtype=np.int64)  # corpus rows the replay pass in progress has yet to visit
    for chunk in range(config.chunks):
        own = chunk * rows + np.arange(rows)
        pass_left = rng.permutation(np.concatenate([pass_left, own]))  # the new chunk joins the pass in progress
        slots, epochs, replays = [], [], []
        for epoch in range(config.epochs_per_chunk):
            replay, pass_left = _next_replays(rng, pass_left, replayed, (chunk + 1) * rows)
            drawn = np.concatenate([own, replay])
            order = rng.permutation(len(drawn))
            slots.append(drawn[order])
            epochs.append(np.full(len(drawn), epoch, dtype=np.int32))
            replays.append(order >= rows)
        streams.append(ChunkStream(np.concatenate(slots).astype(np.int64), np.concatenate(epochs),
                                   np.concatenate(replays)))
    return streams


def _next_replays(rng: np.random.Generator, pass_left: np.ndarray, count: int,
                  seen_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(the next ``count`` replayed corpus rows, what the pass then has left): the rest of the pass in progress, then
    new passes over all ``seen_rows`` rows seen so far (corpus rows 0 .. seen_rows - 1), each in a fresh random order."""
    taken = [np.zeros(0, dtype=np.int64)]
    while count:
        if not len(pass_left):
            pass_left = rng.permutation(seen_rows)
        taken.append(pass_left[:count])
        count -= len(taken[-1])
        pass_left = pass_left[len(taken[-1]):]
    return np.concatenate(taken).astype(np.int64), pass_left


def origin_record(streams: list[ChunkStream], original: np.ndarray, rows_per_chunk: int) -> pl.DataFrame:
    """The record described in the module docstring. ``original``: int64[chunks * rows_per_chunk], the
    corpus slot whose ids each corpus slot holds (itself unless it is a planted copy)."""
    slot = np.concatenate([stream.corpus_slot for stream in streams])
    source = original[slot]
    corpus_chunk, corpus_row = np.divmod(slot, rows_per_chunk)
    original_chunk, original_row = np.divmod(source, rows_per_chunk)
    return pl.DataFrame({
        "chunk": np.repeat(np.arange(len(streams)), [len(stream.corpus_slot) for stream in streams]),
        "row": np.concatenate([np.arange(len(stream.corpus_slot)) for stream in streams]),
        "epoch": np.concatenate([stream.epoch for stream in streams]),
        "reason": np.where(np.concatenate([stream.replayed for stream in streams]), REPLAY, OWN),
        "corpus_chunk": corpus_chunk, "corpus_row": corpus_row,
        "original_chunk": original_chunk, "original_row": original_row,
        "planted_copy": source != slot,
    }).cast({"chunk": pl.Int32, "row": pl.Int64, "epoch": pl.Int32, "corpus_chunk": pl.Int32,
             "corpus_row": pl.Int64, "original_chunk": pl.Int32, "original_row": pl.Int64})


def read_origin_record(data_dir: Path) -> pl.DataFrame:
    """The record a demo world's data directory holds (columns in the module docstring)."""
    return pl.read_parquet(Path(data_dir) / RECORD_NAME)
