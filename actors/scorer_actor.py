"""The Ray actor around the scoring kernel: holds ONE checkpoint in memory and scores cells.

A cell is (checkpoint, chunk): every probe sequence of the chunk scored against the checkpoint.
`score_cell` names the checkpoint it wants (a `CheckpointTarget`: id, revision, pinned commit), so the actor is
stateless from the driver's point of view: after a restart (the process died, the node went away) the first
call simply fetches and loads the checkpoint again. The driver hands an actor all chunks of a checkpoint in a
row and tells the SAME actor to `prefetch` each checkpoint it will load (the next one while it scores, its first
one before any cell), so downloads land on the node that uses them, one at a time (actors/prefetch.py).

Disk: a Hub checkpoint is downloaded by `prefetch` (or by the load itself) and deleted as soon as its weights
are in memory (unless `keep_downloads`): on a node, at most one checkpoint per actor waits on disk (the
prefetched next one) plus the one being loaded.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time

import numpy as np
import ray
import torch

from actors.checkpoint_files import CheckpointFolder, evict_checkpoint, fetch_checkpoint
from actors.cuda_errors import is_context_lost, is_out_of_memory
from actors.loading import load_checkpoint, resolve_device, stored_dtype, weights_fingerprint
from actors.prefetch import PrefetchingActor
from actors.read_ahead import read_ahead
from actors.protocol import (BatchScores, CellInputError, CellOutput, CheckpointError, CheckpointTarget,
                             CudaContextLost, LoadedCheckpoint, ProbeBatch, ProbePieces, ScorerSettings, ScoringOptions,
                             one_line)
from actors.scoring import pick_batch_size, release_decode_state, score_batch

log = logging.getLogger("memsweep")

# After a sticky CUDA error the actor raises it (so the driver can name it) and its process exits this many seconds
# later, once Ray has sent the error back; Ray then restarts the actor (max_restarts) in a new process.
EXIT_AFTER_CONTEXT_LOST_S = 2.0


@ray.remote(concurrency_groups={"io": 1, "compute": 1})
class CheckpointScorer(PrefetchingActor):
    def __init__(self, settings: ScorerSettings):
        super().__init__()
        self.settings = settings
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a "Loading weights" bar per load would flood the driver's log
        self.device = resolve_device(settings.device)
        if self.device.type == "cpu" and settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.loaded: LoadedCheckpoint | None = None
        self.model = None
        self.batch_size: int | None = None
        self.exiting = False  # a sticky CUDA error was met: the process is about to exit

    @ray.method(concurrency_group="compute")
    def score_cell(self, target: CheckpointTarget, probes: ProbeBatch | ProbePieces) -> CellOutput:
        """Score one chunk's probe set against `target` (fetched and loaded first if not in memory); a census chunk
        (`ProbePieces`) is read and scored a piece at a time, and its rows come back with their scores.

        A sticky CUDA error raises CudaContextLost and ends this process soon after: every later CUDA call here would
        fail too. A call that starts meanwhile waits for the exit, and Ray runs it again on the restarted actor.
        """
        if self.exiting:
            threading.Event().wait()  # never returns: the exit is under way
        try:
            return self._score_cell(target, probes)
        except Exception as error:
            if not is_context_lost(error):
                raise
            self._exit_soon()
            raise CudaContextLost(f"checkpoint {target.ckpt} x chunk {probes.chunk}: {one_line(error, 'first')} -- "
                                  "this CUDA error leaves the actor's process unusable, so the actor exits and Ray "
                                  "restarts it in a new process, which loads the checkpoint again; the cell is "
                                  "retried") from None

    def _score_cell(self, target: CheckpointTarget, probes: ProbeBatch) -> CellOutput:
        _maybe_inject_fault(target.ckpt, probes.chunk)
        loaded_now = False
        if self.loaded is None or self.loaded.target != target:
            self._load(target)
            loaded_now = True
        start = time.perf_counter()
        census = None
        if isinstance(probes, ProbeBatch):
            self._check_token_ids(probes)
            scores = self._score(probes.tokens)
            if not self.settings.keep_generated:
                scores.generated = None
        else:
            scores, census = self._score_pieces(probes)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        rows, sources, data_sha256 = census or (None, None, None)
        return CellOutput(
            ckpt=target.ckpt,
            chunk=probes.chunk,
            scores=scores,
            seconds=time.perf_counter() - start,
            loaded=self.loaded,
            loaded_now=loaded_now,
            device=_device_name(self.device),
            dtype=self.settings.dtype,
            batch_size=self.batch_size,
            host=socket.gethostname(),
            rows=rows,
            sources=sources,
            data_sha256=data_sha256,
        )

    def _score_pieces(self, census: ProbePieces) -> tuple[BatchScores, tuple[np.ndarray, list | None, str | None]]:
        """Every piece of a census chunk, read and scored in order; host memory is one piece of tokens plus the
        scores so far (a few bytes a sequence). If `batch_size: auto` shrinks the batch on a piece after the first,
        the cell is scored again from its first piece, so it is scored at one batch size, as a probe set is."""
        while True:
            batch_size = self.batch_size
            parts, rows, sources, sha256 = [], [], [], None
            for piece in read_ahead(census.pieces()):  # the next piece is read while this one is scored
                sha256 = piece.sha256 or sha256
                if not len(piece.rows):
                    continue
                self._check_token_ids(piece)
                scores = self._score(piece.tokens)
                if self.batch_size != batch_size:
                    break
                if not self.settings.keep_generated:
                    scores.generated = None
                parts.append(scores)
                rows.append(np.asarray(piece.rows, dtype=np.int64))
                if piece.sources is not None:
                    sources += piece.sources
            else:
                if not parts:
                    raise CellInputError(f"chunk {census.chunk}: the census read no sequence")
                return concat_scores(parts), (np.concatenate(rows), sources or None, sha256)
            log.warning("chunk %d: the batch shrank to %d during the census; scoring the cell again from its first "
                        "piece", census.chunk, self.batch_size)

    @ray.method(concurrency_group="compute")
    def release(self) -> None:
        """Free the model and delete every download this actor still holds (the sweep is over for it)."""
        self._drop_model()
        self._evict_all()

    def _drop_model(self) -> None:
        if self.model is not None:
            release_decode_state(self.model)
        self.model, self.loaded = None, None

    def _exit_soon(self) -> None:
        """End this process once the current call's error is on its way (os._exit: no cleanup can use CUDA now)."""
        log.error("sticky CUDA error: this actor's process exits in %.0f s and Ray restarts it",
                  EXIT_AFTER_CONTEXT_LOST_S)
        self.exiting = True
        timer = threading.Timer(EXIT_AFTER_CONTEXT_LOST_S, os._exit, (1,))
        timer.daemon = True
        timer.start()

    def _fetch(self, target: CheckpointTarget, prefetch: bool) -> CheckpointFolder:
        try:
            return fetch_checkpoint(self.settings.model_source, target.revision, target.commit,
                                    self.settings.download_dir)
        except Exception as error:
            raise CheckpointError(f"checkpoint {target.ckpt} ({self.settings.model_source} revision "
                                  f"{target.revision!r}{_commit_note(target)}) could not be fetched: "
                                  f"{one_line(error)}") from None

    def _evict(self, fetched: CheckpointFolder) -> int:
        return 0 if self.settings.keep_downloads else evict_checkpoint(fetched)

    def _load(self, target: CheckpointTarget) -> None:
        start = time.perf_counter()
        self._drop_model()  # free the previous checkpoint before loading the next
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        folder = self._checkout(target)
        attn = None if self.settings.attn_implementation == "auto" else self.settings.attn_implementation
        try:
            stored = stored_dtype(folder.path)
            self.model = load_checkpoint(str(folder.path), None, self.settings.dtype, str(self.device), attn)
        except Exception as error:
            raise CheckpointError(f"checkpoint {target.ckpt} ({folder.path}, revision {target.revision!r}"
                                  f"{_commit_note(target)}) could not be loaded: {one_line(error)}") from None
        finally:
            self._evict(folder)  # loaded or refused, the files are not needed again
        mismatch = config_names_another_checkpoint(self.model.config, target)
        if mismatch:
            self.model = None
            raise CheckpointError(f"checkpoint {target.ckpt} ({folder.path}, revision {target.revision!r}"
                                  f"{_commit_note(target)}): {mismatch}; the revision holds another checkpoint's weights")
        self.loaded = LoadedCheckpoint(
            target=target,
            weights_fingerprint=weights_fingerprint(self.model),
            stored_dtype=stored,
            vocab_size=int(self.model.get_input_embeddings().num_embeddings),
            load_seconds=time.perf_counter() - start,
            downloaded_bytes=folder.bytes,
            host=socket.gethostname(),
            checkout_seconds=self.checkout_seconds,
        )
        if self.settings.batch_size == "auto":
            self.batch_size = pick_batch_size(self.model, self.settings.options, self.device,
                                              gpu_share=self.settings.gpus_per_actor)
        else:
            self.batch_size = int(self.settings.batch_size)

    def _check_token_ids(self, probes: ProbeBatch) -> None:
        """An id beyond the embedding would raise a bare 'index out of range' (or read garbage on CUDA)."""
        vocab = self.loaded.vocab_size
        if probes.tokens.size == 0 or int(probes.tokens.max()) < vocab:
            return
        slot, position = np.argwhere(probes.tokens >= vocab)[0]
        raise CellInputError(f"chunk {probes.chunk} row {int(probes.rows[slot])}: token {position} = "
                             f"{int(probes.tokens[slot, position])} is outside the vocabulary of checkpoint "
                             f"{self.loaded.target.ckpt} ({vocab} ids, revision {self.loaded.target.revision!r})")

    def _score(self, tokens: np.ndarray) -> BatchScores:
        scores, self.batch_size = score_in_batches(self.model, tokens, self.settings.options, self.batch_size,
                                                   shrink_on_oom=self.settings.batch_size == "auto")
        return scores


