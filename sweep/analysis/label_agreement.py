"""memsweep's memorized sets held against published labels (`memsweep compare`, the report's labels section).

Two steps, in this order:

1. **The data check.** Every labelled sequence that the output also holds (the same global stream position
   `index`) must have the same tokens in both: the published ids against the landed probe set's prompt and true
   continuation, over as many ids as both have (Pythia's labels publish 64; a probe holds k + l). A census lands no
   probe rows: its labelled sequences' ids are read again from the source it pinned (sweep/data/census.py
   `read_census_rows`), one chunk and at most CENSUS_READ_ROWS of them at a time. A difference means
   a wrong data order, offset or file, and every one is named (position, chunk, row, first differing offset). While
   there is any, no agreement figure is computed: it would compare different sequences.
2. **Agreement**, per checkpoint, on the sequences both cover: memorized by both, only by memsweep, only by the
   labels, by neither; precision and recall of memsweep's set against the labels'. memsweep's "memorized" is
   `full_match` (all l greedy tokens right), the labels' the published decision (Biderman et al.: all 32 of 32). For
   a memorized-only list every sequence the output holds is covered (the list was made over the whole stream), and
   one absent from it counts as not memorized; for a labelled sample only the sequences it lists are covered.

Where a sequence sits on the stream. A Megatron or numpy output lands its global position in `index`. A JSONL
output (Amber, K2, the demo) has none: chunk file c's row r is taken to be at position (rows of files 0..c-1) + r,
the order the files are trained in. The row counts of the earlier files are known to the output when each was
either scanned for exposure counts (the scan records the file's lines) or sampled whole (a probe set with fewer rows
than `samples_per_chunk` asked for holds every row of its file; a census cell holds its file's `n` rows); otherwise compare refuses, naming the first
file whose count it lacks.

Near-ties. The kernel lands each sequence's `decision_margin`: the smallest top-1 minus top-2 logit gap (nats) over
the greedy decisions that decide `full_match` (actors/scoring.py). A sequence whose margin is under `tie_margin` sits
on a near-tie: the other dtype's rounding could have flipped its decision. Of the disagreements, those on a near-tie
are expected numerics (Biderman et al. ran fp16 HF generate, memsweep usually bf16); one far from a tie is a real
difference worth a look. Cells landed before the margin was recorded hold nulls: their sequences count as
"not recorded", never as far from a tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from sweep.data.census import read_census_rows
from sweep.data.published_labels import PublishedLabels
from sweep.errors import MemsweepError
from sweep.landed.reader import LandedOutput

MISMATCHES_NAMED = 20  # the data mismatches the text names one by one (all are counted, and all are in the json)
CENSUS_READ_ROWS = 65_536  # labelled sequences of a census read from its source at a time: 65,536 x 64 ids
MISMATCH_SCHEMA = {"index": pl.Int64, "chunk": pl.Int32, "row": pl.Int64, "offset": pl.Int32, "published": pl.Int64,
                   "landed": pl.Int64}
NEAR_TIES_UNKNOWN = ("not recorded: the cells were landed before memsweep recorded decision margins, so no decision "
                     "is known to sit on a near-tie")
# 8 bf16 ulps of a top logit between 16 and 32 (bf16 keeps 8 significant bits: a multiple of 0.125 there), the rule
# benchmarks/token_agreement.py uses for flips a batch size or kernel change can cause (NEAR_TIE_ULPS); docs/cli.md
DEFAULT_TIE_MARGIN = 1.0


class CompareError(MemsweepError):
    """The output cannot be placed against the labels (its stream positions are unknown), or holds no scores."""


@dataclass(frozen=True)
class CheckpointAgreement:
    """The 2 x 2 table of one checkpoint over the sequences both cover."""

    ckpt: int
    covered: int
    both: int  # memorized by memsweep and by the labels
    only_memsweep: int
    only_labels: int
    neither: int
    margins: int = 0  # covered sequences whose decision margin is recorded (0: landed before it was)
    near_ties: int = 0  # ... under the tie margin
    near_ties_only_memsweep: int = 0  # the disagreements among them
    near_ties_only_labels: int = 0

    @property
    def precision(self) -> float | None:
        """Of memsweep's memorized sequences, the share the labels call memorized (None: memsweep has none)."""
        called = self.both + self.only_memsweep
        return self.both / called if called else None

    @property
    def recall(self) -> float | None:
        """Of the labels' memorized sequences, the share memsweep calls memorized (None: the labels have none)."""
        published = self.both + self.only_labels
        return self.both / published if published else None

    def to_json(self) -> dict:
        return {"ckpt": self.ckpt, "covered": self.covered, "both": self.both, "only_memsweep": self.only_memsweep,
                "only_labels": self.only_labels, "neither": self.neither, "precision": self.precision,
                "recall": self.recall, "margins": self.margins,
                **{name: getattr(self, name) if self.margins else None
                   for name in ("near_ties", "near_ties_only_memsweep", "near_ties_only_labels")}}


