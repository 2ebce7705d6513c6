"""Who scores what: each actor slot's current and reserved checkpoint, and the tail policy. Pure Python, no Ray.

Each actor slot holds a `current` checkpoint (the one loaded, or loading) and a `next` one reserved for it, which
only that actor prefetches, once its current checkpoint is loaded: a download lands on the node that loads it
and never competes with the download the actor is waiting for.

When the queue runs dry (`take_from_busy`), an idle actor first takes a reservation from an actor that is still
busy for longer than a load takes (that reservation's prefetch is wasted, its wait is not), then splits the
largest remaining checkpoint so that both actors finish together (`cells_to_hand_over`). With 360 checkpoints on
64 GPUs that turns the last partial round (40 of 64 actors busy for a whole checkpoint) into about one load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.protocol import CheckpointTarget

STEAL_MIN_CELLS = 8  # never split a checkpoint with fewer cells left (each half would not amortise a load)


@dataclass
class Assignment:
    """One checkpoint's cells given to one actor slot."""

    target: CheckpointTarget
    todo: list[int]  # chunks not yet submitted, in plan order
    in_flight: dict = field(default_factory=dict)  # call handle -> chunk
    reserved_by: int | None = None  # the slot that reserved (and prefetches) it
    prefetch_sent: bool = False

    @property
    def cells_left(self) -> int:
        return len(self.todo) + len(self.in_flight)

    @property
    def settled(self) -> bool:
        return not self.todo and not self.in_flight


@dataclass
class Slot:
    """One actor and what it holds."""

    index: int
    actor: object
    current: Assignment | None = None
    next: Assignment | None = None  # reserved for this actor; its prefetch starts once `current` is loaded
    deaths: int = 0


@dataclass(frozen=True)
class Taken:
    """Work an idle slot took from a busy one. `from_reservation`: it was `holder`'s reserved next checkpoint,
    whose prefetched copy (if its prefetch was sent) must be discarded on the holder's node."""

    assignment: Assignment
    holder: Slot
    from_reservation: bool
    prefetch_to_discard: CheckpointTarget | None = None


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
            taken.reserved_by, taken.prefetch_sent = None, False
            return Taken(taken, holder, from_reservation=True, prefetch_to_discard=discard)
    # 2. a share of the largest remaining checkpoint, sized so that both actors finish together
    donors = [s for s in slots if s is not idle and s.current is not None]
    if not donors:
        return None
    donor = max(donors, key=lambda s: len(s.current.todo))
    todo = donor.current.todo
    handed = cells_to_hand_over(len(todo), len(donor.current.in_flight), cell_s, load_s)
    if not handed:
        return None
    stolen, donor.current.todo = todo[len(todo) - handed:], todo[:len(todo) - handed]
    return Taken(Assignment(donor.current.target, stolen), donor, from_reservation=False)
