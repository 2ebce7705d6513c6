"""A local Hugging Face Hub holding an Amber-shaped model and dataset repository, served as huggingface.co serves them.

Test helper (no tests here). Two parts:

1. `build_amber_world` lays out, as local git repositories in olah's mirror layout
   (`<mirrors>/models/<org>/<name>`, `<mirrors>/datasets/<org>/<name>`), a model repository and a dataset
   repository shaped like LLM360/Amber and LLM360/AmberDatasets (../shared/FACTS.md):
   - one branch `ckpt_000` .. `ckpt_{N-2}` per checkpoint folder but the last, each holding `config.json`
     (`"torch_dtype": "float32"`: assumed, FACTS.md records only main's dtype), the folder's other small files
     (generation config, tokenizer files when the folder has them) and fp32 weights pickled with `torch.save` in
     3 shards `pytorch_model-0000{1,2,3}-of-00003.bin` + `pytorch_model.bin.index.json` (weight_map,
     metadata.total_size). Every pickled tensor carries Python
     state, so the pickles import `torch._tensor._rebuild_from_type_v2` and `torch.Tensor` as Amber's do
     (plus `torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, `collections.OrderedDict`); transformers'
     `torch.load(weights_only=True, mmap=True)` accepts them (tests/test_hub_world.py loads them).
   - the last folder on `main` as bf16 safetensors in 3 shards `model-0000N-of-00003.safetensors` +
     `model.safetensors.index.json`, config `"torch_dtype": "bfloat16"`. With `main_history` (default), `main`
     first holds that checkpoint as 6 fp32 `.bin` shards and then moves to the safetensors commit, as Amber's did.
     The bf16 weights are the folder's weights rounded by `Tensor.to(torch.bfloat16)`: compare a Hub `main`
     load with the local folder loaded as bf16.
   - the chunk files as `train/train_000.jsonl` .. on the dataset repository's `main`.
   - weights and chunks as git-LFS pointers, with the objects where git-lfs keeps them
     (`.git/lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>`), so the server reports `lfs.oid` (sha256) / `lfs.size`
     like the Hub; small JSON files as plain blobs. Both repositories start with an "initial commit" holding
     `.gitattributes`, as Hub repositories do, and every ckpt branch grows from it.
   `HubWorld` then changes history as real releases do, each change returning the new commit sha:
   `commit_files` (any change), `add_ckpt_id_to_configs` (the June 2024 "add ckpt id into config" commit on every
   ckpt branch), `replace_weights` (new weights under an existing branch), `add_chunk` (a new data chunk).
   Commit dates are synthetic and increasing (one hour per commit from 2023-11-14), so shas are reproducible.

2. `serve_hub` starts olah 0.5.4 (a self-hosted Hub mirror, offline mirror mode) over those repositories on a free
   port, wrapped by a small ASGI middleware (tests/hub_world_server.py, `HubConformance`) so that it answers as the
   Hub does where huggingface_hub and transformers depend on it, and logs every request (`HubServer.requests`).
   It yields the endpoint and sets nothing in this process; `hub_client_env` is the environment a client needs
   and `apply_hub_client_env` sets it for this process through a caller's `pytest.MonkeyPatch`.

What differs, checked by hand with curl against olah 0.5.4 and by tests/test_hub_world.py against the wrapper:

| request                       | huggingface.co                | olah 0.5.4 offline mirror     | served here        |
|-------------------------------|-------------------------------|-------------------------------|--------------------|
| resolve: file missing at an   | 404 `EntryNotFound`, with     | HEAD 401 `RepoNotFound`,      | as the Hub         |
| existing revision             | `X-Repo-Commit`               | GET 500 (KeyError)            |                    |
| anything, unknown revision    | 404 `RevisionNotFound`        | 401 `RepoNotFound`            | as the Hub         |
| GET resolve + `Range: bytes=` | 206, `Content-Range` (CDN)    | 200, the whole file           | 206; 416 past end  |
| GET resolve: headers          | `ETag`, `X-Repo-Commit`, size | none (a chunked body only)    | HEAD's + length    |
| HEAD resolve, LFS file        | 302 to its CDN / Xet bridge,  | 200, `ETag` = sha256 of the   | 200, the Hub's     |
|                               | `X-Linked-Etag` "sha256",     | object (read whole), no       | headers (sha256    |
|                               | `X-Linked-Size`,              | `X-Linked-*`                  | from the pointer)  |
|                               | `X-Repo-Commit`               |                               |                    |
| HEAD resolve, plain file      | 200, `ETag` "git blob sha1"   | the same, `ETag` unquoted     | quoted             |
| `/api/<type>/<id>` (no rev)   | the default branch            | 401 (reads only its cache)    | the default branch |
| `/api/<type>/<id>/tree/<rev>` | 200                           | 307 to `.../tree/<rev>/`      | 200                |
| `tree/<rev>/<file             | missing>`                     | 404 `EntryNotFound`           | 401 `RepoNotFound` |
| tree `expand`: `lastCommit`   | last commit touching the path | taken on HEAD: wrong on other | at the requested   |
|                               | at the revision               | branches; 500 if HEAD never   | revision           |
|                               |                               | had the path                  |                    |
| paths-info `expand`           | `lastCommit` given            | dropped                       | given              |
| `commits/<rev>`               | `title` = first line,         | whole message in `title`,     | as the Hub         |
| (list_repo_commits)           | `message`, `authors[].user`   | `authors[].name`: the client  |                    |
|                               |                               | raises KeyError('user')       |                    |

Unchanged (olah's answer is the Hub's in what clients read): `repo_info(revision).sha` / `siblings`, refs, commit
ids and dates, tree and paths-info `type` / `oid` / `size` / `lfs {oid, size, pointerSize}` / `path`, every file
byte, 401 `RepoNotFound` for a repository that does not exist. Not served (no client here reads them): the Hub's
page size and `Link` pagination of tree listings (olah returns one page) and of `list_repo_commits` (olah stops at
50 commits), `securityFileStatus` (the pickle scan), sizes in `repo_info(files_metadata=True)`, `xetHash` / Xet
downloads (if the real Amber repositories are Xet-backed, huggingface_hub with hf_xet, installed here, downloads
them through Xet rather than the HTTP path served here), and the CDN redirect itself (huggingface_hub's HEAD follows
a same-origin redirect, so a local "CDN" would need a second origin to keep the `X-Linked-*` headers it reads).
Cost: olah reads a whole file into memory for every GET, ranged or not, and the wrapper cuts the range out of that
stream; fine for the KB-MB files of tests, not a server for Amber's 10 GB shards.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

LAUNCHER = Path(__file__).with_name("hub_world_server.py")
# The Hub's default .gitattributes puts *.bin and *.safetensors in LFS; AmberDatasets' 20 GB chunks are LFS too, and so
# are the Pythia datasets' document.idx and shards, and OLMo-style .npy token files.
LFS_SUFFIXES = (".bin", ".safetensors", ".jsonl", ".idx", ".npy")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
WEIGHT_FILE_SUFFIXES = (".bin", ".safetensors", ".index.json")
SHARDS = 3  # Amber: 3 fp32 .bin shards per ckpt branch, 3 bf16 safetensors shards on main
FIRST_MAIN_SHARDS = 6  # Amber's main first held the last checkpoint as 6 fp32 .bin shards
FIRST_COMMIT_TIME = 1_699_920_000  # 2023-11-14 00:00 UTC; commit i is an hour after commit i-1
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "hub-world", "GIT_AUTHOR_EMAIL": "hub-world@localhost",
           "GIT_COMMITTER_NAME": "hub-world", "GIT_COMMITTER_EMAIL": "hub-world@localhost"}


# --- the world: git repositories in olah's mirror layout ---------------------------------------------------------

@dataclass(frozen=True)
class HubWorld:
    """An Amber-shaped model repository and dataset repository under `mirrors` (olah's mirrors-path)."""

    mirrors: Path
    model_id: str  # e.g. "LLM360/Amber"
    data_id: str  # e.g. "LLM360/AmberDatasets"
    revisions: tuple[str, ...]  # the revision holding checkpoint i: ("ckpt_000", ..., "ckpt_{N-2}", "main")
    chunk_files: tuple[str, ...]  # dataset paths of the chunks built in: ("train/train_000.jsonl", ...)

    @property
    def model_repo(self) -> Path:
        return self.mirrors / "models" / self.model_id

    @property
    def data_repo(self) -> Path:
        return self.mirrors / "datasets" / self.data_id

    def sha(self, revision: str, repo_type: str = "model") -> str:
        """The commit sha `revision` (branch) points at now."""
        return branch_sha(self._repo(repo_type), revision)

    def read(self, revision: str, path: str, repo_type: str = "model") -> bytes:
        """The content of `path` at `revision` as a client downloads it (an LFS file's object, not its pointer)."""
        repo = self._repo(repo_type)
        content = _git_bytes(repo, "cat-file", "blob", f"{revision}:{path}")
        oid = _lfs_oid(content) if path.endswith(LFS_SUFFIXES) else None
        return content if oid is None else _lfs_object(repo, oid).read_bytes()

    def commit_files(self, revision: str, files: Mapping[str, bytes | Path | None], message: str,
                     repo_type: str = "model", start_from: str = "main") -> str:
        """Commit `files` (path in repo -> content; None deletes) on branch `revision` (a new one grows from
        `start_from`); returns the new sha."""
        return commit_files(self._repo(repo_type), revision, files, message, start_from=start_from)

    def add_ckpt_id_to_configs(self) -> dict[str, str]:
        """Amber's June 2024 commit on every ckpt branch: `config.json` gains `"ckpt_id": i`. Branch -> new sha.

        The key name is a stand-in: what matters is that every ckpt branch moves to a new commit whose weights
        are unchanged (same LFS objects).
        """
        moved = {}
        for index, revision in enumerate(self.revisions[:-1]):
            config = json.loads(self.read(revision, "config.json"))
            moved[revision] = self.commit_files(revision, {"config.json": _json_bytes({**config, "ckpt_id": index})},
                                                "add ckpt id into config")
        return moved

    def replace_weights(self, revision: str, checkpoint_dir: Path, message: str = "Upload new weights") -> str:
        """New weights (and small files) from `checkpoint_dir` under existing branch `revision`; returns the new sha.

        A ckpt branch gets fp32 pickled shards, `main` bf16 safetensors shards, as `build_amber_world` lays them.
        """
        files = _main_files(checkpoint_dir) if revision == "main" else _ckpt_files(checkpoint_dir, SHARDS)
        current = _git(self.model_repo, "ls-tree", "-r", "--name-only", revision).splitlines()
        stale = {path: None for path in current if path.endswith(WEIGHT_FILE_SUFFIXES) and path not in files}
        return self.commit_files(revision, {**stale, **files}, message)

    def add_chunk(self, local_file: Path, path_in_repo: str, message: str = "Upload chunk") -> str:
        """Add one data chunk file (LFS) to the dataset repository's `main`; returns the new sha."""
        return self.commit_files("main", {path_in_repo: Path(local_file)}, message, repo_type="dataset")

    def _repo(self, repo_type: str) -> Path:
        if repo_type not in ("model", "dataset"):
            raise ValueError(f"repo_type must be 'model' or 'dataset', not {repo_type!r}")
        return self.model_repo if repo_type == "model" else self.data_repo


def build_amber_world(mirrors: Path, checkpoint_dirs: Sequence[Path], chunk_files: Sequence[Path], *,
                      model_id: str = "LLM360/Amber", data_id: str = "LLM360/AmberDatasets",
                      main_history: bool = True) -> HubWorld:
    """Lay out the model and dataset repositories (see the module docstring) under `mirrors`; returns the world.

    `checkpoint_dirs`: `save_pretrained` folders (safetensors or .bin weights), checkpoint 0 first; all but the
    last become branches `ckpt_000` ..., the last goes on `main`. `chunk_files`: local files that become
    `train/train_000.jsonl` ... in order. Holds one checkpoint's shards in memory at a time: tiny models only.
    """
    if len(checkpoint_dirs) < 2:
        raise ValueError(f"need at least 2 checkpoint folders (ckpt_000 and main), got {len(checkpoint_dirs)}")
    world = HubWorld(Path(mirrors), model_id, data_id,
                     revisions=(*(f"ckpt_{i:03d}" for i in range(len(checkpoint_dirs) - 1)), "main"),
                     chunk_files=tuple(f"train/train_{i:03d}.jsonl" for i in range(len(chunk_files))))
    root = _initial_commits(world)
    for index, (revision, folder) in enumerate(zip(world.revisions[:-1], checkpoint_dirs)):
        commit_files(world.model_repo, revision, _ckpt_files(Path(folder), SHARDS), f"Upload checkpoint {index}",
                     start_from=root)
    last = Path(checkpoint_dirs[-1])
    if main_history:
        commit_files(world.model_repo, "main", _ckpt_files(last, FIRST_MAIN_SHARDS), "Upload LlamaForCausalLM")
    old_weights = _git(world.model_repo, "ls-tree", "-r", "--name-only", "main").splitlines()
    commit_files(world.model_repo, "main", {**{p: None for p in old_weights if p.endswith(WEIGHT_FILE_SUFFIXES)},
                                            **_main_files(last)}, "Upload bf16 safetensors weights")
    commit_files(world.data_repo, "main", dict(zip(world.chunk_files, map(Path, chunk_files))), "Upload train chunks")
    return world


def build_pythia_world(mirrors: Path, checkpoints: Mapping[int, Path], data_files: Mapping[str, Path], *,
                       model_id: str = "EleutherAI/pythia-tiny-deduped",
                       data_id: str = "EleutherAI/pile-tiny-pythia-preshuffled") -> HubWorld:
    """A model repository and a dataset repository laid out as Pythia's are (../shared/FACTS.md), under `mirrors`.

    `checkpoints`: step -> `save_pretrained` folder; each becomes branch `step{N}` (grown from the initial commit, its
    files as saved), and the last step is also `main`, as `step143000` is Pythia's. `data_files`: path in the dataset
    repository -> local file (Pythia: `document.idx` and `document-0000k-of-00020.bin` at the root), all LFS, on
    `main`. `revisions` lists the step branches in step order.
    """
    steps = sorted(checkpoints)
    world = HubWorld(Path(mirrors), model_id, data_id, revisions=tuple(f"step{step}" for step in steps),
                     chunk_files=tuple(data_files))
    root = _initial_commits(world)
    def saved(folder: Path) -> dict[str, Path]:
        return {path.name: path for path in sorted(Path(folder).iterdir()) if path.is_file()}

    for step in steps:
        commit_files(world.model_repo, f"step{step}", saved(checkpoints[step]), f"Upload step {step}", start_from=root)
    commit_files(world.model_repo, "main", saved(checkpoints[steps[-1]]), "Upload final model")
    commit_files(world.data_repo, "main", {path: Path(file) for path, file in data_files.items()},
                 "Upload preshuffled data")
    return world


def _initial_commits(world: HubWorld) -> str:
    """Create the world's two repositories, each with an "initial commit" holding `.gitattributes` as the Hub's
    start; returns the model repository's root commit (every checkpoint branch grows from it)."""
    for repo in (world.model_repo, world.data_repo):
        if repo.exists():
            raise FileExistsError(f"repository folder already exists: {repo}")
        repo.mkdir(parents=True)
        _git(repo, "init", "--quiet", "--initial-branch", "main")
        commit_files(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
    return branch_sha(world.model_repo, "main")


def commit_files(repo: Path, branch: str, files: Mapping[str, bytes | Path | None], message: str, *,
                 start_from: str | None = None) -> str:
    """Commit `files` onto `branch` of git repository `repo` (created from `start_from` if new); returns the sha.

    Paths ending in LFS_SUFFIXES are stored as git-LFS pointers with the object under `.git/lfs/objects`; a Path
    value is read from disk, None deletes the path. Uses a private index, so no work tree is checked out.
    """
    parent = _ref(repo, branch) or (start_from and _ref(repo, start_from))
    with tempfile.TemporaryDirectory() as scratch:
        index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
        if parent:
            _git(repo, "read-tree", parent, env=index)
        entries = [f"0 {'0' * 40}\t{path}" if content is None else f"100644 {_store(repo, path, content)}\t{path}"
                   for path, content in files.items()]
        _git(repo, "update-index", "--index-info", stdin="".join(line + "\n" for line in entries).encode(), env=index)
        tree = _git(repo, "write-tree", env=index)
    when = FIRST_COMMIT_TIME + 3600 * int(_git(repo, "rev-list", "--all", "--count"))
    dates = {"GIT_AUTHOR_DATE": f"@{when} +0000", "GIT_COMMITTER_DATE": f"@{when} +0000"}
    sha = _git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, env=dates)
    _git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha


def branch_sha(repo: Path, branch: str) -> str:
    sha = _ref(repo, branch)
    if sha is None:
        raise KeyError(f"no branch {branch!r} in {repo}")
    return sha


def _ckpt_files(folder: Path, shards: int) -> dict[str, bytes]:
    """A ckpt branch's files: fp32 config, the folder's small files, fp32 pickled weights in `shards` shards."""
    return {**_small_files(folder), "config.json": _config(folder, "float32"),
            **pickled_shards(load_state_dict(folder), shards)}


def _main_files(folder: Path) -> dict[str, bytes]:
    return {**_small_files(folder), "config.json": _config(folder, "bfloat16"),
            **safetensors_shards(load_state_dict(folder), SHARDS, torch.bfloat16)}


def _small_files(folder: Path) -> dict[str, bytes]:
    """Everything but weights and config.json: generation config, tokenizer files."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())
            if path.is_file() and path.name != "config.json" and not path.name.endswith(WEIGHT_FILE_SUFFIXES)}


def _config(folder: Path, torch_dtype: str) -> bytes:
    """The folder's config.json with Amber's (pre-transformers-5) dtype key `torch_dtype`."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None)
    return _json_bytes({**config, "torch_dtype": torch_dtype})


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


# --- weights --------------------------------------------------------------------------------------------------

def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a `save_pretrained` folder (safetensors shards, else pickled .bin shards), in file order."""
    from safetensors.torch import load_file
    folder = Path(folder)
    if files := sorted(folder.glob("*.safetensors")):
        return {name: tensor for file in files for name, tensor in load_file(file).items()}
    if files := sorted(folder.glob("pytorch_model*.bin")):
        return {name: tensor for file in files for name, tensor in torch.load(file, weights_only=True).items()}
    raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in checkpoint folder {folder}")


def pickled_shards(state: Mapping[str, torch.Tensor], shards: int) -> dict[str, bytes]:
    """fp32 `pytorch_model-0000k-of-0000n.bin` files (torch.save of an OrderedDict) + `pytorch_model.bin.index.json`.

    Each tensor is a fresh fp32 copy carrying one Python attribute, which makes `torch.save` pickle it through
    `torch._tensor._rebuild_from_type_v2` with `torch.Tensor`, the imports Amber's pickles have.
    """
    tensors = OrderedDict((name, tensor.detach().to(torch.float32).clone()) for name, tensor in state.items())
    for tensor in tensors.values():
        tensor.saved_with_python_state = True
    files, weight_map = {}, {}
    for number, names in enumerate(_split_by_bytes(tensors, shards), start=1):
        name = f"pytorch_model-{number:05d}-of-{shards:05d}.bin"
        buffer = io.BytesIO()
        torch.save(OrderedDict((key, tensors[key]) for key in names), buffer)
        files[name] = buffer.getvalue()
        weight_map.update(dict.fromkeys(names, name))
    files["pytorch_model.bin.index.json"] = _index(tensors, weight_map)
    return files


def safetensors_shards(state: Mapping[str, torch.Tensor], shards: int, dtype: torch.dtype) -> dict[str, bytes]:
    """`model-0000k-of-0000n.safetensors` files in `dtype` + `model.safetensors.index.json`."""
    from safetensors.torch import save
    tensors = OrderedDict((name, tensor.detach().to(dtype).contiguous().clone()) for name, tensor in state.items())
    files, weight_map = {}, {}
    for number, names in enumerate(_split_by_bytes(tensors, shards), start=1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        files[name] = save({key: tensors[key] for key in names}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, name))
    files["model.safetensors.index.json"] = _index(tensors, weight_map)
    return files


def _split_by_bytes(tensors: Mapping[str, torch.Tensor], parts: int) -> list[list[str]]:
    """Tensor names in `parts` consecutive, non-empty groups of about equal bytes (as HF shards a checkpoint)."""
    names = list(tensors)
    if len(names) < parts:
        raise ValueError(f"cannot split {len(names)} tensors into {parts} shards")
    cumulative = list(itertools.accumulate(t.numel() * t.element_size() for t in tensors.values()))
    bounds = [0]
    for part in range(1, parts):
        end = bisect.bisect_left(cumulative, cumulative[-1] * part / parts) + 1
        bounds.append(min(max(end, bounds[-1] + 1), len(names) - (parts - part)))
    bounds.append(len(names))
    return [names[start:end] for start, end in zip(bounds, bounds[1:])]


def _index(tensors: Mapping[str, torch.Tensor], weight_map: dict[str, str]) -> bytes:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    return _json_bytes({"metadata": {"total_size": total}, "weight_map": weight_map})


# --- git plumbing ---------------------------------------------------------------------------------------------

def _git_bytes(repo: Path, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> bytes:
    result = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True,
                            env={**os.environ, **GIT_ENV, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {result.stderr.decode().strip()}")
    return result.stdout


def _git(repo: Path, *args: str, **kwargs) -> str:
    return _git_bytes(repo, *args, **kwargs).decode().strip()


def _ref(repo: Path, revision: str) -> str | None:
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
                            capture_output=True, env={**os.environ, **GIT_ENV})
    return result.stdout.decode().strip() if result.returncode == 0 else None


def _store(repo: Path, path: str, content: bytes | Path) -> str:
    """Write one blob (an LFS pointer + object for LFS paths); returns the blob's git sha."""
    if path.endswith(LFS_SUFFIXES):
        content = _store_lfs_object(repo, content)
    elif isinstance(content, Path):
        content = content.read_bytes()
    return _git(repo, "hash-object", "-w", "--stdin", stdin=content)


def _store_lfs_object(repo: Path, content: bytes | Path) -> bytes:
    """Put `content` under .git/lfs/objects as git-lfs does; returns the pointer file's bytes."""
    digest, size = hashlib.sha256(), 0
    with (open(content, "rb") if isinstance(content, Path) else io.BytesIO(content)) as source:
        while block := source.read(1 << 20):
            digest.update(block)
            size += len(block)
    target = _lfs_object(repo, digest.hexdigest())
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest.hexdigest()}\nsize {size}\n".encode()


