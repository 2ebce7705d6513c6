"""The tail policy of sweep/run/assignments.py, without Ray: who takes which reservation or share once the queue is
dry, and how many cells a split hands over."""

from __future__ import annotations

import pytest

from actors.protocol import CheckpointTarget
from sweep.run.assignments import STEAL_MIN_CELLS, Assignment, Slot, cells_to_hand_over, take_from_busy


@pytest.mark.parametrize("todo,in_flight,cell_s,load_s", [(300, 2, 1.45, 148.0), (359, 1, 0.7, 40.0),
                                                          (40, 2, 1.0, 0.0), (1000, 0, 0.05, 3.0)])
def test_a_tail_split_makes_both_actors_finish_together(todo, in_flight, cell_s, load_s):
    handed = cells_to_hand_over(todo, in_flight, cell_s, load_s)
    assert STEAL_MIN_CELLS <= handed <= todo
    donor_finishes = (todo + in_flight - handed) * cell_s
    taker_finishes = load_s + handed * cell_s
    assert abs(donor_finishes - taker_finishes) <= 2 * cell_s  # integer cells: within a cell of even, rounded down


def test_a_tail_split_that_would_not_pay_for_its_load_is_not_made():
    assert cells_to_hand_over(100, 2, 1.45, 148.0) == 0  # the donor is done before the taker has loaded
    assert cells_to_hand_over(20, 2, 1.0, 10.0) == 0  # the taker's share (6 cells) would be under STEAL_MIN_CELLS


def busy(index: int, ckpt: int, todo: int, in_flight: int = 2, reserved: int | None = None,
         prefetch_sent: bool = False) -> Slot:
    """A slot scoring checkpoint `ckpt` with `todo` cells to submit, optionally holding a reservation."""
    current = Assignment(CheckpointTarget(ckpt, f"ckpt_{ckpt:03d}"), list(range(todo)),
                         in_flight={f"ref{i}": 1000 + i for i in range(in_flight)}, reserved_by=index)
    upcoming = None
    if reserved is not None:
        upcoming = Assignment(CheckpointTarget(reserved, f"ckpt_{reserved:03d}"), list(range(50)), reserved_by=index,
                              prefetch_sent=prefetch_sent)
    return Slot(index, actor=f"actor{index}", current=current, next=upcoming)


def test_an_idle_actor_takes_the_reservation_of_the_actor_busy_longest():
    idle = Slot(0, actor="actor0")
    short, long = busy(1, 10, todo=5, reserved=11), busy(2, 20, todo=200, reserved=21, prefetch_sent=True)
    taken = take_from_busy([idle, short, long], idle, cell_s=1.0, load_s=40.0)
    assert taken.from_reservation and taken.holder is long and taken.assignment.target.ckpt == 21
    assert taken.prefetch_to_discard == CheckpointTarget(21, "ckpt_021")  # the holder's prefetched copy goes
    assert long.next is None and short.next is not None
    assert taken.assignment.reserved_by is None and not taken.assignment.prefetch_sent
    assert long.current.todo == list(range(200))  # a reservation taken: nothing split


def test_a_reservation_is_left_when_its_holder_is_free_before_a_load_would_end():
    idle = Slot(0, actor="actor0")
    holder = busy(1, 10, todo=30, in_flight=2, reserved=11)  # 32 cells x 1 s < a 40 s load
    taken = take_from_busy([idle, holder], idle, cell_s=1.0, load_s=40.0)
    assert taken is None and holder.next.target.ckpt == 11
    unsent = busy(1, 10, todo=100, reserved=11)  # a reservation whose prefetch was not sent: nothing to discard
    assert take_from_busy([idle, unsent], idle, 1.0, 40.0).prefetch_to_discard is None


def test_with_no_reservation_the_largest_checkpoint_is_split_so_both_finish_together():
    idle = Slot(0, actor="actor0")
    small, large = busy(1, 10, todo=50), busy(2, 20, todo=300)
    taken = take_from_busy([idle, small, large], idle, cell_s=1.45, load_s=148.0)
    handed = cells_to_hand_over(300, 2, 1.45, 148.0)
    assert not taken.from_reservation and taken.holder is large
    assert taken.assignment.target.ckpt == 20 and taken.assignment.todo == list(range(300 - handed, 300))
    assert large.current.todo == list(range(300 - handed)) and small.current.todo == list(range(50))


def test_nothing_is_taken_from_an_idle_board_or_a_tail_too_short_to_split():
    idle = Slot(0, actor="actor0")
    assert take_from_busy([idle, Slot(1, actor="actor1")], idle, 1.0, 40.0) is None
    nearly_done = busy(1, 10, todo=STEAL_MIN_CELLS)
    assert take_from_busy([idle, nearly_done], idle, 1.0, 0.0) is None
    assert nearly_done.current.todo == list(range(STEAL_MIN_CELLS))
