"""The Ray driver: plans the cells still to do, schedules them on checkpoint actors, lands results.

Flow: spec -> store.open (identity check, crash recovery) -> plan (cells not yet landed) -> probe
sets (Ray tasks, cached, put in the object store once) -> actors (one checkpoint at a time, every
pending chunk of it) -> store.write_cell per finished cell -> compaction per finished checkpoint.

Failures: a cell whose actor died (process killed, node lost) or that raised is re-queued, at the
front, up to `resources.max_attempts` tries; then it is recorded as failed and the sweep goes on.
Actors restart on their own (`max_restarts`); one that is dead for good is replaced.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import polars as pl
import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from tqdm import tqdm

from actors.scorer_actor import CellOutput, CheckpointScorer, ProbeBatch, ScorerSettings
from actors.scoring import ScoringOptions
from sweep.plan import CheckpointWork, Plan, make_plan
from sweep.probes import load_or_build_probe_set
from sweep.sources import is_local
from sweep.spec import SweepSpec
from sweep.store import ResultStore

log = logging.getLogger("memsweep")

ACTOR_MAX_RESTARTS = 3
DEFAULT_PROBE_CACHE = Path("~/.cache/memsweep/probes")


@dataclass
class SweepSummary:
    output: Path
    cells_total: int
    cells_done_before: int
    cells_scored: int = 0
    sequences_scored: int = 0
    seconds: float = 0.0
    failed: list[dict] = field(default_factory=list)
    loads: Counter = field(default_factory=Counter)  # ckpt -> times loaded in this run

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe(self) -> str:
        rate = self.sequences_scored / self.seconds if self.seconds else 0.0
        lines = [
            f"output: {self.output}",
            f"cells: {self.cells_total} in the spec, {self.cells_done_before} already landed, "
            f"{self.cells_scored} scored now, {len(self.failed)} failed",
            f"sequences scored: {self.sequences_scored:,} in {self.seconds:.1f} s ({rate:,.1f}/s)",
        ]
        for failure in self.failed:
            lines.append(
                f"FAILED cell ckpt {failure['ckpt']} x chunk {failure['chunk']} "
                f"after {failure['attempts']} tries: {failure['error']}"
            )
        return "\n".join(lines)


def resolved_spec(spec: SweepSpec) -> SweepSpec:
    """Local sources and the output as absolute paths, so Ray workers (other cwd) find them."""

    def absolute(source: str) -> str:
        return str(Path(source).expanduser().resolve()) if is_local(source) else source

    model = spec.model.model_copy(update={"source": absolute(spec.model.source)})
    data = spec.data.model_copy(update={"source": absolute(spec.data.source)})
    output = str(Path(spec.output).expanduser().resolve())
    return spec.model_copy(update={"model": model, "data": data, "output": output})


def run_sweep(spec: SweepSpec, progress: bool = True) -> SweepSummary:
    """Score every cell of `spec` not yet in its output. Ray must be initialised (see `connect`)."""
    started = time.perf_counter()
    spec = resolved_spec(spec)
    if spec.demo is not None:
        _build_demo_world(spec)
    store = ResultStore(Path(spec.output))
    store.open(spec.identity(), spec.model_dump(mode="json"), _run_info())
    plan = make_plan(spec, store.done_cells())
    summary = SweepSummary(Path(spec.output), plan.total_cells, plan.done_cells)
    log.info("plan: %d cells, %d landed, %d to do", plan.total_cells, plan.done_cells, plan.cells_to_do)
    if plan.work:
        probes = _probe_sets(spec, plan)
        _Scheduler(spec, plan, store, probes, summary, progress).run()
    for ckpt in _finished_checkpoints(spec, store.done_cells()):
        store.compact_checkpoint(ckpt)
    summary.failed = store.failures()
    summary.seconds = time.perf_counter() - started
    return summary


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join a cluster (`address`, else RAY_ADDRESS, which `ray job submit` sets) or start a private local Ray.

    `address="auto"` joins a cluster already started on this machine with `ray start`.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True)


# --- probe sets -------------------------------------------------------------------------------


@ray.remote(num_cpus=1)
def _probe_set_task(spec: SweepSpec, chunk: int) -> pl.DataFrame:
    cache = Path(spec.data.cache_dir or DEFAULT_PROBE_CACHE).expanduser()
    return load_or_build_probe_set(
        cache,
        spec.data.source,
        spec.data.file_for(chunk),
        chunk,
        spec.data.seed,
        spec.data.samples_per_chunk,
        spec.memorization.prompt_len,
        spec.memorization.continuation_len,
        spec.data.vocab_size,
    )


@dataclass
class _ProbeSet:
    frame: pl.DataFrame  # chunk, row, source (tokens dropped on the driver)
    batch_ref: ray.ObjectRef  # ProbeBatch in the object store, shared by every actor


def _probe_sets(spec: SweepSpec, plan: Plan) -> dict[int, _ProbeSet]:
    """Build (or read from cache) every needed probe set in parallel; put each in the object store once."""
    chunks = plan.chunks_needed
    task = _probe_set_task
    forwarded = _forwarded_environment()
    if forwarded:  # a Hub chunk is downloaded by this task: it needs HF_ENDPOINT/HF_TOKEN/... as actors do
        task = task.options(runtime_env={"env_vars": forwarded})
    refs = {chunk: task.remote(spec, chunk) for chunk in chunks}
    probe_sets = {}
    for chunk in tqdm(chunks, desc="probe sets", unit="chunk", disable=len(chunks) < 2, leave=False):
        frame = ray.get(refs[chunk])
        width = spec.memorization.prompt_len + spec.memorization.continuation_len
        tokens = frame["tokens"].list.to_array(width).to_numpy()  # [n, k+l], uint16 or int32
        batch = ProbeBatch(chunk=chunk, tokens=tokens)
        probe_sets[chunk] = _ProbeSet(frame.drop("tokens"), ray.put(batch))
    return probe_sets


# --- scheduling -------------------------------------------------------------------------------


class _Scheduler:
    """Hands out one checkpoint at a time per actor and collects cells as they finish."""

    def __init__(self, spec, plan, store, probes, summary, progress):
        self.spec, self.store, self.probes, self.summary = spec, store, probes, summary
        self.queue: deque[CheckpointWork] = deque(plan.work)
        self.remaining = Counter({w.ckpt: len(w.chunks) for w in plan.work})  # cells left per ckpt
        self.attempts: Counter = Counter()
        self.deaths: Counter = Counter()  # actor slot -> deaths seen
        self.in_flight: dict[ray.ObjectRef, tuple[int, int, int]] = {}  # ref -> (slot, ckpt, chunk)
        self.settings = self._settings()
        self.actors = [self._new_actor() for _ in range(self._actor_count(plan))]
        self.bar = tqdm(total=plan.cells_to_do, desc=spec.name, unit="cell", disable=not progress)

    def run(self) -> None:
        try:
            while self.queue or self.in_flight:
                self._assign_idle_actors()
                ready, _ = ray.wait(list(self.in_flight), num_returns=1)
                for ref in ready:
                    self._collect(ref)
        finally:
            self.bar.close()

    # handing out work

    def _assign_idle_actors(self) -> None:
        busy = {slot for slot, _, _ in self.in_flight.values()}
        for slot in range(len(self.actors)):
            if slot in busy or not self.queue:
                continue
            work = self.queue.popleft()
            revision = self.spec.model.revision_for(work.ckpt)
            for chunk in work.chunks:
                ref = self.actors[slot].score_cell.remote(work.ckpt, revision, self.probes[chunk].batch_ref)
                self.in_flight[ref] = (slot, work.ckpt, chunk)
            if self.queue:  # overlap the next checkpoint's download with this one's scoring
                self.actors[slot].prefetch.remote(self.spec.model.revision_for(self.queue[0].ckpt))

    def _requeue(self, ckpt: int, chunk: int) -> None:
        if self.queue and self.queue[0].ckpt == ckpt:
            self.queue[0] = CheckpointWork(ckpt, self.queue[0].chunks + (chunk,))
        else:
            self.queue.appendleft(CheckpointWork(ckpt, (chunk,)))

    # collecting results

    def _collect(self, ref: ray.ObjectRef) -> None:
        slot, ckpt, chunk = self.in_flight.pop(ref)
        try:
            output: CellOutput = ray.get(ref)
        except RayActorError as error:  # the actor process or its node died
            self.deaths[slot] += 1
            if isinstance(error, ActorDiedError) and self.deaths[slot] > ACTOR_MAX_RESTARTS:
                self.actors[slot] = self._new_actor()
                self.deaths[slot] = 0
            self._retry_or_fail(ckpt, chunk, f"actor died: {_error_summary(error)}")
            return
        except RayTaskError as error:
            self._retry_or_fail(ckpt, chunk, _message_line(error.cause) if error.cause else _error_summary(error))
            return
        self._land(output, self.attempts[(ckpt, chunk)] + 1)

    def _retry_or_fail(self, ckpt: int, chunk: int, error: str) -> None:
        self.attempts[(ckpt, chunk)] += 1
        tries = self.attempts[(ckpt, chunk)]
        if tries < self.spec.resources.max_attempts:
            log.warning("cell ckpt %d x chunk %d failed (try %d), retrying: %s", ckpt, chunk, tries, error)
            self._requeue(ckpt, chunk)
            return
        log.error("cell ckpt %d x chunk %d failed %d times, giving up: %s", ckpt, chunk, tries, error)
        self.store.record_failure(ckpt, chunk, error, tries)
        self._cell_finished(ckpt)

    def _land(self, output: CellOutput, attempts: int) -> None:
        probe = self.probes[output.chunk].frame
        sequences = probe.with_columns(**_score_columns(output, self.spec.memorization.continuation_len))
        info = {
            "seconds": output.seconds,
            "device": output.device,
            "dtype": output.dtype,
            "batch_size": output.batch_size,
            "attempts": attempts,
        }
        self.store.write_cell(output.ckpt, output.chunk, sequences, info)
        self.summary.cells_scored += 1
        self.summary.sequences_scored += probe.height
        if output.loaded_now:
            self.summary.loads[output.ckpt] += 1
            log.info("ckpt %d loaded on %s (%s) in %.1f s", output.ckpt, output.host, output.device, output.load_seconds)
        self.bar.update(1)
        elapsed = self.bar.format_dict["elapsed"] or 1e-9
        self.bar.set_postfix(seq_s=f"{self.summary.sequences_scored / elapsed:,.0f}")
        self._cell_finished(output.ckpt)

    def _cell_finished(self, ckpt: int) -> None:
        self.remaining[ckpt] -= 1
        if self.remaining[ckpt] == 0:
            self.store.compact_checkpoint(ckpt)
            cells = self.store.cells().filter(pl.col("ckpt") == ckpt).collect()
            if cells.height:
                score = cells["score"].mean()
                self.bar.write(
                    f"ckpt {ckpt}: {cells.height} cells landed, mean score "
                    f"{score if score is None else f'{score:.4f}'}, full-match rate "
                    f"{cells['full_match_rate'].mean():.4f}"
                )

    # actors

    def _settings(self) -> ScorerSettings:
        memorization = self.spec.memorization
        options = ScoringOptions(
            prompt_len=memorization.prompt_len,
            continuation_len=memorization.continuation_len,
            mode=memorization.mode,
            eos_policy=memorization.eos,
            with_nll=memorization.nll,
        )
        return ScorerSettings(
            model_source=self.spec.model.source,
            dtype=self.spec.model.dtype,
            options=options,
            batch_size=self.spec.resources.batch_size,
            device=self.spec.resources.device,
            attn_implementation=self.spec.model.attn_implementation,
            torch_threads=max(1, int(self.spec.resources.cpus_per_actor)),
        )

    def _gpus_per_actor(self) -> float:
        wanted = self.spec.resources.gpus_per_actor
        if wanted == "auto":
            return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return float(wanted)

    def _actor_count(self, plan: Plan) -> int:
        wanted = self.spec.resources.actors
        if wanted == "auto":
            gpus = self._gpus_per_actor()
            cluster_gpus = ray.cluster_resources().get("GPU", 0)
            wanted = max(1, int(cluster_gpus // gpus)) if gpus else 1
        return max(1, min(int(wanted), len(plan.work)))

    def _new_actor(self):
        options = dict(
            num_gpus=self._gpus_per_actor(),
            num_cpus=self.spec.resources.cpus_per_actor,
            max_restarts=ACTOR_MAX_RESTARTS,
            # Ray re-runs calls that were in flight (or queued) when the actor died, on the restarted
            # actor; only when it gives up does the scheduler see the error and count a try.
            # -1: until the actor is dead for good (max_restarts spent), not a count. After a node loss
            # each retry fails at once against the dead address until the GCS declares the node dead
            # (15 s+ by default), so a count ran out in ~5 s and the cell was recorded failed.
            max_task_retries=-1,
        )
        forwarded = _forwarded_environment()
        if forwarded:
            options["runtime_env"] = {"env_vars": forwarded}
        return CheckpointScorer.options(**options).remote(self.settings)


def _score_columns(output: CellOutput, continuation_len: int) -> dict[str, pl.Series]:
    scores = output.scores
    matches = scores.matches
    columns = {
        "matches": pl.Series(matches, dtype=pl.Int16) if matches is not None else pl.lit(None, pl.Int16),
        "score": pl.Series((matches / continuation_len).astype(np.float32)) if matches is not None else pl.lit(None, pl.Float32),
        "full_match": pl.Series(scores.full_match, dtype=pl.Boolean),
        "prefix_match": pl.Series(scores.prefix_match, dtype=pl.Int16),
        "match_mask": pl.Series([bytes(row) for row in scores.match_mask], dtype=pl.Binary)
        if scores.match_mask is not None
        else pl.lit(None, pl.Binary),
        "nll": pl.Series(scores.nll, dtype=pl.Float32) if scores.nll is not None else pl.lit(None, pl.Float32),
        "tf_accuracy": pl.Series(scores.tf_accuracy, dtype=pl.Float32)
        if scores.tf_accuracy is not None
        else pl.lit(None, pl.Float32),
    }
    return columns


def _finished_checkpoints(spec: SweepSpec, done: set[tuple[int, int]]) -> list[int]:
    wanted: dict[int, set[int]] = {}
    for ckpt, chunk in spec.cell_list():
        wanted.setdefault(ckpt, set()).add(chunk)
    return [ckpt for ckpt, chunks in wanted.items() if all((ckpt, c) in done for c in chunks)]


def _forwarded_environment() -> dict[str, str]:
    """Hub settings (endpoint, token, cache) and memsweep's own variables reach actors and probe-set tasks
    on every node."""
    prefixes = ("HF_", "HUGGING_FACE_", "MEMSWEEP_")
    return {key: value for key, value in os.environ.items() if key.startswith(prefixes)}


def _error_summary(error: BaseException) -> str:
    """The last line of an error's text: Ray puts the remote traceback first and the message last."""
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]


def _message_line(error: BaseException) -> str:
    """A remote exception's whole message on one line: its first line is often the one that names what failed
    (transformers: "<repo> is not a valid model identifier ...", then a hint about tokens)."""
    return " ".join(str(error).split())[:500] or type(error).__name__


def _build_demo_world(spec: SweepSpec) -> None:
    from sweep.demo import DemoWorldConfig, ensure_demo_world

    config = DemoWorldConfig(**spec.demo.model_dump())
    ensure_demo_world(config, Path(spec.model.source), Path(spec.data.source))


def _run_info() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "versions": {name: version(name) for name in ("memsweep", "torch", "transformers", "ray", "polars")},
        "ray_address": os.environ.get("RAY_ADDRESS"),
        "cluster_resources": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
    }