def _lfs_object(repo: Path, oid: str) -> Path:
    return repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def _lfs_oid(pointer: bytes) -> str | None:
    lines = pointer.decode(errors="replace").splitlines()
    if len(lines) == 3 and lines[0].startswith("version https://git-lfs") and lines[1].startswith("oid sha256:"):
        return lines[1].removeprefix("oid sha256:")
    return None


# --- serving --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoggedRequest:
    """One request the server answered. `path` is as requested; `length` is the answer's Content-Length."""

    method: str
    path: str
    query: str
    range: str | None  # the request's Range header, e.g. "bytes=0-99"
    status: int
    length: int | None  # None for olah's chunked answers (API listings)
    error_code: str | None  # X-Error-Code, e.g. "EntryNotFound"


@dataclass(frozen=True)
class HubServer:
    endpoint: str  # e.g. "http://127.0.0.1:41234"
    request_log: Path  # JSON lines, one per request, written before the answer starts
    output: Path  # the server's stdout/stderr

    def ignore_ranges(self, ignore: bool) -> None:
        """From now on, answer Range requests with the whole file (True) or with the range (False)."""
        flag = self.request_log.with_name("ignore-range")  # tests/hub_world_server.py IGNORE_RANGE_FLAG
        flag.touch() if ignore else flag.unlink(missing_ok=True)

    def hold(self, paths: list[str]) -> None:
        """From now on, GETs of these paths (inside any repository) wait until `hold([])` releases them."""
        flag = self.request_log.with_name("hold-paths")  # tests/hub_world_server.py HOLD_FLAG
        flag.write_text("".join(f"{path}\n" for path in paths)) if paths else flag.unlink(missing_ok=True)

    def requests(self, since: int = 0) -> list[LoggedRequest]:
        """Requests answered so far, oldest first, from the `since`-th on (pass `len(requests())` taken earlier)."""
        if not self.request_log.exists():
            return []
        lines = self.request_log.read_text().splitlines()[since:]
        return [LoggedRequest(**{key: entry[key] for key in LoggedRequest.__dataclass_fields__})
                for entry in map(json.loads, lines)]