# Keys a training release may write into config.json to say which checkpoint the weights are. LLM360 added a
# checkpoint id to every Amber `ckpt_*` config in June 2024 ("add ckpt id into config"); its exact key could not be
# checked offline, so every spelling seen in training releases is accepted.
CONFIG_CHECKPOINT_KEYS = ("ckpt_id", "checkpoint_id", "ckpt", "checkpoint", "ckpt_step")


def config_names_another_checkpoint(config, target: CheckpointTarget) -> str | None:
    """A one-line reason if the config names a checkpoint that is neither `target.ckpt` nor the number in its
    revision (`ckpt_355` -> 355); None if it names the right one or none at all."""
    expected = {target.ckpt}
    number = re.search(r"(\d+)$", target.revision)
    if number:
        expected.add(int(number.group(1)))
    for key in CONFIG_CHECKPOINT_KEYS:
        value = getattr(config, key, None)
        if value is None or isinstance(value, bool):
            continue
        found = re.search(r"(\d+)$", str(value)) if not isinstance(value, int) else None
        named = value if isinstance(value, int) else (int(found.group(1)) if found else None)
        if named is not None and named not in expected:
            return f"its config.json names checkpoint {value!r} ({key})"
    return None


def _commit_note(target: CheckpointTarget) -> str:
    return f" at commit {target.commit[:12]}" if target.commit else ""


def score_in_batches(model, tokens: np.ndarray, options: ScoringOptions, batch_size: int,
                     shrink_on_oom: bool) -> tuple[BatchScores, int]:
    """Score int[n, k+l] token rows in batches of `batch_size`; returns (scores in row order, batch size used).

    With `shrink_on_oom` (batch_size: auto, whose CUDA size is an estimate) running out of device memory (the
    allocator's OutOfMemoryError, or a library's: actors/cuda_errors.py) halves the batch and rescores the whole
    cell from its first row, so every cell is scored at one batch size (the one its record names). A fixed batch
    size that does not fit fails with a message naming the spec key.
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
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if not shrink_on_oom:
                raise RuntimeError(f"resources.batch_size: {batch_size} sequences do not fit in device memory; "
                                   f"lower it or use auto ({one_line(error, 'first')})") from error
            if batch_size == 1:
                raise
        # out here the error's traceback, and the tensors its frames held, are gone: free them for real
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of memory at batch %d; rescoring the cell at %d", batch_size, batch_size // 2)
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
