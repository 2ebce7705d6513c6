"""One training row's score and exact prefix over checkpoints, as SVG coordinates for the sequence page.

Drawn on the server (a polyline per measure, a few kB at 360 checkpoints) so the page needs no script.
"""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 36


@dataclass(frozen=True)
class Trajectory:
    """Everything the template draws; coordinates are SVG user units."""

    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom of the plot area
    score: str  # polyline points, "" without scores (extractable mode)
    prefix: str  # exact prefix / l
    memorized: list[tuple[float, float]]  # markers at full matches
    seen_x: float | None  # the first checkpoint that trained on the row (sweep/timeline.py), if in range
    seen_label: str
    x_ticks: list[tuple[float, int]]
    y_ticks: list[tuple[float, str]]


def trajectory(ckpts: list[int], scores: list[float | None], prefix_fractions: list[float | None],
               full_matches: list[bool], seen_at: int, seen_label: str) -> Trajectory:
    """ckpts ascending; the other lists are parallel to it (values in [0, 1], None where missing). `seen_at`: the
    first checkpoint that trained on the row, marked with `seen_label`."""
    left, top, right, bottom = LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM
    low, high = ckpts[0], max(ckpts[-1], ckpts[0] + 1)

    def x(ckpt: float) -> float:
        return round(left + (ckpt - low) / (high - low) * (right - left), 1)

    def y(value: float) -> float:
        return round(bottom - value * (bottom - top), 1)

    def points(values: list[float | None]) -> str:
        return " ".join(f"{x(c)},{y(v)}" for c, v in zip(ckpts, values) if v is not None)

    step = _nice_step((high - low) / 8)
    first = -(-low // step) * step
    return Trajectory(
        width=WIDTH, height=HEIGHT, plot=(left, top, right, bottom),
        score=points(scores), prefix=points(prefix_fractions),
        memorized=[(x(c), y(1.0)) for c, hit in zip(ckpts, full_matches) if hit],
        seen_x=x(seen_at) if low <= seen_at <= high else None, seen_label=seen_label,
        x_ticks=[(x(t), t) for t in range(first, high + 1, step)],
        y_ticks=[(y(v), f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 1)],
    )


def _nice_step(raw: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= raw."""
    step = 1
    while step < raw:
        for factor in (2, 5, 10):
            if step * factor >= raw:
                return step * factor
        step *= 10
    return step
