"""sweep/run/assignments.py without Ray: the planned shares of every slot (every cell once, slots that end together,
no share that does not pay for its load), and the tail policy for what the plan did not foresee: who takes which
reservation or share, and how many cells a split hands over."""

from __future__ import annotations

import random

import pytest

from actors.protocol import CheckpointTarget
from sweep.run.assignments import (STEAL_MIN_CELLS, Assignment, Share, Slot, across_nodes, cells_to_hand_over,
                                   min_share_cells, plan_shares, planned_end_s, take_from_busy, take_loaded_cells)

AMBER_CELL_S, AMBER_LOAD_S = 1.447, 40.0  # a cell of 1000 sequences at 75% of an H200's bound; a 27 GB load
AMBER_DOWNLOAD_S = 108.0  # 27 GB at one stream's 250 MB/s


def matrix(checkpoints: int, chunks: int) -> list[tuple[int, range]]:
    return [(ckpt, range(chunks)) for ckpt in range(checkpoints)]


def ends(plan, busy_s, cell_s, load_s) -> list[float]:
    """Each slot's planned end, for the slots that have shares."""
    return [planned_end_s(shares, busy, cell_s, load_s) for shares, busy in zip(plan, busy_s) if shares]


def assert_every_cell_once(plan, pending) -> None:
    placed = [(share.ckpt, chunk) for shares in plan for share in shares for chunk in share.chunks]
    assert sorted(placed) == sorted((ckpt, chunk) for ckpt, chunks in pending for chunk in chunks)


@pytest.mark.parametrize("slots", [64, 48, 8])
def test_the_amber_matrix_is_planned_so_that_every_slot_ends_within_a_cell(slots):
    pending, busy = matrix(360, 360), [0.0] * slots
    plan = plan_shares(pending, busy, AMBER_CELL_S, AMBER_LOAD_S)
    assert_every_cell_once(plan, pending)
    planned = ends(plan, busy, AMBER_CELL_S, AMBER_LOAD_S)
    assert len(planned) == slots and max(planned) - min(planned) <= AMBER_CELL_S
    smallest = min_share_cells(AMBER_CELL_S, AMBER_LOAD_S)  # 28 cells: 40.5 s of scoring for a 40 s load
    shares = [share for shares in plan for share in shares]
    assert all(len(share.chunks) >= smallest for share in shares)
    assert len(shares) - 360 <= slots - 1  # McNaughton: at most one split where each slot ends


@pytest.mark.parametrize("checkpoints,chunks,slots", [(359, 360, 64), (300, 360, 64), (70, 360, 64),
                                                      (360, 360, 100), (200, 120, 64)])
def test_a_slot_ends_early_only_where_no_share_worth_its_load_fits(checkpoints, chunks, slots):
    """Where a slot's time left after its whole checkpoints is shorter than a load and a share worth it, a split
    would cost more GPU time than it fills: that slot ends early and the others take its time (the last slot takes
    what is left). Their time is shared by every slot: the makespan stays within one such share of the ideal with one
    split per slot (0.13% at most for these shapes)."""
    pending, busy = matrix(checkpoints, chunks), [0.0] * slots
    plan = plan_shares(pending, busy, AMBER_CELL_S, AMBER_LOAD_S)
    assert_every_cell_once(plan, pending)
    planned = ends(plan, busy, AMBER_CELL_S, AMBER_LOAD_S)
    makespan, worth_its_load = max(planned), AMBER_LOAD_S + min_share_cells(AMBER_CELL_S, AMBER_LOAD_S) * AMBER_CELL_S
    assert all(makespan - end < max(AMBER_CELL_S, worth_its_load) for end in planned[:-1])
    ideal = (checkpoints * (AMBER_LOAD_S + chunks * AMBER_CELL_S) + (slots - 1) * AMBER_LOAD_S) / slots
    assert makespan <= ideal + worth_its_load and makespan <= 1.0015 * ideal


def test_a_plan_made_while_slots_are_busy_ends_them_together():
    """A re-plan mid-sweep: each slot still busy for a while; what is left of the matrix uneven. Every slot but the
    last ends within a cell, or early where no share worth its load fits."""
    rng = random.Random(7)
    busy = [rng.uniform(0, 500) for _ in range(64)]
    pending = [(ckpt, range(rng.randint(60, 360))) for ckpt in range(150)]
    plan = plan_shares(pending, busy, AMBER_CELL_S, AMBER_LOAD_S)
    assert_every_cell_once(plan, pending)
    planned = ends(plan, busy, AMBER_CELL_S, AMBER_LOAD_S)
    worth_its_load = AMBER_LOAD_S + min_share_cells(AMBER_CELL_S, AMBER_LOAD_S) * AMBER_CELL_S
    assert all(max(planned) - end < worth_its_load for end in planned[:-1])
    assert sum(max(planned) - end <= AMBER_CELL_S for end in planned) >= 48  # most end within a cell