@dataclass(frozen=True)
class LabelComparison:
    """What `memsweep compare` prints: the data check and, when it passed, the agreement per checkpoint."""

    output: str
    labels: str  # PublishedLabels.describe()
    form: str
    positions: str  # how the output's stream positions were found
    checked: int  # labelled sequences the output also holds, whose tokens were compared
    mismatches: pl.DataFrame  # index, chunk, row, offset (first differing id), published, landed (ids at offset)
    checkpoints: list[CheckpointAgreement] = field(default_factory=list)  # empty while there are mismatches
    tie_margin: float = DEFAULT_TIE_MARGIN  # a decision margin under this (logits, nats) is a near-tie

    def near_ties(self) -> dict | None:
        """The near-tie counts over every compared checkpoint, or None where no covered sequence has a margin."""
        margins = sum(row.margins for row in self.checkpoints)
        if not margins:
            return None
        return {"tie_margin": self.tie_margin, "margins": margins,
                **{name: sum(getattr(row, name) for row in self.checkpoints)
                   for name in ("near_ties", "near_ties_only_memsweep", "near_ties_only_labels")}}

    @property
    def data_matches(self) -> bool:
        return self.mismatches.height == 0

    def to_json(self) -> dict:
        return {"output": self.output, "labels": self.labels, "form": self.form, "positions": self.positions,
                "checked": self.checked, "data_mismatches": self.mismatches.height,
                "mismatches": self.mismatches.to_dicts(),
                "checkpoints": [agreement.to_json() for agreement in self.checkpoints] if self.data_matches else None,
                "tie_margin": self.tie_margin, "near_ties": self.near_ties(),
                "near_ties_note": None if self.near_ties() else NEAR_TIES_UNKNOWN}

    def describe(self) -> str:
        lines = [f"output: {self.output}", f"labels: {self.labels}", f"positions: {self.positions}",
                 f"data check: {self.checked:,} labelled sequences the output also holds"]
        if not self.data_matches:
            lines.append(f"DATA MISMATCH: {self.mismatches.height:,} of them differ from memsweep's reading of the "
                         "same position (a wrong data order, offset or file); no agreement is computed")
            for row in self.mismatches.head(MISMATCHES_NAMED).iter_rows(named=True):
                lines.append(f"  index {row['index']} (chunk {row['chunk']}, row {row['row']}): first differs at "
                             f"offset {row['offset']} (published {row['published']}, memsweep {row['landed']})")
            if self.mismatches.height > MISMATCHES_NAMED:
                lines.append(f"  ... and {self.mismatches.height - MISMATCHES_NAMED:,} more (--format json lists all)")
            return "\n".join(lines)
        lines[-1] += ": all equal"
        header = f"{'ckpt':>6} {'covered':>9} {'both':>8} {'memsweep':>9} {'labels':>8} {'neither':>9} " \
                 f"{'precision':>9} {'recall':>7}"
        lines += ["", "memorized by: both | only memsweep | only the labels | neither", header]
        for row in self.checkpoints:
            lines.append(f"{row.ckpt:>6} {row.covered:>9,} {row.both:>8,} {row.only_memsweep:>9,} "
                         f"{row.only_labels:>8,} {row.neither:>9,} {_rate(row.precision):>9} {_rate(row.recall):>7}")
        if self.near_ties() is None:
            lines.append(f"near-ties: {NEAR_TIES_UNKNOWN}")
            return "\n".join(lines)
        lines += ["", f"near-ties: decision margin (top-1 minus top-2 logit at a deciding position) under "
                      f"{self.tie_margin:g}; a disagreement on one is expected numerics, one far from a tie a real "
                      "difference",
                  f"{'ckpt':>6} {'margins':>9} {'near-ties':>10} {'memsweep near/all':>18} {'labels near/all':>16}"]
        for row in self.checkpoints:
            if not row.margins:
                lines.append(f"{row.ckpt:>6} {'not recorded':>9}")
                continue
            lines.append(f"{row.ckpt:>6} {row.margins:>9,} {row.near_ties:>10,} "
                         f"{f'{row.near_ties_only_memsweep:,}/{row.only_memsweep:,}':>18} "
                         f"{f'{row.near_ties_only_labels:,}/{row.only_labels:,}':>16}")
        return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def compare_labels(landed: LandedOutput, labels: PublishedLabels, checkpoint: int | None = None,
                   tie_margin: float = DEFAULT_TIE_MARGIN) -> LabelComparison:
    """The data check, then (if it passed) the agreement at `checkpoint`, or at every landed checkpoint, with the
    sequences whose decision margin is under `tie_margin` (logits) counted as near-ties."""
    if not tie_margin >= 0:
        raise CompareError(f"tie margin {tie_margin}: expected a number of logits, 0 or more")
    positions, how = stream_positions(landed)
    if is_census(landed):
        checked, mismatches = census_data_mismatches(landed, positions, labels.frame)
    else:
        checked, mismatches = data_mismatches(positions, labels.frame)
    comparison = LabelComparison(str(landed.path), labels.describe(), labels.form, how, checked, mismatches,
                                 tie_margin=tie_margin)
    if not comparison.data_matches:
        return comparison
    ckpts = landed.landed_checkpoints()
    if checkpoint is not None:
        if checkpoint not in ckpts:
            raise CompareError(f"{landed.path}: no landed cells at checkpoint {checkpoint} (landed: "
                               f"{', '.join(map(str, ckpts)) or 'none'})")
        ckpts = [checkpoint]
    if not ckpts:
        raise CompareError(f"{landed.path}: no landed cells")
    rows = [row for ckpt in ckpts
            for row in agreement_table(decisions(landed, positions, ckpt), labels.frame, labels.form,
                                       tie_margin).iter_rows(named=True)]
    return LabelComparison(**{**comparison.__dict__, "checkpoints": [CheckpointAgreement(**row) for row in rows]})


