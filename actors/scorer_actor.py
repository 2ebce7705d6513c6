"""The Ray actor around the scoring kernel: holds ONE checkpoint in memory and scores cells.

A cell is (checkpoint, chunk): every probe sequence of the chunk scored against the checkpoint.
`score_cell` names the checkpoint it wants, so the actor is stateless from the driver's point of
view: after a restart (the process died, the node went away) the first call simply loads the
checkpoint again. In a fault-free sweep the driver hands an actor all chunks of a checkpoint in a
row, so each checkpoint is loaded once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from actors.loading import load_checkpoint, resolve_device
from actors.scoring import BatchScores, ScoringOptions, pick_batch_size, score_batch
from sweep.sources import prefetch_model, resolve_model


@dataclass
class ProbeBatch:
    """A probe set as the actors see it (numpy, so Ray shares it zero-copy from the object store)."""

    chunk: int
    tokens: np.ndarray  # int32/uint16[n, k+l]


@dataclass
class CellOutput:
    """What an actor returns for one cell; the driver joins it with the probe set and lands it."""

    ckpt: int
    chunk: int
    scores: BatchScores
    seconds: float  # scoring time, checkpoint load excluded
    load_seconds: float  # 0 unless this call loaded the checkpoint
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


@ray.remote(concurrency_groups={"io": 1, "compute": 1})
class CheckpointScorer:
    def __init__(self, settings: ScorerSettings):
        self.settings = settings
        self.device = resolve_device(settings.device)
        if self.device.type == "cpu" and settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.ckpt: int | None = None
        self.model = None
        self.batch_size: int | None = None

    @ray.method(concurrency_group="io")
    def prefetch(self, revision: str) -> None:
        """Download a checkpoint into the local Hub cache while the current one is scoring.

        Best effort: a failure here is only logged; `score_cell` will meet (and report) it again.
        """
        try:
            prefetch_model(self.settings.model_source, revision)
        except Exception as error:  # noqa: BLE001 - the real load reports it per cell
            logging.getLogger("memsweep").warning("prefetch of %s failed: %s", revision, error)

    @ray.method(concurrency_group="compute")
    def score_cell(self, ckpt: int, revision: str, probes: ProbeBatch) -> CellOutput:
        """Score one chunk's probe set against checkpoint `ckpt` (loaded first if not in memory)."""
        _maybe_inject_fault(ckpt, probes.chunk)
        load_seconds, loaded_now = 0.0, False
        if self.ckpt != ckpt:
            start = time.perf_counter()
            # Resolved here, on the actor's node: that is where a local checkpoint must exist.
            location, hub_revision = resolve_model(self.settings.model_source, revision)
            self._load(ckpt, location, hub_revision)
            load_seconds, loaded_now = time.perf_counter() - start, True
        start = time.perf_counter()
        scores = self._score(probes.tokens)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return CellOutput(
            ckpt=ckpt,
            chunk=probes.chunk,
            scores=scores,
            seconds=time.perf_counter() - start,
            load_seconds=load_seconds,
            loaded_now=loaded_now,
            device=_device_name(self.device),
            dtype=self.settings.dtype,
            batch_size=self.batch_size,
            host=socket.gethostname(),
        )

    def _load(self, ckpt: int, location: str, revision: str | None) -> None:
        self.model = None  # free the previous checkpoint before loading the next
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        attn = None if self.settings.attn_implementation == "auto" else self.settings.attn_implementation
        self.model = load_checkpoint(location, revision, self.settings.dtype, str(self.device), attn)
        self.ckpt = ckpt
        if self.settings.batch_size == "auto":
            self.batch_size = pick_batch_size(self.model, self.settings.options, self.device)
        else:
            self.batch_size = int(self.settings.batch_size)

    def _score(self, tokens: np.ndarray) -> BatchScores:
        scores, self.batch_size = score_in_batches(self.model, tokens, self.settings.options, self.batch_size,
                                                   shrink_on_oom=self.settings.batch_size == "auto")
        return scores


def score_in_batches(model, tokens: np.ndarray, options: ScoringOptions, batch_size: int,
                     shrink_on_oom: bool) -> tuple[BatchScores, int]:
    """Score int[n, k+l] token rows in batches of `batch_size`; returns (scores in row order, batch size used).

    With `shrink_on_oom` (batch_size: auto, whose CUDA size is an estimate) an out-of-memory error
    halves the batch and rescores the whole cell from its first row, so every cell is scored at one
    batch size (the one its record names). A fixed batch size that does not fit fails with a message
    naming the spec key.
    """
    eos = getattr(model.generation_config, "eos_token_id", None)
    pad = getattr(model.generation_config, "pad_token_id", None)
    while True:
        try:
            parts = []
            for start in range(0, len(tokens), batch_size):
                batch = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
                parts.append(score_batch(model, batch, options, eos_token_id=eos, pad_token_id=pad))
            return concat_scores(parts), batch_size
        except torch.OutOfMemoryError as error:
            if not shrink_on_oom:
                raise RuntimeError(f"resources.batch_size: {batch_size} sequences do not fit in device memory; "
                                   f"lower it or use auto ({error})") from error
            if batch_size == 1:
                raise
        # out here the error's traceback, and the tensors its frames held, are gone: free them for real
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logging.getLogger("memsweep").warning("out of memory at batch %d; rescoring the cell at %d",
                                              batch_size, batch_size // 2)
        batch_size //= 2


def concat_scores(parts: list[BatchScores]) -> BatchScores:
    """Join per-batch results in order (fields that are None stay None)."""

    def join(name: str):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values)

    return BatchScores(**{name: join(name) for name in BatchScores.__dataclass_fields__})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _maybe_inject_fault(ckpt: int, chunk: int) -> None:
    """Test hook: SIGKILL this actor process once, at the cell MEMSWEEP_FAULT_KILL_AT="ckpt:chunk".

    MEMSWEEP_FAULT_MARKER names a file that records the kill, so the restarted actor does not
    kill itself again. Unset in normal runs.
    """
    target = os.environ.get("MEMSWEEP_FAULT_KILL_AT")
    marker = os.environ.get("MEMSWEEP_FAULT_MARKER")
    if not target or not marker or target != f"{ckpt}:{chunk}":
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
