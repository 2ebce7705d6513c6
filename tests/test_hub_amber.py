"""A sweep from Hub ids over a local Hub laid out exactly like Amber, end to end on local Ray.

tests/hub_world.py lays out `LLM360/Amber` (branches `ckpt_000`, `ckpt_001` of fp32 pickled `.bin` in 3 shards +
index, bf16 safetensors on `main`) and `LLM360/AmberDatasets` (`train/train_00c.jsonl`, LFS) and serves them with
olah behind a wrapper that answers as the Hub does (404s, ranges). Here the real memsweep sweep runs against it:

- it lands exactly the rows of the same sweep from local folders (bf16 both ways: main is bf16 on the Hub), and
  afterwards no checkpoint and no chunk file is left on disk (downloads are deleted after loading; chunks are
  streamed once and read back by ranges, never stored);
- a moved branch is detected and the commit the output was pinned to is used again, named in a warning;
- a chunk file that cannot be fetched fails only its cells; identical weights under two revisions are flagged;
- scoring starts before the last probe set exists.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from sweep.run.driver import run_sweep
from sweep.run.scheduler import Scheduler
from sweep.spec import load_spec
from sweep.landed.reader import open_output
from sweep.landed.store import ResultStore
from tests.sweeps import landed, write_spec
from tests.hub_world import apply_hub_client_env, build_amber_world, hub_client_env, serve_hub
from tests.tiny_lm import make_sequences, train_memorizing_llama

pytestmark = pytest.mark.ray

if shutil.which("git") is None or importlib.util.find_spec("olah") is None:
    pytest.skip("needs `git` and olah (pip install olah, the dev extra) to serve local Hub repositories",
                allow_module_level=True)

K = L = 16
VOCAB = 64
ROWS, SAMPLES = 48, 24
CHECKPOINTS = 3  # ckpt_000, ckpt_001 on branches (fp32 .bin), checkpoint 2 on main (bf16 safetensors)
PROVENANCE = ["model_revision", "model_commit", "stored_dtype", "data_sha256", "weights_fingerprint"]  # differ by design


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """`model/ckpt_00i/` (trained to memorize the chunks it has seen) and `data/train/train_00c.jsonl`."""
    root = tmp_path_factory.mktemp("amber-local")
    (root / "data" / "train").mkdir(parents=True)
    chunks = [make_sequences(ROWS, K + L, VOCAB, seed=chunk) for chunk in range(CHECKPOINTS)]
    for chunk, rows in enumerate(chunks):
        (root / "data" / "train" / f"train_{chunk:03d}.jsonl").write_text("".join(
            json.dumps({"token_ids": row.tolist(), "source": f"source{i % 3}"}) + "\n" for i, row in enumerate(rows)))
    for ckpt in range(CHECKPOINTS):
        model = train_memorizing_llama(torch.cat(chunks[: ckpt + 1]), VOCAB, steps=15 + 10 * ckpt, seed=ckpt)
        model.save_pretrained(root / "model" / f"ckpt_{ckpt:03d}")
    return root


@pytest.fixture(scope="module")
def hub(local, tmp_path_factory):
    mirrors = tmp_path_factory.mktemp("amber-mirrors")
    checkpoints = [local / "model" / f"ckpt_{c:03d}" for c in range(CHECKPOINTS)]
    chunks = [local / "data" / "train" / f"train_{c:03d}.jsonl" for c in range(CHECKPOINTS)]
    worlds = {
        "LLM360": build_amber_world(mirrors, checkpoints, chunks, model_id="LLM360/Amber",
                                    data_id="LLM360/AmberDatasets"),
        "IFM": build_amber_world(mirrors, checkpoints, chunks, model_id="IFM/Amber", data_id="IFM/AmberDatasets"),
    }
    root = tmp_path_factory.mktemp("amber-hub")
    with serve_hub(mirrors, root / "server") as server, pytest.MonkeyPatch.context() as patch:
        apply_hub_client_env(patch, hub_client_env(server.endpoint, root / "hf-home"))
        yield server, worlds, root


@pytest.fixture(scope="module")
def module_ray(hub, module_ray):
    """The session's Ray (tests/conftest.py), connected after the Hub environment is set: a Ray started here has
    workers that inherit it, and to one started by an earlier module the driver forwards the HF_ variables
    (sweep/run/driver.py `_forwarded_environment`), as to a cluster's nodes."""
    yield


