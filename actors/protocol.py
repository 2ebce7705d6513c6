"""What crosses between the driver and the checkpoint actors: plain dataclasses, no torch.

The control plane (sweep/) and stand-in actors (benchmarks/control_plane.py's cost model) import this module
without importing torch; the data plane (actors/scoring.py, actors/scorer_actor.py) fills these types in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("greedy", "extractable")
EOS_POLICIES = ("ordinary", "reference")


@dataclass
class ScoringOptions:
    prompt_len: int = 32
    """k: prompt tokens given to the model."""
    continuation_len: int = 32
    """l: tokens generated and compared with the true continuation."""
    mode: str = "greedy"
    """"greedy" (decode l tokens) or "extractable" (one teacher-forced pass; prefix/full match only)."""
    eos_policy: str = "ordinary"
    """"ordinary" (EOS is a normal token) or "reference" (HF generate's stop-and-pad at EOS)."""
    with_nll: bool = False
    """Also return mean NLL and teacher-forced accuracy of the true continuation."""
    compile_decode: bool = False
    """CUDA only: static KV cache + torch.compile(mode="reduce-overhead") of the one-token step.
    Off by default and unmeasured (no GPU was available when it was written)."""

    def __post_init__(self) -> None:
        for name in ("prompt_len", "continuation_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ScoringOptions.{name} must be a positive int, got {value!r}")
        if self.mode not in MODES:
            raise ValueError(f"ScoringOptions.mode must be one of {MODES}, got {self.mode!r}")
        if self.eos_policy not in EOS_POLICIES:
            raise ValueError(f"ScoringOptions.eos_policy must be one of {EOS_POLICIES}, got {self.eos_policy!r}")
        if self.mode == "extractable" and self.eos_policy != "ordinary":
            raise ValueError("ScoringOptions.eos_policy must be 'ordinary' in extractable mode "
                             "(a teacher-forced pass cannot reproduce stop-and-pad at EOS)")
        if self.mode == "extractable" and self.compile_decode:
            raise ValueError("ScoringOptions.compile_decode applies to greedy mode only (extractable has no decode loop)")


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


@dataclass(frozen=True)
class CheckpointTarget:
    """Which checkpoint to load: its id, the spec's revision, and the Hub commit it is pinned to (None: local)."""

    ckpt: int
    revision: str
    commit: str | None = None


@dataclass
class ProbeBatch:
    """A probe set as the actors see it (numpy, so Ray shares it zero-copy from the object store)."""

    chunk: int
    rows: np.ndarray  # int64[n]: row numbers in the chunk file (named in errors)
    tokens: np.ndarray  # uint32/int[n, k+l]


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What the actor learned about a checkpoint while loading it (recorded in every cell it scores)."""

    target: CheckpointTarget
    weights_fingerprint: str
    stored_dtype: str
    vocab_size: int  # rows of the input embedding: a token id must be below this
    load_seconds: float
    downloaded_bytes: int
    host: str


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


@dataclass(frozen=True)
class ScorerSettings:
    """Everything an actor needs that is the same for every cell of a sweep."""

    model_source: str
    dtype: str
    options: ScoringOptions
    batch_size: int | str  # int or "auto"
    device: str  # "auto" | "cpu" | "cuda"
    attn_implementation: str  # "auto" | "sdpa" | "eager" | "flash_attention_2"
    torch_threads: int | None = None
    download_dir: str | None = None
    keep_downloads: bool = False
    keep_generated: bool = False


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be fetched or loaded; the message names the source, revision and commit."""


class CellInputError(ValueError):
    """The cell's own input is wrong (a token id the checkpoint cannot embed): retrying cannot help."""

