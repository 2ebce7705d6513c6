"""The training timeline: one ordered stream of training sequences, each chunk a range of it, each checkpoint a
position in it (how many sequences it has trained on). Pure: no I/O, no spec parsing beyond a plain dict.

Two kinds, chosen by the spec's `timeline` section:

- **chunk-indexed** (no section; Amber and K2): chunk c is chunk file c and checkpoint c was saved after training on
  chunks 0..c. The files' row counts are unknown before they are read, so "seen" is decided per chunk: checkpoint c
  has trained on all of chunk j (j <= c) or on none of it. Checkpoint ids are chunk ids.
- **step-indexed** (`timeline: {sequences_per_step: P, steps_per_chunk: S}`; Pythia, OLMo): checkpoint ids are
  training steps. Checkpoint N has trained on stream positions [0, N P); chunk c is steps [c S, (c + 1) S), i.e.
  positions [c S P, (c + 1) S P). A checkpoint inside a chunk has trained on part of it: the cell's seen fraction
  is between 0 and 1, and each sequence is seen when its own position is before the checkpoint.

Every view of "seen" (the spec's `cells: seen|unseen|diagonal`, the cells' `seen` and `seen_fraction`, each
sequence's `seen`, the staircases of the report and the explorer, the exposure analyses) asks this module, so one
definition holds everywhere:

- a cell is *seen* when its checkpoint has trained on at least part of its chunk (seen fraction > 0), *unseen*
  otherwise; with a chunk-indexed timeline that is `chunk <= ckpt`, as before;
- the *diagonal* cell of a checkpoint is its newest chunk: the last one it has trained on any of (chunk == ckpt on
  a chunk-indexed timeline; for step N, the chunk holding position N P - 1; step 0 has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweep.errors import MemsweepError


class TimelineError(MemsweepError):
    """A checkpoint or chunk the timeline places beyond the training stream; the message names the key."""


@dataclass(frozen=True)
class Timeline:
    """Positions on the training stream (see the module docstring). `sequences_per_step` and `steps_per_chunk` are
    both None for a chunk-indexed timeline, both set for a step-indexed one."""

    sequences_per_step: int | None = None
    steps_per_chunk: int | None = None

    def __post_init__(self) -> None:
        if (self.sequences_per_step is None) != (self.steps_per_chunk is None):
            raise ValueError("a step-indexed timeline needs both sequences_per_step and steps_per_chunk")
        for name in ("sequences_per_step", "steps_per_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"timeline.{name} must be >= 1 (got {value})")

    @classmethod
    def from_spec_dict(cls, spec: dict | None) -> Timeline:
        """The timeline of a spec as a plain dict (a manifest's `spec`, or `SweepSpec.model_dump()`): an output
        written before timelines existed, or a spec without the section, is chunk-indexed."""
        section = (spec or {}).get("timeline") or {}
        return cls(section.get("sequences_per_step"), section.get("steps_per_chunk"))

    @property
    def step_indexed(self) -> bool:
        return self.sequences_per_step is not None

    @property
    def chunk_sequences(self) -> int | None:
        """Sequences in one chunk (S P); None on a chunk-indexed timeline (each file has its own count)."""
        return self.sequences_per_step * self.steps_per_chunk if self.step_indexed else None

    def chunk_range(self, chunk: int) -> tuple[int, int] | None:
        """[start, stop) stream positions of chunk `chunk`; None on a chunk-indexed timeline."""
        if not self.step_indexed:
            return None
        return chunk * self.chunk_sequences, (chunk + 1) * self.chunk_sequences

    def trained(self, ckpt: int) -> int | None:
        """Sequences checkpoint `ckpt` has trained on (positions [0, trained)); None on a chunk-indexed timeline."""
        return ckpt * self.sequences_per_step if self.step_indexed else None

    def seen_fraction(self, ckpt: int, chunk: int) -> float:
        """Share of chunk `chunk`'s sequences checkpoint `ckpt` has trained on, in [0, 1]."""
        if not self.step_indexed:
            return 1.0 if chunk <= ckpt else 0.0
        start, stop = self.chunk_range(chunk)
        return min(max(self.trained(ckpt) - start, 0), stop - start) / (stop - start)

    def is_seen(self, ckpt: int, chunk: int) -> bool:
        """The checkpoint has trained on at least part of the chunk."""
        return self.seen_fraction(ckpt, chunk) > 0

    def newest_chunk(self, ckpt: int) -> int | None:
        """The last chunk checkpoint `ckpt` has trained on any of (its diagonal cell); None before any training."""
        if not self.step_indexed:
            return ckpt
        if ckpt == 0:
            return None
        return (self.trained(ckpt) - 1) // self.chunk_sequences

    def whole_chunks(self, ckpt: int) -> int:
        """The last chunk checkpoint `ckpt` has trained on entirely (-1: none): `ckpt` on a chunk-indexed timeline;
        for step N, the last chunk ending at or before position N P."""
        if not self.step_indexed:
            return ckpt
        return self.trained(ckpt) // self.chunk_sequences - 1

    def sequences_seen(self, ckpt: int, chunk: int, index: np.ndarray | None) -> np.ndarray:
        """bool[n]: whether checkpoint `ckpt` has trained on each sequence of chunk `chunk`.

        `index`: int64[n], the sequences' stream positions (needed on a step-indexed timeline; on a chunk-indexed one
        only its length is used, and every sequence of a chunk shares the chunk's answer)."""
        if not self.step_indexed:
            return np.full(0 if index is None else len(index), chunk <= ckpt, dtype=bool)
        if index is None:
            raise ValueError("a step-indexed timeline needs each sequence's stream position")
        return np.asarray(index, dtype=np.int64) < self.trained(ckpt)

    def first_trained_by(self, chunk: int, row: int) -> int:
        """The first checkpoint id that has trained on row `row` of chunk `chunk`: the chunk's own checkpoint on a
        chunk-indexed timeline; the step after the one holding its position on a step-indexed one."""
        if not self.step_indexed:
            return chunk
        return (self.chunk_range(chunk)[0] + row) // self.sequences_per_step + 1

    def staircase(self, ckpt: int, chunks: list[int]) -> float:
        """How many of `chunks` (the sorted columns of a figure) checkpoint `ckpt` has trained on, a fraction
        counted for a chunk it is inside: where the seen | unseen line crosses its row."""
        return float(sum(self.seen_fraction(ckpt, chunk) for chunk in chunks))

    def check_within(self, stream_length: int, checkpoints: list[int], chunks: list[int]) -> dict[str, list[int]]:
        """The checkpoints and chunks this timeline places beyond a stream of `stream_length` sequences:
        {"checkpoints": [...], "chunks": [...]} (empty lists when all fit). A chunk-indexed timeline places nothing
        by position (a missing chunk file is the file's error)."""
        if not self.step_indexed:
            return {"checkpoints": [], "chunks": []}
        return {"checkpoints": [c for c in checkpoints if self.trained(c) > stream_length],
                "chunks": [j for j in chunks if self.chunk_range(j)[1] > stream_length]}

    def beyond_stream_message(self, what: str, ids: list[int], stream_length: int, label: str) -> str:
        """One line for checkpoints (`what` = "checkpoint") or chunks beyond the stream."""
        first = ids[0]
        if what == "checkpoint":
            return (f"checkpoint {first}: timeline.sequences_per_step {self.sequences_per_step} puts step {first} at "
                    f"{self.trained(first):,} sequences trained, beyond the {stream_length:,} sequences of {label}")
        start, stop = self.chunk_range(first)
        return (f"chunk {first}: timeline (steps_per_chunk {self.steps_per_chunk} x sequences_per_step "
                f"{self.sequences_per_step}) puts it at stream positions [{start:,}, {stop:,}), beyond the "
                f"{stream_length:,} sequences of {label}")

    def describe(self) -> str:
        if not self.step_indexed:
            return "chunk-indexed: checkpoint c was saved after chunk c"
        return (f"step-indexed: {self.sequences_per_step:,} sequences a step, {self.steps_per_chunk:,} steps a chunk "
                f"({self.chunk_sequences:,} sequences); checkpoint N has trained on sequences [0, "
                f"{self.sequences_per_step:,} N)")