@contextmanager
def serve_hub(mirrors: Path, workdir: Path, start_timeout_s: float = 300.0, conformance: bool = True
              ) -> Iterator[HubServer]:
    """Serve `mirrors` (olah's mirror layout) on a free localhost port until the block ends; yields the server.

    Runs tests/hub_world_server.py (olah + the HubConformance wrapper) with this interpreter; olah's config, logs and
    the request log go to `workdir`. Sets nothing in this process: point clients at it with `hub_client_env`.
    `conformance=False` serves olah's answers unchanged (requests still logged), to see what the wrapper fixes.
    Starting takes about 1 s (olah's imports).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = workdir / "olah.toml"
    config.write_text(
        "[basic]\n"
        f'host = "127.0.0.1"\nport = {port}\n'
        f"repos-path = {json.dumps(str(workdir / 'olah-cache'))}\nmirrors-path = [{json.dumps(str(mirrors))}]\n"
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        "[accessibility]\noffline = true\n")
    server = HubServer(f"http://127.0.0.1:{port}", workdir / "requests.jsonl", workdir / "server.out")
    with server.output.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--config", str(config), "--port", str(port),
             "--log-dir", str(workdir / "olah-logs"), "--request-log", str(server.request_log),
             *([] if conformance else ["--plain"])],
            cwd=workdir, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_until_listening(process, port, server.output, start_timeout_s)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def hub_client_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    """Environment for a process (or Ray worker) that must use the served Hub and nothing else.

    `DISABLE_SAFETENSORS_CONVERSION=1` stops transformers' background conversion of a `.bin` revision (which calls
    the Hub API and a service outside HF_ENDPOINT); `HF_HUB_OFFLINE=0` overrides a `1` a Ray worker may inherit.
    """
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
            "HF_HUB_OFFLINE": "0", "DISABLE_SAFETENSORS_CONVERSION": "1"}


def apply_hub_client_env(monkeypatch, env: Mapping[str, str]) -> None:
    """Set `env` in this process through `monkeypatch` (undone with it), huggingface_hub's import-time copies too.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, into `constants`, when first
    imported, and transformers keeps one HfApi (with the endpoint of its first use): a process that imported or used
    them before the variables were set needs those copies replaced as well. One endpoint per process: serve several
    worlds from one server (one `mirrors` folder, different repository ids) rather than start two servers.
    """
    from huggingface_hub import constants
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", env["HF_ENDPOINT"])
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        env["HF_ENDPOINT"] + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", env["HF_HOME"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"] == "1")
    if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None)  # its shared HfApi keeps the endpoint it was made with


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_listening(process: subprocess.Popen, port: int, output: Path, timeout_s: float) -> None:
    """uvicorn listens only after olah's startup completed, so an accepted connection means ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"hub server exited with {process.returncode}: {output.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"hub server not listening on port {port} after {timeout_s:.0f} s: {output.read_text()[-3000:]}")