def _spec(tmp_path: Path, name: str, model_source: str, data_source: str, **extra):
    extra = {"checkpoints": "0-2", "chunks": "0-2", **extra}
    resources = {"actors": 1, "batch_size": 16, "max_attempts": 2, **extra.pop("resources", {})}
    return load_spec(write_spec(
        tmp_path, Path("/unused"), tmp_path / name,
        model={"source": model_source, "dtype": "bfloat16",
               # on the Hub the last checkpoint is `main` (Amber's layout); locally it is a folder like the rest
               "revision_overrides": {} if model_source.startswith("/") else {2: "main"},
               "download_dir": str(tmp_path / f"{name}-downloads"), **extra.pop("model", {})},
        data={"source": data_source, "samples_per_chunk": SAMPLES, "seed": 42,
              "cache_dir": str(tmp_path / f"{name}-cache"), **extra.pop("data", {})},
        memorization={"prompt_len": K, "continuation_len": L, "nll": True},
        resources=resources, **extra))


def _files_under(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes)] if folder.exists() else []


def test_a_hub_sweep_lands_the_local_rows_and_leaves_no_checkpoint_or_chunk_on_disk(module_ray, hub, local, tmp_path):
    server, worlds, root = hub
    local_run = run_sweep(_spec(tmp_path, "local", str(local / "model"), str(local / "data")), progress=False)
    local_run = local_run if local_run.ok else pytest.fail(local_run.describe())
    local_rows = landed(tmp_path / "local")
    # locally, checkpoint 2 is fp32; the same sweep scores its bf16 copy (what main holds) ...
    since = len(server.requests())
    hub_run = run_sweep(_spec(tmp_path, "hub", "LLM360/Amber", "LLM360/AmberDatasets"), progress=False)
    assert hub_run.ok, hub_run.describe()
    hub_rows = landed(tmp_path / "hub")
    assert hub_rows[0].height == CHECKPOINTS * CHECKPOINTS * SAMPLES
    assert hub_rows[0].equals(local_rows[0])  # ... so every per-sequence number agrees exactly
    assert hub_rows[1].drop(PROVENANCE).equals(local_rows[1].drop(PROVENANCE))
    assert hub_rows[1]["weights_fingerprint"].equals(local_rows[1]["weights_fingerprint"])  # same bf16 weights

    cells = hub_rows[1]
    world = worlds["LLM360"]
    commits = {c: world.sha(rev) for c, rev in enumerate(["ckpt_000", "ckpt_001", "main"])}
    assert dict(zip(cells["ckpt"], cells["model_commit"])) == commits  # pinned commits, recorded per cell
    assert dict(zip(cells["ckpt"], cells["stored_dtype"])) == {0: "float32", 1: "float32", 2: "bfloat16"}
    ledger_pins = ResultStore(tmp_path / "hub").ledgers.pins()
    assert {c: pin.model_commit for c, pin in ledger_pins.items()} == commits
    manifest = json.loads((tmp_path / "hub" / "manifest.json").read_text())
    assert {int(c): pin["model_commit"] for c, pin in manifest["pins"]["checkpoints"].items()} == commits
    import hashlib
    chunk_sha = {c: hashlib.sha256((local / "data" / "train" / f"train_{c:03d}.jsonl").read_bytes()).hexdigest()
                 for c in range(CHECKPOINTS)}
    assert dict(zip(cells["chunk"], cells["data_sha256"])) == chunk_sha  # the Hub's LFS sha256, verified
    assert {int(c): pin["sha256"] for c, pin in manifest["pins"]["chunks"].items()} == chunk_sha

    # Nothing heavy is left: downloads deleted after loading, chunk files never stored anywhere.
    for folder in (tmp_path / "hub-downloads", root / "hf-home"):
        assert _files_under(folder, (".bin", ".safetensors", ".jsonl")) == [], folder
    # Each chunk file was streamed whole exactly once; the sampled rows came back as ranges.
    chunk_gets = [r for r in server.requests(since) if r.method == "GET" and r.path.endswith(".jsonl")]
    whole = sorted(r.path.rsplit("/", 1)[1] for r in chunk_gets if r.range is None)
    assert whole == [f"train_{c:03d}.jsonl" for c in range(CHECKPOINTS)]
    assert all(r.status == 206 for r in chunk_gets if r.range is not None) and len(chunk_gets) > len(whole)
    assert hub_run.schedule.loads == {0: 1, 1: 1, 2: 1}

    # A rerun into the same output recomputes nothing and downloads no chunk again.
    since = len(server.requests())
    again = run_sweep(_spec(tmp_path, "hub", "LLM360/Amber", "LLM360/AmberDatasets"), progress=False)
    assert again.ok and again.schedule.cells_scored == 0
    assert not [r for r in server.requests(since) if r.path.endswith(".jsonl") and r.method == "GET"]