def test_whole_checkpoints_come_first_and_split_shares_last():
    pending = matrix(360, 360)
    plan = plan_shares(pending, [0.0] * 64, AMBER_CELL_S, AMBER_LOAD_S)
    for shares in plan:
        whole = [len(share.chunks) == 360 for share in shares]
        assert whole == sorted(whole, reverse=True)
        assert [s.ckpt for s in shares if len(s.chunks) == 360] == sorted(s.ckpt for s in shares if len(s.chunks) == 360)


@pytest.mark.parametrize("checkpoints,slots", [(360, 64), (300, 64), (360, 48)])
def test_the_two_slots_sharing_a_split_checkpoint_end_on_it_together(checkpoints, slots):
    """Every other link of the wrap-around's chain of splits becomes a pair of slots that both end on the two shares
    of one checkpoint, so that they can even out between them at no load; the reordering moves no cell."""
    pending = matrix(checkpoints, 360)
    plan = plan_shares(pending, [0.0] * slots, AMBER_CELL_S, AMBER_LOAD_S, AMBER_DOWNLOAD_S)
    assert_every_cell_once(plan, pending)
    split = {share.ckpt for shares in plan for share in shares if len(share.chunks) < 360}
    for shares in plan:  # every split share after the first is fetched while a share that lasts a download runs
        splits = [share for share in shares if share.ckpt in split]
        assert all(AMBER_LOAD_S + len(before.chunks) * AMBER_CELL_S >= AMBER_DOWNLOAD_S for before in splits[:-1])
    last = [shares[-1].ckpt for shares in plan if shares and shares[-1].ckpt in split]
    paired = [ckpt for ckpt in set(last) if last.count(ckpt) == 2]
    holding_a_split = sum(1 for shares in plan if any(share.ckpt in split for share in shares))
    assert 2 * len(paired) >= holding_a_split - len(split) // 2  # at most one slot a chain of splits is left alone
    assert len(paired) >= len(split) // 2


def test_checkpoints_too_small_to_split_are_never_split():
    """A single-chunk sweep: 360 one-cell checkpoints on 64 slots, 6 or fewer each."""
    pending = matrix(360, 1)
    plan = plan_shares(pending, [0.0] * 64, AMBER_CELL_S, AMBER_LOAD_S)
    assert_every_cell_once(plan, pending)
    assert all(len(share.chunks) == 1 for shares in plan for share in shares)
    assert max(len(shares) for shares in plan) == 6  # ceil(360 / 64)


def test_a_share_smaller_than_its_load_is_made_only_for_a_slot_that_would_have_nothing_to_do():
    """36 checkpoints of 36 cells on 64 slots: a share of 18 cells (26 s) costs a 40 s load, so splitting a checkpoint
    cannot pay in GPU time; but 28 slots would idle, and with 32 checkpoints every one can be halved."""
    smallest = min_share_cells(AMBER_CELL_S, AMBER_LOAD_S)
    diagonal = plan_shares(matrix(36, 36), [0.0] * 64, AMBER_CELL_S, AMBER_LOAD_S)
    assert all(len(share.chunks) == 36 for shares in diagonal for share in shares)  # halving all would need 72 slots
    halves = plan_shares(matrix(32, 36), [0.0] * 64, AMBER_CELL_S, AMBER_LOAD_S)
    assert_every_cell_once(halves, matrix(32, 36))
    assert sorted({len(share.chunks) for shares in halves for share in shares}) == [18]
    assert 18 < smallest
    planned = ends(halves, [0.0] * 64, AMBER_CELL_S, AMBER_LOAD_S)
    assert max(planned) == pytest.approx(AMBER_LOAD_S + 18 * AMBER_CELL_S)  # sooner than a whole checkpoint


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_place_every_cell_once_within_a_share_of_the_water_level(seed):
    """Any sizes, costs and busy slots: every cell once, no share under STEAL_MIN_CELLS, and the plan ends at most a
    load and a share worth its load after the water level (every slot busy to the same moment, no split paid)."""
    rng = random.Random(seed)
    slots = rng.randint(1, 64)
    cell_s, load_s = rng.uniform(0.2, 3.0), rng.uniform(1.0, 150.0)
    pending = [(ckpt, range(rng.randint(1, 400))) for ckpt in range(rng.randint(1, 6 * slots))]
    busy = [rng.uniform(0, 300) if seed % 2 else 0.0 for _ in range(slots)]
    plan = plan_shares(pending, busy, cell_s, load_s)
    assert_every_cell_once(plan, pending)
    sizes = {ckpt: len(chunks) for ckpt, chunks in pending}
    assert all(len(share.chunks) >= STEAL_MIN_CELLS for shares in plan for share in shares
               if len(share.chunks) < sizes[share.ckpt])
    work = sum(load_s + len(chunks) * cell_s for _, chunks in pending)
    level = water_level(busy, work)
    worst = load_s + min_share_cells(cell_s, load_s) * cell_s
    assert max(planned_end_s(shares, b, cell_s, load_s) for shares, b in zip(plan, busy)) <= level + load_s + worst


