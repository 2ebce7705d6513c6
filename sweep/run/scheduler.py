"""Scheduling cells onto checkpoint actors on Ray: a planned assignment, prefetch where it is used, retries.

The plan, the slots and the tail policy are sweep/run/assignments.py's (pure), the pacing of prefetches, probe
builds and scans sweep/run/pacing.py's (pure); this module is the loop around them: it starts actors, plans every
slot's shares from the unit costs known so far and plans again as measured ones arrive (whenever a slot reserves
its next share), submits cells (at most WINDOW in flight per actor: one scoring, two queued behind it, and only
once the chunk's probe set is ready, so scoring starts with the first probe set), tells an actor to prefetch its
reserved next share when that is due, collects results and errors, retries, and hands results to the landing
buffer (sweep/run/landing.py). It returns what happened (`ScheduleStats`) instead of reporting it.

The actors' next cells come first: the driver's slower chores (landing results, compacting finished checkpoints,
taking the probe sets and scans that came back) run after them, at most CHORE_SLICE_S a pass, so a pile of them
(the checkpoints of one round finish together; probe sets arrive in bursts) never leaves an actor without a cell.

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

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError
from tqdm import tqdm

from actors.protocol import (CellInputError, CellOutput, CheckpointError, CheckpointTarget, CudaContextLost,
                             ScorerSettings, one_line)
from sweep.run.assignments import (Assignment, Share, Slot, across_nodes, busy_seconds, plan_shares,
                                   planned_end_s, pooled_shares, seconds_left, take_from_busy,
                                   take_loaded_cells)
from sweep.errors import SweepAbortedError
from sweep.run.bound import Cluster
from sweep.run.landing import LAND_MAX_WAIT_S, Landing, scored_cell
from sweep.run.pacing import Pacing, UnitCosts, scan_task_seconds
from sweep.run.plan import Plan
from sweep.data.probe_supply import ProbeSupply
from sweep.data.sources import CheckpointUnresolvedError, pin_checkpoint
from sweep.spec import SweepSpec
from sweep.landed.store import ResultStore

log = logging.getLogger("memsweep")

ACTOR_MAX_RESTARTS = 3
WINDOW = 3  # cells in flight per actor: one scoring, two queued, so the GPU rides out two cells of driver work
CHORE_SLICE_S = 0.1  # seconds of landings, compactions and background results per pass of the loop (at least one)
REPLAN_SPREAD = 4  # cells: a slot that would end further than this from when the plan said is planned again ...
REPLAN_COST_CHANGE = 0.02  # ... as are all when a measured unit cost moved this much (relative) since the plan


@dataclass
class ScheduleStats:
    """What a schedule did, for the sweep's summary."""

    cells_scored: int = 0
    sequences_scored: int = 0
    loads: Counter = field(default_factory=Counter)  # ckpt -> times loaded
    prefetched_elsewhere: int = 0  # reservations loaded by another actor by accident (a bug if ever > 0)
    reservations_taken: int = 0  # reservations an idle actor took on purpose at the tail (holder's copy discarded)
    actors: int = 0
    splits: int = 0  # checkpoints split by the tail policy (beyond the plan's shares)
    loaded_shares: int = 0  # cells an idle actor took, at no load, of the checkpoint it still held
    plans: int = 0  # times the shares were planned
    planned_makespan_s: float | None = None  # the first plan's makespan (from its start, first download excluded)
    costs: UnitCosts | None = None  # the unit costs measured (medians), for the summary's bound
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
                 progress: bool, scorer_cls, settings: ScorerSettings, environment: dict[str, str], cluster: Cluster,
                 costs: UnitCosts, background: list[BackgroundWork] = (), scans=None):
        self.spec, self.store, self.supply, self.started = spec, store, supply, started
        self.timeline = spec.timeline_positions()
        self.background = [supply, *background]
        self.scans = scans  # sweep/exposures/scans.py ExposureScans among `background`, paced here (or None)
        self.scorer_cls, self.settings, self.environment = scorer_cls, settings, environment
        self.gpus = settings.gpus_per_actor
        self.stats = ScheduleStats(costs=costs)
        self.costs = costs
        self.landing = Landing(store)
        self.finishing: deque[int] = deque()  # checkpoints whose cells all settled, to compact (a chore)
        self.chunk_order = {w.ckpt: w.chunks for w in plan.work}  # plan order, for planning again
        self.remaining = Counter({w.ckpt: len(w.chunks) for w in plan.work})  # cells not yet settled
        self.attempts: Counter = Counter()  # (ckpt, chunk) -> failed tries
        self.load_failures: Counter = Counter()  # ckpt -> failed fetches/loads
        self.dead_checkpoints: dict[int, tuple[str, int]] = {}  # ckpt -> (error, tries): its cells all fail
        self.targets: dict[int, CheckpointTarget | str] = {}  # ckpt -> pinned target, or why it cannot be pinned
        self.fingerprints = {pin.weights_fingerprint: ckpt for ckpt, pin in store.ledgers.pins().items()
                             if pin.weights_fingerprint}
        self.owner: dict[ray.ObjectRef, tuple[Slot, Assignment]] = {}
        self.prefetching: dict[ray.ObjectRef, tuple[Assignment, float | None]] = {}  # prefetches not yet returned
        self.slots = [Slot(i, self._new_actor()) for i in range(self._actor_count(plan))]
        self.stats.actors = len(self.slots)
        self.pacing = Pacing(spec, cluster, len(self.slots), float(spec.resources.cpus_per_actor))
        self.planned: list[deque[Share]] = [deque() for _ in self.slots]
        self.plan_ends_at = started  # when the latest plan ends (perf_counter clock)
        self._plan([(w.ckpt, w.chunks) for w in plan.work])
        self.stats.planned_makespan_s = self.plan_ends_at - time.perf_counter()
        self.bar = tqdm(total=plan.cells_to_do, desc=spec.name, unit="cell", disable=not progress)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> ScheduleStats:
        """The loop. Each pass: hand out work, wait for something to come back, take the actors' results, hand out
        their next cells, then do the driver's chores (landing results, compacting finished checkpoints, taking
        probe sets and scans that came back) for at most CHORE_SLICE_S, so that the actors' next cells never wait
        behind a pile of them: what is left waits for the next pass, which then does not sleep in `ray.wait`."""
        try:
            while True:
                self._assign()
                self._send_due_prefetches()
                self._pace()
                for work in self.background:
                    work.pump()
                if not self._has_work():
                    # The cells are done: never wait here on background work alone (exposure scans may need the
                    # CPUs these actors hold); `drain` finishes it once the actors are released.
                    break
                refs = [*self.owner, *self.prefetching] + [ref for work in self.background for ref in work.refs()]
                if not refs:  # nothing in flight and nothing can start: a bug, not a wait
                    raise RuntimeError(f"scheduler stalled with {sum(self.remaining.values())} cells left")
                timeout = LAND_MAX_WAIT_S if self.landing.cells_waiting else None
                if any(s.current is not None and not (s.next and s.next.prefetch_sent) for s in self.slots):
                    timeout = min(timeout or LAND_MAX_WAIT_S, self.costs.cell_s)  # a prefetch may come due
                if self.finishing or self.landing.due(self.remaining):
                    timeout = 0  # chores left from the last pass
                ray.wait(refs, num_returns=1, timeout=timeout)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                background_ready = []
                for ref in ready:
                    if ref in self.owner:
                        self._collect(ref)
                    elif ref in self.prefetching:
                        self._prefetched(ref)
                    else:
                        background_ready.append(ref)
                self._assign()  # the actors' next cells first
                self._chores(background_ready, time.perf_counter() + CHORE_SLICE_S)
            self._land(everything=True)
            self._finish_checkpoints()
        finally:
            if self.landing.cells_waiting:  # Ctrl-C or an error: keep what the GPUs already computed
                try:
                    self._land(everything=True)
                except Exception as error:  # noqa: BLE001 - the original exception matters more
                    log.error("could not land %d waiting results: %s", self.landing.cells_waiting, one_line(error))
            self.bar.close()
            self._release_actors()
        return self.stats

    def _chores(self, background_ready: list[ray.ObjectRef], deadline: float) -> None:
        """Background results, landings and compactions until `deadline` (perf_counter), at least one of each kind
        that has any. A background result not taken now is still ready at the next `ray.wait`."""
        for index, ref in enumerate(background_ready):
            if index and time.perf_counter() > deadline:
                break
            next(work for work in self.background if work.owns(ref)).collect(ref)
        self._land(deadline=deadline)
        self._finish_checkpoints(deadline)

    def _has_work(self) -> bool:
        return bool(self.owner or any(s.current or s.next for s in self.slots) or any(self.planned))

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
            if not slot.current.prefetch_sent:  # its first checkpoint, or one handed over: fetch it now
                self._prefetch(slot, slot.current, for_load=True)
            if slot.current.reserved_by not in (None, slot.index):
                self.stats.prefetched_elsewhere += 1
        self._drop_failed_chunks(slot.current)
        self._fill(slot)
        return slot.current.settled

    # ---- the plan -------------------------------------------------------------------------------

    def _plan(self, pending: list[tuple[int, tuple[int, ...]]]) -> None:
        """Every slot's shares of `pending`, from the unit costs known now (sweep/run/assignments.py plan_shares)."""
        cell_s, load_s = self.costs.cell_s, self.costs.load_s
        order = across_nodes(len(self.slots), self.pacing.cluster.gpus_per_node)
        busy = [busy_seconds(self.slots[index], cell_s, load_s) for index in order]
        shares = plan_shares(pending, busy, cell_s, load_s, self.costs.download_s)
        self.planned = [deque() for _ in self.slots]
        for index, slot_shares in zip(order, shares):
            self.planned[index] = deque(slot_shares)
        self.stats.plans += 1
        ends = [planned_end_s(slot_shares, b, cell_s, load_s) for slot_shares, b in zip(shares, busy)]
        now = time.perf_counter()
        self.plan_ends_at = now + max(ends, default=0.0)
        self.plan_costs = cell_s, load_s
        self.planned_ends_at = [0.0] * len(self.slots)  # when each slot ends its plan (perf_counter clock)
        for index, end in zip(order, ends):
            self.planned_ends_at[index] = now + end

    def _reserve(self, slot: Slot) -> Assignment | None:
        """The slot's next planned share. The shares are planned again first when the plan no longer ends together
        at the costs measured since (see `_plan_holds`), and this slot has a share planned or is idle (others may
        have some)."""
        if not self.planned[slot.index] and slot.current is not None:
            return None  # the end of this slot's plan: it finishes its current share
        if any(self.planned) and not self._plan_holds(slot):
            self._plan(pooled_shares(self.planned, self.chunk_order))
        while self.planned[slot.index]:
            share = self.planned[slot.index].popleft()
            target = self._target(share.ckpt, share.chunks)
            if target is not None:
                return Assignment(target, list(share.chunks))
        return None

    def _plan_holds(self, slot: Slot) -> bool:
        """Whether the plan still holds for `slot`: the unit costs are within REPLAN_COST_CHANGE of those it was made
        with, and the slot ends within REPLAN_SPREAD cells of when it planned (nor is the slot idle with nothing
        planned). A plan made again moves its split points, and a split is a load paid: planning again only when the
        plan drifted keeps the splits to about one per slot."""
        if slot.current is None and not self.planned[slot.index]:
            return False
        cell_s, load_s = self.costs.cell_s, self.costs.load_s
        planned_cell_s, planned_load_s = self.plan_costs
        if abs(cell_s / planned_cell_s - 1) > REPLAN_COST_CHANGE or abs(load_s / planned_load_s - 1) > REPLAN_COST_CHANGE:
            return False
        ends_at = time.perf_counter() + planned_end_s(self.planned[slot.index], busy_seconds(slot, cell_s, load_s),
                                                      cell_s, load_s)
        return abs(ends_at - self.planned_ends_at[slot.index]) <= REPLAN_SPREAD * cell_s

    def _target(self, ckpt: int, chunks: tuple[int, ...]) -> CheckpointTarget | None:
        """The checkpoint pinned to its commit (once per checkpoint); None, with `chunks` failed, if it cannot be."""
        if ckpt not in self.targets:
            model, pin = self.spec.model, self.store.ledgers.pin(ckpt)
            try:
                pinned = pin_checkpoint(model.source, ckpt, self.spec.revision_for(ckpt),
                                        pin.model_commit if pin else None)
                if pinned.warning:
                    self.stats.warn(pinned.warning)
                self.targets[ckpt] = pinned.target
            except CheckpointUnresolvedError as error:
                self.targets[ckpt] = str(error)
        target = self.targets[ckpt]
        if isinstance(target, str):
            for chunk in chunks:
                self._fail_cell(ckpt, chunk, target, self.spec.resources.max_attempts)
            return None
        return target

    def _take_work(self, idle: Slot) -> Assignment | None:
        planned = self._reserve(idle)
        if planned is not None:
            return planned
        taken = (take_loaded_cells(self.slots, idle, self.costs.cell_s, self.costs.load_s)
                 or take_from_busy(self.slots, idle, self.costs.cell_s, self.costs.handover_s))
        if taken is None:
            return None
        if taken.prefetch_to_discard is not None:  # its prefetched copy would sit on disk until the end
            taken.holder.actor.discard.remote(taken.prefetch_to_discard)
        if taken.assignment.loaded:  # cells of the checkpoint its actor holds: nothing to fetch or load
            self.stats.loaded_shares += 1
            log.info("ckpt %d: %d cells to an actor that still holds it", taken.assignment.target.ckpt,
                     len(taken.assignment.todo))
        elif taken.from_reservation:
            self.stats.reservations_taken += 1
        else:
            self.stats.splits += 1
            log.info("splitting ckpt %d: %d of its %d cells to another actor", taken.assignment.target.ckpt,
                     len(taken.assignment.todo), len(taken.assignment.todo) + taken.holder.current.cells_left)
        return taken.assignment

    # ---- pacing prefetches, probe builds and scans -------------------------------------------

    def _send_due_prefetches(self) -> None:
        """Once a slot's next share is due (sweep/run/pacing.py), reserve it from the plan and tell the actor to fetch
        it. Reserving only then leaves the rest of the plan free to change until the last moment."""
        for slot in self.slots:
            if slot.current is None or (slot.next is not None and slot.next.prefetch_sent):
                continue
            if not self.pacing.prefetch_due(seconds_left(slot.current, self.costs.cell_s, self.costs.load_s),
                                            self.costs, self.supply.builds_left):
                continue
            if slot.next is None:
                slot.next = self._reserve(slot)
                if slot.next is None:
                    continue
                slot.next.reserved_by = slot.index
            self._prefetch(slot, slot.next, for_load=False)

    def _prefetch(self, slot: Slot, assignment: Assignment, for_load: bool) -> None:
        """Tell the slot's actor to fetch `assignment`'s checkpoint onto its node (actors/prefetch.py); its cells go to
        the actor once that returns. `for_load`: the checkpoint is the one it loads next, and nothing of the actor's
        is queued before it, so the download it times is one the actor waits for (measured)."""
        ref = slot.actor.prefetch.remote(assignment.target)
        self.prefetching[ref] = (assignment, time.perf_counter() if for_load else None)
        assignment.prefetch_sent = True

    def _prefetched(self, ref: ray.ObjectRef) -> None:
        assignment, sent_at = self.prefetching.pop(ref)
        assignment.prefetched = True
        if sent_at is not None:
            # the fetch's own seconds, as the actor timed it (ready, so this does not wait): the round trip would
            # also count a new actor's start, which made a local sweep's bound several times its makespan
            try:
                fetch_s = ray.get(ref)
            except RayError:  # the actor died: its failure is handled where its cells come back
                return
            self.costs.add_download(fetch_s if fetch_s is not None else time.perf_counter() - sent_at)

    def _downloads_in_flight(self, next_ones: bool = True) -> int:
        """Checkpoint downloads under way (every download is a prefetch): of checkpoints an actor waits for, and
        (`next_ones`) of those it will load after the one it scores."""
        return sum(1 for _, sent_at in self.prefetching.values() if next_ones or sent_at is not None)

    def _pace(self) -> None:
        # Probe builds yield to the downloads actors wait for, not to the next ones: the cells need the probe sets now.
        self.supply.limit = self.pacing.builds(self.supply.builds_left, self._downloads_in_flight(next_ones=False))
        if self.scans is not None and self.scans.planned:  # scans have until the GPUs end: they yield to every download
            window = self.plan_ends_at - time.perf_counter()
            self.scans.limit = self.pacing.scans(self._scan_seconds_left(), window, self._downloads_in_flight())

    def _scan_seconds_left(self) -> float:
        """Task-seconds of the scans left: as long as the scans so far took each (start to result), else each at the
        slower of one stream and one core's hashing (sweep/run/pacing.py scan_task_seconds)."""
        left, took = self.scans.left, self.scans.stats.wall_seconds
        if took:
            return len(left) * sum(took) / len(took)
        stream = self.pacing.cluster.stream_bytes_per_s
        return sum(scan_task_seconds(chunk_file, self.supply.stream_length, stream) for chunk_file in left)

    def _fill(self, slot: Slot) -> None:
        assignment = slot.current
        if not assignment.prefetched:  # its checkpoint is not on the node yet: cells would wait in the actor
            return
        ready = self.supply.ready
        while len(assignment.in_flight) < WINDOW and assignment.todo:
            if assignment.todo[0] in ready:  # the rule once the probe sets exist: no search
                chunk = assignment.todo.pop(0)
            else:
                if assignment.probe_sets_seen == len(ready):  # none came since this found none: nothing to search
                    return
                chunk = next((c for c in assignment.todo if c in ready), None)
                if chunk is None:
                    assignment.probe_sets_seen = len(ready)
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
            slot.loaded = None  # a restarted actor holds no checkpoint
            if isinstance(error, ActorDiedError) and slot.deaths > ACTOR_MAX_RESTARTS:
                slot.actor, slot.deaths = self._new_actor(), 0
            self._retry_or_fail(assignment, chunk, f"actor died: {one_line(error, 'last')}")
            return
        except RayTaskError as error:
            cause = error.cause
            message = one_line(cause) if cause is not None else one_line(error, "last")
            if isinstance(cause, CudaContextLost):  # the actor is exiting; Ray restarts it (counted as a death)
                slot.deaths += 1
                slot.loaded = None
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
                                           probe.sha256, self.spec.memorization.continuation_len, self.timeline,
                                           probe.index_start))
        self.costs.add_cell(output.seconds)
        assignment.loaded = True
        slot.loaded = assignment.target
        if output.loaded_now:
            self.stats.loads[ckpt] += 1
            self.costs.add_load(output.loaded.load_seconds, output.loaded.checkout_seconds,
                                output.loaded.downloaded_bytes)
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
        for shares in self.planned:
            for share in [share for share in shares if share.ckpt == ckpt]:
                shares.remove(share)
                found.append(Assignment(CheckpointTarget(ckpt, "", None), list(share.chunks)))
        return found

    def _fail_cell(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        self.store.record_failure(ckpt, chunk, error, attempts)
        self._settle(ckpt)

    # ---- landing ------------------------------------------------------------------------------

    def _land(self, everything: bool = False, deadline: float | None = None) -> None:
        landed = self.landing.land(self.remaining, everything, deadline)
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
            self.finishing.append(ckpt)

    def _finish_checkpoints(self, deadline: float | None = None) -> None:
        """Let the store compact every finished checkpoint's files (up to `deadline`, at least one): a compaction
        rewrites a whole checkpoint's results, and the checkpoints of one round finish together."""
        first = True
        while self.finishing and (first or deadline is None or time.perf_counter() <= deadline):
            first = False
            ckpt = self.finishing.popleft()
            self.landing.finish(ckpt)
            cells = self.store.reader().cells(ckpt).collect()
            if cells.height:
                score = cells["score"].mean()  # null in extractable mode (matches are not counted there)
                scored = f"mean score {score:.4f}, " if score is not None else ""
                self.bar.write(f"ckpt {ckpt}: {cells.height} cells landed, {scored}full-match rate "
                               f"{cells['full_match_rate'].mean():.4f}")

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