def test_scoring_starts_before_the_last_probe_set_exists(module_ray, hub, tmp_path, monkeypatch):
    """The last chunk file is held by the server until the driver hands out its first cell: a driver that waited for
    every probe set would never score (the server's guard then serves it, and the count below fails)."""
    server, _, _ = hub
    handed = Scheduler._fill

    def fill_then_release(scheduler, slot):
        handed(scheduler, slot)
        if scheduler.stats.probe_sets_ready_at_first_cell is not None:
            server.hold([])

    monkeypatch.setattr(Scheduler, "_fill", fill_then_release)
    server.hold([f"train/train_{CHECKPOINTS - 1:03d}.jsonl"])
    try:
        summary = run_sweep(_spec(tmp_path, "stream", "LLM360/Amber", "LLM360/AmberDatasets", checkpoints=[2],
                                  data={"concurrent_builds": 1}), progress=False)
    finally:
        server.hold([])
    assert summary.ok and summary.supply.built == CHECKPOINTS
    # The first cell was handed to the actor while the last of the three probe sets could not exist yet.
    assert 1 <= summary.schedule.probe_sets_ready_at_first_cell < CHECKPOINTS


def test_a_moved_branch_is_detected_and_the_pinned_commit_used(module_ray, hub, local, tmp_path):
    server, worlds, _ = hub
    world = worlds["IFM"]
    first = run_sweep(_spec(tmp_path, "moved", "IFM/Amber", "IFM/AmberDatasets", checkpoints=[1], chunks=[0]),
                      progress=False)
    assert first.ok
    pinned = world.sha("ckpt_001")
    moved = world.replace_weights("ckpt_001", local / "model" / "ckpt_002")  # the branch now serves other weights
    assert moved != pinned
    extended = run_sweep(_spec(tmp_path, "moved", "IFM/Amber", "IFM/AmberDatasets", checkpoints=[1],
                               chunks=[0, 1]), progress=False)
    assert extended.ok and extended.schedule.cells_scored == 1
    [warning] = [w for w in extended.warnings if "moved" in w]
    assert "'ckpt_001'" in warning and pinned in warning and moved in warning
    cells = open_output(tmp_path / "moved").cells().collect()
    assert set(cells["model_commit"]) == {pinned}  # both cells of checkpoint 1 come from one commit
    assert cells["weights_fingerprint"].n_unique() == 1


