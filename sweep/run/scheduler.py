"""Scheduling cells onto checkpoint actors on Ray: busy actors, prefetch where it is used, retries, a short tail.

The slots and the tail policy are sweep/run/assignments.py's (pure); this module is the loop around them: it starts
actors, submits cells (at most WINDOW in flight per actor: one scoring, one queued behind it, and only once the
chunk's probe set is ready, so scoring starts with the first probe set), tells an actor to prefetch its reserved
next checkpoint once its current one is loaded, collects results and errors, retries, and hands results to the
landing buffer (sweep/run/landing.py). It returns what happened (`ScheduleStats`) instead of reporting it.

Failures: a cell whose actor died (process killed, node lost) or that raised is re-queued, up to
`resources.max_attempts` tries; then it is recorded in `failures/` and the sweep goes on. A checkpoint that
cannot be fetched or loaded max_attempts times fails all its cells at once; a chunk whose probe set cannot be
built fails its cells and nothing else; a cell whose input is wrong (a token id the model cannot embed) fails
at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from tqdm import tqdm

from actors.protocol import (CellInputError, CellOutput, CheckpointError, CheckpointTarget, CudaContextLost,
                             ScorerSettings, one_line)
from sweep.run.assignments import STEAL_MIN_CELLS, Assignment, Slot, take_from_busy
from sweep.errors import SweepAbortedError
from sweep.run.landing import LAND_MAX_WAIT_S, Landing, scored_cell
from sweep.run.plan import CheckpointWork, Plan
from sweep.data.probe_supply import ProbeSupply
from sweep.data.sources import CheckpointUnresolvedError, pin_checkpoint
from sweep.spec import SweepSpec
from sweep.landed.store import ResultStore

log = logging.getLogger("memsweep")

ACTOR_MAX_RESTARTS = 3
WINDOW = 2  # cells in flight per actor: the GPU never waits for the driver between two cells
ESTIMATE_WINDOW = 256  # the tail estimates use the medians of the latest cells and loads (a full history's
# median is recomputed for every idle actor at every wake-up in the tail: ~2 ms each at 129,600 cells)


@dataclass
class ScheduleStats:
    """What a schedule did, for the sweep's summary."""

    cells_scored: int = 0
    sequences_scored: int = 0
    loads: Counter = field(default_factory=Counter)  # ckpt -> times loaded
    prefetched_elsewhere: int = 0  # reservations loaded by another actor by accident (a bug if ever > 0)
    reservations_taken: int = 0  # reservations an idle actor took on purpose at the tail (holder's copy discarded)
    first_cell_landed_at: float | None = None  # seconds after the sweep started
    probe_sets_ready_at_first_cell: int | None = None  # how many existed when the first cell was handed out
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)


class BackgroundWork(Protocol):
    """Ray tasks the loop waits on beside the actors' cells (sweep/data/probe_supply.py, sweep/exposures/scans.py)."""

    @property
    def done(self) -> bool: ...

    def pump(self) -> None: ...

    def refs(self) -> list[ray.ObjectRef]: ...

    def owns(self, ref: ray.ObjectRef) -> bool: ...

    def collect(self, ref: ray.ObjectRef) -> None: ...


def drain(background: list[BackgroundWork]) -> None:
    """Run background work to its end, with no actor (the cells are done, or there were none to do)."""
    while not all(work.done for work in background):
        for work in background:
            work.pump()
        refs = [ref for work in background for ref in work.refs()]
        if not refs:
            if all(work.done for work in background):
                break
            raise RuntimeError("background work stalled with nothing in flight")
        ready, _ = ray.wait(refs, num_returns=1)
        for ref in ready:
            next(work for work in background if work.owns(ref)).collect(ref)


