"""Memorization against how often, and how recently, each sequence was seen: the analyses that use exposure counts.

Every function takes the `sequences` table (load_tables' scan, or any Frame with ckpt, chunk, row, full_match,
score) and an `ExposureHistory` (sweep/exposures/history.py: `ExposureHistory.read(open_output(path))`), and returns
a small collected DataFrame. A sequence's *exposures at checkpoint c* are the occurrences of its k + l window in
the scanned chunk files <= c; only covered sequences (their own chunk file scanned) take part, so a partial scan
leaves sequences out rather than counting them as never seen. *Memorized* means full_match.

- `memorization_by_exposure`: full-match rate and mean score per exposure bin (0, 1, 2, 3-4, 5-8, ...), per
  checkpoint (Carlini et al. 2022 found memorization to grow log-linearly with duplicates);
- `seen_per_sequence`: every cell's sequences split into never seen and seen (exposures >= 1); in a cell whose
  chunk the checkpoint has not trained on, "seen" means seen earlier through copies;
- `forgetting_by_recency`: memorization against checkpoints since the last exposure, per exposure bin;
- `memorization_profile` (and `profile_path`): Lesci et al. 2024's difference-in-differences profile;
- `memorization_kinds`: Prashanth et al. 2024's recitation / reconstruction / recollection, per checkpoint
  (sweep/exposures/kinds.py);
- `exposure_analyses`: all five in one pass (what the report uses).

Memory at 129.6M rows: checkpoints are read in order, one partition at a time (as analyses.first_memorized), and
each is joined with the exposure cursor by position, so one checkpoint's (key, full_match, score) and a few arrays
of one entry per sequence are held; the results are indexed by (checkpoint, bin) or (checkpoint, chunk). The same
analyses as queries to copy: docs/queries.md; costs: BENCHMARKS.md, "Exposure analyses at full size".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from sweep.landed.partitions import SEQUENCE_KEY, Frame, by_checkpoint, key_array
from sweep.errors import MemsweepError
from sweep.timeline import Timeline
from sweep.exposures.history import NO_CHUNK, ExposureHistory, exposure_bin
from sweep.exposures.kinds import KINDS, RECITATION_MIN_EXPOSURES, reconstructable

MAX_BINS = 64  # exposure bins 0..63 hold any int64 count
PROFILE_METRICS = ("score", "full_match", "prefix_match", "nll", "tf_accuracy")


# ---- exposure bins ---------------------------------------------------------------------------------------------


def bin_bounds(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) count of each bin, int64."""
    bins = np.asarray(bins, dtype=np.int64)
    high = np.where(bins == 0, 0, np.left_shift(1, np.maximum(bins - 1, 0)))
    low = np.where(bins <= 1, bins, np.left_shift(1, np.maximum(bins - 2, 0)) + 1)
    return low, high


