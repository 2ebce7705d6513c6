"""The served Amber-shaped world answers as the Hugging Face Hub does, for the real client code memsweep runs.

tests/hub_world.py builds LLM360/Amber and LLM360/AmberDatasets as local git repositories (ckpt branches of fp32
pickled shards, bf16 safetensors on main, LFS chunk files) and serves them with olah behind a small conformance
wrapper. Here transformers and huggingface_hub, unmodified, load and download through that server, and every answer
they depend on is checked against the files the world was built from. Real Hub ids are used on purpose: a test
fails if any name lookup leaves localhost (`no_lookup_leaves_localhost`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import pickletools
import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from tests.hub_world import HubWorld, apply_hub_client_env, build_amber_world, hub_client_env, serve_hub
from tests.tiny_lm import tiny_llama_config

if shutil.which("git") is None or importlib.util.find_spec("olah") is None:
    pytest.skip("needs `git` and olah (pip install olah, the dev extra) to serve local Hub repositories",
                allow_module_level=True)

from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, hf_hub_url, snapshot_download  # noqa: E402
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError  # noqa: E402
from huggingface_hub.utils import get_session  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

MODEL_ID, DATA_ID = "LLM360/Amber", "LLM360/AmberDatasets"
CHECKPOINTS = 3  # ckpt_000, ckpt_001 on branches, checkpoint 2 on main
CHUNKS, ROWS, ROW_TOKENS = 2, 120, 48  # about 25 KB per chunk file: several 4 KiB blocks for ranged reads
VOCAB = 128
PICKLE_IMPORTS_OF_AMBER = {"torch._tensor _rebuild_from_type_v2", "torch Tensor"}


# --- the world ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """`ckpt_00i/` (save_pretrained: fp32 safetensors + a word-level tokenizer) and `data/train_00c.jsonl`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("local")
    words = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(words, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", bos_token="w1", eos_token="w2")
    for ckpt in range(CHECKPOINTS):
        torch.manual_seed(ckpt)
        LlamaForCausalLM(tiny_llama_config(vocab_size=VOCAB)).save_pretrained(root / f"ckpt_{ckpt:03d}")
        tokenizer.save_pretrained(root / f"ckpt_{ckpt:03d}")
    generator = torch.Generator().manual_seed(7)
    for chunk in range(CHUNKS + 1):  # the last one is added to the dataset later, by a test
        rows = torch.randint(3, VOCAB, (ROWS, ROW_TOKENS), generator=generator)
        path = root / "data" / f"train_{chunk:03d}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"token_ids": row.tolist(), "source": f"source{i % 3}"}) + "\n"
                                for i, row in enumerate(rows)))
    return root


def _build(local: Path, mirrors: Path, org: str) -> HubWorld:
    return build_amber_world(mirrors, [local / f"ckpt_{i:03d}" for i in range(CHECKPOINTS)],
                             [local / "data" / f"train_{c:03d}.jsonl" for c in range(CHUNKS)],
                             model_id=f"{org}/Amber", data_id=f"{org}/AmberDatasets")


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mirrors")


@pytest.fixture(scope="module")
def world(local, mirrors) -> HubWorld:
    """LLM360/Amber and LLM360/AmberDatasets, which no test changes."""
    return _build(local, mirrors, "LLM360")


@pytest.fixture(scope="module")
def moving(local, mirrors) -> HubWorld:
    """IFM/Amber and IFM/AmberDatasets (Amber's other organisation), for the tests that change history.

    Same server, other ids: one process talks to one endpoint (see `apply_hub_client_env`).
    """
    return _build(local, mirrors, "IFM")


@pytest.fixture(scope="module")
def hub(world, moving, mirrors, tmp_path_factory):
    """Both worlds served on one port; this module's huggingface_hub and transformers pointed at it."""
    root = tmp_path_factory.mktemp("hub")
    with serve_hub(mirrors, root / "server") as server, pytest.MonkeyPatch.context() as patch:
        apply_hub_client_env(patch, hub_client_env(server.endpoint, root / "hf-home"))
        yield server


@pytest.fixture(autouse=True)
def no_lookup_leaves_localhost(monkeypatch):
    """Every host name a client looks up during a test; fails the test if one is not this machine."""
    looked_up = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        if host not in ("127.0.0.1", "localhost"):
            raise OSError(f"test tried to reach {host!r}: only the local hub may be contacted")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield looked_up
    assert set(looked_up) <= {"127.0.0.1", "localhost"}, f"looked up {sorted(set(looked_up))}"