class Scheduler:
    """`supply` delivers the probe sets cells need; `settings` is what every actor is told (built from the spec by
    sweep/run/scorer_settings.py, its `gpus_per_actor` resolved); `background` is other work to keep going meanwhile
    (exposure scans): pumped and collected while actors score, left to `drain` once the cells are done."""

    def __init__(self, spec: SweepSpec, plan: Plan, store: ResultStore, supply: ProbeSupply, started: float,
                 progress: bool, scorer_cls, settings: ScorerSettings, environment: dict[str, str],
                 background: list[BackgroundWork] = ()):
        self.spec, self.store, self.supply, self.started = spec, store, supply, started
        self.timeline = spec.timeline_positions()
        self.background = [supply, *background]
        self.scorer_cls, self.settings, self.environment = scorer_cls, settings, environment
        self.gpus = settings.gpus_per_actor
        self.stats = ScheduleStats()
        self.landing = Landing(store)
        self.queue: deque[CheckpointWork] = deque(plan.work)
        self.remaining = Counter({w.ckpt: len(w.chunks) for w in plan.work})  # cells not yet settled
        self.attempts: Counter = Counter()  # (ckpt, chunk) -> failed tries
        self.load_failures: Counter = Counter()  # ckpt -> failed fetches/loads
        self.dead_checkpoints: dict[int, tuple[str, int]] = {}  # ckpt -> (error, tries): its cells all fail
        self.fingerprints = {pin.weights_fingerprint: ckpt for ckpt, pin in store.ledgers.pins().items()
                             if pin.weights_fingerprint}
        self.owner: dict[ray.ObjectRef, tuple[Slot, Assignment]] = {}
        self.cell_seconds: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self.load_seconds: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self.slots = [Slot(i, self._new_actor()) for i in range(self._actor_count(plan))]
        self.bar = tqdm(total=plan.cells_to_do, desc=spec.name, unit="cell", disable=not progress)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> ScheduleStats:
        try:
            while True:
                for work in self.background:
                    work.pump()
                self._assign()
                if not self._has_work():
                    # The cells are done: never wait here on background work alone (exposure scans may need the
                    # CPUs these actors hold); `drain` finishes it once the actors are released.
                    break
                refs = list(self.owner) + [ref for work in self.background for ref in work.refs()]
                if not refs:  # nothing in flight and nothing can start: a bug, not a wait
                    raise RuntimeError(f"scheduler stalled with {sum(self.remaining.values())} cells left")
                timeout = LAND_MAX_WAIT_S if self.landing.cells_waiting else None
                ray.wait(refs, num_returns=1, timeout=timeout)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if ref in self.owner:
                        self._collect(ref)
                    else:
                        next(work for work in self.background if work.owns(ref)).collect(ref)
                self._land()
            self._land(everything=True)
        finally:
            if self.landing.cells_waiting:  # Ctrl-C or an error: keep what the GPUs already computed
                try:
                    self._land(everything=True)
                except Exception as error:  # noqa: BLE001 - the original exception matters more
                    log.error("could not land %d waiting results: %s", self.landing.cells_waiting, one_line(error))
            self.bar.close()
            self._release_actors()
        return self.stats

    def _has_work(self) -> bool:
        return bool(self.queue or self.owner or any(s.current or s.next for s in self.slots))

    # ---- handing out work ---------------------------------------------------------------------

    def _assign(self) -> None:
        for slot in self.slots:
            while self._assign_slot(slot):
                pass  # the work just taken was all failed chunks: settled, take more

    def _assign_slot(self, slot: Slot) -> bool:
        """Give the slot work and fill its window; True if what it holds settled without running anything."""
        for assignment in (slot.current, slot.next):
            if assignment is not None:
                self._drop_failed_chunks(assignment)
        if slot.current is not None and slot.current.settled:
            slot.current = None
        if slot.current is None:
            slot.current, slot.next = slot.next or self._take_work(slot), None
            if slot.current is None:
                return False
            if slot.current.reserved_by not in (None, slot.index):
                self.stats.prefetched_elsewhere += 1
        if slot.next is None and self.queue:
            slot.next = self._pop_assignment()  # its prefetch starts once the current one is loaded
            if slot.next is not None:
                slot.next.reserved_by = slot.index
        self._drop_failed_chunks(slot.current)
        self._fill(slot)
        return slot.current.settled

    def _pop_assignment(self) -> Assignment | None:
        while self.queue:
            work = self.queue.popleft()
            model, pin = self.spec.model, self.store.ledgers.pin(work.ckpt)
            try:
                pinned = pin_checkpoint(model.source, work.ckpt, self.spec.revision_for(work.ckpt),
                                        pin.model_commit if pin else None)
            except CheckpointUnresolvedError as error:
                for chunk in work.chunks:
                    self._fail_cell(work.ckpt, chunk, str(error), self.spec.resources.max_attempts)
                continue
            if pinned.warning:
                self.stats.warn(pinned.warning)
            return Assignment(pinned.target, list(work.chunks))
        return None

    def _take_work(self, idle: Slot) -> Assignment | None:
        popped = self._pop_assignment()
        if popped is not None:
            return popped
        taken = take_from_busy(self.slots, idle, self._cell_estimate(), self._load_estimate())
        if taken is None:
            return None
        if taken.from_reservation:
            if taken.prefetch_to_discard is not None:  # its prefetched copy would sit on disk until the end
                taken.holder.actor.discard.remote(taken.prefetch_to_discard)
            self.stats.reservations_taken += 1
        else:
            log.info("splitting ckpt %d: %d of its %d cells to another actor", taken.assignment.target.ckpt,
                     len(taken.assignment.todo), len(taken.assignment.todo) + taken.holder.current.cells_left)
        return taken.assignment

    def _fill(self, slot: Slot) -> None:
        assignment = slot.current
        while len(assignment.in_flight) < WINDOW:
            chunk = next((c for c in assignment.todo if c in self.supply.ready), None)
            if chunk is None:
                return
            assignment.todo.remove(chunk)
            if self.stats.probe_sets_ready_at_first_cell is None:
                self.stats.probe_sets_ready_at_first_cell = len(self.supply.ready)
            ref = slot.actor.score_cell.remote(assignment.target, self.supply.ready[chunk].batch_ref)
            assignment.in_flight[ref] = chunk
            self.owner[ref] = (slot, assignment)

    def _drop_failed_chunks(self, assignment: Assignment) -> None:
        if not self.supply.failed:  # the common case; this runs for every slot at every wake-up
            return
        for chunk in [c for c in assignment.todo if c in self.supply.failed]:
            assignment.todo.remove(chunk)
            self._fail_cell(assignment.target.ckpt, chunk, self.supply.failed[chunk], 1)

    # ---- collecting results -------------------------------------------------------------------

    def _collect(self, ref: ray.ObjectRef) -> None:
        slot, assignment = self.owner.pop(ref)
        chunk = assignment.in_flight.pop(ref)
        ckpt = assignment.target.ckpt
        try:
            output: CellOutput = ray.get(ref)
        except RayActorError as error:  # the actor process or its node died, and Ray gave up on the call
            if "creation task" in str(error):  # the actor cannot even start here: retrying would loop forever
                raise SweepAbortedError(f"the checkpoint actor cannot start: {one_line(error)}") from None
            slot.deaths += 1
            if isinstance(error, ActorDiedError) and slot.deaths > ACTOR_MAX_RESTARTS:
                slot.actor, slot.deaths = self._new_actor(), 0
            self._retry_or_fail(assignment, chunk, f"actor died: {one_line(error, 'last')}")
            return
        except RayTaskError as error:
            cause = error.cause
            message = one_line(cause) if cause is not None else one_line(error, "last")
            if isinstance(cause, CudaContextLost):  # the actor is exiting; Ray restarts it (counted as a death)
                slot.deaths += 1
                self._retry_or_fail(assignment, chunk, message)
            elif isinstance(cause, CheckpointError):
                self._checkpoint_failed(assignment, chunk, message)
            elif isinstance(cause, CellInputError):  # deterministic: another try would fail the same way
                self._fail_cell(ckpt, chunk, message, self.attempts[(ckpt, chunk)] + 1)
            else:
                self._retry_or_fail(assignment, chunk, message)
            return
        probe = self.supply.ready[chunk]
        self.landing.add(ckpt, scored_cell(output, self.attempts[(ckpt, chunk)] + 1, probe.frame, probe.data_file,
                                           probe.sha256, self.spec.memorization.continuation_len, self.timeline))
        self.cell_seconds.append(output.seconds)
        upcoming = slot.next
        if upcoming is not None and not upcoming.prefetch_sent and slot.current is assignment:
            # The current checkpoint is loaded: download the next one now, on this actor's node. (Not earlier:
            # at the start every actor fetches its first checkpoint, and a second download would halve that.)
            slot.actor.prefetch.remote(upcoming.target)
            upcoming.prefetch_sent = True
        if output.loaded_now:
            self.stats.loads[ckpt] += 1
            if assignment.reserved_by != slot.index:  # not prefetched here: the load downloaded it too
                self.load_seconds.append(output.loaded.load_seconds)
            log.info("ckpt %d loaded on %s (%s) in %.1f s", ckpt, output.host, output.device,
                     output.loaded.load_seconds)
        self._check_fingerprint(ckpt, output.loaded.weights_fingerprint)

    def _check_fingerprint(self, ckpt: int, fingerprint: str) -> None:
        twin = self.fingerprints.setdefault(fingerprint, ckpt)
        if twin != ckpt:
            revision_for = self.spec.revision_for
            self.stats.warn(f"checkpoints {twin} and {ckpt} carry identical weights (fingerprint {fingerprint}): "
                            f"revisions {revision_for(twin)!r} and {revision_for(ckpt)!r} may be one checkpoint "
                            "published twice")

    def _retry_or_fail(self, assignment: Assignment, chunk: int, error: str) -> None:
        ckpt = assignment.target.ckpt
        self.attempts[(ckpt, chunk)] += 1
        tries = self.attempts[(ckpt, chunk)]
        if tries < self.spec.resources.max_attempts:
            log.warning("cell ckpt %d x chunk %d failed (try %d), retrying: %s", ckpt, chunk, tries, error)
            assignment.todo.insert(0, chunk)
            return
        log.error("cell ckpt %d x chunk %d failed %d times, giving up: %s", ckpt, chunk, tries, error)
        self._fail_cell(ckpt, chunk, error, tries)

    def _checkpoint_failed(self, assignment: Assignment, chunk: int, error: str) -> None:
        """A fetch or load failed: every cell of the checkpoint would meet it, so tries count per checkpoint."""
        ckpt = assignment.target.ckpt
        if ckpt in self.dead_checkpoints:  # a cell that was in flight when its checkpoint was given up
            self._fail_cell(ckpt, chunk, *self.dead_checkpoints[ckpt])
            return
        self.load_failures[ckpt] += 1
        self.attempts[(ckpt, chunk)] += 1
        if self.load_failures[ckpt] < self.spec.resources.max_attempts:
            log.warning("checkpoint %d failed to load (try %d), retrying: %s", ckpt, self.load_failures[ckpt], error)
            assignment.todo.insert(0, chunk)
            return
        tries = self.load_failures[ckpt]
        self.dead_checkpoints[ckpt] = (error, tries)
        log.error("checkpoint %d failed to load %d times, failing its cells: %s", ckpt, tries, error)
        self._fail_cell(ckpt, chunk, error, tries)
        for other in self._assignments_of(ckpt):
            for todo_chunk in other.todo:
                self._fail_cell(ckpt, todo_chunk, error, tries)
            other.todo.clear()

    def _assignments_of(self, ckpt: int) -> list[Assignment]:
        found = [a for s in self.slots for a in (s.current, s.next) if a is not None and a.target.ckpt == ckpt]
        queued = [w for w in self.queue if w.ckpt == ckpt]
        for work in queued:
            self.queue.remove(work)
            found.append(Assignment(CheckpointTarget(ckpt, "", None), list(work.chunks)))
        return found

    def _fail_cell(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        self.store.record_failure(ckpt, chunk, error, attempts)
        self._settle(ckpt)

    # ---- landing ------------------------------------------------------------------------------

    def _land(self, everything: bool = False) -> None:
        landed = self.landing.land(self.remaining, everything)
        for ckpt, chunk, error, attempts in landed.refused:
            self._fail_cell(ckpt, chunk, error, attempts)
        for ckpt, cell in landed.cells:
            self.stats.cells_scored += 1
            self.stats.sequences_scored += cell.sequences.height
            if self.stats.first_cell_landed_at is None:
                self.stats.first_cell_landed_at = time.perf_counter() - self.started
            self._settle(ckpt)
        if landed.cells:
            self.bar.update(len(landed.cells))
            elapsed = self.bar.format_dict["elapsed"] or 1e-9
            self.bar.set_postfix(seq_s=f"{self.stats.sequences_scored / elapsed:,.0f}",
                                 probes=f"{len(self.supply.ready)}/{self.supply.total}")

    def _settle(self, ckpt: int) -> None:
        self.remaining[ckpt] -= 1
        if self.remaining[ckpt] == 0:
            self.landing.finish(ckpt)
            cells = self.store.reader().cells(ckpt).collect()
            if cells.height:
                score = cells["score"].mean()  # null in extractable mode (matches are not counted there)
                scored = f"mean score {score:.4f}, " if score is not None else ""
                self.bar.write(f"ckpt {ckpt}: {cells.height} cells landed, {scored}full-match rate "
                               f"{cells['full_match_rate'].mean():.4f}")

    # ---- statistics for the tail --------------------------------------------------------------

    def _cell_estimate(self) -> float:
        return float(np.median(self.cell_seconds)) if self.cell_seconds else 1.0

    def _load_estimate(self) -> float:
        """What starting a checkpoint costs an actor that did not prefetch it (download + load): the price of
        every tail hand-off, so only such loads are counted. A prefetched load skips the download (27 GB for
        Amber); splitting on its price made idle actors download for longer than the half they took saved."""
        # Before any load was measured, assume a load is worth STEAL_MIN_CELLS cells: splits stay rare.
        return float(np.median(self.load_seconds)) if self.load_seconds else STEAL_MIN_CELLS * self._cell_estimate()

    # ---- actors -------------------------------------------------------------------------------

    def _actor_count(self, plan: Plan) -> int:
        wanted = self.spec.resources.actors
        if wanted == "auto":
            cluster_gpus = ray.cluster_resources().get("GPU", 0)
            wanted = max(1, int(cluster_gpus // self.gpus)) if self.gpus else 1
        return max(1, min(int(wanted), plan.cells_to_do))

    def _new_actor(self):
        options = actor_options(self.gpus, self.spec.resources.cpus_per_actor, self.environment)
        return self.scorer_cls.options(**options).remote(self.settings)

    def _release_actors(self) -> None:
        """Let every actor free its model and delete the downloads it still holds (prefetched, unused), then end
        it: its GPU and CPUs go back to the cluster now (exposure scans may still be waiting for a CPU), not when
        Python happens to collect the last handle."""
        refs = [slot.actor.release.remote() for slot in self.slots]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=120)
        except Exception:  # noqa: BLE001 - best effort: a dead actor holds nothing
            pass
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def actor_options(gpus: float, cpus: float, environment: dict[str, str]) -> dict:
    """Ray options of a checkpoint actor holding `gpus` GPUs (0: a CPU actor) and `cpus` CPUs, with `environment`."""
    options = dict(
        num_gpus=gpus,
        num_cpus=cpus,
        max_restarts=ACTOR_MAX_RESTARTS,
        # Ray re-runs calls that were in flight (or queued) when the actor died, on the restarted
        # actor; only when it gives up does the scheduler see the error and count a try.
        # -1: until the actor is dead for good (max_restarts spent), not a count. After a node loss
        # each retry fails at once against the dead address until the GCS declares the node dead
        # (15 s+ by default), so a count ran out in ~5 s and the cell was recorded failed.
        max_task_retries=-1,
    )
    if not gpus:
        # Ray 2.60 leaves a zero-GPU actor the node's CUDA_VISIBLE_DEVICES (ray-project/ray#54868): it would see,
        # and could use, GPUs that other actors hold. Hide them.
        environment = {**environment, "CUDA_VISIBLE_DEVICES": ""}
    if environment:
        options["runtime_env"] = {"env_vars": environment}
    return options
