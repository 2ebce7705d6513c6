"""What was memorized, in words: landed sequences joined with their probe rows and decoded.

A landed sequence row holds the scores and (with `memorization.keep_generated`) the model's l greedy tokens; the
output's `probes` table holds the prompt and the true continuation of every sampled (chunk, row). `find_examples`
joins the two for a checkpoint, `TokenDecoder` turns ids into text with the checkpoint's OWN tokenizer, loaded the
way the weights are (the local checkpoint folder, or the Hub revision at the commit the output pinned: a few MB,
kept in the Hugging Face cache), and `render_text` / `render_html` mark which positions the model got right.

Given an ExposureHistory (sweep/exposures/history.py), each example carries its exposure counts (`SequenceExposures`)
and the sequences can be filtered and ordered by them. Used by `memsweep show` and the report's examples section.
Cost at 360 x 360 x 1000: one checkpoint partition (360k rows) is filtered and sorted, then only the chosen rows of
the probe sets are read.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import polars as pl

from actors.protocol import one_line
from sweep.analysis.selection import SequenceSelection, select_per_source, select_sequences
from sweep.data.census import read_census_rows
from sweep.errors import MemsweepError
from sweep.exposures.history import ExposureHistory
from sweep.landed.reader import LandedOutput

log = logging.getLogger("memsweep")

SORTS = ("memorized", "exposures")  # most memorized first, or the most exposed first (then the most memorized)
EXPOSURE_COLUMNS = ("exposures", "window_count", "prompt_count", "first_chunk", "last_chunk", "chunks_scanned")


@dataclass(frozen=True)
class SequenceExposures:
    """One sequence's exposure counts (ExposureHistory.exposures_at's columns)."""

    exposures: int  # occurrences of its k + l window in the scanned chunk files <= the example's checkpoint
    window_count: int  # ... in every scanned chunk file
    prompt_count: int  # occurrences of its k prompt tokens in every scanned chunk file
    first_chunk: int | None  # first and last scanned chunk holding its window
    last_chunk: int | None
    chunks_scanned: int  # chunk files scanned for it

    def describe(self, ckpt: int) -> str:
        where = "" if self.first_chunk is None else f"; first in chunk {self.first_chunk}, last in chunk {self.last_chunk}"
        times = "once" if self.exposures == 1 else f"{self.exposures} times"
        return (f"{times} by checkpoint {ckpt}; {self.window_count} in all {self.chunks_scanned} scanned chunk files "
                f"(its prompt {self.prompt_count}){where}")


@dataclass(frozen=True)
class Example:
    ckpt: int
    chunk: int
    row: int
    source: str
    prompt: list[int]
    truth: list[int]
    generated: list[int] | None  # None in extractable mode or without keep_generated
    matches: int | None
    prefix_match: int
    full_match: bool
    exposures: SequenceExposures | None = None  # None: no exposure counts asked for, or none cover it

    @property
    def hits(self) -> list[bool]:
        """Per continuation position: did the model produce the true token? (Extractable mode: the exact prefix.)"""
        if self.generated is not None:
            return [a == b for a, b in zip(self.generated, self.truth)]
        return [position < self.prefix_match for position in range(len(self.truth))]

    def headline(self) -> str:
        l = len(self.truth)
        if self.matches is not None:
            measure = f"{self.matches}/{l} tokens"
        else:
            measure = f"exact prefix {self.prefix_match}/{l}"
        verdict = "full match, k-extractable" if self.full_match else f"first miss at {self.prefix_match}"
        return (f"ckpt {self.ckpt} · chunk {self.chunk} · row {self.row} · {self.source} · {measure} "
                f"({verdict})")


def find_examples(landed: LandedOutput, ckpt: int | None = None, chunk: int | None = None, top: int = 10,
                  source: str | None = None, full_match: bool | None = None, min_prefix: int | None = None,
                  per_source: int | None = None, rows: list[tuple[int, int]] | None = None,
                  history: ExposureHistory | None = None, min_exposures: int | None = None,
                  max_exposures: int | None = None, sort: str = "memorized") -> list[Example]:
    """The most memorized sequences of checkpoint `ckpt` (default: the last), with their tokens.

    Filters: `chunk`, `source`, `full_match` (True: only k-extractable ones, False: only the others),
    `min_prefix` (exact prefix of at least that many tokens), `rows` (these (chunk, row) only), and with a `history`
    `min_exposures` / `max_exposures` (exposures at `ckpt` within them; sequences whose counts are unknown are left
    out). Order (`sort`): "memorized" (full matches first, then by exact prefix, then by matched tokens) or
    "exposures" (the most exposed first, then as "memorized"; needs a history); `top` rows in all, or `per_source` per
    source (both as sweep/analysis/selection.py selects, as the explorer's cell page does). With a history each
    example carries its SequenceExposures (None where the counts do not cover it).
    """
    if sort not in SORTS:
        raise MemsweepError(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
    if history is None and (sort == "exposures" or min_exposures is not None or max_exposures is not None):
        raise MemsweepError(f"{landed.path}: no exposure counts to filter or sort by (none landed, or not asked for)")
    ckpt = landed.last_checkpoint() if ckpt is None else ckpt
    sequences = landed.sequences(ckpt)
    columns = ["ckpt", "chunk", "row", "source", "matches", "prefix_match", "full_match", "generated"]
    if history is not None:
        counts = history.exposures_at(ckpt, chunk).select("chunk", "row", *EXPOSURE_COLUMNS)
        sequences = sequences.join(counts.lazy(), on=["chunk", "row"], how="left")
        columns += EXPOSURE_COLUMNS
    selection = SequenceSelection(chunk=chunk, source=source, full_match=full_match, min_prefix=min_prefix, rows=rows,
                                  min_exposures=min_exposures, max_exposures=max_exposures, sort=sort)
    if per_source is not None:
        chosen = select_per_source(sequences, selection, columns, per_source)
    else:
        chosen = select_sequences(sequences, selection).select(columns).head(top).collect()
    if chosen.height == 0:
        return []
    tokens = _probe_tokens(landed, chosen.select("chunk", "row").unique())
    kept = chosen["generated"].null_count() < chosen.height
    width = (int(chosen["generated"].list.len().max() or 0) if kept else 0) or landed.continuation_len
    examples = []
    for row in chosen.iter_rows(named=True):
        ids = tokens[(row["chunk"], row["row"])]
        counted = history is not None and row["exposures"] is not None
        examples.append(Example(
            ckpt=row["ckpt"], chunk=row["chunk"], row=row["row"], source=row["source"],
            prompt=list(ids[:-width]), truth=list(ids[-width:]), generated=row["generated"],
            matches=row["matches"], prefix_match=row["prefix_match"], full_match=bool(row["full_match"]),
            exposures=SequenceExposures(*(row[name] for name in EXPOSURE_COLUMNS)) if counted else None))
    return examples


def _probe_tokens(landed: LandedOutput, keys: pl.DataFrame) -> dict[tuple[int, int], list[int]]:
    """(chunk, row) -> k + l token ids of each of `keys`, from the landed probe sets."""
    # Filtering by chunk first lets Polars skip the other chunks' probe files by their statistics: at 360 chunks,
    # with a cold disk, 0.1 s instead of 0.4 s.
    spec = landed.sweep_spec
    if spec is not None and spec.data.census:  # no probe rows landed: the few asked for are read from the source
        return _census_tokens(landed, keys)
    probes = (landed.probes().filter(pl.col("chunk").is_in(keys["chunk"].unique().to_list()))
              .join(keys.lazy(), on=["chunk", "row"], how="semi").collect())
    if probes.height < keys.height:
        raise MemsweepError(f"{landed.path}: {keys.height - probes.height} of the chosen rows have no landed probe set "
                         "(an output written before probe sets were kept?)")
    return {(c, r): t for c, r, t in probes.select("chunk", "row", "tokens").iter_rows()}


def _census_tokens(landed: LandedOutput, keys: pl.DataFrame) -> dict[tuple[int, int], list[int]]:
    """(chunk, row) -> k + l token ids of a census's `keys`, read again from the sources the output pinned."""
    tokens = {}
    for (chunk,), rows in keys.group_by("chunk"):
        entry = landed.ledgers.probes.get(chunk)
        if entry is None:
            raise MemsweepError(f"{landed.path}: chunk {chunk} has no pinned source in ledger/probes.json")
        read = read_census_rows(landed.sweep_spec, entry.source, chunk, rows["row"].to_list())
        tokens.update({(chunk, row): ids for row, ids in read.items()})
    return tokens


# ---- decoding ---------------------------------------------------------------------------------------------


class TokenDecoder:
    """Token ids -> text with one checkpoint's tokenizer; ids in brackets when no tokenizer can be loaded."""

    def __init__(self, tokenizer=None, why_not: str | None = None):
        self.tokenizer = tokenizer
        self.why_not = why_not

    @classmethod
    def for_checkpoint(cls, landed: LandedOutput, ckpt: int) -> "TokenDecoder":
        """The tokenizer of checkpoint `ckpt` as the output scored it: its model source and revision (from the
        manifest's spec), at the commit its cells were pinned to."""
        from transformers import AutoTokenizer

        from actors.checkpoint_files import fetch_tokenizer

        try:
            spec = landed.sweep_spec
            if spec is None:
                raise MemsweepError(f"{landed.path}/manifest.json holds no whole spec to find the model by")
            pin = landed.checkpoint_pin(ckpt)
            folder = fetch_tokenizer(spec.model.source, spec.revision_for(ckpt), pin.model_commit if pin else None)
            return cls(AutoTokenizer.from_pretrained(str(folder)))
        except Exception as error:  # noqa: BLE001 - examples still show, as ids, with the reason
            why = one_line(error)
            log.warning("no tokenizer for checkpoint %d (%s): showing token ids", ckpt, why)
            return cls(None, why)

    def text(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self.tokenizer is None:
            return "[" + " ".join(str(i) for i in ids) + "]"
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def spans(self, ids: list[int], hits: list[bool]) -> list[tuple[str, bool]]:
        """`ids` as text in runs of equal `hits`: [(text, hit), ...]. Each run is decoded with the tokens before
        it as context, so word boundaries and spaces come out as in the whole string."""
        runs: list[tuple[str, bool]] = []
        start = 0
        decoded_before = ""
        for end in range(1, len(ids) + 1):
            if end == len(ids) or hits[end] != hits[start]:
                upto = self.text(ids[:end])
                piece = upto[len(decoded_before):] if upto.startswith(decoded_before) else self.text(ids[start:end])
                runs.append((piece, hits[start]))
                decoded_before, start = upto, end
        return runs


# ---- rendering --------------------------------------------------------------------------------------------

# Newlines and tabs as visible marks, so a sequence reads on one line (the terminal and the explorer alike).
VISIBLE_WHITESPACE = str.maketrans({"\n": "↵", "\t": "⇥", "\r": "␍"})
GREEN, RED, DIM, RESET = "\033[32m", "\033[31;4m", "\033[2m", "\033[0m"


def render_text(example: Example, decoder: TokenDecoder, color: bool = False) -> str:
    """A terminal block: headline, then prompt, truth and the model's continuation, newlines shown as ↵.
    Positions the model got wrong are red and underlined (color) or between ⟦ ⟧ (plain), in truth and model."""
    def marked(spans: list[tuple[str, bool]]) -> str:
        parts = []
        for text, hit in spans:
            text = text.translate(VISIBLE_WHITESPACE)
            if hit:
                parts.append(f"{GREEN}{text}{RESET}" if color else text)
            else:
                parts.append(f"{RED}{text}{RESET}" if color else f"⟦{text}⟧")
        return "".join(parts)

    hits = example.hits
    lines = [example.headline(),
             f"  prompt │ {(DIM if color else '')}{decoder.text(example.prompt).translate(VISIBLE_WHITESPACE)}"
             f"{(RESET if color else '')}",
             f"  truth  │ {marked(decoder.spans(example.truth, hits))}"]
    if example.generated is not None:
        lines.append(f"  model  │ {marked(decoder.spans(example.generated, hits))}")
    else:
        lines.append("  model  │ (no generated tokens landed: extractable mode or keep_generated off; the truth is "
                     "marked from the first miss)")
    if example.exposures is not None:
        lines.append(f"  seen   │ {example.exposures.describe(example.ckpt)}")
    return "\n".join(lines)


def render_html(example: Example, decoder: TokenDecoder) -> str:
    """The same as render_text for the report; every text is HTML-escaped (training data holds markup)."""
    def marked(spans: list[tuple[str, bool]]) -> str:
        return "".join(f'<span class="{"hit" if hit else "miss"}">{html.escape(text)}</span>' for text, hit in spans)

    hits = example.hits
    model = (marked(decoder.spans(example.generated, hits)) if example.generated is not None
             else "<em>no generated tokens landed</em>")
    seen = ("" if example.exposures is None else
            f'<div><span class="label">seen</span>{html.escape(example.exposures.describe(example.ckpt))}</div>')
    return ('<div class="example">'
            f'<div class="headline">{html.escape(example.headline())}</div>'
            f'<div><span class="label">prompt</span><span class="prompt">{html.escape(decoder.text(example.prompt))}'
            '</span></div>'
            f'<div><span class="label">truth</span>{marked(decoder.spans(example.truth, hits))}</div>'
            f'<div><span class="label">model</span>{model}</div>{seen}</div>')


def examples_as_frame(examples: list[Example], decoder: TokenDecoder, exposures: bool = False) -> pl.DataFrame:
    """One row per example with decoded prompt / truth / model text (for `--format csv|json`); with `exposures`, the
    EXPOSURE_COLUMNS too (null where the counts do not cover a sequence)."""
    def counts(example: Example) -> dict:
        known = example.exposures
        return {name: None if known is None else getattr(known, name) for name in EXPOSURE_COLUMNS} if exposures \
            else {}

    schema = {**{name: pl.Int64 for name in ("ckpt", "chunk", "row")}, "source": pl.String, "matches": pl.Int64,
              "prefix_match": pl.Int64, "full_match": pl.Boolean,
              **({name: pl.Int64 for name in EXPOSURE_COLUMNS} if exposures else {}),
              "prompt": pl.String, "truth": pl.String, "model": pl.String}  # given: no examples is an empty table
    return pl.DataFrame([{
        "ckpt": e.ckpt, "chunk": e.chunk, "row": e.row, "source": e.source, "matches": e.matches,
        "prefix_match": e.prefix_match, "full_match": e.full_match, **counts(e), "prompt": decoder.text(e.prompt),
        "truth": decoder.text(e.truth), "model": decoder.text(e.generated) if e.generated is not None else None,
    } for e in examples], schema=schema)

