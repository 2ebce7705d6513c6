"""Hostile and careless training streams (issue 22, item 5), as a user meets them: through `memsweep run`.

Each case starts from a healthy output (checkpoint step 4 x chunk 0, landed from the stream family's Megatron or numpy
stream, tests/stream_world.py), breaks the stream in place one way, and extends the sweep by one cell that needs the
broken part. It asserts the exact line the failed cell records and the summary prints, the exit status (1: the sweep
ran and that cell failed), and that what had landed is still there, unchanged and verified. The data folder keeps its
path across the cases (a sweep's data source is part of its identity), restored before each.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweep.data.probes import sample_rows
from sweep.landed.reader import open_output
from tests.stream_world import K, L, PER_CHUNK, PER_STEP, SAMPLES, SEQUENCE_LEN, STEPS_PER_CHUNK
from tests.sweeps import landed as landed_tables

pytestmark = pytest.mark.ray

SAMPLED = int(sample_rows(PER_CHUNK, SAMPLES, 42)[0])  # the first item every probe set of chunk 1 reads ...
ITEM = PER_CHUNK + SAMPLED  # ... at this stream position


def in_process(*args: str) -> subprocess.CompletedProcess:
    """`memsweep ARGS` run by this process (on the session's Ray), returning what the user would have seen."""
    from sweep.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def spec_file(path: Path, data: dict, model: Path, output: Path, checkpoints: list[int], chunks: list[int]) -> Path:
    spec = {
        "name": "bad-stream",
        "model": {"source": str(model), "revision": "step{ckpt}", "dtype": "float32"},
        "data": {"samples_per_chunk": SAMPLES, "seed": 42, "cache_dir": str(output.parent / "cache"), **data},
        "timeline": {"sequences_per_step": PER_STEP, "steps_per_chunk": STEPS_PER_CHUNK},
        "checkpoints": checkpoints,
        "chunks": chunks,
        "memorization": {"prompt_len": K, "continuation_len": L},
        "resources": {"batch_size": 8, "max_attempts": 2},
        "output": str(output),
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def healthy(stream_family, module_ray, tmp_path_factory):
    """Per format: (the data folder every case breaks in place, its pristine copy, the data keys, the landed output)."""
    root = tmp_path_factory.mktemp("bad-streams")
    world = stream_family.world
    formats = {"megatron": (world.megatron, {"format": "megatron", "file": "document"}),
               "numpy": (world.numpy, {"format": "numpy", "file": "tokens/*.npy", "dtype": "uint16",
                                       "sequence_len": SEQUENCE_LEN, "order": "global_indices.npy"})}
    healthy = {}
    for name, (folder, keys) in formats.items():
        data = root / f"data-{name}"
        shutil.copytree(folder, data)
        output = root / f"landed-{name}"
        spec = spec_file(root / f"{name}.yaml", {"source": str(data), **keys}, stream_family.model, output, [4], [0])
        result = in_process("run", str(spec), "--no-progress")
        assert result.returncode == 0, result.stdout + result.stderr
        healthy[name] = (data, folder, {"source": str(data), **keys}, output)
    return healthy


def _rewrite(path: Path, offset: int, fmt: str, *values) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


def _shards(data: Path) -> list[Path]:
    return sorted(data.glob("document-*-of-*.bin"))


def _bins_label(data: Path) -> str:
    shards = _shards(data)
    return f"{shards[0]} .. {shards[-1].name} ({len(shards)} shards)"


def _index_items(data: Path) -> int:
    return struct.unpack_from("<Q", (data / "document.idx").read_bytes(), 18)[0]


def _bin_bytes(data: Path) -> int:
    return sum(path.stat().st_size for path in _shards(data))


# (case, how to break the Megatron stream in `data`, the line the failed cell records)
MEGATRON = {
    "wrong magic": (lambda data: _rewrite(data / "document.idx", 0, "9s", b"NOTANIDX\x00"),
                    lambda data: f"{data}/document.idx: not a Megatron index: it starts with b'NOTANIDX\\x00', not "
                                 "b'MMIDIDX\\x00\\x00'"),
    "wrong version": (lambda data: _rewrite(data / "document.idx", 9, "<Q", 2),
                      lambda data: f"{data}/document.idx: index version 2, but only version 1 is known"),
    "unknown dtype code": (lambda data: _rewrite(data / "document.idx", 17, "B", 9),
                           lambda data: f"{data}/document.idx: dtype code 9 is not a Megatron dtype (1 uint8, 2 int8, "
                                        "3 int16, 4 int32, 5 int64, 6 float32, 7 float64, 8 uint16)"),
    "a float dtype code": (lambda data: _rewrite(data / "document.idx", 17, "B", 6),
                           lambda data: f"{data}/document.idx: dtype code 6 (float32) cannot hold token ids"),
    "a pointer past the shards": (
        lambda data: _rewrite(data / "document.idx", 34 + 4 * _index_items(data) + 8 * ITEM, "<q", _bin_bytes(data) - 8),
        lambda data: f"{data}/document.idx: item {ITEM} lies at bytes {_bin_bytes(data) - 8:,}-"
                     f"{_bin_bytes(data) - 8 + 2 * SEQUENCE_LEN:,}, past the end of {_bins_label(data)} "
                     f"({_bin_bytes(data):,} bytes)"),
    "a missing shard": (lambda data: _shards(data)[3].unlink(),
                        lambda data: f"{data}/document-00003-of-{len(_shards(data)):05d}.bin: missing (shards "
                                     + ", ".join(f"{n:05d}" for n in range(len(_shards(data)) + 1) if n != 3)
                                     + f" of {len(_shards(data)):05d} are listed)"),
    "shards that do not add up": (
        lambda data: _shards(data)[-1].write_bytes(_shards(data)[-1].read_bytes()[:-10]),
        lambda data: f"{_bins_label(data)}: the shards hold {_bin_bytes(data):,} bytes, but the index's last item ends "
                     f"at byte {_bin_bytes(data) + 10:,} (a missing, truncated or foreign shard, or another index)"),
    "an item shorter than k + l": (lambda data: _rewrite(data / "document.idx", 34 + 4 * ITEM, "<i", 20),
                                   lambda data: f"{data}/document.idx: item {ITEM} has 20 tokens, fewer than the "
                                                f"{K + L} asked (k + l)"),
}


def _check_extension(case_output: Path, landed_output: Path, spec: Path, failed: list[tuple[int, int]], line: str):
    before = landed_tables(case_output)
    result = in_process("run", str(spec), "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    output = open_output(case_output)
    failures = {(f["ckpt"], f["chunk"]): f["error"] for f in output.failures()}
    assert failures == {cell: line for cell in failed}, failures
    for ckpt, chunk in failed:
        assert f"FAILED cell ckpt {ckpt} x chunk {chunk} after " in result.stdout and line in result.stdout
    after = landed_tables(case_output)  # nothing landed is lost or changed
    assert after[0].equals(before[0]) and after[1].equals(before[1])
    assert after[0].equals(landed_tables(landed_output)[0]) and output.done_cells() == {(4, 0)}
    assert in_process("verify", str(case_output)).returncode == 0


@pytest.mark.parametrize("case", list(MEGATRON))
def test_a_broken_megatron_stream_fails_only_the_cells_that_need_it(healthy, stream_family, tmp_path, case):
    data, pristine, keys, landed_output = healthy["megatron"]
    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    MEGATRON[case][0](data)
    expected = MEGATRON[case][1](data)  # named from the damaged folder (the shards and sizes left)
    output = tmp_path / "out"
    shutil.copytree(landed_output, output)
    spec = spec_file(tmp_path / "s.yaml", keys, stream_family.model, output, [4], [0, 1])
    _check_extension(output, landed_output, spec, [(4, 1)], expected)


def _order(data: Path) -> np.ndarray:
    return np.fromfile(data / "global_indices.npy", dtype="<u4")


NUMPY = {
    "an order entry out of range": (
        lambda data: _rewrite(data / "global_indices.npy", 4 * ITEM, "<I", 5000),
        lambda data: f"{data}/global_indices.npy: position {ITEM} names instance 5,000, but the token files hold 96 "
                     f"instances (of data.sequence_len {SEQUENCE_LEN} tokens)"),
    "a repeated order entry": (
        lambda data: _rewrite(data / "global_indices.npy", 4 * (PER_CHUNK + 3), "<I", int(_order(data)[PER_CHUNK + 7])),
        lambda data: f"{data}/global_indices.npy: instance {int(_order(data)[PER_CHUNK + 7]):,} is at positions "
                     f"{PER_CHUNK + 3} and {PER_CHUNK + 7} (an order lists each instance once)"),
}


@pytest.mark.parametrize("case", list(NUMPY))
def test_a_broken_order_file_fails_only_the_cells_that_need_it(healthy, stream_family, tmp_path, case):
    data, pristine, keys, landed_output = healthy["numpy"]
    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    expected = NUMPY[case][1](data)  # named from the healthy order (the entry the damage repeats)
    NUMPY[case][0](data)
    output = tmp_path / "out"
    shutil.copytree(landed_output, output)
    spec = spec_file(tmp_path / "s.yaml", keys, stream_family.model, output, [4], [0, 1])
    _check_extension(output, landed_output, spec, [(4, 1)], expected)


@pytest.mark.parametrize("beyond", ["checkpoint", "chunk"])
def test_a_timeline_past_the_end_of_the_stream_fails_only_those_cells(healthy, stream_family, tmp_path, beyond):
    data, pristine, keys, landed_output = healthy["megatron"]
    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    output = tmp_path / "out"
    shutil.copytree(landed_output, output)
    stream = f"{data}:document"
    if beyond == "checkpoint":  # step 100 would have trained on 800 sequences of a 96-sequence stream
        spec = spec_file(tmp_path / "s.yaml", keys, stream_family.model, output, [4, 100], [0])
        line = (f"checkpoint 100: timeline.sequences_per_step {PER_STEP} puts step 100 at 800 sequences trained, "
                f"beyond the 96 sequences of {stream}")
        failed = [(100, 0)]
    else:
        spec = spec_file(tmp_path / "s.yaml", keys, stream_family.model, output, [4], [0, 5])
        line = (f"chunk 5: timeline (steps_per_chunk {STEPS_PER_CHUNK} x sequences_per_step {PER_STEP}) puts it at "
                f"stream positions [160, 192), beyond the 96 sequences of {stream}")
        failed = [(4, 5)]
    _check_extension(output, landed_output, spec, failed, line)