def is_census(landed: LandedOutput) -> bool:
    """Whether the output is a census (data.samples_per_chunk: all): it lands no probe rows."""
    spec = landed.sweep_spec
    return spec is not None and spec.data.census


def stream_positions(landed: LandedOutput) -> tuple[pl.LazyFrame, str]:
    """Every sequence the output holds with its global stream position, lazily: (`chunk`, `row`, `index`, and for a
    sampled output `tokens`, the landed probe's), and one line saying how the positions were found (see the module
    docstring). Raises CompareError when they cannot be.

    A sampled output's sequences are its landed probes. A census lands no probe rows: its sequences are those of
    the first checkpoint it landed (a census cell lands whole, so every row of each landed chunk), and the
    tokens are read again from the pinned source by `census_data_mismatches`. Lazy because a census holds every
    sequence of the stream (146M for Pythia): what reads it joins it with the labels or one checkpoint's sequences
    and keeps only what it counts."""
    if is_census(landed):
        ckpts = landed.landed_checkpoints()
        if not ckpts:
            raise CompareError(f"{landed.path}: no landed cells")
        probes = landed.sequences(ckpts[0]).select("chunk", "row", "index")
        # a census cell holds every row of its chunk file, in order: n rows, the last numbered n - 1
        sampled = landed.cells(ckpts[0]).select("chunk", "n", top=pl.col("n").cast(pl.Int64) - 1)
    else:
        probes = landed.probes().select("chunk", "row", "index", "tokens")
        sampled = probes.group_by("chunk").agg(n=pl.len(), top=pl.col("row").max())
    n, unindexed = probes.select(pl.len(), pl.col("index").null_count()).collect().row(0)
    if n == 0:
        raise CompareError(f"{landed.path}: no landed probe sets")
    if unindexed == 0:
        return probes, "the landed index (a stream's global position)"
    if unindexed != n:
        raise CompareError(f"{landed.path}: some probes carry a stream index and some do not")
    sampled = sampled.sort("chunk").collect()
    counts = chunk_row_counts(landed, sampled)
    chunks = sampled["chunk"].to_list()
    offsets, total = {}, 0
    for chunk in range(max(chunks) + 1):
        offsets[chunk] = total
        if chunk in counts:
            total += counts[chunk]
        elif chunk < max(chunks):
            needed = next(c for c in chunks if c > chunk)
            raise CompareError(
                f"{landed.path}: chunk file {chunk}'s row count is unknown, so chunk {needed}'s rows have no stream "
                f"position: the output knows a JSONL file's rows when it was scanned for exposure counts "
                f"(exposure.chunks) or sampled whole (samples_per_chunk at least its rows, or all)")
    offset = pl.LazyFrame({"chunk": list(offsets), "offset": list(offsets.values())},
                          schema={"chunk": pl.Int32, "offset": pl.Int64})
    positioned = (probes.join(offset, on="chunk", how="left")
                  .with_columns(index=pl.col("offset") + pl.col("row")).drop("offset"))
    return positioned, "JSONL chunk files in training order: the rows of files before a chunk, plus its row"


