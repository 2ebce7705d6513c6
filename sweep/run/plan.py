"""The plan: which (checkpoint, chunk) cells are still to do, grouped by checkpoint.

Checkpoint loads are the expensive thing (an Amber checkpoint is 13.5 GB in bf16) and sequences are
cheap, so work is handed out one checkpoint at a time: an actor loads it once and scores every
pending chunk of it before it moves on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sweep.spec import SweepSpec


@dataclass(frozen=True)
class CheckpointWork:
    """One checkpoint and the chunks still to score against it."""

    ckpt: int
    chunks: tuple[int, ...]


@dataclass
class Plan:
    total_cells: int
    done_cells: int
    work: list[CheckpointWork] = field(default_factory=list)
    samples_per_chunk: int | None = 0  # sequences a cell scores; None: a JSONL census (every row of each file)
    tokens_per_sequence: int = 0
    census: bool = False  # data.samples_per_chunk: all
    finished_checkpoints: list[int] = field(default_factory=list)  # every cell of them has landed

    @property
    def cells_to_do(self) -> int:
        return sum(len(w.chunks) for w in self.work)

    @property
    def sequences_to_do(self) -> int | None:
        """None for a JSONL census: its files' rows are counted once read (sweep/run/cost.py estimates them)."""
        return None if self.samples_per_chunk is None else self.cells_to_do * self.samples_per_chunk

    @property
    def chunks_needed(self) -> list[int]:
        return sorted({chunk for w in self.work for chunk in w.chunks})

    def describe(self) -> str:
        """A few lines for `memsweep plan` (what it costs: sweep/run/cost.py)."""
        lines = [
            f"cells: {self.total_cells} total, {self.done_cells} done, {self.cells_to_do} to do",
            f"checkpoint loads: {len(self.work)}; chunks to "
            f"{'read whole (a census)' if self.census else 'sample'}: {len(self.chunks_needed)}",
        ]
        if self.sequences_to_do is None:
            lines.append("sequences to score: every row of each chunk file, once per checkpoint (a census; the cost "
                         "below estimates them from the files' sizes)")
        else:
            per_cell = f"; {self.samples_per_chunk:,} a cell, every sequence of its chunk" if self.census else ""
            lines.append(f"sequences to score: {self.sequences_to_do:,} "
                         f"({self.sequences_to_do * self.tokens_per_sequence:,} tokens{per_cell})")
        return "\n".join(lines)


def make_plan(spec: SweepSpec, done: set[tuple[int, int]]) -> Plan:
    """Cells of `spec` not in `done`, checkpoint-major, in the spec's checkpoint order."""
    cells = spec.cell_list()
    by_ckpt: dict[int, list[int]] = {}
    for ckpt, chunk in cells:
        if (ckpt, chunk) not in done:
            by_ckpt.setdefault(ckpt, []).append(chunk)
    work = [CheckpointWork(ckpt, tuple(chunks)) for ckpt, chunks in by_ckpt.items()]
    return Plan(
        finished_checkpoints=[ckpt for ckpt in dict.fromkeys(c for c, _ in cells) if ckpt not in by_ckpt],
        total_cells=len(cells),
        done_cells=len(cells) - sum(len(w.chunks) for w in work),
        work=work,
        samples_per_chunk=spec.sequences_per_cell(),
        tokens_per_sequence=spec.memorization.prompt_len + spec.memorization.continuation_len,
        census=spec.data.census,
    )