@pytest.fixture
def conversions(monkeypatch):
    """Calls of transformers' safetensors auto-conversion (direct or in its background thread)."""
    import transformers.modeling_utils as modeling_utils
    calls = []
    monkeypatch.setattr(modeling_utils, "auto_conversion", lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_weights(folder: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return {name: tensor.to(dtype) for name, tensor in load_file(folder / "model.safetensors").items()}


def _assert_same_weights(model, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def _pickle_imports(shard: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(shard)) as archive:
        [pickle_name] = [name for name in archive.namelist() if name.endswith("data.pkl")]
        return {str(arg) for op, arg, _ in pickletools.genops(archive.read(pickle_name))
                if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}  # torch.save writes GLOBAL "module name"


def _root_commit(world: HubWorld) -> str:
    return subprocess.run(["git", "-C", str(world.model_repo), "rev-list", "--max-parents=0", "main"],
                          capture_output=True, text=True, check=True).stdout.strip()


# --- loading checkpoints ----------------------------------------------------------------------------------------

def test_a_bin_revision_loads_its_three_fp32_pickled_shards_exactly(hub, world, local, conversions,
                                                                    no_lookup_leaves_localhost):
    since = len(hub.requests())
    model = AutoModelForCausalLM.from_pretrained(MODEL_ID, revision="ckpt_000")
    _assert_same_weights(model, _local_weights(local / "ckpt_000", torch.float32))
    # transformers probed for safetensors first and was told, as by the Hub, that there are none ...
    asked = hub.requests(since)
    probes = {r.path.rsplit("/", 1)[1]: r for r in asked if r.path.endswith(".safetensors")}
    assert probes and all((r.status, r.error_code) == (404, "EntryNotFound") for r in probes.values()), probes
    # ... then fetched the index and exactly the three shards, each once and whole
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in asked if r.method == "GET" and "/resolve/" in r.path)
    shards = [f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3)]
    assert fetched == sorted(["config.json", "generation_config.json", "pytorch_model.bin.index.json", *shards])
    # the shards it loaded are Amber-like pickles: tensors with Python state (torch.load(weights_only=True) took them)
    for shard in shards:
        assert PICKLE_IMPORTS_OF_AMBER <= _pickle_imports(world.read("ckpt_000", shard))
    assert not conversions, "safetensors auto-conversion ran"
    assert "127.0.0.1" in no_lookup_leaves_localhost  # the guard does see the client's connections


def test_main_loads_the_bf16_safetensors_and_keeps_their_dtype(hub, local, conversions):
    since = len(hub.requests())
    model = AutoModelForCausalLM.from_pretrained(MODEL_ID, revision="main", dtype="auto")
    assert model.dtype == torch.bfloat16
    _assert_same_weights(model, _local_weights(local / "ckpt_002", torch.bfloat16))
    fetched = {r.path.rsplit("/", 1)[1] for r in hub.requests(since) if r.method == "GET" and "/resolve/" in r.path}
    assert {f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)} <= fetched
    assert not any(name.endswith(".bin") for name in fetched)
    assert not conversions
    # main moved, as Amber's did: its first upload (6 fp32 .bin shards) still loads by commit sha
    commits = HfApi().list_repo_commits(MODEL_ID)  # newest first
    assert [c.title for c in commits] == ["Upload bf16 safetensors weights", "Upload LlamaForCausalLM",
                                                  "initial commit"]
    first_upload = AutoModelForCausalLM.from_pretrained(MODEL_ID, revision=commits[1].commit_id, dtype="auto")
    _assert_same_weights(first_upload, _local_weights(local / "ckpt_002", torch.float32))


def test_the_tokenizer_of_a_revision_loads_through_the_hub_listing(hub, local):
    # AutoTokenizer lists `additional_chat_templates/`; a server answering that missing folder with anything but
    # the Hub's 404 EntryNotFound (olah: 401 RepoNotFound) makes the load fail.
    since = len(hub.requests())
    hub_tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, revision="ckpt_001")
    local_tokenizer = AutoTokenizer.from_pretrained(local / "ckpt_001")
    text = " ".join(f"w{i}" for i in range(VOCAB - 1, 0, -7))
    assert hub_tokenizer(text)["input_ids"] == local_tokenizer(text)["input_ids"]
    listing = [r for r in hub.requests(since) if "/tree/" in r.path and r.path.endswith("/additional_chat_templates")]
    assert listing and all((r.status, r.error_code) == (404, "EntryNotFound") for r in listing), listing


