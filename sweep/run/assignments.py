"""Who scores what: the planned shares of every actor slot, each slot's current and reserved checkpoint, and the
tail policy for what the plan did not foresee. Pure Python, no Ray.

**The plan** (`plan_shares`): from the known cell and load costs, every slot gets an ordered list of shares (a
checkpoint and some of its chunks) so that all slots end together: whole checkpoints first, then the last partial
round's checkpoints split at plan time into shares that end with the others (McNaughton's wrap-around, with a load
paid for every share). A share is prefetched like any other checkpoint, so no actor waits for an unplanned download.
The scheduler plans again from what is left whenever a slot reserves its next share, with the costs measured so far
(sweep/run/scheduler.py), so a plan made from guesses corrects itself as measured costs arrive.

Each actor slot holds a `current` checkpoint (the one loaded, or loading) and a `next` one reserved for it, which
only that actor prefetches: a download lands on the node that loads it.

**The tail policy**, for what the plan could not foresee (an actor that died, a slow node, cells that ran slower on
one actor than another): once an idle slot has no planned share left, it first takes cells, at no load, from another
slot's share of the checkpoint its own actor still holds (`take_loaded_cells`: the plan ends pairs of slots on the
two shares of one split checkpoint, so they even out between them); else (`take_from_busy`) it takes a reservation
from an actor busy for longer than a load takes, or splits the largest remaining checkpoint so that both actors
finish together (`cells_to_hand_over`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.protocol import CheckpointTarget

STEAL_MIN_CELLS = 8  # never split a checkpoint with fewer cells left (each half would not amortise a load)
PLAN_LOOKAHEAD = 16  # checkpoints a slot looks through for one that fills its room (the plan order bends that far)


@dataclass(frozen=True)
class Share:
    """Some chunks of one checkpoint, for one slot: a whole checkpoint, or a share of a split one."""

    ckpt: int
    chunks: tuple[int, ...]


def min_share_cells(cell_s: float, load_s: float) -> int:
    """The fewest cells a share may have: enough that scoring them takes at least as long as loading their checkpoint
    (a split never more than doubles the GPU time of what it moves), and never under STEAL_MIN_CELLS."""
    return max(STEAL_MIN_CELLS, math.ceil(load_s / max(cell_s, 1e-9) - 1e-9))


def plan_shares(pending: Sequence[tuple[int, Sequence[int]]], busy_s: Sequence[float], cell_s: float,
                load_s: float, download_s: float = 0.0) -> list[list[Share]]:
    """Every pending cell exactly once, as an ordered list of shares per slot, so that the slots end together.

    `pending`: (checkpoint, chunks) in plan order, a checkpoint at most once; `busy_s[i]`: seconds until slot i is
    done with what it already holds. A share costs `load_s + cells x cell_s`. The plan searches the smallest makespan
    T at which the wrap-around fill below places everything: each slot, in order, takes whole checkpoints while they
    fit before T, then the share of the next one that ends within a cell of T; the rest of that checkpoint goes on to
    the next slot. A share is never smaller than `min_share_cells` (where it would be, the slot ends early instead and
    the others take its time), except that when that plan leaves slots with nothing to do, their loads cost nothing
    else, so shares down to STEAL_MIN_CELLS are used where they end the plan sooner. Each slot's list has its whole
    checkpoints first, then its shares: the split ones run last, with every cost measured by then, in the order
    `_order_shares` gives them (`download_s`: one checkpoint's download, which the share before a split one hides).
    """
    work = [(ckpt, tuple(chunks)) for ckpt, chunks in pending if chunks]
    if not work or not busy_s:
        return [[] for _ in busy_s]
    strict = min_share_cells(cell_s, load_s)
    makespan, plan = _smallest_makespan(work, busy_s, cell_s, load_s, strict)
    if strict > STEAL_MIN_CELLS and any(not shares for shares in plan):
        relaxed_makespan, relaxed = _smallest_makespan(work, busy_s, cell_s, load_s, STEAL_MIN_CELLS)
        if relaxed_makespan < makespan - cell_s:
            plan = relaxed
    return _order_shares(plan, work, cell_s, load_s, download_s)


def across_nodes(slots: int, per_node: int) -> list[int]:
    """Slot indices in the order the plan fills them: one slot of every node before a second of any. Ray starts the
    actors in slot order and places them on nodes of `per_node` GPUs, so slot i is on node i // per_node as a rule:
    when the plan leaves slots idle, or splits shares at the ends of neighbouring slots, their downloads then share
    fewer links. Where the rule does not hold, nothing is lost."""
    per_node = max(1, int(per_node))
    return sorted(range(slots), key=lambda index: (index % per_node, index // per_node))


def planned_end_s(shares: Sequence[Share], busy_s: float, cell_s: float, load_s: float) -> float:
    """When a slot that is busy for `busy_s` ends its planned shares."""
    return busy_s + sum(load_s + len(share.chunks) * cell_s for share in shares)


def _smallest_makespan(work, busy_s, cell_s, load_s, min_cells) -> tuple[float, list[list[Share]]]:
    """Bisect the makespan between the water level (every slot busy until the same moment, no split paid for) and
    one that fits, down to a tenth of a cell."""
    costs = [load_s + len(chunks) * cell_s for _, chunks in work]
    low = _water_level(busy_s, sum(costs))
    high = low + load_s + max(costs)  # usually fits: every slot's room ends within one checkpoint and a load
    plan = _fill(work, busy_s, high, cell_s, load_s, min_cells)
    if plan is None:  # e.g. shares too small to split: everything fits on the least busy slot
        high = min(busy_s) + sum(costs) + cell_s
        plan = _fill(work, busy_s, high, cell_s, load_s, min_cells)
    while high - low > cell_s / 10:
        middle = (low + high) / 2
        attempt = _fill(work, busy_s, middle, cell_s, load_s, min_cells)
        if attempt is None:
            low = middle
        else:
            high, plan = middle, attempt
    return max(planned_end_s(shares, busy, cell_s, load_s) for shares, busy in zip(plan, busy_s)), plan


def _water_level(busy_s: Sequence[float], work_s: float) -> float:
    """The moment T at which the slots' free time before T, sum(max(0, T - busy)), equals `work_s`."""
    level, free = 0.0, sorted(busy_s)
    for count in range(1, len(free) + 1):
        level = (sum(free[:count]) + work_s) / count
        if count == len(free) or level <= free[count]:
            return level
    return level


def _fill(work, busy_s, makespan, cell_s, load_s, min_cells) -> list[list[Share]] | None:
    """The wrap-around fill at `makespan`; None if something is left over."""
    plan: list[list[Share]] = [[] for _ in busy_s]
    queue = list(work)  # (checkpoint, chunks not yet placed); queue[:position] is placed
    position = 0
    for slot, busy in enumerate(busy_s):
        room = makespan - busy
        while position < len(queue):
            taken = _next_share(queue, position, room, cell_s, load_s, min_cells)
            if taken is None:
                break  # nothing worth its load fits: this slot ends early, the others take its time
            index, cells = taken
            queue[position], queue[index] = queue[index], queue[position]
            ckpt, chunks = queue[position]
            plan[slot].append(Share(ckpt, chunks[:cells]))
            room -= load_s + cells * cell_s
            if cells < len(chunks):  # a split fills the slot; the rest goes on with the next one
                queue[position] = (ckpt, chunks[cells:])
                break
            position += 1
    return plan if position == len(queue) else None


def _next_share(queue, position, room, cell_s, load_s, min_cells) -> tuple[int, int] | None:
    """What a slot with `room` seconds left takes next, as (queue index, cells): the front checkpoint whole if it
    fits; else, among the next PLAN_LOOKAHEAD, the first that fits whole or splits where the room ends (leaving a
    share worth its load); else the front less a share worth its load. None: no share worth its load fits."""
    fits = int((room - load_s) / cell_s + 1e-9)  # the most cells that end before the makespan
    front = len(queue[position][1])
    if front <= fits:
        return position, front
    window = range(position, min(len(queue), position + PLAN_LOOKAHEAD))
    for index in window:
        cells = len(queue[index][1])
        if cells <= fits:
            return index, cells
        if fits >= min_cells and cells - fits >= min_cells:
            return index, fits
    clipped = front - min_cells  # the front's rest would be too small to pay for its load: leave it that much
    return (position, clipped) if min_cells <= clipped <= fits else None


def _order_shares(plan: list[list[Share]], work, cell_s: float, load_s: float, download_s: float) -> list[list[Share]]:
    """Each slot's whole checkpoints in plan order, then its split shares, longest first, so that each later one's
    download goes on under a longer one; then, for as many slots as the chain of splits allows (every other link of
    it: the wrap-around chains slot i's last share to slot i+1's first split), the two slots holding the two shares of
    one split checkpoint both end on it, where the share that then comes before it in each still lasts a download
    (`download_s`). Two slots that end on the same checkpoint, both holding it, can even out whatever the plan did not
    foresee between them without a load (`take_loaded_cells`)."""
    sizes = {ckpt: len(chunks) for ckpt, chunks in work}
    position = {ckpt: index for index, (ckpt, _) in enumerate(work)}
    whole = [sorted((share for share in shares if len(share.chunks) == sizes[share.ckpt]),
                    key=lambda share: position[share.ckpt]) for shares in plan]
    splits = [sorted((share for share in shares if len(share.chunks) < sizes[share.ckpt]),
                     key=lambda share: (-len(share.chunks), position[share.ckpt])) for shares in plan]
    holders: dict[int, list[int]] = {}
    for index, shares in enumerate(splits):
        for share in shares:
            holders.setdefault(share.ckpt, []).append(index)

    def can_end_on(index: int, ckpt: int) -> bool:
        before = [share for share in splits[index] if share.ckpt != ckpt]
        return not before or load_s + len(before[-1].chunks) * cell_s >= download_s

    ends_on: dict[int, int] = {}  # slot -> the split checkpoint it ends on
    for ckpt, _ in work:
        pair = holders.get(ckpt, [])
        if (len(pair) == 2 and pair[0] != pair[1] and not any(index in ends_on for index in pair)
                and all(can_end_on(index, ckpt) for index in pair)):
            ends_on.update(dict.fromkeys(pair, ckpt))
    return [whole[index] + sorted(shares, key=lambda share: share.ckpt == ends_on.get(index))
            for index, shares in enumerate(splits)]


@dataclass
class Assignment:
    """One checkpoint's cells given to one actor slot."""

    target: CheckpointTarget
    todo: list[int]  # chunks not yet submitted, in plan order
    in_flight: dict = field(default_factory=dict)  # call handle -> chunk
    reserved_by: int | None = None  # the slot that reserved (and prefetches) it
    prefetch_sent: bool = False
    prefetched: bool = False  # its prefetch returned: the checkpoint is on the node (cells go to it from then on)
    loaded: bool = False  # a cell of it came back: the checkpoint is in the actor
    probe_sets_seen: int = -1  # probe sets ready when the driver last found none of `todo`'s (it looks again at more)

    @property
    def cells_left(self) -> int:
        return len(self.todo) + len(self.in_flight)

    @property
    def settled(self) -> bool:
        return not self.todo and not self.in_flight

    def give_last(self, cells: int) -> list[int]:
        """Remove the last `cells` chunks of `todo` (those it would submit last) and return them, for another slot."""
        given, self.todo = self.todo[len(self.todo) - cells:], self.todo[:len(self.todo) - cells]
        return given


@dataclass
class Slot:
    """One actor and what it holds."""

    index: int
    actor: object
    current: Assignment | None = None
    next: Assignment | None = None  # reserved for this actor; its prefetch starts once `current` is loaded
    deaths: int = 0
    loaded: CheckpointTarget | None = None  # the checkpoint its actor holds: the last one a cell came back from


@dataclass(frozen=True)
class Taken:
    """Work an idle slot took from a busy one. `from_reservation`: it was `holder`'s reserved next checkpoint,
    whose prefetched copy (if its prefetch was sent) must be discarded on the holder's node."""

    assignment: Assignment
    holder: Slot
    from_reservation: bool
    prefetch_to_discard: CheckpointTarget | None = None


def seconds_left(assignment: Assignment | None, cell_s: float, load_s: float) -> float:
    """What an assignment still takes its actor: its cells left, and its load if no cell of it came back yet."""
    if assignment is None:
        return 0.0
    return assignment.cells_left * cell_s + (0.0 if assignment.loaded else load_s)


def busy_seconds(slot: Slot, cell_s: float, load_s: float) -> float:
    """How long `slot` is still busy with what it holds: its current checkpoint, then its reserved next one."""
    return seconds_left(slot.current, cell_s, load_s) + seconds_left(slot.next, cell_s, load_s)


def pooled_shares(planned: Sequence[Sequence[Share]], chunk_order: dict[int, Sequence[int]]
                  ) -> list[tuple[int, tuple[int, ...]]]:
    """Every planned share put back together per checkpoint, for planning again: (checkpoint, chunks) in the order of
    `chunk_order` (checkpoint -> its chunks in plan order; its keys in plan order)."""
    pooled: dict[int, set[int]] = {}
    for shares in planned:
        for share in shares:
            pooled.setdefault(share.ckpt, set()).update(share.chunks)
    return [(ckpt, tuple(chunks) if len(pooled[ckpt]) == len(chunks) else tuple(c for c in chunks if c in pooled[ckpt]))
            for ckpt, chunks in chunk_order.items() if ckpt in pooled]


def take_loaded_cells(slots: list[Slot], idle: Slot, cell_s: float, load_s: float) -> Taken | None:
    """Cells an idle slot takes, at no load, from another slot's share of the checkpoint its actor still holds
    (`idle.loaded`): as many from the end of that share as make both end together, if that is at least one. A
    reservation taken whole is one its holder no longer loads (its prefetched copy, if sent, is discarded). The
    holder's share is updated in place; None if no other slot has cells of that checkpoint still to submit."""
    if idle.loaded is None:
        return None
    best: tuple[int, Slot, Assignment] | None = None
    for slot in slots:
        if slot is idle:
            continue
        for assignment in (slot.current, slot.next):
            if assignment is None or assignment.target != idle.loaded or not assignment.todo:
                continue
            # the taker ends after n cells, the holder after all it holds less n cells: equal at half of it
            cells = min(len(assignment.todo), int(busy_seconds(slot, cell_s, load_s) / max(cell_s, 1e-9) / 2))
            if cells >= 1 and (best is None or cells > best[0]):
                best = cells, slot, assignment
    if best is None:
        return None
    cells, holder, share = best
    taken = Assignment(share.target, share.give_last(cells), prefetch_sent=True, prefetched=True, loaded=True)
    if share is holder.next and not share.todo:  # the whole reservation: its holder will not load it
        holder.next = None
        return Taken(taken, holder, from_reservation=True,
                     prefetch_to_discard=share.target if share.prefetch_sent else None)
    return Taken(taken, holder, from_reservation=False)


def cells_to_hand_over(todo: int, in_flight: int, cell_s: float, load_s: float) -> int:
    """How many of a busy actor's `todo` cells an idle actor should take so that both finish together.

    The donor needs (todo + in_flight - n) cells' time; the taker a load and then n cells. Equal at
    n = (todo + in_flight - load_s / cell_s) / 2. (Half of `todo` made the taker finish a whole load after
    the donor: at Amber's scale a download + load of ~150 s per split, on the makespan.) 0 when the taker's
    share would be under STEAL_MIN_CELLS: such a split would cost a load to save less than it.
    """
    share = int((todo + in_flight - load_s / max(cell_s, 1e-9)) / 2)
    return min(share, todo) if share >= STEAL_MIN_CELLS else 0


def take_from_busy(slots: list[Slot], idle: Slot, cell_s: float, load_s: float) -> Taken | None:
    """What `idle` takes once the queue is dry (see the module docstring); None if nothing is worth a load.

    `cell_s` and `load_s` are the current estimates of one cell's and one unprefetched load's seconds. The
    holder's `next` (a reservation) or `current.todo` (a split) is updated in place.
    """
    # 1. a reservation whose holder stays busy longer than a load takes
    holders = [s for s in slots if s is not idle and s.next is not None and s.current is not None]
    if holders:
        holder = max(holders, key=lambda s: s.current.cells_left)
        if holder.current.cells_left * cell_s > load_s:
            taken, holder.next = holder.next, None
            discard = taken.target if taken.prefetch_sent else None
            taken.reserved_by, taken.prefetch_sent, taken.prefetched = None, False, False
            return Taken(taken, holder, from_reservation=True, prefetch_to_discard=discard)
    # 2. a share of the largest remaining checkpoint, sized so that both actors finish together
    donors = [s for s in slots if s is not idle and s.current is not None]
    if not donors:
        return None
    donor = max(donors, key=lambda s: len(s.current.todo))
    handed = cells_to_hand_over(len(donor.current.todo), len(donor.current.in_flight), cell_s, load_s)
    if not handed:
        return None
    return Taken(Assignment(donor.current.target, donor.current.give_last(handed)), donor, from_reservation=False)
