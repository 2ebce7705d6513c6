"""memsweep's real Hub download path against a real Hub-compatible server on localhost.

`olah` (a self-hosted Hugging Face mirror) serves local git repositories: a model repository with one
branch per checkpoint revision (`ckpt_000`, `ckpt_001`: a tiny LLaMA at two training states) and a
dataset repository of raw chunk files. A sweep whose `model.source` / `data.source` are the Hub ids
(with `HF_ENDPOINT` pointing at the server) must land exactly the rows of the same sweep run against
the same files as local directories; a revision the server does not have fails its cell with an error
naming the repository.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray
import torch

from sweep.driver import run_sweep
from sweep.probes import write_raw_chunk
from sweep.spec import load_spec
from test_sweep import landed, start_local_ray, write_spec
from tests.tiny_lm import make_sequences, train_memorizing_llama

pytestmark = pytest.mark.ray

K = L = 16
VOCAB = 64
ROWS = 48  # rows per chunk file
SAMPLES = 32  # sampled per chunk, so the row mapping is exercised too
MODEL_ID, DATA_ID = "testorg/tiny", "testorg/chunks"
# Which rows each checkpoint was trained on, and for how long: checkpoint i has seen chunks 0..i.
TRAINING = {0: (1, 20), 1: (2, 40)}  # ckpt -> (chunks seen, steps)
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}

# next to this interpreter first: `.venv/bin/python -m pytest` runs without the venv on PATH
OLAH_CLI = shutil.which("olah-cli", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
if OLAH_CLI is None or shutil.which("git") is None:
    pytest.skip("needs `olah-cli` (pip install olah, the dev extra) and `git` to serve local Hub repositories",
                allow_module_level=True)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def _commit_tree(repo: Path, content: Path, message: str) -> None:
    """Make the work tree of `repo` exactly `content` and commit it on the current branch."""
    for entry in repo.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    shutil.copytree(content, repo, dirs_exist_ok=True)
    _git(repo, "add", "--all", "--force")
    _git(repo, "commit", "--quiet", "-m", message)


@pytest.fixture(scope="module")
def local_world(tmp_path_factory) -> Path:
    """`model/ckpt_00i/` (save_pretrained, safetensors) and `data/train/train_00c.jsonl` (raw Amber rows)."""
    root = tmp_path_factory.mktemp("hub-world")
    (root / "data" / "train").mkdir(parents=True)
    chunks = [make_sequences(ROWS, K + L, VOCAB, seed=chunk) for chunk in range(2)]
    for chunk, rows in enumerate(chunks):
        write_raw_chunk(root / "data" / "train" / f"train_{chunk:03d}.jsonl",
                        ((row.tolist(), f"source{row_id % 3}") for row_id, row in enumerate(rows)))
    for ckpt, (seen, steps) in TRAINING.items():
        model = train_memorizing_llama(torch.cat(chunks[:seen]), VOCAB, steps=steps, seed=ckpt)
        model.save_pretrained(root / "model" / f"ckpt_{ckpt:03d}")
    return root


@pytest.fixture(scope="module")
def hub_server(local_world, tmp_path_factory):
    """The same files as Hub repositories served by `olah-cli` on a free port; HF_* set for this module."""
    root = tmp_path_factory.mktemp("olah")
    model_repo, data_repo = root / "mirrors" / "models" / MODEL_ID, root / "mirrors" / "datasets" / DATA_ID
    for repo in (model_repo, data_repo):
        repo.mkdir(parents=True)
    _git(model_repo, "init", "--quiet", "--initial-branch", "ckpt_000")
    for ckpt in TRAINING:
        if ckpt:
            _git(model_repo, "checkout", "--quiet", "-b", f"ckpt_{ckpt:03d}")
        _commit_tree(model_repo, local_world / "model" / f"ckpt_{ckpt:03d}", f"checkpoint {ckpt}")
    _git(data_repo, "init", "--quiet", "--initial-branch", "main")
    _commit_tree(data_repo, local_world / "data", "chunks")

    port = _free_port()
    config = root / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f'repos-path = "{root / "repos"}"\nmirrors-path = ["{root / "mirrors"}"]\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        "[accessibility]\noffline = true\n"
    )
    log = (root / "olah.out").open("w")
    server = subprocess.Popen([OLAH_CLI, "-c", str(config), "--log-path", str(root / "logs")], cwd=root,
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(server, f"{endpoint}/api/models/{MODEL_ID}/revision/ckpt_000", root / "olah.out")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("HF_ENDPOINT", endpoint)
            env.setenv("HF_HOME", str(root / "hf-home"))
            env.setenv("HF_HUB_CACHE", str(root / "hf-home" / "hub"))
            # Not just unset: a Ray started earlier may have inherited HF_HUB_OFFLINE=1, and only a value
            # forwarded to the workers overrides it.
            env.setenv("HF_HUB_OFFLINE", "0")
            env.delenv("HF_TOKEN", raising=False)
            yield root
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"olah-cli exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"olah-cli did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def module_ray():
    """A local Ray with two logical GPUs; reuses one another module already started."""
    started = not ray.is_initialized()
    if started:
        start_local_ray()
    yield
    if started:
        ray.shutdown()


def _sweep(tmp_path: Path, name: str, model_source: str, data_source: str, **extra):
    """Run a 2 x 2 sweep (`extra` overrides top-level keys) on one actor, so the second checkpoint is prefetched."""
    extra = {"checkpoints": "0-1", "chunks": "0-1", "resources": {"actors": 1, "batch_size": 16}, **extra}
    spec_path = write_spec(
        tmp_path, Path("/unused"), tmp_path / name,  # both sources are given, so write_spec needs no world
        model={"source": model_source, **extra.pop("model", {})},
        data={"source": data_source, "samples_per_chunk": SAMPLES, "seed": 42,
              "cache_dir": str(tmp_path / f"{name}-probes")},
        memorization={"prompt_len": K, "continuation_len": L, "nll": True},
        **extra,
    )
    return run_sweep(load_spec(spec_path), progress=False)


def test_hub_sweep_lands_the_same_rows_as_local_files(module_ray, local_world, hub_server, tmp_path):
    local = _sweep(tmp_path, "local", str(local_world / "model"), str(local_world / "data"))
    hub = _sweep(tmp_path, "hub", MODEL_ID, DATA_ID)
    assert local.ok and hub.ok, (local.describe(), hub.describe())
    assert hub.cells_scored == local.cells_scored == 4
    expected, got = landed(tmp_path / "local"), landed(tmp_path / "hub")
    assert got[0].height == 4 * SAMPLES
    assert got[0].equals(expected[0])
    assert got[1].equals(expected[1])
    # The two revisions really are different checkpoints (a server ignoring the revision would fail here).
    by_ckpt = got[0].partition_by("ckpt", as_dict=True)
    assert not by_ckpt[(0,)].drop("ckpt").equals(by_ckpt[(1,)].drop("ckpt"))
    # ... everything came through the Hub client, into the Hub cache, and the second checkpoint was prefetched
    # (its file listing is asked for by prefetch_model only; from_pretrained fetches files by name).
    assert f"GET /api/models/{MODEL_ID}/tree/ckpt_001" in (hub_server / "olah.out").read_text()
    cache = hub_server / "hf-home" / "hub"
    assert sorted(p.name for p in (cache / "models--testorg--tiny" / "refs").iterdir()) == ["ckpt_000", "ckpt_001"]
    assert sorted(p.name for p in (cache / "datasets--testorg--chunks").glob("snapshots/*/train/*.jsonl")) == [
        "train_000.jsonl", "train_001.jsonl"]


def test_a_revision_missing_on_the_server_fails_its_cell_naming_the_repository(module_ray, hub_server, tmp_path):
    summary = _sweep(tmp_path, "missing", MODEL_ID, DATA_ID, checkpoints=[1], chunks=[0],
                     model={"revision_overrides": {1: "ckpt_999"}}, resources={"max_attempts": 1, "batch_size": 16})
    assert not summary.ok and summary.cells_scored == 0
    [failure] = summary.failed
    assert (failure["ckpt"], failure["chunk"]) == (1, 0)
    # olah answers an unknown revision as the Hub answers an unknown repository (401, X-Error-Code RepoNotFound;
    # the Hub itself says 404 RevisionNotFound), so transformers names the repository, not the revision.
    assert f"{MODEL_ID} is not a local folder and is not a valid model identifier" in failure["error"], failure["error"]
