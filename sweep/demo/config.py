"""Every knob of the demo world in one typed config (`DemoWorldConfig`): what sweep/demo/world.py builds and
sweep/demo/stream.py lays out as the chunk files, both reading it from here."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass


@pydantic_dataclass(frozen=True)
class DemoWorldConfig:
    """Every knob of the miniature world; the whole config is its identity (kept in ``world.json``)."""

    chunks: int = Field(default=8, ge=1, le=1000)
    """Number of data chunks == number of checkpoints."""
    rows_per_chunk: int = Field(default=256, ge=1)
    """Corpus rows per chunk. Its file holds them once per epoch, plus the replayed rows
    (``epochs_per_chunk * (rows_per_chunk + replayed)`` JSON lines)."""
    row_len: int = Field(default=72, ge=2)
    """Tokens per row; memorization probes read the first k+l (64 by default)."""
    vocab_size: int = Field(default=1024, ge=300, le=65536)
    """BPE vocabulary, special tokens included (0 <unk>, 1 BOS, 2 EOS as in LLaMA)."""
    hidden_size: int = Field(default=128, ge=8)
    intermediate_size: int = Field(default=512, ge=1)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    """Attention heads; must divide hidden_size."""
    epochs_per_chunk: int = Field(default=2, ge=1)
    """Passes over each chunk's rows before its checkpoint is saved, each written into its file
    (Amber: 1; a tiny model needs more).
    With replay, a row is trained on about ``epochs_per_chunk * (1 + replay_fraction / (i + 1))``
    times while chunk i is the newest, and about ``epochs_per_chunk * replay_fraction / (j + 1)``
    times more during each later chunk j, at an even pace (sweep/demo/stream.py)."""
    batch_size: int = Field(default=16, ge=1)
    """Rows per optimizer step."""
    learning_rate: float = Field(default=5e-3, gt=0)
    """AdamW peak learning rate (reached after a short linear warmup)."""
    final_learning_rate: float = Field(default=1e-3, gt=0)
    """Learning rate at the last step; cosine decay from the peak over the whole run."""
    replay_fraction: float = Field(default=3.0, ge=0, le=4)
    """Rehearsal: each epoch of chunk i also trains on ``replay_fraction * rows_per_chunk`` rows of
    chunks 0..i (never later ones), in passes that replay every row seen so far once before any
    again (sweep/demo/stream.py), written into file i. Amber sees each row once; this stands in for
    the slow forgetting of a large model (see sweep/demo/world.py's docstring). 0 turns it off."""
    duplicate_fraction: float = Field(default=0.1, ge=0, le=0.5)
    """Share of rows that are verbatim copies of another row (half in its chunk, half elsewhere)."""
    seed: int = Field(default=0, ge=0)

    def __post_init__(self) -> None:
        # Field constraints are checked by pydantic; these two relate fields to each other.
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DemoWorldConfig.num_heads={self.num_heads}: must divide hidden_size ({self.hidden_size})")
        if self.final_learning_rate > self.learning_rate:
            raise ValueError(f"DemoWorldConfig.final_learning_rate={self.final_learning_rate}: must be <= "
                             f"learning_rate ({self.learning_rate})")