def bin_label(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _bin_columns(bins: np.ndarray) -> dict[str, pl.Series]:
    low, high = bin_bounds(bins)
    return {"exposure_bin": pl.Series(bins, dtype=pl.Int32), "exposures_min": pl.Series(low, dtype=pl.Int64),
            "exposures_max": pl.Series(high, dtype=pl.Int64)}


# ---- one pass over the checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredSequences:
    """One checkpoint's scored, covered sequences, as aligned arrays (what every tally adds up)."""

    ckpt: int
    newest_chunk: int  # the last chunk it has trained on any of (the timeline's; NO_CHUNK: none)
    whole_chunks: int  # the last chunk it has trained on entirely (NO_CHUNK: none); on Amber's timeline both are ckpt
    at: np.ndarray  # positions in the history
    chunk: np.ndarray  # int32
    memorized: np.ndarray  # bool
    score: np.ndarray  # float64, NaN where null (extractable mode)
    scored: np.ndarray | None  # bool: score not null (None: all are)
    value: np.ndarray | None  # float64, the profile's metric (NaN where null), when a tally asked for one
    exposures: np.ndarray  # int64: occurrences it has trained on, in the scanned chunks
    bins: np.ndarray  # int32: exposure_bin(exposures)
    last_chunk: np.ndarray  # int32: the latest of those files holding one (NO_CHUNK: none)
    first_chunk: np.ndarray  # int32: the first scanned file holding one, whatever the checkpoint


def fold(sequences: Frame, history: ExposureHistory, tallies: list, metric: str | None = None) -> None:
    """Feed every checkpoint's ScoredSequences, in checkpoint order, to each tally's `add`."""
    if len(history) == 0:
        return
    columns = ["full_match", "score"] + ([metric] if metric not in (None, "full_match", "score") else [])
    cursor = history.cursor()
    located: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for ckpt, part in by_checkpoint(sequences):
        scored = part.select(SEQUENCE_KEY, *columns).drop_nulls("full_match").collect()
        keys = key_array(scored)
        # Most checkpoints score the same sequences in the same order: reuse the last lookup.
        if located is None or not np.array_equal(located[0], keys):
            at, found = history.locate(keys)
            located = (keys, at[found], found)
        _, at, found = located
        if not at.size:
            continue
        cursor.advance(ckpt)
        newest = history.timeline.newest_chunk(ckpt)
        memorized = scored["full_match"].to_numpy()[found]
        score = _floats(scored["score"])[found]
        known = ~np.isnan(score)
        view = ScoredSequences(
            ckpt=ckpt, newest_chunk=NO_CHUNK if newest is None else newest,
            whole_chunks=history.timeline.whole_chunks(ckpt), at=at, chunk=history.chunks[at], memorized=memorized,
            score=score,
            scored=None if known.all() else known,
            value=None if metric is None else (score if metric == "score" else memorized.astype(np.float64)
                                               if metric == "full_match" else _floats(scored[metric])[found]),
            exposures=cursor.exposures[at], bins=cursor.bins[at], last_chunk=cursor.last_chunk[at],
            first_chunk=history.first_chunk[at])
        for tally in tallies:
            tally.add(view)


def _floats(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).fill_null(np.nan).to_numpy()


def _sums(index: np.ndarray, size: int, memorized: np.ndarray, score: np.ndarray,
          scored: np.ndarray | None) -> np.ndarray:
    """float64[4, size]: per index value, sequences, memorized ones, summed score and scored ones (score not null;
    `scored` None: every one)."""
    count = np.bincount(index, minlength=size)
    if scored is None:
        score_sum, score_count = np.bincount(index, weights=score, minlength=size), count
    else:
        score_sum = np.bincount(index[scored], weights=score[scored], minlength=size)
        score_count = np.bincount(index[scored], minlength=size)
    return np.stack([count, np.bincount(index[memorized], minlength=size), score_sum, score_count]).astype(np.float64)


def _rates(sums: np.ndarray) -> dict[str, pl.Series]:
    """n, n_memorized, full_match_rate, score (mean; null where nothing was scored) from _sums rows."""
    n, memorized, score_sum, scored = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(scored > 0, score_sum / scored, np.nan)
        rate = memorized / n
    return {"n": pl.Series(n.astype(np.int64)), "n_memorized": pl.Series(memorized.astype(np.int64)),
            "full_match_rate": pl.Series(rate, dtype=pl.Float64),
            "score": pl.Series(score, dtype=pl.Float64).fill_nan(None)}


# ---- memorization against exposures ------------------------------------------------------------------------------


BY_EXPOSURE_SCHEMA = {"ckpt": pl.Int32(), "exposure_bin": pl.Int32(), "exposures_min": pl.Int64(),
                      "exposures_max": pl.Int64(), "n": pl.Int64(), "n_memorized": pl.Int64(),
                      "full_match_rate": pl.Float64(), "score": pl.Float64()}


class _ByExposure:
    def __init__(self) -> None:
        self.ckpts: list[np.ndarray] = []
        self.bins: list[np.ndarray] = []
        self.sums: list[np.ndarray] = []

    def add(self, scored: ScoredSequences) -> None:
        sums = _sums(scored.bins, MAX_BINS, scored.memorized, scored.score, scored.scored)
        present = np.flatnonzero(sums[0])
        self.ckpts.append(np.full(present.size, scored.ckpt))
        self.bins.append(present)
        self.sums.append(sums[:, present])

    def frame(self) -> pl.DataFrame:
        if not self.ckpts:
            return pl.DataFrame(schema=BY_EXPOSURE_SCHEMA)
        return pl.DataFrame({"ckpt": pl.Series(np.concatenate(self.ckpts), dtype=pl.Int32),
                             **_bin_columns(np.concatenate(self.bins)), **_rates(np.concatenate(self.sums, axis=1))})


def memorization_by_exposure(sequences: Frame, history: ExposureHistory) -> pl.DataFrame:
    """Memorization per exposure bin, at every checkpoint.

    One row per (ckpt, exposure_bin) holding covered sequences, sorted: `exposure_bin` (0: never seen, 1: once,
    2: twice, 3: 3-4 times, 4: 5-8, ...: 1 + ceil(log2(exposures))), `exposures_min` / `exposures_max` (the bin's
    counts), `n` sequences, `n_memorized`, `full_match_rate`, `score` (mean; null in extractable mode). The last
    checkpoint's rows are `.filter(pl.col("ckpt") == last)`.
    """
    tally = _ByExposure()
    fold(sequences, history, [tally])
    return tally.frame()


# ---- seen per sequence --------------------------------------------------------------------------------------------


SEEN_SCHEMA = {"ckpt": pl.Int32(), "chunk": pl.Int32(), "chunk_seen": pl.Boolean(), "n": pl.Int64(),
               "n_seen": pl.Int64(), "n_memorized": pl.Int64(), "n_memorized_seen": pl.Int64(),
               "full_match_rate_never_seen": pl.Float64(), "full_match_rate_seen": pl.Float64(),
               "score_never_seen": pl.Float64(), "score_seen": pl.Float64()}


class _SeenSplit:
    def __init__(self, max_chunk: int, timeline: Timeline) -> None:
        self.size = 2 * (max_chunk + 1)
        self.timeline = timeline
        self.ckpts: list[np.ndarray] = []
        self.chunks: list[np.ndarray] = []
        self.chunk_seen: list[np.ndarray] = []
        self.sums: list[np.ndarray] = []  # [4, 2 (never seen, seen), chunk] per checkpoint

    def add(self, scored: ScoredSequences) -> None:
        index = 2 * scored.chunk.astype(np.int64) + (scored.bins > 0)
        sums = _sums(index, self.size, scored.memorized, scored.score, scored.scored).reshape(4, -1, 2)
        chunks = np.flatnonzero(sums[0].sum(axis=1))
        self.ckpts.append(np.full(chunks.size, scored.ckpt))
        self.chunks.append(chunks)
        self.chunk_seen.append(np.array([self.timeline.is_seen(scored.ckpt, int(c)) for c in chunks], dtype=bool))
        self.sums.append(sums[:, chunks, :])

    def frame(self) -> pl.DataFrame:
        if not self.ckpts:
            return pl.DataFrame(schema=SEEN_SCHEMA)
        ckpts, chunks, sums = np.concatenate(self.ckpts), np.concatenate(self.chunks), np.concatenate(self.sums, axis=1)
        never, seen = _rates(sums[:, :, 0]), _rates(sums[:, :, 1])
        return pl.DataFrame({
            "ckpt": pl.Series(ckpts, dtype=pl.Int32), "chunk": pl.Series(chunks, dtype=pl.Int32),
            "chunk_seen": pl.Series(np.concatenate(self.chunk_seen)), "n": never["n"] + seen["n"], "n_seen": seen["n"],
            "n_memorized": never["n_memorized"] + seen["n_memorized"], "n_memorized_seen": seen["n_memorized"],
            "full_match_rate_never_seen": never["full_match_rate"].fill_nan(None),
            "full_match_rate_seen": seen["full_match_rate"].fill_nan(None),
            "score_never_seen": never["score"], "score_seen": seen["score"]})


def seen_per_sequence(sequences: Frame, history: ExposureHistory) -> pl.DataFrame:
    """Every cell's covered sequences split by whether each was seen (exposures >= 1) by the cell's checkpoint.

    One row per (ckpt, chunk), sorted: `chunk_seen` (the checkpoint has trained on at least part of the chunk, by
    the timeline: chunk <= ckpt on Amber's; the per-chunk notion of seen), `n`, `n_seen`,
    `n_memorized`, `n_memorized_seen`, and the full-match rate and mean score of the never-seen and of the seen
    sequences (null where there are none). In a cell with chunk_seen every sequence is seen (its own row); in the
    others, the seen ones were seen earlier through copies, so `n_memorized_seen` counts the memorized sequences
    of "unseen" cells that the model had in fact trained on.
    """
    tally = _SeenSplit(history.max_chunk, history.timeline)
    fold(sequences, history, [tally])
    return tally.frame()


def unseen_cells_summary(seen: pl.DataFrame) -> pl.DataFrame:
    """Per checkpoint, over the cells whose chunk it has not trained on (seen_per_sequence's rows with chunk_seen
    false): `n`, `n_seen` (seen earlier through copies), `n_memorized`, `n_memorized_seen`, and the full-match rate
    of the never-seen and of the seen-through-copies sequences."""
    never = pl.col("n") - pl.col("n_seen")
    return (seen.filter(~pl.col("chunk_seen")).group_by("ckpt")
            .agg(pl.col("n", "n_seen", "n_memorized", "n_memorized_seen").sum())
            .with_columns(((pl.col("n_memorized") - pl.col("n_memorized_seen")) / pl.when(never > 0).then(never))
                          .alias("full_match_rate_never_seen"),
                          (pl.col("n_memorized_seen") / pl.when(pl.col("n_seen") > 0).then(pl.col("n_seen")))
                          .alias("full_match_rate_seen"))
            .sort("ckpt"))


# ---- forgetting against recency -----------------------------------------------------------------------------------


RECENCY_SCHEMA = {"exposure_bin": pl.Int32(), "exposures_min": pl.Int64(), "exposures_max": pl.Int64(),
                  "checkpoints_since": pl.Int32(), "n": pl.Int64(), "n_memorized": pl.Int64(),
                  "full_match_rate": pl.Float64(), "score": pl.Float64()}


class _Recency:
    def __init__(self) -> None:
        self.sums = np.zeros((4, MAX_BINS, 0))  # [sums row, bin, checkpoints since]

    def add(self, scored: ScoredSequences) -> None:
        seen = scored.bins > 0
        since = scored.newest_chunk - scored.last_chunk[seen].astype(np.int64)
        width = int(since.max(initial=-1)) + 1
        if not width:
            return
        if width > self.sums.shape[2]:
            self.sums = np.pad(self.sums, ((0, 0), (0, 0), (0, width - self.sums.shape[2])))
        index = scored.bins[seen].astype(np.int64) * width + since
        sums = _sums(index, MAX_BINS * width, scored.memorized[seen], scored.score[seen],
                     None if scored.scored is None else scored.scored[seen])
        self.sums[:, :, :width] += sums.reshape(4, MAX_BINS, width)

    def frame(self) -> pl.DataFrame:
        bins, since = np.nonzero(self.sums[0])
        if not bins.size:
            return pl.DataFrame(schema=RECENCY_SCHEMA)
        return pl.DataFrame({**_bin_columns(bins), "checkpoints_since": pl.Series(since, dtype=pl.Int32),
                             **_rates(self.sums[:, bins, since])})


def forgetting_by_recency(sequences: Frame, history: ExposureHistory) -> pl.DataFrame:
    """Memorization against checkpoints since the last exposure, per exposure bin.

    Every (sequence, checkpoint) with exposures >= 1 is one observation: its exposure bin at that checkpoint and
    `checkpoints_since` = the checkpoint's newest chunk (sweep/timeline.py: ckpt on Amber's timeline) - the last
    chunk holding a copy it has trained on (0: a copy in its newest chunk), counted in chunks. One row per
    (exposure_bin, checkpoints_since) observed, sorted, pooled over checkpoints: `n`
    observations, `n_memorized`, `full_match_rate`, `score` (mean; null in extractable mode).
    """
    tally = _Recency()
    fold(sequences, history, [tally])
    return tally.frame()


# ---- the memorization profile (Lesci et al. 2024) ------------------------------------------------------------------


PROFILE_SCHEMA = {"cohort": pl.Int32(), "ckpt": pl.Int32(), "checkpoints_since": pl.Int32(),
                  "n_treated": pl.Int64(), "treated": pl.Float64(), "n_control": pl.Int64(),
                  "control": pl.Float64(), "gap": pl.Float64(), "base_ckpt": pl.Int32(), "did": pl.Float64()}


class _Profile:
    """Per checkpoint t: the metric summed (and counted) by first exposed chunk f over every sequence (controls are
    suffixes f > c of it), and over each chunk's sequences first exposed in their own chunk (the cohorts)."""

    def __init__(self, max_chunk: int) -> None:
        self.size = max_chunk + 2  # index max_chunk + 1: no scanned file holds the sequence (not possible when covered)
        self.ckpts: list[int] = []
        self.newest: list[int] = []  # per checkpoint, its newest chunk and its last whole chunk (the timeline's)
        self.whole: list[int] = []
        self.by_first: list[np.ndarray] = []  # [2, size] per checkpoint: sum, count
        self.cohorts: list[np.ndarray] = []

    def add(self, scored: ScoredSequences) -> None:
        value, first, chunk = scored.value, scored.first_chunk.astype(np.int64), scored.chunk.astype(np.int64)
        known = ~np.isnan(value)
        if not known.all():
            value, first, chunk = value[known], first[known], chunk[known]
        first[first == NO_CHUNK] = self.size - 1
        own = chunk == first
        self.ckpts.append(scored.ckpt)
        self.newest.append(scored.newest_chunk)
        self.whole.append(scored.whole_chunks)
        self.by_first.append(np.stack([np.bincount(first, weights=value, minlength=self.size),
                                       np.bincount(first, minlength=self.size)]))
        self.cohorts.append(np.stack([np.bincount(chunk[own], weights=value[own], minlength=self.size),
                                      np.bincount(chunk[own], minlength=self.size)]))

    def frame(self) -> pl.DataFrame:
        if not self.ckpts:
            return pl.DataFrame(schema=PROFILE_SCHEMA)
        ckpts = np.array(self.ckpts, dtype=np.int64)
        newest, whole = np.array(self.newest, dtype=np.int64), np.array(self.whole, dtype=np.int64)
        cohorts = np.stack(self.cohorts)  # [t, 2, g]
        # control[t, 2, c]: the sum and count at checkpoint t over sequences first exposed after chunk c
        suffix = np.flip(np.cumsum(np.flip(np.stack(self.by_first), axis=2), axis=2), axis=2)
        control = np.concatenate([suffix[:, :, 1:], np.zeros_like(suffix[:, :, :1])], axis=2)
        rows: list[dict] = []
        for g in np.flatnonzero(cohorts[:, 1, :].sum(axis=0)):
            base = int(np.searchsorted(newest, g)) - 1  # the last scored checkpoint that trained on none of chunk g
            for t in np.flatnonzero((whole >= g) & (cohorts[:, 1, g] > 0)):  # those that trained on all of it
                c = int(ckpts[t])
                after = min(max(int(newest[t]), 0), self.size - 1)  # control: first exposed after its newest chunk
                treated = cohorts[t, 0, g] / cohorts[t, 1, g]
                n_control = control[t, 1, after]
                row = {"cohort": int(g), "ckpt": c, "checkpoints_since": int(whole[t]) - int(g),
                       "n_treated": cohorts[t, 1, g],
                       "treated": treated, "n_control": n_control, "control": None, "gap": None,
                       "base_ckpt": int(ckpts[base]) if base >= 0 else None, "did": None}
                if n_control > 0:
                    row["control"] = control[t, 0, after] / n_control
                    row["gap"] = treated - row["control"]
                    base_control = control[base, 1, after] if base >= 0 else 0
                    if base >= 0 and cohorts[base, 1, g] > 0 and base_control > 0:
                        row["did"] = row["gap"] - (cohorts[base, 0, g] / cohorts[base, 1, g]
                                                   - control[base, 0, after] / base_control)
                rows.append(row)
        return pl.DataFrame(rows, schema=PROFILE_SCHEMA, orient="row").sort("cohort", "ckpt")


def memorization_profile(sequences: Frame, history: ExposureHistory, metric: str = "score") -> pl.DataFrame:
    """The memorization profile of Lesci et al. 2024 ("Causal Estimation of Memorisation Profiles", ACL 2024): per
    chunk (the cohort trained at its checkpoint) and later checkpoint, the effect of having trained on it, by
    difference in differences against sequences not seen yet.

    Cohort g: the covered sequences of chunk g not seen before it (first exposure in chunk g; those seen earlier
    through copies were treated before g and are left out). Control at checkpoint c: every covered sequence not
    seen by c (first exposure in a chunk > c), Callaway and Sant'Anna's "not yet treated" group, which the paper's
    code can choose too (it used never-trained validation data; Amber has none). With Y the mean of `metric`
    ("score", "full_match", "prefix_match", "nll" or "tf_accuracy") and b the last scored checkpoint before g:

        gap(g, c) = Y_c(cohort g) - Y_c(control at c)
        did(g, c) = gap(g, c) - [Y_b(cohort g) - Y_b(control at c)]

    `did` is the paper's ATT(g, c) for the cohort, its parallel-trends baseline being the same two groups at b
    (null for a cohort with no earlier scored checkpoint, e.g. chunk 0). One row per (cohort, ckpt >= cohort) where
    the cohort was scored, sorted: `checkpoints_since` = ckpt - cohort (on a step-indexed timeline, sweep/timeline.py,
    a checkpoint counts for cohort g once it has trained on all of chunk g, its control is what its newest chunk has
    not reached, and checkpoints_since is counted in whole chunks), `n_treated`, `treated`, `n_control`,
    `control`, `gap`, `base_ckpt`, `did` (gap and did null without a control: from the last scanned chunk on).
    The means are over the sequences scored at each checkpoint (the same ones in a full sweep). Lesci et al.'s
    profile is over training steps and sequence surprisal; `metric="nll"` is the closest here (lower is more
    memorized, so memorization shows as a negative did). `profile_path` averages it over cohorts.
    """
    if metric not in PROFILE_METRICS:
        raise MemsweepError(f"unknown profile metric {metric!r}; choose one of {', '.join(PROFILE_METRICS)}")
    tally = _Profile(history.max_chunk)
    fold(sequences, history, [tally], metric=metric)
    return tally.frame()


def profile_path(profile: pl.DataFrame) -> pl.DataFrame:
    """The profile averaged over cohorts per `checkpoints_since` (the paper's memorisation path, its "event"
    aggregation): `cohorts`, `n_treated`, and `gap` and `did` averaged with the cohorts' sizes as weights (over the
    rows where each is known)."""
    def weighted(column: str) -> pl.Expr:
        known = pl.col(column).is_not_null()
        weight = pl.col("n_treated").filter(known)
        return ((pl.col(column).filter(known) * weight).sum() / pl.when(weight.sum() > 0).then(weight.sum())
                ).alias(column)

    return (profile.group_by("checkpoints_since")
            .agg(pl.len().alias("cohorts"), pl.col("n_treated").sum(), weighted("gap"), weighted("did"))
            .sort("checkpoints_since"))


# ---- recitation, reconstruction, recollection (Prashanth et al. 2024) ----------------------------------------------


KINDS_SCHEMA = {"ckpt": pl.Int32(), "n_memorized": pl.Int64(), **{kind: pl.Int64() for kind in KINDS}}


class _Kinds:
    """Per checkpoint: memorized sequences seen at least `recitation_min` times (recitation), and the positions of the
    others, classified once at the end (a template or not) so that no sequence's tokens are read twice."""

    def __init__(self, recitation_min: int, is_template: Callable[[np.ndarray], np.ndarray]) -> None:
        self.recitation_min = recitation_min
        self.is_template = is_template
        self.counts: list[tuple[int, int, int]] = []  # (ckpt, memorized, recitation)
        self.rest: list[np.ndarray] = []  # per checkpoint: history positions of the memorized others

    def add(self, scored: ScoredSequences) -> None:
        recited = scored.memorized & (scored.exposures >= self.recitation_min)
        self.counts.append((scored.ckpt, int(scored.memorized.sum()), int(recited.sum())))
        self.rest.append(scored.at[scored.memorized & ~recited])

    def frame(self) -> pl.DataFrame:
        if not self.counts:
            return pl.DataFrame(schema=KINDS_SCHEMA)
        positions = np.unique(np.concatenate(self.rest))
        templates = self.is_template(positions)
        rows = []
        for (ckpt, memorized, recited), rest in zip(self.counts, self.rest):
            reconstructed = int(templates[np.searchsorted(positions, rest)].sum())
            rows.append((ckpt, memorized, recited, reconstructed, memorized - recited - reconstructed))
        return pl.DataFrame(rows, schema=KINDS_SCHEMA, orient="row")


def template_classifier(history: ExposureHistory, probes: Frame, prompt_len: int,
                        decode: Callable[[list[int]], str] | None) -> Callable[[np.ndarray], np.ndarray]:
    """positions in `history` -> bool: whether each sequence's window (read from the probe sets) is a template
    (memorization_kinds.reconstructable)."""
    def is_template(positions: np.ndarray) -> np.ndarray:
        if not positions.size:
            return np.zeros(0, dtype=bool)
        wanted = history.totals[positions].select("chunk", "row")
        found = (probes.lazy().filter(pl.col("chunk").is_in(wanted["chunk"].unique().to_list()))
                 .join(wanted.lazy(), on=["chunk", "row"], how="semi").select(SEQUENCE_KEY, "tokens").collect()
                 .sort("key"))
        if found.height != positions.size:
            raise MemsweepError(f"{positions.size - found.height} memorized sequences have no landed probe set")
        width = int(found["tokens"].list.len().max())
        tokens = found["tokens"].list.to_array(width).to_numpy().astype(np.int64)
        return reconstructable(tokens, prompt_len, decode)

    return is_template


def memorization_kinds(sequences: Frame, history: ExposureHistory, probes: Frame, prompt_len: int,
                       decode: Callable[[list[int]], str] | None = None,
                       recitation_min: int = RECITATION_MIN_EXPOSURES) -> pl.DataFrame:
    """The memorized sequences of every checkpoint as recitation, reconstruction and recollection (Prashanth et
    al. 2024; definitions and where we differ: sweep/exposures/kinds.py).

    `probes`: the probe sets (chunk, row, tokens: the k + l window), read only for memorized sequences;
    `prompt_len`: k; `decode`: token ids -> text with the checkpoint's tokenizer (examples.TokenDecoder.text), or
    None to find repeating templates only. A memorized sequence with exposures >= `recitation_min` at the
    checkpoint is recitation, else a template is reconstruction, else recollection. One row per checkpoint:
    `n_memorized`, `recitation`, `reconstruction`, `recollection` (covered sequences only).
    """
    tally = _Kinds(recitation_min, template_classifier(history, probes, prompt_len, decode))
    fold(sequences, history, [tally])
    return tally.frame()


# ---- all of them in one pass ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureAnalyses:
    """The five analyses' tables, as their functions return them."""

    by_exposure: pl.DataFrame
    seen: pl.DataFrame
    recency: pl.DataFrame
    profile: pl.DataFrame
    kinds: pl.DataFrame


def exposure_analyses(sequences: Frame, history: ExposureHistory, probes: Frame, prompt_len: int,
                      decode: Callable[[list[int]], str] | None = None, metric: str = "score") -> ExposureAnalyses:
    """memorization_by_exposure, seen_per_sequence, forgetting_by_recency, memorization_profile (of `metric`) and
    memorization_kinds, reading each checkpoint once."""
    if metric not in PROFILE_METRICS:
        raise MemsweepError(f"unknown profile metric {metric!r}; choose one of {', '.join(PROFILE_METRICS)}")
    tallies = (_ByExposure(), _SeenSplit(history.max_chunk, history.timeline), _Recency(),
               _Profile(history.max_chunk),
               _Kinds(RECITATION_MIN_EXPOSURES, template_classifier(history, probes, prompt_len, decode)))
    fold(sequences, history, list(tallies), metric=metric)
    return ExposureAnalyses(*(tally.frame() for tally in tallies))
