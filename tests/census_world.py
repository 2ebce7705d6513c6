"""The specs of the session's census (test helper, no tests here; the fixture that sweeps them is tests/conftest.py
`stream_census`): the training stream of tests/stream_world.py (96 sequences, 3 chunks of 32) in each format, scored
whole (`data.samples_per_chunk: all`) at two checkpoints, and the Megatron stream sampled 12 a chunk."""

from __future__ import annotations

from pathlib import Path

from sweep.spec import SweepSpec, load_spec
from tests.stream_world import CHUNKS, K, L, PER_STEP, SEQUENCE_LEN, STEPS_PER_CHUNK
from tests.sweeps import write_spec

STEPS = [4, 12]  # a stream's checkpoints: the ends of chunks 0 and 2 (as the JSONL output's ckpt_000 and ckpt_002)
LAST_CKPT = {"jsonl": CHUNKS - 1, "megatron": STEPS[-1], "numpy": STEPS[-1], "sampled": STEPS[-1]}
SAMPLED = 12  # samples_per_chunk of the `sampled` output
TIMELINE = {"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK}


def census_spec(tmp_path: Path, name: str, model: Path, data: dict) -> SweepSpec:
    """A census of `data` (a data section; with a `format`, a stream on Pythia's step timeline) into tmp_path/name."""
    steps = {} if "format" not in data else dict(timeline=TIMELINE, checkpoints=STEPS, model={"revision": "step{ckpt}"})
    return load_spec(write_spec(tmp_path, Path("/unused"), tmp_path / name,
                                model={"source": str(model), **steps.pop("model", {})},
                                data={"samples_per_chunk": "all", **data},
                                memorization={"prompt_len": K, "continuation_len": L, "nll": False},
                                chunks=f"0-{CHUNKS - 1}", **{"checkpoints": f"0,{CHUNKS - 1}", **steps}))


def census_specs(stream_family, tmp_path: Path) -> dict[str, SweepSpec]:
    """name -> spec: `jsonl`, `megatron`, `numpy` (censuses) and `sampled` (the Megatron stream, 12 a chunk)."""
    world, model = stream_family.world, stream_family.model
    formats = {
        "jsonl": {"source": str(world.jsonl)},
        "megatron": {"source": str(world.megatron), "format": "megatron", "file": "document"},
        "numpy": {"source": str(world.numpy), "format": "numpy", "file": "tokens/*.npy", "dtype": "uint16",
                  "sequence_len": SEQUENCE_LEN, "order": "global_indices.npy"},
    }
    specs = {name: census_spec(tmp_path, name, model, data) for name, data in formats.items()}
    specs["sampled"] = census_spec(tmp_path, "sampled", model, {**formats["megatron"], "samples_per_chunk": SAMPLED})
    return specs
