"""What the releases memsweep knows publish: checkpoint sizes, parameters and training data, for `memsweep plan`
offline (or when the Hub cannot be listed). Recognised by the model repository id; anything else is priced as Amber.

- **Amber** (LLM360/Amber, FACTS.md): 6.74B parameters; `ckpt_*` revisions 27.0 GB of fp32 `.bin`, `main` 13.5 GB of
  bf16 safetensors; 360 chunk files of 20.8 GB, 1,706,976 rows of 2049 ids each.
- **Pythia** (EleutherAI/pythia-<size>[-deduped], the Pythia README and paper): parameters from the README's table of
  layers and widths with the configs' padded vocabularies (2 V d + L (12 d^2 + 13 d) + 2 d: 70,426,624 for 70M ...
  11,846,072,320 for 12B); checkpoints in fp16, 2 bytes a parameter (the small models' files also hold saved
  attention-mask buffers, 4.2 MB a layer: not counted). Data: 143,000 steps x 1024 sequences of 2049 uint16 tokens,
  146,432,000 items, a 600.1 GB `.bin` in 21 shards and one `.idx` of 12 bytes an item (plus its document index).
- **K2** (LLM360/K2, FACTS.md): 65B parameters, assumed stored at 2 bytes each (not checked: no Hub here); chunk
  files `chunk_{i}.jsonl` of 35.6 GB, rows of 2048 ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    name: str
    parameters: float
    checkpoint_bytes: float  # one checkpoint as stored on the Hub
    main_bytes: float | None = None  # a `main` revision stored otherwise (Amber: bf16 safetensors)
    chunk_file_bytes: float | None = None  # jsonl: one chunk file
    row_tokens: int | None = None  # ids in one training sequence
    token_bytes: int | None = None  # binary streams: bytes a token id takes
    stream_items: int | None = None  # binary streams: items in the stream


AMBER_CHUNK_ROWS = 1_706_976  # rows of 2049 ids in each chunk file (Amber's training code, FACTS.md)
AMBER = Release("Amber", parameters=6.74e9, checkpoint_bytes=27.0e9, main_bytes=13.5e9, chunk_file_bytes=20.8e9,
                row_tokens=2049)
PYTHIA_ARCHITECTURES = {  # size: (layers, d_model, padded vocabulary)
    "14m": (6, 128, 50304), "31m": (6, 256, 50304), "70m": (6, 512, 50304), "160m": (12, 768, 50304),
    "410m": (24, 1024, 50304), "1b": (16, 2048, 50304), "1.4b": (24, 2048, 50304), "2.8b": (32, 2560, 50304),
    "6.9b": (32, 4096, 50432), "12b": (36, 5120, 50688),
}
PYTHIA_ITEMS = 143_000 * 1024
K2 = Release("K2", parameters=65e9, checkpoint_bytes=2 * 65e9, chunk_file_bytes=35.6e9, row_tokens=2048)


def pythia(size: str) -> Release:
    layers, width, vocab = PYTHIA_ARCHITECTURES[size]
    parameters = 2 * vocab * width + layers * (12 * width * width + 13 * width) + 2 * width
    return Release(f"Pythia {size.upper()}", parameters=float(parameters), checkpoint_bytes=2.0 * parameters,
                   row_tokens=2049, token_bytes=2, stream_items=PYTHIA_ITEMS)


def published_release(model_source: str) -> Release | None:
    """The release a model repository id names, if memsweep knows its published sizes."""
    name = model_source.rstrip("/").split("/")[-1].lower()
    match = re.fullmatch(r"pythia-([0-9.]+[mb])(?:-deduped)?(?:-v0)?", name)
    if match and match.group(1) in PYTHIA_ARCHITECTURES:
        return pythia(match.group(1))
    if name == "amber":
        return AMBER
    if name == "k2":
        return K2
    return None