# --- downloads ----------------------------------------------------------------------------------------------

def test_snapshot_download_of_a_bin_revision_and_a_chunk_download(hub, world, local):
    folder = Path(snapshot_download(MODEL_ID, revision="ckpt_001",
                                    allow_patterns=["*.json", "pytorch_model*.bin"]))
    assert folder.name == world.sha("ckpt_001")  # the snapshot is named by the branch's commit
    expected = ["config.json", "generation_config.json", "pytorch_model-00001-of-00003.bin",
                "pytorch_model-00002-of-00003.bin", "pytorch_model-00003-of-00003.bin",
                "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in folder.iterdir()) == expected
    for name in expected:
        assert (folder / name).read_bytes() == world.read("ckpt_001", name), name
    chunk = Path(hf_hub_download(DATA_ID, "train/train_001.jsonl", repo_type="dataset"))
    assert chunk.read_bytes() == (local / "data" / "train_001.jsonl").read_bytes()
    # the Hub cache names an LFS blob by its sha256 (X-Linked-Etag), a plain file by its git blob id (ETag)
    assert chunk.resolve().name == _sha256(chunk.read_bytes())
    shard = folder / "pytorch_model-00002-of-00003.bin"
    assert shard.resolve().name == _sha256(shard.read_bytes())


def test_repo_info_tree_and_paths_info_report_the_commit_sizes_and_lfs_sha256(hub, world, local):
    api = HfApi()
    assert api.repo_info(MODEL_ID, revision="ckpt_001").sha == world.sha("ckpt_001")
    assert api.repo_info(MODEL_ID).sha == world.sha("main")  # no revision: the default branch
    assert api.repo_info(DATA_ID, repo_type="dataset").sha == world.sha("main", "dataset")

    entries = list(api.list_repo_tree(MODEL_ID, revision="ckpt_001", expand=True))
    assert sorted(e.path for e in entries) == sorted(
        [".gitattributes", "config.json", "generation_config.json", "pytorch_model.bin.index.json",
         "tokenizer.json", "tokenizer_config.json", *(f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3))])
    for entry in entries:
        content = world.read("ckpt_001", entry.path)
        assert entry.size == len(content), entry.path
        assert (entry.lfs is not None) == entry.path.endswith(".bin"), entry.path
        if entry.lfs is not None:
            assert entry.lfs.sha256 == _sha256(content) and entry.lfs.size == len(content), entry.path
        # the commit that last touched the path on this branch, not on main
        last_touched_by = _root_commit(world) if entry.path == ".gitattributes" else world.sha("ckpt_001")
        assert entry.last_commit.oid == last_touched_by, entry.path

    chunk = (local / "data" / "train_000.jsonl").read_bytes()
    info = api.get_paths_info(DATA_ID, ["train/train_000.jsonl", "train", "train/missing.jsonl"],
                              repo_type="dataset", expand=True)
    by_path = {entry.path: entry for entry in info}
    assert sorted(by_path) == ["train", "train/train_000.jsonl"]  # a missing path is left out, as by the Hub
    file = by_path["train/train_000.jsonl"]
    assert (file.size, file.lfs.size, file.lfs.sha256) == (len(chunk), len(chunk), _sha256(chunk))
    assert file.last_commit.oid == world.sha("main", "dataset")


