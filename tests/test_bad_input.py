"""Hostile and careless input, as a user meets it: through the `memsweep` command.

Every case asserts the exact line the user is shown, the exit status (2: refused, nothing done; 1: the sweep ran
and these cells failed, recorded in failures/) and that results already landed are unchanged. Cases that can be
known before Ray starts run `memsweep` as a separate process and must return without starting Ray; the cases that
need a sweep call the same command in this process, on one local Ray for the module (a Ray start per case would
cost the suite minutes), and the broken inputs share one sweep over a world of deliberately broken chunk files
and checkpoints.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from sweep.data.probes import sample_rows
from sweep.analysis.query import run_query
from sweep.landed.reader import open_output
from sweep.landed.schema import CellProvenance
from sweep.landed.store import ResultStore, ScoredCell
from sweep.landed.writer_lock import writer_lock
import sweep.run.driver as driver_module
from tests.tiny_lm import train_memorizing_llama, write_tiny_world

REPO = Path(__file__).resolve().parents[1]
K = L = 16
ROWS, SAMPLES = 40, 8


def memsweep(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # a private local Ray
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "sweep", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def in_process(*args: str) -> subprocess.CompletedProcess:
    """`memsweep ARGS` run by this process (on the session's Ray), returning what the user would have seen."""
    from sweep.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line the user is shown for a refused command (and proof there is nothing else: no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("memsweep: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0].removeprefix("memsweep: error: ")


def snapshot(output: Path) -> dict[str, str]:
    """sha256 of every file of a landed output (the lock file aside)."""
    return {p.relative_to(output).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(output.rglob("*")) if p.is_file() and p.name != ".memsweep.lock"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_tiny_world(tmp_path_factory.mktemp("bad-input-world"), checkpoints=3, chunks=1, rows=ROWS,
                            length=K + L)


def spec_dict(world: Path, output: Path, **extra) -> dict:
    spec = {
        "name": "bad-input",
        "model": {"source": str(world / "model"), "dtype": "float32"},
        "data": {"source": str(world / "data"), "samples_per_chunk": SAMPLES, "seed": 42,
                 "cache_dir": str(output.parent / f"{output.name}-cache")},
        "checkpoints": [0],
        "chunks": [0],
        "memorization": {"prompt_len": K, "continuation_len": L},
        "resources": {"batch_size": 8, "max_attempts": 2},
        "output": str(output),
    }
    for key, value in extra.items():
        section, _, leaf = key.partition(".")
        if leaf:
            spec[section][leaf] = value
        else:
            spec[key] = value
    return spec


def write_yaml(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def landed(world, module_ray, tmp_path_factory) -> tuple[Path, Path]:
    """A healthy output with one landed cell, and its spec: what every refusal must leave unchanged."""
    root = tmp_path_factory.mktemp("landed")
    spec = write_yaml(root / "spec.yaml", spec_dict(world, root / "out"))
    result = in_process("run", str(spec), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    return spec, root / "out"


@pytest.fixture(scope="module")
def clean_three(world, module_ray, tmp_path_factory) -> Path:
    """The clean result of checkpoints 0-2 x chunk 0: what a repaired output must equal after its rerun."""
    root = tmp_path_factory.mktemp("clean-two")
    spec = write_yaml(root / "spec.yaml", spec_dict(world, root / "out", checkpoints=[0, 1, 2]))
    assert in_process("run", str(spec), "--no-progress").returncode == 0
    return root / "out"


# ---- refused before Ray starts ----------------------------------------------------------------------------

def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_revision_template_without_ckpt_is_refused(world, tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", spec_dict(world, tmp_path / "out", checkpoints=[0, 1],
                                                     **{"model.revision": "ckpt_000"}))
    result = memsweep("run", str(spec))
    assert result.returncode == 2
    assert error_line(result) == (
        f"{spec}:{_line_of(spec, 'revision: ckpt_000')}: model.revision: ckpt 0 and 1 both map to 'ckpt_000', so one "
        "would be scored as the other (use {ckpt} in the template; name each one in model.revision_overrides)")
    assert not (tmp_path / "out").exists()


def test_a_data_file_without_chunk_is_refused(world, tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", spec_dict(world, tmp_path / "out", chunks=[0, 1],
                                                     **{"data.file": "train/train_000.jsonl"}))
    result = memsweep("plan", str(spec))
    assert result.returncode == 2
    assert error_line(result) == (
        f"{spec}:{_line_of(spec, 'file: train/train_000.jsonl')}: data.file: chunk 0 and 1 both map to "
        "'train/train_000.jsonl', so one would be scored as the other (use {chunk} in the template)")


def test_a_duplicated_key_is_refused(world, tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", spec_dict(world, tmp_path / "out"))
    spec.write_text(spec.read_text() + f"output: {tmp_path / 'other'}\n")
    result = memsweep("plan", str(spec))
    assert result.returncode == 2
    last = len(spec.read_text().splitlines())
    assert error_line(result) == (f"{spec}:{last}: output: duplicated key (also on line {_line_of(spec, 'output:')}); "
                                  "YAML would silently keep the last one")


def test_set_values_that_are_not_yaml_or_not_valid_name_the_set(world, tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", spec_dict(world, tmp_path / "out"))
    result = memsweep("plan", str(spec), "--set", "resources.batch_size=[8,")
    assert result.returncode == 2
    assert error_line(result).startswith("--set resources.batch_size=[8,: the value is not YAML (")
    result = memsweep("plan", str(spec), "--set", "resources.batch_size=0")
    assert result.returncode == 2
    assert error_line(result) == ("--set resources.batch_size=0: resources.batch_size: should be 'auto' or greater "
                                  "than or equal to 1 (got 0)")


@pytest.mark.parametrize("where", ["output is a file", "output under a file", "cache under a file"])
def test_unusable_output_or_cache_paths_are_named_before_ray_starts(world, tmp_path, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    output = blocker if where == "output is a file" else (
        blocker / "out" if where == "output under a file" else tmp_path / "out")
    spec = spec_dict(world, output)
    if where == "cache under a file":
        spec["data"]["cache_dir"] = str(blocker / "cache")
    result = memsweep("run", str(write_yaml(tmp_path / "s.yaml", spec)))
    assert result.returncode == 2
    expected = {
        "output is a file": f"output {blocker} is a file, not a directory",
        "output under a file": f"output {blocker / 'out'}: cannot be created, {blocker} is a file",
        "cache under a file": f"data.cache_dir {blocker / 'cache'}: not writable (Not a directory)",
    }[where]
    assert error_line(result) == expected
    assert "Started a local Ray" not in result.stderr


@pytest.mark.parametrize("key", ["model.source", "data.source"])
def test_a_local_source_that_does_not_exist_is_refused_before_ray_starts(world, tmp_path, key):
    spec = spec_dict(world, tmp_path / "out")
    section = key.split(".")[0]
    spec[section]["source"] = str(tmp_path / "nowhere" / section)
    result = memsweep("run", str(write_yaml(tmp_path / "s.yaml", spec)))
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert error_line(result) == f"{key}: {tmp_path / 'nowhere' / section} does not exist"
    assert "Started a local Ray" not in result.stderr


def test_inside_a_ray_job_a_missing_relative_source_says_where_it_was_looked_for(world, tmp_path, monkeypatch):
    """`ray job submit --working-dir .` runs the entrypoint in a copy of the directory, without gitignored files."""
    job_copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    job_copy.mkdir(parents=True)
    monkeypatch.chdir(job_copy)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}))
    spec = spec_dict(world, tmp_path / "out")
    spec["model"]["source"] = "./demo-world/model"
    result = in_process("run", str(write_yaml(tmp_path / "s.yaml", spec)))
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"model.source: {job_copy / 'demo-world' / 'model'} does not exist (this runs inside a "
                           f"Ray job, in its copy of --working-dir ({job_copy})")
    assert "files .gitignore lists, such as demo-world/, are not uploaded" in line
    assert "--set model.source=/abs/path/to/model" in line


def test_cuda_on_a_machine_without_cuda_is_refused_before_ray_starts(world, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = write_yaml(tmp_path / "s.yaml", spec_dict(world, tmp_path / "out", **{"resources.device": "cuda"}))
    result = memsweep("run", str(spec))
    assert result.returncode == 2
    assert error_line(result) == ("resources.device: cuda, but this machine has no CUDA device (and no Ray cluster "
                                  "address was given: the actors would run here)")
    assert "Started a local Ray" not in result.stderr


def test_plan_checks_the_outputs_identity_as_run_does(landed, world, tmp_path):
    spec, output = landed
    before = snapshot(output)
    changed = spec_dict(world, output, **{"memorization.prompt_len": 8})
    result = memsweep("plan", str(write_yaml(tmp_path / "changed.yaml", changed)))
    assert result.returncode == 2
    assert error_line(result) == (f"{output} holds results of a different sweep (memorization.prompt_len: 16 -> 8); "
                                  "use a new output directory for this spec")
    assert snapshot(output) == before


def test_a_second_run_into_an_output_being_written_is_refused_naming_the_first(landed):
    spec, output = landed
    before = snapshot(output)
    with writer_lock(output):
        result = memsweep("run", str(spec))
    assert result.returncode == 2
    line = error_line(result)
    assert line.startswith(f"{output} is being written by a run on host ") and f"(pid {os.getpid()}, started " in line
    assert line.endswith("; wait for it to finish (or stop it) and run again")
    assert snapshot(output) == before


# ---- damaged outputs: verify finds, --repair heals, the rerun equals a clean run --------------------------

def test_a_stray_copy_is_never_data_and_repair_removes_it(landed, tmp_path):
    _, clean = landed
    output = tmp_path / "out"
    shutil.copytree(clean, output)
    [part] = [output / r.path for r in ResultStore(output).ledgers.landed_files() if r.path.startswith("sequences/ckpt=0/")]
    shutil.copy(part, part.with_name("part-0 (copy).parquet"))
    report = in_process("verify", str(output))
    assert report.returncode == 1
    assert "FOREIGN sequences/ckpt=0/part-0 (copy).parquet (not listed in any ledger; never read as data)" in report.stdout
    assert run_query(output, "SELECT COUNT(*) AS n FROM sequences").item() == SAMPLES  # not twice as many
    assert in_process("verify", str(output), "--repair").returncode == 0
    assert not part.with_name("part-0 (copy).parquet").exists() and in_process("verify", str(output)).returncode == 0


def test_truncated_zero_byte_and_loose_files_are_refused_named_and_healed(clean_three, world, tmp_path):
    """Damage one file of each kind (a compacted part truncated, another zero-byte, a loose landing truncated):
    `run` refuses naming them, `query` refuses naming one, `verify` lists them, `--repair` removes exactly their
    cells and the rerun ends equal, row for row, to the clean run."""
    output = tmp_path / "out"
    shutil.copytree(clean_three, output)
    store = ResultStore(output)
    tables = open_output(output)
    rows = tables.sequences().filter(pl.col("ckpt") == 2).collect().drop("ckpt")  # checkpoint 2 as a loose landing
    record = tables.cells().filter(pl.col("ckpt") == 2).collect().row(0, named=True)
    store.forget_files({r.path for r in store.ledgers.landed_files() if "/ckpt=2/" in r.path})
    store.write_cells(2, [ScoredCell(0, rows, CellProvenance.from_dict(record))])
    assert store.ledgers.ledger(2).files[0].name.startswith("batch-")
    victims = {c: next(r for r in store.ledgers.landed_files() if r.path.startswith(f"sequences/ckpt={c}/"))
               for c in (0, 1, 2)}
    for ckpt, record in victims.items():
        path = output / record.path
        path.write_bytes(b"" if ckpt == 1 else path.read_bytes()[: path.stat().st_size // 2])
    sizes = {c: (output / r.path).stat().st_size for c, r in victims.items()}
    problems = "; ".join(f"{victims[c].path}: size {sizes[c]} bytes, recorded {victims[c].bytes}" for c in (0, 1, 2))
    spec = write_yaml(tmp_path / "spec.yaml", spec_dict(world, output, checkpoints=[0, 1, 2]))
    before = snapshot(output)

    refused = memsweep("run", str(spec), "--no-progress")  # refused before Ray starts: its own process
    assert refused.returncode == 2 and "Started a local Ray" not in refused.stderr
    assert error_line(refused) == (f"{output}: 3 landed files are damaged: {problems}; run `memsweep verify {output} "
                                   "--repair` to remove them (it says what the next run redoes for each)")
    query = in_process("query", str(output), "SELECT COUNT(*) FROM sequences")
    assert query.returncode == 2 and error_line(query) == (
        f"{output / victims[0].path}: size {sizes[0]} bytes, recorded {victims[0].bytes}; run "
        f"`memsweep verify {output} --repair`")
    report = in_process("verify", str(output))
    assert report.returncode == 1
    for ckpt, record in victims.items():
        assert f"DAMAGED {record.path}: size {sizes[ckpt]} bytes, recorded {record.bytes}" in report.stdout
    assert snapshot(output) == before  # refusing and verifying change nothing

    healed = in_process("verify", str(output), "--repair")
    assert healed.returncode == 0
    assert "repaired: 3 cells will be recomputed by the next run: (0, 0), (1, 0), (2, 0)" in healed.stdout
    rerun = in_process("run", str(spec), "--no-progress")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    drop = ["seconds", "sequences_per_s", "finished_at"]
    got, want = open_output(output), open_output(clean_three)
    assert got.sequences().collect().sort("ckpt", "chunk", "row").equals(
        want.sequences().collect().sort("ckpt", "chunk", "row"))
    assert got.cells().collect().drop(drop).sort("ckpt", "chunk").equals(
        want.cells().collect().drop(drop).sort("ckpt", "chunk"))


def test_an_actor_no_node_can_place_fails_in_seconds_naming_the_key(landed, module_ray, monkeypatch):
    spec, output = landed
    before = snapshot(output)

    def schedules(*args, **kwargs):  # an actor Ray cannot place would be waited for forever
        raise AssertionError("an actor no node can place was scheduled")

    monkeypatch.setattr(driver_module, "Scheduler", schedules)
    result = in_process("run", str(spec), "--no-progress", "--set", "resources.gpus_per_actor=4")
    assert result.returncode == 2
    assert error_line(result) == ("resources.gpus_per_actor: an actor needs 4 GPU and 1 CPU, but no node of this Ray "
                                  "cluster has that (1 nodes; the largest has 2 GPU and 2 CPU)")
    assert snapshot(output) == before


# ---- failures that stay in their cells: one sweep over broken chunks and checkpoints ------------------------

def _broken_world(world: Path, root: Path) -> dict:
    """Chunks 1..10 and checkpoints 2..4 broken one way each; returns what each one's error line must be."""
    data = root / "data" / "train"
    data.mkdir(parents=True)
    shutil.copy(world / "data" / "train" / "train_000.jsonl", data / "train_000.jsonl")
    good = [json.loads(line) for line in (data / "train_000.jsonl").read_text().splitlines()]
    chosen = int(sample_rows(ROWS, SAMPLES, 42)[0])  # a row every probe set of these files reads
    expected: dict[tuple[int, int], str] = {}

    def variant(chunk: int, rows: list, why: str | None) -> None:
        path = data / f"train_{chunk:03d}.jsonl"
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
        if why is not None:
            expected[(0, chunk)] = f"{path}:{chosen + 1}: {why}"

    def with_row(row) -> list:
        return [row if i == chosen else good[i] for i in range(ROWS)]

    ids = good[chosen]["token_ids"]
    expected[(0, 1)] = (f"data file not found: {data / 'train_001.jsonl'} (source {str(root / 'data')!r}, file "
                        "'train/train_001.jsonl')")
    (data / "train_002.jsonl").write_text("")
    expected[(0, 2)] = f"{data / 'train_002.jsonl'}: file is empty"
    variant(3, with_row('{"token_ids": [1, 2,'), "malformed JSON (Expecting value)")
    variant(4, with_row({"ids": ids, "source": "c4"}), "missing key 'token_ids' (keys: ['ids', 'source'])")
    variant(5, with_row({"token_ids": ["7", *ids[1:]], "source": "c4"}), "token 0 is '7' (str), not an integer")
    variant(6, with_row({"token_ids": [*ids[:5], 3.0, *ids[6:]], "source": "c4"}),
            "token 5 is 3.0 (float), not an integer")
    variant(7, with_row({"token_ids": [-1, *ids[1:]], "source": "c4"}),
            "token 0 = -1 is outside [0, 2147483647] (Int32)")
    variant(8, with_row({"token_ids": ids[:20], "source": "c4"}), "row has 20 token ids, fewer than k+l = 16+16 = 32")
    with gzip.open(data / "train_009.jsonl", "wt") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in good))
    expected[(0, 9)] = f"{data / 'train_009.jsonl'}: file is gzip-compressed; decompress it (JSON lines are expected)"
    variant(10, [*good[:5], "", *good[5:]], None)
    expected[(0, 10)] = f"{data / 'train_010.jsonl'}:6: empty line (would shift every later row number)"

    models = root / "model"
    shutil.copytree(world / "model" / "ckpt_000", models / "ckpt_000")
    shutil.copytree(world / "model" / "ckpt_000", models / "ckpt_002")
    weights = models / "ckpt_002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    expected[(2, 0)] = f"checkpoint 2 ({models / 'ckpt_002'}, revision 'ckpt_002') could not be loaded: "
    shutil.copytree(world / "model" / "ckpt_000", models / "ckpt_003")
    config = json.loads((models / "ckpt_003" / "config.json").read_text())
    (models / "ckpt_003" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    expected[(3, 0)] = (f"checkpoint 3 ({models / 'ckpt_003'}, revision 'ckpt_003') could not be loaded: the weights "
                        "do not match config.json: missing ")
    import torch
    small = train_memorizing_llama(torch.randint(3, 32, (4, K + L)), vocab_size=32, steps=1)
    small.save_pretrained(models / "ckpt_004")
    for row in sample_rows(ROWS, SAMPLES, 42):  # in sample order, as the actor checks them
        tokens = good[int(row)]["token_ids"][: K + L]
        position = next((i for i, token in enumerate(tokens) if token >= 32), None)
        if position is not None:
            expected[(4, 0)] = (f"chunk 0 row {row}: token {position} = {tokens[position]} is outside the vocabulary "
                                "of checkpoint 4 (32 ids, revision 'ckpt_004')")
            break
    return expected


def test_broken_chunks_and_checkpoints_fail_only_their_cells_with_one_named_line(landed, world, tmp_path):
    """One sweep: chunk 0 and checkpoint 0 are sound; chunks 1-10 and checkpoints 2-4 are each broken one way."""
    expected = _broken_world(world, tmp_path / "broken")
    output = tmp_path / "out"
    spec = spec_dict(tmp_path / "broken", output, checkpoints=[0, 2, 3, 4], chunks=list(range(11)))
    result = in_process("run", str(write_yaml(tmp_path / "spec.yaml", spec)), "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    store = open_output(output)
    assert store.done_cells() == {(0, 0)}  # the only healthy cell landed
    failures = {(f["ckpt"], f["chunk"]): f for f in store.failures()}
    for cell, line in expected.items():
        assert cell in failures, cell
        error = failures[cell]["error"]
        assert "\n" not in error
        if line.endswith(" ") or line.endswith("loaded: "):
            assert error.startswith(line), (cell, error)
        else:
            assert error == line, (cell, error)
        assert f"FAILED cell ckpt {cell[0]} x chunk {cell[1]} after" in result.stdout
    assert failures[(4, 0)]["attempts"] == 1  # a bad id cannot get better: not retried
    assert not list((output / "_tmp").glob("*")) if (output / "_tmp").exists() else True


# ---- silent wrong numbers that must not be silent --------------------------------------------------------

def test_a_cached_probe_set_is_still_checked_against_data_vocab_size(world, module_ray, tmp_path):
    """The cache hit used to skip the vocab check: an id the spec says cannot exist must fail its cells."""
    first = write_yaml(tmp_path / "first.yaml", spec_dict(world, tmp_path / "first"))
    assert in_process("run", str(first), "--no-progress").returncode == 0  # builds and caches the probe set
    strict = spec_dict(world, tmp_path / "strict", **{"data.vocab_size": 8})
    strict["data"]["cache_dir"] = spec_dict(world, tmp_path / "first")["data"]["cache_dir"]  # the same cache
    result = in_process("run", str(write_yaml(tmp_path / "strict.yaml", strict)), "--no-progress")
    assert result.returncode == 1, result.stderr
    [failure] = open_output(tmp_path / "strict").failures()
    chunk_file = world / "data" / "train" / "train_000.jsonl"
    assert failure["error"].startswith(f"{chunk_file}:") and failure["error"].endswith(
        "is outside [0, 7] (data.vocab_size)"), failure["error"]


def test_a_chunk_file_changed_after_sampling_is_resampled_for_a_new_output_and_pinned_in_the_old(world, module_ray,
                                                                                                tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    spec = spec_dict(world, tmp_path / "old")
    spec["data"]["source"] = str(data)
    old = write_yaml(tmp_path / "old.yaml", spec)
    assert in_process("run", str(old), "--no-progress").returncode == 0
    old_rows = ResultStore(tmp_path / "old").read_probe_set(0)
    # the file changes in place: same name, other rows (reversed)
    path = data / "train" / "train_000.jsonl"
    path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    new = dict(spec, output=str(tmp_path / "new"))
    assert in_process("run", str(write_yaml(tmp_path / "new.yaml", new)), "--no-progress").returncode == 0
    new_rows = ResultStore(tmp_path / "new").read_probe_set(0)
    assert new_rows["row"].to_list() == old_rows["row"].to_list()  # the same row numbers are sampled ...
    assert new_rows["tokens"].to_list() != old_rows["tokens"].to_list()  # ... from the new content, not the cache
    cells = open_output(tmp_path / "new").cells().collect()
    assert cells["data_sha256"].item() == hashlib.sha256(path.read_bytes()).hexdigest()
    # the old output keeps what it sampled, and says the file changed
    extended = dict(spec, checkpoints=[0, 1])
    result = in_process("run", str(write_yaml(tmp_path / "old2.yaml", extended)), "--no-progress")
    assert result.returncode == 0
    assert f"WARNING chunk 0: {path} changed since this output sampled it" in result.stdout
    assert ResultStore(tmp_path / "old").read_probe_set(0).equals(old_rows)
    assert open_output(tmp_path / "old").cells().collect()["data_sha256"].n_unique() == 1
