"""The demo's published labels: which training sequences the final demo checkpoint memorized, by the reference
algorithm, in the form EleutherAI published Pythia's (`EleutherAI/pythia-memorized-evals`: `index`, `tokens`,
`__index_level_0__`, memorized sequences only).

They are computed without memsweep's kernel, so that `memsweep compare results/demo demo-world/model/reference-labels`
holds memsweep against the reference rather than against itself: every line of every chunk file, in training order
(`index` = its position in the stream of files 0, 1, ..., as Pythia's `index` is), is prompted with its first k ids
and decoded greedily with plain HF `generate` (k = l = 32, as Biderman et al.; EOS an ordinary token, as memsweep
scores by default: exactly l new tokens); a line is memorized when all l equal its next l ids. Lines with the same
first k + l ids are decoded once (the demo's replays and planted copies repeat rows). The chunk files are read with
the demo's own reader (sweep/demo/world.py `read_chunk`), not memsweep's probe sets.

Written by `memsweep demo` (so by `make demo`) after the world is built, once: `reference-labels/` beside the
checkpoints, `memorized-ckpt_<last>.parquet`. What it costs is in BENCHMARKS.md ("The demo").
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from sweep.demo.config import DemoWorldConfig
from sweep.demo.world import checkpoint_path, chunk_path, read_chunk
from sweep.landed.atomic_write import write_atomic

LABELS_DIR = "reference-labels"  # in the model directory, beside ckpt_000 ..
PROMPT_LEN = CONTINUATION_LEN = 32  # configs/demo.yaml's k and l, Biderman et al.'s
BATCH = 256


def labels_path(config: DemoWorldConfig, model_dir: Path) -> Path:
    return Path(model_dir) / LABELS_DIR / f"memorized-ckpt_{config.chunks - 1:03d}.parquet"


def ensure_reference_labels(config: DemoWorldConfig, model_dir: Path, data_dir: Path, progress: bool = True) -> Path:
    """Write the final checkpoint's reference labels once (a no-op when the file exists); returns its path."""
    path = labels_path(config, model_dir)
    if path.exists():
        return path
    started = time.perf_counter()
    labels = reference_labels(config, model_dir, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(_parquet_bytes(labels), path)
    if progress:
        print(f"demo reference labels: {labels.height:,} memorized lines by HF generate at checkpoint "
              f"{config.chunks - 1} in {time.perf_counter() - started:.1f} s ({path})")
    return path


def reference_labels(config: DemoWorldConfig, model_dir: Path, data_dir: Path, threads: int = 1) -> pl.DataFrame:
    """The memorized lines of the whole stream at the last checkpoint: `index` (Int64), `tokens` (the first k + l
    ids, List(Int64)), `__index_level_0__` (= index), in stream order. `threads`: torch's, while generating (one is
    as fast for these tiny matmuls, and far faster on a busy machine, as in the demo's training)."""
    width = PROMPT_LEN + CONTINUATION_LEN
    stream = np.concatenate([read_chunk(chunk_path(data_dir, chunk), config.row_len, config.vocab_size).tokens[:, :width]
                             for chunk in range(config.chunks)]).astype(np.int64)
    unique, inverse = np.unique(stream, axis=0, return_inverse=True)
    memorized = greedy_memorized(checkpoint_path(model_dir, config.chunks - 1), unique, threads)[inverse.reshape(-1)]
    index = np.flatnonzero(memorized).astype(np.int64)
    return pl.DataFrame({"index": index, "tokens": pl.Series(stream[index].tolist(), dtype=pl.List(pl.Int64)),
                         "__index_level_0__": index})


def greedy_memorized(checkpoint: Path, sequences: np.ndarray, threads: int = 1) -> np.ndarray:
    """bool[n]: HF `generate`'s greedy l tokens after each row's first k equal its next l (int64[n, k + l] in)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    # generate fills the None fields of a passed config from the model's, so EOS is switched off on the model's own:
    # with an EOS id a row that generates it would stop early, and min_new_tokens would forbid it instead.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    tokens = torch.as_tensor(sequences)
    memorized = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for batch in tokens.split(BATCH):
                prompt = batch[:, :PROMPT_LEN]
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, num_beams=1,
                                     max_new_tokens=CONTINUATION_LEN)
                generated = out[:, PROMPT_LEN:]
                memorized.append((generated.shape[1] == CONTINUATION_LEN)
                                 & (generated == batch[:, PROMPT_LEN:]).all(dim=1).numpy())
    finally:
        torch.set_num_threads(before)
    return np.concatenate(memorized) if memorized else np.zeros(0, dtype=bool)


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()