def test_hf_filesystem_streams_once_then_reads_ranges_with_206(hub, local):
    data = (local / "data" / "train_000.jsonl").read_bytes()
    path = f"datasets/{DATA_ID}/train/train_000.jsonl"
    fs = HfFileSystem(skip_instance_cache=True)

    def file_gets(since: int):
        return [r for r in hub.requests(since) if r.method == "GET" and r.path.endswith("train_000.jsonl")]

    since = len(hub.requests())
    with fs.open(path, "rb", block_size=0) as streamed:
        assert streamed.read() == data
    assert [(r.range, r.status, r.length) for r in file_gets(since)] == [(None, 200, len(data))]
    since = len(hub.requests())
    start, stop = 10_000, 10_500  # inside the third 4 KiB block
    with fs.open(path, "rb", block_size=4096) as ranged:
        ranged.seek(start)
        assert ranged.read(stop - start) == data[start:stop]
    ranged_gets = file_gets(since)
    assert ranged_gets and all(r.range and r.status == 206 and r.length < len(data) for r in ranged_gets), ranged_gets

    url = hf_hub_url(DATA_ID, "train/train_000.jsonl", repo_type="dataset")
    answer = get_session().get(url, headers={"Range": f"bytes={start}-{stop - 1}"})
    assert answer.status_code == 206
    assert answer.content == data[start:stop]
    assert answer.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(data)}"
    tail = get_session().get(url, headers={"Range": f"bytes={len(data) - 7}-{len(data) + 100}"})
    assert (tail.status_code, tail.content) == (206, data[-7:])
    assert get_session().get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


# --- errors -------------------------------------------------------------------------------------------------

def test_missing_files_revisions_and_repositories_raise_what_the_hub_raises(hub):
    with pytest.raises(EntryNotFoundError) as missing_file:
        hf_hub_download(MODEL_ID, "model.safetensors", revision="ckpt_000")
    assert missing_file.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError) as missing_revision:
        hf_hub_download(MODEL_ID, "config.json", revision="ckpt_999")
    assert missing_revision.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        HfApi().repo_info(MODEL_ID, revision="ckpt_999")
    with pytest.raises(EntryNotFoundError):
        list(HfApi().list_repo_tree(MODEL_ID, revision="ckpt_000", path_in_repo="additional_chat_templates"))
    with pytest.raises(RepositoryNotFoundError):
        HfApi().repo_info("LLM360/NoSuchModel")
    # transformers then names the revision, not the repository
    with pytest.raises(OSError, match="ckpt_999 is not a valid git identifier"):
        AutoModelForCausalLM.from_pretrained(MODEL_ID, revision="ckpt_999")


# --- history moves ----------------------------------------------------------------------------------------------

def test_moving_a_branch_changes_its_sha_and_the_old_commit_still_loads(hub, moving, local):
    api, model_id = HfApi(), moving.model_id
    old = api.repo_info(model_id, revision="ckpt_001").sha
    new = moving.replace_weights("ckpt_001", local / "ckpt_002")
    assert new != old and api.repo_info(model_id, revision="ckpt_001").sha == new
    _assert_same_weights(AutoModelForCausalLM.from_pretrained(model_id, revision="ckpt_001"),
                         _local_weights(local / "ckpt_002", torch.float32))
    _assert_same_weights(AutoModelForCausalLM.from_pretrained(model_id, revision=old),
                         _local_weights(local / "ckpt_001", torch.float32))


def test_lfs_sha256_is_unchanged_when_branches_move_and_chunks_are_added(hub, moving, local):
    world, api = moving, HfApi()

    def listing(revision: str, repo_type: str = "model", path: str | None = None):
        return {e.path: e for e in api.list_repo_tree(world.model_id if repo_type == "model" else world.data_id,
                                                      revision=revision, repo_type=repo_type, path_in_repo=path)}

    model_before, data_before = listing("ckpt_000"), listing("main", "dataset", "train")
    moved = world.add_ckpt_id_to_configs()
    added = world.add_chunk(local / "data" / "train_002.jsonl", "train/train_002.jsonl")
    assert api.repo_info(world.model_id, revision="ckpt_000").sha == moved["ckpt_000"]
    assert api.repo_info(world.data_id, repo_type="dataset").sha == added
    model_after, data_after = listing("ckpt_000"), listing("main", "dataset", "train")
    assert model_after["config.json"].blob_id != model_before["config.json"].blob_id  # the listing is live
    assert json.loads(world.read("ckpt_000", "config.json"))["ckpt_id"] == 0
    for path, entry in model_before.items():
        if entry.lfs is not None:
            assert model_after[path].lfs.sha256 == entry.lfs.sha256, path
    new_chunk = (local / "data" / "train_002.jsonl").read_bytes()
    assert sorted(data_after) == ["train/train_000.jsonl", "train/train_001.jsonl", "train/train_002.jsonl"]
    assert data_after["train/train_002.jsonl"].lfs.sha256 == _sha256(new_chunk)
    for path, entry in data_before.items():
        assert data_after[path].lfs.sha256 == entry.lfs.sha256, path