def chunk_row_counts(landed: LandedOutput, sampled: pl.DataFrame) -> dict[int, int]:
    """Chunk file -> its rows, where the output knows them: from an exposure scan of the file, or from a probe set
    that holds every row of it (fewer probes than `samples_per_chunk` asked for, rows 0..n-1; or a census cell).
    `sampled`: per probe chunk, `n` probes and the `top` row."""
    counts = {seen: entry.scans[0].rows for seen, entry in landed.ledgers.exposures.items() if entry.scans}
    asked = (landed.spec.get("data") or {}).get("samples_per_chunk")
    for chunk, n, top in sampled.select("chunk", "n", "top").iter_rows():
        whole = asked == "all" or (isinstance(asked, int) and n < asked)
        if whole and top == n - 1:
            counts.setdefault(chunk, n)
    return counts


def census_data_mismatches(landed: LandedOutput, positions: pl.LazyFrame, labels: pl.DataFrame,
                           batch_rows: int = CENSUS_READ_ROWS) -> tuple[int, pl.DataFrame]:
    """`data_mismatches` for a census: the labelled sequences' tokens read again from the sources the output pinned,
    chunk by chunk, at most `batch_rows` at a time (a JSONL file in one pass, streamed only up to its last labelled
    row). Memory: one batch of k + l ids, whatever the chunk or label count (Pythia's 5M-row random sample puts about
    35,000 labelled sequences in each chunk of 1,024,000). Raises MemsweepError if a source changed since the
    census."""
    # each landed chunk's first stream position and rows (a census chunk is rows 0..n-1 at index start + row)
    extents = (positions.group_by("chunk").agg(start=(pl.col("index") - pl.col("row")).min(), n=pl.len())
               .sort("chunk").collect())
    jsonl = landed.sweep_spec.data.format == "jsonl"
    checked, found = 0, []
    for chunk, start, n in extents.iter_rows():
        entry = landed.ledgers.probes.get(chunk)
        if entry is None:
            raise CompareError(f"{landed.path}: chunk {chunk} has no pinned source in ledger/probes.json")
        labelled = labels.filter(pl.col("index").is_between(start, start + n - 1)).sort("index")
        step = labelled.height if jsonl else batch_rows  # a JSONL file is streamed from its start on every read
        for offset in range(0, labelled.height, max(step, 1)):
            batch = labelled.slice(offset, step)
            rows = (batch["index"] - start).to_list()
            read = read_census_rows(landed.sweep_spec, entry.source, chunk, rows)
            held = pl.DataFrame({"chunk": [chunk] * len(rows), "row": rows, "index": batch["index"],
                                 "tokens": [read[row] for row in rows]},
                                schema={"chunk": pl.Int32, "row": pl.Int64, "index": pl.Int64,
                                        "tokens": pl.List(pl.Int64)})
            batch_checked, differing = data_mismatches(held.lazy(), batch)
            checked += batch_checked
            found.append(differing)
    return checked, pl.concat([pl.DataFrame(schema=MISMATCH_SCHEMA), *found]).sort("index")


