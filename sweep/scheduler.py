"""Scheduling cells onto checkpoint actors: busy actors, prefetch where it is used, a short tail.

Each actor slot holds a `current` checkpoint (the one loaded, or loading) and a `next` one reserved for it,
which only that actor prefetches, once its current checkpoint is loaded: a download lands on the node that loads
it, and never competes with the download the actor is waiting for. At most WINDOW cells of the
current checkpoint are in flight per actor (one scoring, one queued behind it), and a cell is submitted only
once its chunk's probe set is ready, so scoring starts with the first probe set and never waits for the rest.

When the queue runs dry, an idle actor first takes a reservation from an actor that is still busy for longer
than a load takes (that reservation's prefetch is wasted, its wait is not), then splits the largest remaining
checkpoint so that both actors finish together (the taker's share is the donor's remaining time less one
load, halved: `cells_to_hand_over`): at 360 checkpoints on 64 GPUs that turns the last partial round (40 of
64 actors busy for a whole checkpoint) into about one load.

Failures: see sweep/driver.py. Landing: a checkpoint's results wait in the driver's memory until LAND_BATCH_CELLS
of them are there, the oldest has waited LAND_MAX_WAIT_S, or they finish the checkpoint; then they land as one
pair of files (sweep/store.py write_cells). A landing costs ~10 ms of driver time whatever its size (two Parquet
files, a ledger, six fsyncs), and 64 GPUs finish ~44 cells a second (360 x 360 extractable on H200s), one
checkpoint each: landing every cell alone kept the driver busy ~15 ms a cell (benchmarks/control_plane.py).
What waits is lost if the driver dies (at most LAND_MAX_WAIT_S of GPU time per actor, recomputed on resume);
on Ctrl-C or an error it is landed before the driver exits.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from tqdm import tqdm

from actors.protocol import (CellInputError, CellOutput, CheckpointError, CheckpointTarget, ScorerSettings,
                             ScoringOptions)
from sweep.plan import CheckpointWork, Plan
from sweep.probe_supply import ProbeSupply, one_line
from sweep.sources import is_local, resolve_commit
from sweep.spec import SweepSpec
from sweep.store import LandedCell, PinMismatchError, ResultStore

log = logging.getLogger("memsweep")

ACTOR_MAX_RESTARTS = 3
WINDOW = 2  # cells in flight per actor: the GPU never waits for the driver between two cells
STEAL_MIN_CELLS = 8  # never split a checkpoint with fewer cells left (each half would not amortise a load)
ESTIMATE_WINDOW = 256  # the tail estimates use the medians of the latest cells and loads (a full history's
# median is recomputed for every idle actor at every wake-up in the tail: ~2 ms each at 129,600 cells)
LAND_BATCH_CELLS = 32  # a checkpoint's waiting results land once this many are there ...
LAND_MAX_WAIT_S = 10.0  # ... or the oldest has waited this long (or they finish the checkpoint)


@dataclass
class _Assignment:
    target: CheckpointTarget
    todo: list[int]  # chunks not yet submitted, in plan order
    in_flight: dict = field(default_factory=dict)  # ref -> chunk
    reserved_by: int | None = None  # the slot that prefetched it (for the prefetch-locality count)
    prefetch_sent: bool = False


@dataclass
class _Slot:
    index: int
    actor: object
    current: _Assignment | None = None
    next: _Assignment | None = None  # reserved for this actor; its prefetch is under way
    deaths: int = 0


class Scheduler:
    def __init__(self, spec: SweepSpec, plan: Plan, store: ResultStore, supply: ProbeSupply, summary,
                 started: float, progress: bool, scorer_cls, gpus_per_actor: float, environment: dict[str, str]):
        self.spec, self.store, self.supply, self.summary = spec, store, supply, summary
        self.started, self.scorer_cls, self.gpus, self.environment = started, scorer_cls, gpus_per_actor, environment
        self.queue: deque[CheckpointWork] = deque(plan.work)
        self.remaining = Counter({w.ckpt: len(w.chunks) for w in plan.work})  # cells not yet settled
        self.attempts: Counter = Counter()  # (ckpt, chunk) -> failed tries
        self.load_failures: Counter = Counter()  # ckpt -> failed fetches/loads
        self.dead_checkpoints: dict[int, tuple[str, int]] = {}  # ckpt -> (error, tries): its cells all fail
        self.targets: dict[int, CheckpointTarget | str] = {}
        self.fingerprints = {pin["weights_fingerprint"]: ckpt for ckpt, pin in store.checkpoint_pins().items()
                             if pin.get("weights_fingerprint")}
        self.owner: dict[ray.ObjectRef, tuple[_Slot, _Assignment]] = {}
        self.results: dict[int, list[tuple[CellOutput, int]]] = {}  # ckpt -> (output, attempts) not landed yet
        self.waiting_since: dict[int, float] = {}  # ckpt -> when its oldest unlanded result arrived
        self.cell_seconds: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self.load_seconds: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self.settings = self._settings()
        self.slots = [_Slot(i, self._new_actor()) for i in range(self._actor_count(plan))]
        self.bar = tqdm(total=plan.cells_to_do, desc=spec.name, unit="cell", disable=not progress)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while self._has_work():
                self.supply.pump()
                self._assign()
                refs = list(self.owner) + self.supply.refs()
                if not refs:
                    if self._has_work():  # nothing in flight and nothing can start: a bug, not a wait
                        raise RuntimeError(f"scheduler stalled with {sum(self.remaining.values())} cells left")
                    break
                ray.wait(refs, num_returns=1, timeout=LAND_MAX_WAIT_S if self.results else None)
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in ready:
                    if self.supply.owns(ref):
                        self.supply.collect(ref)
                    else:
                        self._collect(ref)
                self._land_results()
            self._land_results(everything=True)
        finally:
            if self.results:  # Ctrl-C or an error: keep what the GPUs already computed
                try:
                    self._land_results(everything=True)
                except Exception as error:  # noqa: BLE001 - the original exception matters more
                    log.error("could not land %d waiting results: %s",
                              sum(map(len, self.results.values())), one_line(error))
            self.bar.close()
            self._release_actors()

    def _has_work(self) -> bool:
        return bool(self.queue or self.owner or any(s.current or s.next for s in self.slots))

    # ---- handing out work ---------------------------------------------------------------------

    def _assign(self) -> None:
        for slot in self.slots:
            while self._assign_slot(slot):
                pass  # the work just taken was all failed chunks: settled, take more

    def _assign_slot(self, slot: _Slot) -> bool:
        """Give the slot work and fill its window; True if what it holds settled without running anything."""
        for assignment in (slot.current, slot.next):
            if assignment is not None:
                self._drop_failed_chunks(assignment)
        if slot.current is not None and not slot.current.todo and not slot.current.in_flight:
            slot.current = None
        if slot.current is None:
            slot.current, slot.next = slot.next or self._take_work(slot), None
            if slot.current is None:
                return False
            if slot.current.reserved_by not in (None, slot.index):
                self.summary.prefetched_elsewhere += 1
        if slot.next is None and self.queue:
            slot.next = self._pop_assignment()  # its prefetch starts once the current one is loaded
            if slot.next is not None:
                slot.next.reserved_by = slot.index
        self._drop_failed_chunks(slot.current)
        self._fill(slot)
        return not slot.current.todo and not slot.current.in_flight

    def _pop_assignment(self) -> _Assignment | None:
        while self.queue:
            work = self.queue.popleft()
            target = self._target(work.ckpt)
            if isinstance(target, str):
                for chunk in work.chunks:
                    self._fail_cell(work.ckpt, chunk, target, self.spec.resources.max_attempts)
                continue
            return _Assignment(target, list(work.chunks))
        return None

    def _take_work(self, idle: _Slot) -> _Assignment | None:
        popped = self._pop_assignment()
        if popped is not None:
            return popped
        cell_s, load_s = self._cell_estimate(), self._load_estimate()
        # 1. a reservation whose holder stays busy longer than a load takes
        holders = [s for s in self.slots if s is not idle and s.next is not None and s.current is not None]
        if holders:
            holder = max(holders, key=lambda s: len(s.current.todo) + len(s.current.in_flight))
            if (len(holder.current.todo) + len(holder.current.in_flight)) * cell_s > load_s:
                taken, holder.next = holder.next, None
                if taken.prefetch_sent:
                    holder.actor.discard.remote(taken.target)  # its prefetched copy would sit on disk until the end
                taken.reserved_by, taken.prefetch_sent = None, False
                self.summary.reservations_taken += 1
                return taken
        # 2. a share of the largest remaining checkpoint, sized so that both actors finish together
        donors = [s for s in self.slots if s is not idle and s.current is not None]
        if not donors:
            return None
        donor = max(donors, key=lambda s: len(s.current.todo))
        todo = donor.current.todo
        handed = cells_to_hand_over(len(todo), len(donor.current.in_flight), cell_s, load_s)
        if handed:
            stolen, donor.current.todo = todo[len(todo) - handed:], todo[:len(todo) - handed]
            log.info("splitting ckpt %d: %d of its %d cells to another actor", donor.current.target.ckpt, handed,
                     len(todo) + len(donor.current.in_flight))
            return _Assignment(donor.current.target, stolen)
        return None

    def _fill(self, slot: _Slot) -> None:
        assignment = slot.current
        while len(assignment.in_flight) < WINDOW:
            chunk = next((c for c in assignment.todo if c in self.supply.ready), None)
            if chunk is None:
                return
            assignment.todo.remove(chunk)
            if self.summary.probe_sets_ready_at_first_cell is None:
                self.summary.probe_sets_ready_at_first_cell = len(self.supply.ready)
            ref = slot.actor.score_cell.remote(assignment.target, self.supply.ready[chunk].batch_ref)
            assignment.in_flight[ref] = chunk
            self.owner[ref] = (slot, assignment)

    def _drop_failed_chunks(self, assignment: _Assignment) -> None:
        if not self.supply.failed:  # the common case; this runs for every slot at every wake-up
            return
        for chunk in [c for c in assignment.todo if c in self.supply.failed]:
            assignment.todo.remove(chunk)
            self._fail_cell(assignment.target.ckpt, chunk, self.supply.failed[chunk], 1)

    def _target(self, ckpt: int) -> CheckpointTarget | str:
        """The checkpoint to load, pinned: a Hub revision resolves to a commit once; a landed checkpoint keeps
        the commit its cells were scored at (the branch may have moved since: said once, not followed)."""
        if ckpt in self.targets:
            return self.targets[ckpt]
        model = self.spec.model
        revision = model.revision_for(ckpt)
        pin = self.store.checkpoint_pin(ckpt) or {}
        if is_local(model.source):
            target = CheckpointTarget(ckpt, revision, None)
        else:
            pinned = pin.get("model_commit")
            try:
                current = resolve_commit(model.source, revision)
            except Exception as error:  # noqa: BLE001 - a missing revision fails this checkpoint's cells only
                current = None
                if not pinned:
                    self.targets[ckpt] = (f"checkpoint {ckpt}: revision {revision!r} of {model.source} cannot be "
                                          f"resolved: {one_line(error)}")
                    return self.targets[ckpt]
            if pinned and current and current != pinned:
                self.summary.warn(f"checkpoint {ckpt}: revision {revision!r} of {model.source} moved from {pinned} "
                                  f"to {current}; this output's cells of it were scored at {pinned[:12]}, which "
                                  "is used again (sweep into a new output to score the new commit)")
            target = CheckpointTarget(ckpt, revision, pinned or current)
        self.targets[ckpt] = target
        return target

    # ---- collecting results -------------------------------------------------------------------

    def _collect(self, ref: ray.ObjectRef) -> None:
        slot, assignment = self.owner.pop(ref)
        chunk = assignment.in_flight.pop(ref)
        ckpt = assignment.target.ckpt
        try:
            output: CellOutput = ray.get(ref)
        except RayActorError as error:  # the actor process or its node died, and Ray gave up on the call
            if "creation task" in str(error):  # the actor cannot even start here: retrying would loop forever
                raise RuntimeError(f"the checkpoint actor cannot start: {one_line(error)}") from None
            slot.deaths += 1
            if isinstance(error, ActorDiedError) and slot.deaths > ACTOR_MAX_RESTARTS:
                slot.actor, slot.deaths = self._new_actor(), 0
            self._retry_or_fail(assignment, chunk, f"actor died: {_last_line(error)}")
            return
        except RayTaskError as error:
            cause = error.cause
            message = one_line(cause) if cause is not None else _last_line(error)
            if isinstance(cause, CheckpointError):
                self._checkpoint_failed(assignment, chunk, message)
            elif isinstance(cause, CellInputError):  # deterministic: another try would fail the same way
                self._fail_cell(ckpt, chunk, message, self.attempts[(ckpt, chunk)] + 1)
            else:
                self._retry_or_fail(assignment, chunk, message)
            return
        self.results.setdefault(ckpt, []).append((output, self.attempts[(ckpt, chunk)] + 1))
        self.waiting_since.setdefault(ckpt, time.perf_counter())
        self.cell_seconds.append(output.seconds)
        upcoming = slot.next
        if upcoming is not None and not upcoming.prefetch_sent and slot.current is assignment:
            # The current checkpoint is loaded: download the next one now, on this actor's node. (Not earlier:
            # at the start every actor fetches its first checkpoint, and a second download would halve that.)
            slot.actor.prefetch.remote(upcoming.target)
            upcoming.prefetch_sent = True
        if output.loaded_now:
            self.summary.loads[ckpt] += 1
            if assignment.reserved_by != slot.index:  # not prefetched here: the load downloaded it too
                self.load_seconds.append(output.loaded.load_seconds)
            log.info("ckpt %d loaded on %s (%s) in %.1f s", ckpt, output.host, output.device,
                     output.loaded.load_seconds)

    def _retry_or_fail(self, assignment: _Assignment, chunk: int, error: str) -> None:
        ckpt = assignment.target.ckpt
        self.attempts[(ckpt, chunk)] += 1
        tries = self.attempts[(ckpt, chunk)]
        if tries < self.spec.resources.max_attempts:
            log.warning("cell ckpt %d x chunk %d failed (try %d), retrying: %s", ckpt, chunk, tries, error)
            assignment.todo.insert(0, chunk)
            return
        log.error("cell ckpt %d x chunk %d failed %d times, giving up: %s", ckpt, chunk, tries, error)
        self._fail_cell(ckpt, chunk, error, tries)

    def _checkpoint_failed(self, assignment: _Assignment, chunk: int, error: str) -> None:
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

    def _assignments_of(self, ckpt: int) -> list[_Assignment]:
        found = [a for s in self.slots for a in (s.current, s.next) if a is not None and a.target.ckpt == ckpt]
        queued = [w for w in self.queue if w.ckpt == ckpt]
        for work in queued:
            self.queue.remove(work)
            found.append(_Assignment(CheckpointTarget(ckpt, "", None), list(work.chunks)))
        return found

    def _fail_cell(self, ckpt: int, chunk: int, error: str, attempts: int) -> None:
        self.store.record_failure(ckpt, chunk, error, attempts)
        self._settle(ckpt)

    # ---- landing ------------------------------------------------------------------------------

    def _land_results(self, everything: bool = False) -> None:
        """Land the waiting results of every checkpoint that is due (see the module docstring)."""
        now = time.perf_counter()
        due = [ckpt for ckpt, outputs in self.results.items()
               if everything or len(outputs) >= min(LAND_BATCH_CELLS, self.remaining[ckpt])
               or now - self.waiting_since[ckpt] >= LAND_MAX_WAIT_S]
        landed_now = 0
        for ckpt in due:
            outputs = self.results.pop(ckpt)
            del self.waiting_since[ckpt]
            cells = [LandedCell(output.chunk, self._sequences(output), self._info(output, attempts))
                     for output, attempts in outputs]
            try:
                self.store.write_cells(ckpt, cells)
                landed = [output for output, _ in outputs]
            except PinMismatchError:  # one cell disagrees with the checkpoint's pin: land the others alone
                landed = []
                for cell, (output, attempts) in zip(cells, outputs):
                    try:
                        self.store.write_cells(ckpt, [cell])
                        landed.append(output)
                    except PinMismatchError as error:
                        self._fail_cell(ckpt, cell.chunk, one_line(error), attempts)
            for output in landed:
                self._landed(output)
            landed_now += len(landed)
        if landed_now:
            self.bar.update(landed_now)
            elapsed = self.bar.format_dict["elapsed"] or 1e-9
            self.bar.set_postfix(seq_s=f"{self.summary.sequences_scored / elapsed:,.0f}",
                                 probes=f"{len(self.supply.ready)}/{self.supply.total}")

    def _landed(self, output: CellOutput) -> None:
        summary = self.summary
        summary.cells_scored += 1
        summary.sequences_scored += self.supply.ready[output.chunk].frame.height
        if summary.first_cell_landed_at is None:
            summary.first_cell_landed_at = time.perf_counter() - self.started
        fingerprint = output.loaded.weights_fingerprint
        twin = self.fingerprints.setdefault(fingerprint, output.ckpt)
        if twin != output.ckpt:
            summary.warn(f"checkpoints {twin} and {output.ckpt} carry identical weights (fingerprint {fingerprint}): "
                         f"revisions {self.spec.model.revision_for(twin)!r} and "
                         f"{self.spec.model.revision_for(output.ckpt)!r} may be one checkpoint published twice")
        self._settle(output.ckpt)

    def _sequences(self, output: CellOutput) -> pl.DataFrame:
        probe = self.supply.ready[output.chunk].frame
        return probe.with_columns(**score_columns(output, self.spec.memorization.continuation_len))

    def _info(self, output: CellOutput, attempts: int) -> dict:
        loaded, probe = output.loaded, self.supply.ready[output.chunk]
        return {
            "seconds": output.seconds, "device": output.device, "dtype": output.dtype,
            "batch_size": output.batch_size, "attempts": attempts,
            "model_revision": loaded.target.revision, "model_commit": loaded.target.commit,
            "weights_fingerprint": loaded.weights_fingerprint, "stored_dtype": loaded.stored_dtype,
            "data_file": probe.data_file, "data_sha256": probe.sha256,
        }

    def _settle(self, ckpt: int) -> None:
        self.remaining[ckpt] -= 1
        if self.remaining[ckpt] == 0:
            self.store.compact_checkpoint(ckpt)
            cells = self.store.cells(ckpt).collect()
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
            download_dir=self.spec.model.download_dir,
            keep_downloads=self.spec.model.keep_downloads,
            keep_generated=self.spec.keeps_generated(),
        )

    def _actor_count(self, plan: Plan) -> int:
        wanted = self.spec.resources.actors
        if wanted == "auto":
            cluster_gpus = ray.cluster_resources().get("GPU", 0)
            wanted = max(1, int(cluster_gpus // self.gpus)) if self.gpus else 1
        return max(1, min(int(wanted), plan.cells_to_do))

    def _new_actor(self):
        options = dict(
            num_gpus=self.gpus,
            num_cpus=self.spec.resources.cpus_per_actor,
            max_restarts=ACTOR_MAX_RESTARTS,
            # Ray re-runs calls that were in flight (or queued) when the actor died, on the restarted
            # actor; only when it gives up does the scheduler see the error and count a try.
            # -1: until the actor is dead for good (max_restarts spent), not a count. After a node loss
            # each retry fails at once against the dead address until the GCS declares the node dead
            # (15 s+ by default), so a count ran out in ~5 s and the cell was recorded failed.
            max_task_retries=-1,
        )
        if self.environment:
            options["runtime_env"] = {"env_vars": self.environment}
        return self.scorer_cls.options(**options).remote(self.settings)

    def _release_actors(self) -> None:
        """Let every actor free its model and delete the downloads it still holds (prefetched, unused)."""
        refs = [slot.actor.release.remote() for slot in self.slots]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=120)
        except Exception:  # noqa: BLE001 - best effort: a dead actor holds nothing
            pass


def score_columns(output: CellOutput, continuation_len: int) -> dict[str, pl.Series]:
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
        "generated": pl.Series(scores.generated.astype(np.uint32)).reshape(scores.generated.shape).cast(
            pl.List(pl.UInt32)) if scores.generated is not None else pl.lit(None, pl.List(pl.UInt32)),
    }
    return columns


def _last_line(error: BaseException) -> str:
    """The last line of an error's text: Ray puts the remote traceback first and the message last."""
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]


def cells_to_hand_over(todo: int, in_flight: int, cell_s: float, load_s: float) -> int:
    """How many of a busy actor's `todo` cells an idle actor should take so that both finish together.

    The donor needs (todo + in_flight - n) cells' time; the taker a load and then n cells. Equal at
    n = (todo + in_flight - load_s / cell_s) / 2. (Half of `todo` made the taker finish a whole load after
    the donor: at Amber's scale a download + load of ~150 s per split, on the makespan.) 0 when the taker's
    share would be under STEAL_MIN_CELLS: such a split would cost a load to save less than it.
    """
    share = int((todo + in_flight - load_s / max(cell_s, 1e-9)) / 2)
    return min(share, todo) if share >= STEAL_MIN_CELLS else 0
