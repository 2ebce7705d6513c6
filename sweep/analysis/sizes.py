"""Biderman et al. (2023)'s predictability across model sizes: does a smaller model's memorized set predict a larger
one's, on the same training sequences?

    joint = open_joint_outputs([Path("results/pythia-70m"), Path("results/pythia-1b"), Path("results/pythia-12b")])
    size_predictability(joint)  # one row per (smaller, larger, checkpoint)

"Memorized" is a full match (k-extractable: all l greedy tokens right), the set Biderman et al. compare. The outputs
come from sweep/analysis/joint_outputs.py, which refuses outputs that probe different sequences. The same question
across checkpoints of one model (a partially trained model predicting the final one's set) is
sweep/analysis/memorization.py `predictability`; both count with `memorized_set_agreement`.

Memory: one checkpoint of two outputs at a time (1000 x 143 rows each for a sampled Pythia sweep; in a census 146M
each, whose join holds one side's (chunk, row) keys: not yet measured).
"""

from __future__ import annotations

import polars as pl

from sweep.analysis.joint_outputs import JointOutputs
from sweep.analysis.memorization import memorized_set_agreement
from sweep.landed.reader import LandedOutput

SIZE_PREDICTABILITY_SCHEMA = {
    "predictor": pl.String(),  # the smaller model's output (its label: the folder's name)
    "target": pl.String(),  # the larger model's output
    "predictor_model": pl.String(),  # model.source of each
    "target_model": pl.String(),
    "ckpt": pl.Int32(),
    "n_sequences": pl.UInt32(),  # sequences both scored at ckpt, and ckpt had trained on
    "n_memorized": pl.UInt32(),  # |M_smaller|
    "n_memorized_target": pl.UInt32(),  # |M_larger|
    "n_both": pl.UInt32(),  # |M_smaller & M_larger|
    "precision": pl.Float64(),  # n_both / n_memorized: how many of the smaller's memorized the larger memorized too
    "recall": pl.Float64(),  # n_both / n_memorized_target: how many of the larger's the smaller found
}


def size_predictability(joint: JointOutputs, against_largest: bool = False) -> pl.DataFrame:
    """Precision and recall of each smaller model's memorized set as a predictor of each larger one's, by checkpoint.

    `joint`'s outputs are taken smallest model first (the order given). Every pair i < j is compared (or, with
    `against_largest`, each output against the last one), at every checkpoint both have landed, on the sequences
    both scored there that the checkpoint had trained on (`seen`; matched on (chunk, row); a null full_match on
    either side leaves the sequence out). One row per (pair, checkpoint), SIZE_PREDICTABILITY_SCHEMA, in pair then
    checkpoint order; precision (recall) is null where the smaller (larger) model memorized none.
    """
    outputs = joint.outputs
    last = len(outputs) - 1
    pairs = [(i, last) for i in range(last)] if against_largest else \
        [(i, j) for i in range(len(outputs)) for j in range(i + 1, len(outputs))]
    parts = []
    for i, j in pairs:
        for ckpt in sorted(set(outputs[i].landed_checkpoints()) & set(outputs[j].landed_checkpoints())):
            predictor = _memorized(outputs[i], ckpt, "memorized")
            target = _memorized(outputs[j], ckpt, "memorized_target").drop("ckpt")
            counts = memorized_set_agreement(predictor.join(target, on=["chunk", "row"], how="inner"), ["ckpt"])
            labels = {"predictor": joint.labels[i], "target": joint.labels[j], "predictor_model": joint.model(i),
                      "target_model": joint.model(j)}
            parts.append(counts.with_columns(pl.lit(value).alias(name) for name, value in labels.items())
                         .select([pl.col(name).cast(dtype) for name, dtype in SIZE_PREDICTABILITY_SCHEMA.items()])
                         .collect(engine="streaming"))  # one checkpoint pair at a time: bounded memory
    if not parts:
        return pl.DataFrame(schema=SIZE_PREDICTABILITY_SCHEMA)
    return pl.concat(parts)


def _memorized(landed: LandedOutput, ckpt: int, name: str) -> pl.LazyFrame:
    """Checkpoint `ckpt`'s sequences it had trained on: ckpt, chunk, row and full_match as `name`."""
    return landed.sequences(ckpt).filter(pl.col("seen")).select("ckpt", "chunk", "row", pl.col("full_match").alias(name))