def data_mismatches(positions: pl.LazyFrame, labels: pl.DataFrame) -> tuple[int, pl.DataFrame]:
    """(how many labelled sequences the output holds, those whose tokens differ): each with `index`, `chunk`, `row`,
    `offset` (the first differing id, over the ids both have) and the ids there, `published` and `landed`."""
    both = positions.join(labels.lazy().select("index", pl.col("tokens").alias("published_tokens")), on="index",
                          how="inner")
    width = pl.min_horizontal(pl.col("tokens").list.len(), pl.col("published_tokens").list.len())
    compared = both.select(
        "index", "chunk", "row",
        landed_ids=pl.col("tokens").list.head(width), published_ids=pl.col("published_tokens").list.head(width))
    checked, differing = pl.collect_all([compared.select(pl.len()),
                                         compared.filter(pl.col("landed_ids") != pl.col("published_ids"))])
    rows = []
    for index, chunk, row_number, landed_ids, published_ids in differing.sort("index").iter_rows():
        offset = next(i for i, (a, b) in enumerate(zip(landed_ids, published_ids)) if a != b)
        rows.append((index, chunk, row_number, offset, published_ids[offset], landed_ids[offset]))
    return checked.item(), pl.DataFrame(rows, schema=MISMATCH_SCHEMA, orient="row")


def decisions(landed: LandedOutput, positions: pl.LazyFrame, ckpt: int) -> pl.LazyFrame:
    """memsweep's decision on every sequence of checkpoint `ckpt` (its partition alone is read): `ckpt`, `index`,
    `memorized` (full_match), `margin` (decision_margin; null where not recorded)."""
    return (landed.sequences(ckpt).select("ckpt", "chunk", "row", pl.col("full_match").alias("memorized"),
                                          pl.col("decision_margin").alias("margin"))
            .join(positions.select("chunk", "row", "index"), on=["chunk", "row"], how="inner")
            .select("ckpt", "index", "memorized", "margin"))


def agreement_table(decided: pl.LazyFrame, labels: pl.DataFrame, form: str,
                    tie_margin: float = DEFAULT_TIE_MARGIN) -> pl.DataFrame:
    """One row per checkpoint: `ckpt`, `covered`, `both`, `only_memsweep`, `only_labels`, `neither`, then `margins`
    (covered sequences with a recorded margin), `near_ties` (margin under `tie_margin`) and the near-ties among the
    disagreements, `near_ties_only_memsweep` and `near_ties_only_labels`; from memsweep's `decided` (ckpt, index,
    memorized, margin) and the labels (index, is_memorized) of `form` (see the module docstring). Streams: only the
    counts are held."""
    published = labels.lazy().select("index", pl.col("is_memorized").alias("published"))
    if form == "memorized-only":
        joined = decided.join(published, on="index", how="left").with_columns(pl.col("published").fill_null(False))
    else:
        joined = decided.join(published, on="index", how="inner")
    ours, theirs = pl.col("memorized"), pl.col("published")
    near = (pl.col("margin") < tie_margin).fill_null(False)  # not recorded: never a near-tie
    return (joined.group_by("ckpt").agg(
        covered=pl.len().cast(pl.Int64),
        both=(ours & theirs).sum().cast(pl.Int64),
        only_memsweep=(ours & ~theirs).sum().cast(pl.Int64),
        only_labels=(~ours & theirs).sum().cast(pl.Int64),
        neither=(~ours & ~theirs).sum().cast(pl.Int64),
        margins=pl.col("margin").is_not_null().sum().cast(pl.Int64),
        near_ties=near.sum().cast(pl.Int64),
        near_ties_only_memsweep=(near & ours & ~theirs).sum().cast(pl.Int64),
        near_ties_only_labels=(near & ~ours & theirs).sum().cast(pl.Int64)).sort("ckpt").collect(engine="streaming"))