def test_a_chunk_that_cannot_be_fetched_fails_only_its_cells(module_ray, hub, tmp_path):
    summary = run_sweep(_spec(tmp_path, "missing", "LLM360/Amber", "LLM360/AmberDatasets", checkpoints=[0],
                              chunks=[0, 1, 7]), progress=False)
    assert not summary.ok and summary.schedule.cells_scored == 2
    [failure] = summary.failed
    assert (failure["ckpt"], failure["chunk"]) == (0, 7)
    assert "train/train_007.jsonl" in failure["error"] and "LLM360/AmberDatasets" in failure["error"]
    assert "\n" not in failure["error"]


def test_identical_weights_under_two_revisions_are_flagged(module_ray, hub, local, tmp_path):
    _, worlds, _ = hub
    world = worlds["IFM"]
    # a new branch ckpt_003 whose weights are ckpt_000's, re-uploaded (new commit, same tensors)
    world.commit_files("ckpt_003", {}, "Upload checkpoint 3", start_from="ckpt_000")
    world.replace_weights("ckpt_003", local / "model" / "ckpt_000")
    summary = run_sweep(_spec(tmp_path, "twins", "IFM/Amber", "IFM/AmberDatasets", checkpoints=[0, 3], chunks=[0]),
                        progress=False)
    assert summary.ok
    [warning] = [w for w in summary.warnings if "identical weights" in w]
    assert "checkpoints 0 and 3" in warning and "'ckpt_000'" in warning and "'ckpt_003'" in warning


def test_a_missing_revision_fails_its_cells_naming_it(module_ray, hub, tmp_path):
    summary = run_sweep(_spec(tmp_path, "norev", "LLM360/Amber", "LLM360/AmberDatasets", checkpoints=[1], chunks=[0],
                              model={"revision_overrides": {1: "ckpt_999", 2: "main"}}), progress=False)
    assert not summary.ok and summary.schedule.cells_scored == 0
    [failure] = summary.failed
    assert "ckpt_999" in failure["error"] and "LLM360/Amber" in failure["error"]


def test_a_config_naming_another_checkpoint_is_refused(module_ray, hub, tmp_path):
    """Amber's configs carry their checkpoint id (June 2024): weights under the wrong revision are caught."""
    _, worlds, _ = hub
    world = worlds["IFM"]
    config = json.loads(world.read("ckpt_001", "config.json"))
    world.commit_files("ckpt_004", {"config.json": json.dumps({**config, "ckpt_id": 1}).encode()},
                       "Upload checkpoint 4", start_from="ckpt_001")  # checkpoint 1's weights and config under 4
    summary = run_sweep(_spec(tmp_path, "wrongid", "IFM/Amber", "IFM/AmberDatasets", checkpoints=[4], chunks=[0]),
                        progress=False)
    assert not summary.ok and summary.schedule.cells_scored == 0
    [failure] = summary.failed
    assert "revision 'ckpt_004'" in failure["error"]
    assert "its config.json names checkpoint 1 (ckpt_id); the revision holds another checkpoint's weights" in failure["error"]



def test_a_server_that_ignores_range_yields_the_same_probe_sets(hub):
    """Some mirrors answer a Range request with 200 and the whole file: sampling then picks its rows in a second
    streaming pass (checked against the same sha256) instead of failing the chunk."""
    from sweep.data.probes import build_probe_set_from
    from sweep.data.sources import describe_chunks

    server, _, _ = hub
    [described] = describe_chunks("LLM360/AmberDatasets", {1: "train/train_001.jsonl"}).values()
    with_ranges = build_probe_set_from(described, 1, SAMPLES, 42, K, L)
    since = len(server.requests())
    server.ignore_ranges(True)
    try:
        without = build_probe_set_from(described, 1, SAMPLES, 42, K, L)
    finally:
        server.ignore_ranges(False)
    assert without.frame.equals(with_ranges.frame) and without.chunk_file.sha256 == with_ranges.chunk_file.sha256
    gets = [r for r in server.requests(since) if r.method == "GET" and r.path.endswith("train_001.jsonl")]
    assert sum(r.range is None for r in gets) == 2  # streamed twice: the line index, then the sampled rows
    assert [r.status for r in gets if r.range is not None] and all(r.status == 200 for r in gets if r.range)
