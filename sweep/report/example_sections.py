"""The report's examples: what was memorized, in words (sweep/analysis/examples.py, as `memsweep show` finds and
decodes them).

    example_sections(landed, last_ckpt, first_memorized, example_cells, last_decoder, history) -> [Section, ...]
"""

from __future__ import annotations

import polars as pl

from actors.protocol import one_line
from sweep.analysis import memorization as analyses
from sweep.analysis.examples import TokenDecoder, find_examples, render_html
from sweep.errors import MemsweepError
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import LandedOutput
from sweep.report.figures import Section

EXAMPLES_PER_SOURCE = 2
EXAMPLES_PER_CELL = 3
EXAMPLES_OVER_TIME = 5


def example_sections(landed: LandedOutput, last_ckpt: int, first_memorized: pl.DataFrame,
                     example_cells: list[tuple[int, int]], last_decoder: TokenDecoder, history: ExposureHistory | None
                     ) -> list[Section]:
    """What was memorized, as text (sweep/analysis/examples.py): the most memorized sequences per source at the last
    checkpoint and in the chosen cells, the sequences memorized earliest that are still memorized at the end, and
    the earliest memorized ones that were forgotten (what the model says now), each with its exposures when a
    `history` is given. Every text is HTML-escaped."""
    title = "What was memorized, in words"
    if not landed.ledgers.probe_files():
        return [Section(title, notes=["This output holds no probe sets (prompts and true continuations), so no "
                                      "example can be shown."])]
    decoders: dict[int, TokenDecoder] = {last_ckpt: last_decoder}

    def block(examples) -> str:
        if not examples:
            return "<p><em>none</em></p>"
        rendered = []
        for example in examples:
            if example.ckpt not in decoders:
                decoders[example.ckpt] = TokenDecoder.for_checkpoint(landed, example.ckpt)
            rendered.append(render_html(example, decoders[example.ckpt]))
        return "".join(rendered)

    def earliest(frame: pl.DataFrame) -> list[tuple[int, int]]:
        ordered = frame.sort("first_memorized_ckpt", "chunk", "row").head(EXAMPLES_OVER_TIME)
        return list(ordered.select("chunk", "row").iter_rows())

    def chosen(ckpt: int, **which) -> str:
        return block(find_examples(landed, ckpt, history=history, **which))

    def sections() -> list[Section]:
        memorized = first_memorized.filter(pl.col("first_memorized_ckpt").is_not_null())
        kept = earliest(memorized.filter(pl.col("memorized_at_last")))
        lost = earliest(memorized.filter(pl.col("forgotten")))
        found = [Section(f"Examples: most memorized per source, checkpoint {last_ckpt}", notes=[_EXAMPLE_LEGEND],
                         tables=[chosen(last_ckpt, per_source=EXAMPLES_PER_SOURCE)])]
        for ckpt, chunk in example_cells:
            found.append(Section(f"Examples: checkpoint {ckpt} x chunk {chunk}",
                                 tables=[chosen(ckpt, chunk=chunk, top=EXAMPLES_PER_CELL)]))
        found.append(Section("Examples: memorized earliest, still memorized at the end",
                             notes=[f"As checkpoint {last_ckpt} reproduces them; ordered by the checkpoint of their "
                                    "first full match."],
                             tables=[chosen(last_ckpt, rows=kept, top=len(kept)) if kept else block([])]))
        found.append(Section("Examples: memorized, then forgotten",
                             notes=[f"Memorized early, then missed at >= {analyses.FORGET_MIN_MISSES} checkpoints in a "
                                    f"row; shown as checkpoint {last_ckpt} continues them now."],
                             tables=[chosen(last_ckpt, rows=lost, top=len(lost)) if lost else block([])]))
        return found

    try:
        found = sections()
    except MemsweepError as error:  # a census reads its examples' rows from its source, which may be out of reach
        if landed.sweep_spec is None or not landed.sweep_spec.data.census:
            raise
        return [Section(title, notes=["A census lands no probe rows, and reading the examples' rows again from the "
                                      f"source it pinned failed: {one_line(error)}"])]
    missing = {ckpt: d.why_not for ckpt, d in decoders.items() if d.tokenizer is None}
    if missing:
        found[0].notes.append("No tokenizer could be loaded for checkpoints "
                              f"{sorted(missing)} ({next(iter(missing.values()))}): their examples show token ids.")
    return found


_EXAMPLE_LEGEND = ("Prompt (the k tokens given), the true continuation and the model's greedy continuation, decoded "
                   "with the checkpoint's own tokenizer. Green: the model's token equals the truth at that position; "
                   "red, underlined: it does not.")