def water_level(busy, work):
    low, high = 0.0, max(busy) + work
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if sum(max(0.0, middle - b) for b in busy) < work else (low, middle)
    return high


def test_a_plan_of_nothing_is_empty():
    assert plan_shares([], [0.0, 0.0], 1.0, 1.0) == [[], []]
    assert plan_shares([(3, [])], [0.0], 1.0, 1.0) == [[]]
    assert plan_shares([(3, [0, 1])], [5.0], 1.0, 1.0) == [[Share(3, (0, 1))]]


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


def test_slots_are_filled_one_per_node_before_a_second_on_any():
    assert across_nodes(16, 8) == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]
    assert sorted(across_nodes(64, 8)) == list(range(64)) and across_nodes(64, 8)[:8] == list(range(0, 64, 8))
    assert across_nodes(3, 0) == [0, 1, 2]


def holding(index: int, ckpt: int | None) -> Slot:
    """An idle slot whose actor still holds checkpoint `ckpt` (None: holds nothing)."""
    return Slot(index, actor=f"actor{index}", loaded=None if ckpt is None else CheckpointTarget(ckpt, f"ckpt_{ckpt:03d}"))


def test_an_idle_actor_evens_out_the_checkpoint_it_holds_with_its_partner_at_no_load():
    idle, partner, other = holding(0, 20), busy(1, 20, todo=40, in_flight=2), busy(2, 30, todo=300)
    partner.current.loaded = other.current.loaded = True
    taken = take_loaded_cells([idle, partner, other], idle, cell_s=1.0, load_s=40.0)
    assert taken.holder is partner and not taken.from_reservation and taken.prefetch_to_discard is None
    assert taken.assignment.loaded and taken.assignment.prefetched  # cells go to it at once, and no load is priced
    assert taken.assignment.target.ckpt == 20 and taken.assignment.todo == list(range(19, 40))  # 21 = 42 cells / 2
    assert partner.current.todo == list(range(19)) and other.current.todo == list(range(300))


def test_a_reservation_of_the_checkpoint_an_idle_actor_holds_is_taken_whole_and_not_loaded_twice():
    idle = holding(0, 21)
    holder = busy(1, 20, todo=100, in_flight=2, reserved=21, prefetch_sent=True)  # 102 cells, then 50 of ckpt 21
    holder.current.loaded = True
    taken = take_loaded_cells([idle, holder], idle, cell_s=1.0, load_s=40.0)
    assert taken.from_reservation and holder.next is None and taken.assignment.todo == list(range(50))
    assert taken.prefetch_to_discard == CheckpointTarget(21, "ckpt_021")  # the holder's copy is not needed
    assert holder.current.todo == list(range(100))


def test_nothing_is_taken_at_no_load_without_the_checkpoint_in_the_actor():
    partner = busy(1, 20, todo=40)
    assert take_loaded_cells([holding(0, None), partner], holding(0, None), 1.0, 40.0) is None  # holds nothing
    idle = holding(0, 19)
    assert take_loaded_cells([idle, partner], idle, 1.0, 40.0) is None  # holds another checkpoint
    last = busy(1, 20, todo=1, in_flight=0)  # one cell left: taking it would not end sooner than its holder
    last.current.loaded = True
    idle = holding(0, 20)
    assert take_loaded_cells([idle, last], idle, 1.0, 40.0) is None and last.current.todo == [0]
