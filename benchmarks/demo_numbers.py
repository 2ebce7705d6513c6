"""What the demo world gives when swept: the numbers of BENCHMARKS.md's demo section, from a landed output.

    make demo                                                  # builds demo-world/, sweeps it into results/demo
    .venv/bin/python benchmarks/demo_numbers.py                # results/demo and demo-world/data
    .venv/bin/python benchmarks/demo_numbers.py --output OUT --data DATA_DIR

Read from the landed sequences (the sweep's own numbers), the chunk files and the builder's record, as
tests/test_demo_memorization.py reads its smaller world (tests/demo_exposure.py: a sampled line was first seen in the
first file holding its k + l ids; it is duplicated when its corpus row is a planted copy or has one):

- mean memorization score per checkpoint, by chunk file (the heatmap's cells) and by the file that first holds
  each sampled line: before the newest file, the newest, not trained on yet; and the ratios over all cells;
- persistence: of the sampled lines fully memorized at some checkpoint before the last, how many still are at the
  last one (and the same counting the last checkpoint in "some"), and per checkpoint c the share of the lines of
  files 0..c memorized at c still memorized at the last (Biderman et al.'s precision, from
  sweep/analysis/memorization.py's predictability, as the report shows it);
- duplication: at the last checkpoint, duplicated lines against unique ones (all of them, and those first seen in the
  same files, weighted as the duplicated ones are).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.analysis.memorization import predictability  # noqa: E402
from sweep.landed.reader import open_output  # noqa: E402
from tests.demo_exposure import sampled_lines, same_age_means  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("results/demo"), help="the demo's landed output")
    parser.add_argument("--data", type=Path, default=Path("demo-world/data"), help="the demo world's data directory")
    args = parser.parse_args()

    landed = open_output(args.output)
    sequences = landed.sequences().collect()
    checkpoints = sorted(sequences["ckpt"].unique().to_list())
    chunks = sorted(sequences["chunk"].unique().to_list())
    if checkpoints != chunks or checkpoints != list(range(len(checkpoints))):
        raise SystemExit(f"{args.output}: expected the full square of checkpoints x chunks 0..n-1 (a demo sweep)")
    last = checkpoints[-1]
    lines = sampled_lines(args.output, args.data, len(chunks), landed.prompt_len)
    scored = sequences.join(lines, on=["chunk", "row"])

    print(f"{args.output}: {len(checkpoints)} checkpoints x {len(chunks)} chunk files, "
          f"{sequences.height:,} scored lines ({lines.height:,} sampled)")
    print(f"\n    mean memorization score{'checkpoint':>27}  " + "".join(f"{c:>6}" for c in checkpoints))
    for title, column in (("by chunk file (the heatmap's cells):", "chunk"),
                          ("by sampled line, the first file holding it:", "first_file")):
        print(f"    {title}")
        for label, where in (("before the newest", pl.col(column) < pl.col("ckpt")),
                             ("the newest", pl.col(column) == pl.col("ckpt")),
                             ("not trained on yet", pl.col(column) > pl.col("ckpt"))):
            means = scored.filter(where).group_by("ckpt").agg(pl.col("score").mean())
            by_ckpt = dict(means.iter_rows())
            cells = "".join(f"{by_ckpt[c]:>6.2f}" if c in by_ckpt else f"{'-':>6}" for c in checkpoints)
            print(f"      {label:<42}{cells}")

    by_cell = scored.group_by("ckpt", "chunk").agg(pl.col("score").mean())
    earlier = by_cell.filter(pl.col("chunk") < pl.col("ckpt"))["score"].mean()
    not_yet = by_cell.filter(pl.col("chunk") > pl.col("ckpt"))["score"].mean()
    seen_lines = scored.filter(pl.col("first_file") < pl.col("ckpt"))["score"].mean()
    unseen_lines = scored.filter(pl.col("first_file") > pl.col("ckpt"))["score"].mean()
    print(f"\nfiles before the newest {earlier:.2f}, files not trained on yet {not_yet:.2f} ({earlier / not_yet:.1f}x, "
          f"over all cells); lines first seen before the newest file {seen_lines:.2f}, lines not seen yet "
          f"{unseen_lines:.2f} ({seen_lines / unseen_lines:.1f}x)")

    per_line = scored.group_by("chunk", "row").agg(
        before=pl.col("full_match").filter(pl.col("ckpt") < last).any(),
        ever=pl.col("full_match").any(),
        at_last=pl.col("full_match").filter(pl.col("ckpt") == last).first())
    before = per_line.filter("before")
    ever = per_line.filter("ever")
    print(f"persistence: of the {before.height} sampled lines fully memorized at some checkpoint before the last, "
          f"{before['at_last'].sum()} ({before['at_last'].mean():.0%}) still are at checkpoint {last}; counting "
          f"checkpoint {last} too, {ever['at_last'].sum()} of {ever.height} ({ever['at_last'].mean():.0%})")
    precision = [f"{ckpt}: {share:.0%} of {n}" if n else f"{ckpt}: none"
                 for ckpt, n, share in predictability(sequences).select("ckpt", "n_memorized", "precision").rows()]
    print(f"  memorized at checkpoint c (files 0..c) and still at {last} (precision, as the report computes it): "
          + ", ".join(precision))

    final = scored.filter(pl.col("ckpt") == last)
    duplicated, unique = final.filter("duplicated"), final.filter(~pl.col("duplicated"))
    same_age_duplicated, same_age_unique = same_age_means(final)
    print(f"duplication, at checkpoint {last}: {duplicated.height} duplicated lines score "
          f"{duplicated['score'].mean():.2f} ({duplicated['full_match'].mean():.0%} fully memorized), "
          f"{unique.height} unique lines {unique['score'].mean():.2f} ({unique['full_match'].mean():.0%}); "
          f"unique lines first seen in the same files {same_age_unique:.2f} "
          f"({same_age_duplicated / same_age_unique:.1f}x)")


if __name__ == "__main__":
    main()
