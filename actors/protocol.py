"""What crosses between the driver and the checkpoint actors: plain dataclasses, no torch.

The control plane (sweep/) and stand-in actors (benchmarks/control_plane.py's cost model) import this module
without importing torch; the data plane (actors/scoring.py, actors/scorer_actor.py) fills these types in.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator
from typing import Literal, Protocol

import numpy as np

ONE_LINE_LIMIT = 500  # characters of an error kept in a one-line message (a cell failure, a CLI error)

MODES = ("greedy", "extractable")
EOS_POLICIES = ("ordinary", "reference")
DECODES = ("growing", "static", "static-compiled")


@dataclass(frozen=True)
class ScoringOptions:
    """What the kernel computes per sequence; the fields are the spec's `memorization` keys (and
    `resources.decode`), with the same names and values."""

    prompt_len: int = 32
    """k: prompt tokens given to the model."""
    continuation_len: int = 32
    """l: tokens generated and compared with the true continuation."""
    mode: str = "greedy"
    """"greedy" (decode l tokens) or "extractable" (one teacher-forced pass; prefix/full match only)."""
    eos: str = "ordinary"
    """"ordinary" (EOS is a normal token) or "reference" (HF generate's stop-and-pad at EOS)."""
    nll: bool = False
    """Also return mean NLL and teacher-forced accuracy of the true continuation."""
    decode: str = "growing"
    """The greedy loop's KV cache: "growing" (appended each step), "static" (preallocated, reused across batches
    of one shape) or "static-compiled" (static + torch.compile of the one-token step; CUDA only). The static
    forms are unmeasured on a GPU so far (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        for name in ("prompt_len", "continuation_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ScoringOptions.{name} must be a positive int, got {value!r}")
        for name, allowed in (("mode", MODES), ("eos", EOS_POLICIES), ("decode", DECODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ScoringOptions.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.mode == "extractable" and self.eos != "ordinary":
            raise ValueError("ScoringOptions.eos must be 'ordinary' in extractable mode "
                             "(a teacher-forced pass cannot reproduce stop-and-pad at EOS)")
        if self.decode != "growing" and (self.mode != "greedy" or self.nll):
            raise ValueError(f"ScoringOptions.decode {self.decode!r} applies to greedy mode without nll only "
                             "(extractable mode has no decode loop; the NLL pass seeds a growing cache)")


@dataclass
class BatchScores:
    """Per-sequence results; every array has length B (the batch)."""
    matches: np.ndarray | None
    """int16: greedy tokens equal to the truth, 0..l. None in extractable mode."""
    prefix_match: np.ndarray
    """int16: leading greedy tokens equal to the truth before the first mismatch (l if all)."""
    full_match: np.ndarray
    """bool: prefix_match == l."""
    match_mask: np.ndarray | None
    """uint8[B, ceil(l/8)]: np.packbits(bitorder="little") of the per-position hits. None in extractable mode."""
    nll: np.ndarray | None
    """float32: mean NLL (nats/token) of the true continuation given the prompt. None unless with_nll."""
    tf_accuracy: np.ndarray | None
    """float32: fraction of continuation positions where the teacher-forced argmax equals the truth."""
    generated: np.ndarray | None = None
    """int64[B, l]: the greedy tokens (eos "reference": pad after a row stopped). None in extractable mode."""
    decision_margin: np.ndarray | None = None
    """float32: the smallest top-1 minus top-2 logit (= log-probability) gap over the greedy decisions that decide
    prefix_match / full_match (every position up to the first mismatch, and that one): how far the result is from a
    flip, in nats. 0 is an exact tie. None from a producer that does not record it."""


@dataclass(frozen=True)
class CheckpointTarget:
    """Which checkpoint to load: its id, the spec's revision, and the Hub commit it is pinned to (None: local)."""

    ckpt: int
    revision: str
    commit: str | None = None


@dataclass
class ProbeBatch:
    """A probe set as the actors see it (numpy, so Ray shares it zero-copy from the object store), or one piece of a
    census chunk (`ProbePieces`)."""

    chunk: int
    rows: np.ndarray  # int64[n]: row numbers in the chunk file (named in errors)
    tokens: np.ndarray  # uint32/int[n, k+l]
    sources: list[str] | None = None  # a census piece of a JSONL chunk: each row's corpus label
    sha256: str | None = None  # a census chunk's last piece: the digest of every byte read for the chunk


class ProbePieces(Protocol):
    """A census chunk (`data.samples_per_chunk: all`): every sequence of a chunk, which the actor reads from the pinned
    source itself, a piece at a time, instead of receiving a probe set (the control plane's sweep/data/census.py)."""

    chunk: int

    def pieces(self) -> Iterator[ProbeBatch]:
        """The chunk's sequences in order, a bounded piece at a time (a fresh read each call); the last piece carries
        the digest of what was read (`sha256`)."""
        ...


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What the actor learned about a checkpoint while loading it (recorded in every cell it scores)."""

    target: CheckpointTarget
    weights_fingerprint: str
    stored_dtype: str
    vocab_size: int  # rows of the input embedding: a token id must be below this
    load_seconds: float  # the whole load, its checkout included
    downloaded_bytes: int
    host: str
    checkout_seconds: float = 0.0  # what the load waited for the files: its own download, or a prefetch's end


@dataclass
class CellOutput:
    """What an actor returns for one cell; the driver joins it with the probe set and lands it."""

    ckpt: int
    chunk: int
    scores: BatchScores
    seconds: float  # scoring time, checkpoint load excluded
    loaded: LoadedCheckpoint
    loaded_now: bool
    device: str
    dtype: str
    batch_size: int
    host: str
    rows: np.ndarray | None = None  # a census cell: int64[n], the rows scored, in order (a probe set's are the driver's)
    sources: list[str] | None = None  # a census cell of a JSONL chunk: each row's corpus label
    data_sha256: str | None = None  # a census cell: the digest of every byte its pieces were read from


@dataclass(frozen=True)
class ScorerSettings:
    """Everything an actor needs that is the same for every cell of a sweep; the control plane builds it from the spec
    (sweep/run/scorer_settings.py), so nothing here knows the spec's shape."""

    model_source: str
    dtype: str
    attn_implementation: str  # "auto" | "sdpa" | "eager" | "flash_attention_2"
    options: ScoringOptions
    batch_size: int | str  # int or "auto"
    device: str  # "auto" | "cpu" | "cuda"; "cpu" for actors that hold no GPU
    gpus_per_actor: float = 1.0  # the actor's share of a GPU (fractional: co-tenants), resolved against the cluster
    torch_threads: int | None = None
    download_dir: str | None = None
    keep_downloads: bool = False
    keep_generated: bool = False


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be fetched or loaded; the message names the source, revision and commit."""


class CudaContextLost(RuntimeError):
    """A sticky CUDA error broke the actor's CUDA context; the actor exits after raising it and Ray restarts it in a
    new process. The cell is retried; the message says so."""


class CellInputError(ValueError):
    """The cell's own input is wrong (a token id the checkpoint cannot embed): retrying cannot help."""


def one_line(error: BaseException | str, line: Literal["all", "first", "last"] = "all",
             limit: int | None = ONE_LINE_LIMIT) -> str:
    """An error as one line of at most `limit` characters (None: all of it), the form every memsweep message takes.

    line "all" joins every line (whitespace collapsed); "first" keeps the first line (a library's message
    followed by its details); "last" keeps the last (Ray puts the remote traceback first, the message last).
    An error with no text is named by its type.
    """
    text = str(error).strip()
    if line != "all" and text:
        lines = text.splitlines()
        text = lines[0] if line == "first" else lines[-1]
    text = " ".join(text.split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
