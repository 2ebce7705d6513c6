"""What a checkpoint or a data chunk IS, pinned: a Hub revision resolved to its commit, a chunk file to its bytes.

A *source* is one string from the spec (`model.source`, `data.source`): a local directory (data files at
``<source>/<file>``, checkpoints at ``<source>/<revision>/``) or a Hub repository id (checkpoints are Hub
revisions, data files live in the dataset repository). How a checkpoint reaches a node's disk is the data
plane's business (actors/checkpoint_files.py).

Hub branches move (Amber's ``ckpt_*`` branches got a config commit in 2024), so a checkpoint is pinned to the
commit its revision resolved to when its first cell landed (``pin_checkpoint``), and a chunk file to its content
identity: the sha256 of its bytes, which the Hub reports for LFS files without a download (``describe_chunks``);
a local file's sha256 is computed while it is scanned and remembered by (path, size, mtime) in ``IdentityMemo``.
Everything that touches the network goes through ``huggingface_hub`` (looked up at call time, so tests can
point ``HF_ENDPOINT`` at a local server).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import huggingface_hub

from actors.checkpoint_files import is_local
from actors.protocol import CheckpointTarget, one_line
from sweep.landed.atomic_write import write_atomic
from sweep.errors import MemsweepError


def local_data_file(source: str, file: str) -> Path:
    """``<source>/<file>``, which must be a file."""
    path = Path(source).expanduser() / file
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (source {source!r}, file {file!r})")
    return path


# ---- pins -----------------------------------------------------------------------------------------


def resolve_commit(source: str, revision: str, repo_type: str = "model") -> str:
    """The commit sha a Hub revision (branch, tag or sha) points to now: one API call."""
    info = huggingface_hub.HfApi().repo_info(source, revision=revision, repo_type=repo_type)
    return info.sha


class CheckpointUnresolvedError(MemsweepError):
    """A checkpoint's Hub revision cannot be resolved to a commit (and no commit was pinned before)."""


@dataclass(frozen=True)
class PinnedCheckpoint:
    """The checkpoint to load, and what the pinning noticed (a moved branch), for the caller to report."""

    target: CheckpointTarget
    warning: str | None = None


def pin_checkpoint(source: str, ckpt: int, revision: str, pinned_commit: str | None) -> PinnedCheckpoint:
    """Checkpoint `ckpt` (`source` at `revision`) pinned: a local folder as it is; a Hub revision at the commit
    this output's cells of it were scored at (`pinned_commit`, used again even if the branch has moved since,
    with a warning), else at the commit it resolves to now. Raises CheckpointUnresolvedError when there is no
    pinned commit and the revision cannot be resolved."""
    if is_local(source):
        return PinnedCheckpoint(CheckpointTarget(ckpt, revision, None))
    try:
        current = resolve_commit(source, revision)
    except Exception as error:  # noqa: BLE001 - any Hub error: a missing revision fails this checkpoint only
        if not pinned_commit:
            raise CheckpointUnresolvedError(f"checkpoint {ckpt}: revision {revision!r} of {source} cannot be "
                                            f"resolved: {one_line(error)}") from None
        current = None
    warning = None
    if pinned_commit and current and current != pinned_commit:
        warning = (f"checkpoint {ckpt}: revision {revision!r} of {source} moved from {pinned_commit} to {current}; "
                   f"this output's cells of it were scored at {pinned_commit[:12]}, which is used again (sweep "
                   "into a new output to score the new commit)")
    return PinnedCheckpoint(CheckpointTarget(ckpt, revision, pinned_commit or current), warning)


@dataclass(frozen=True)
class ChunkFile:
    """One chunk file and what it is: enough to read it on any node and to know if it changed.

    kind "local": `path` is the absolute file; `size`, `mtime_ns` from stat; `sha256` known once scanned.
    kind "hub": `repo` (dataset repo id), `commit` it is read at, `size`, and `sha256` from the Hub's LFS
    metadata (None for a small non-LFS file: computed while streaming).
    """

    kind: str
    data_source: str
    file: str
    size: int | None = None
    sha256: str | None = None
    path: str | None = None
    mtime_ns: int | None = None
    repo: str | None = None
    commit: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return self.path if self.kind == "local" else f"{self.repo}@{(self.commit or '')[:12]}:{self.file}"

    def with_sha256(self, sha256: str) -> "ChunkFile":
        return ChunkFile(**{**asdict(self), "sha256": sha256})

    def stat_matches(self, other: "ChunkFile") -> bool:
        """Cheap 'unchanged' test against a pinned description (local: size and mtime; Hub: sha256)."""
        if self.kind != other.kind:
            return False
        if self.kind == "local":
            return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)
        return self.sha256 is not None and self.sha256 == other.sha256


def describe_chunks(data_source: str, files: dict[int, str], revision: str = "main"
                    ) -> dict[int, ChunkFile | Exception]:
    """What each chunk file is, without reading it: one stat per local file; for a Hub dataset two API
    calls in all (the revision's commit, then paths-info for every file in batches). A file that is missing
    maps to its FileNotFoundError, so the caller fails that chunk's cells only."""
    found: dict[int, ChunkFile | Exception] = {}
    if not files:
        return found
    if is_local(data_source):
        for chunk, file in files.items():
            try:
                path = local_data_file(data_source, file)
                stat = path.stat()
            except FileNotFoundError as error:
                found[chunk] = error
                continue
            found[chunk] = ChunkFile("local", data_source, file, size=stat.st_size, path=str(path.resolve()),
                                       mtime_ns=stat.st_mtime_ns)
        return found
    api = huggingface_hub.HfApi()
    commit = api.repo_info(data_source, revision=revision, repo_type="dataset").sha
    infos = {}
    names = sorted(set(files.values()))
    for start in range(0, len(names), 100):
        for info in api.get_paths_info(data_source, names[start:start + 100], revision=commit, repo_type="dataset"):
            infos[info.path] = info
    for chunk, file in files.items():
        info = infos.get(file)
        if info is None or not hasattr(info, "size"):
            found[chunk] = FileNotFoundError(f"data file not found: {file} in dataset {data_source} at "
                                             f"{revision} ({commit[:12]})")
            continue
        lfs = getattr(info, "lfs", None)
        found[chunk] = ChunkFile("hub", data_source, file, size=int(lfs.size if lfs else info.size),
                                   sha256=lfs.sha256 if lfs else None, repo=data_source, commit=commit)
    return found


class IdentityMemo:
    """sha256 of local files by (path, size, mtime_ns, inode): a file is hashed again only once it changed.

    Kept in ``<cache_dir>/identities.json``; written whole and atomically, last writer wins.
    """

    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / "identities.json"

    @staticmethod
    def _key(chunk_file: ChunkFile) -> str:
        path = chunk_file.path
        inode = os.stat(path).st_ino if path and os.path.exists(path) else 0
        return f"{path}|{chunk_file.size}|{chunk_file.mtime_ns}|{inode}"

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def lookup(self, chunk_file: ChunkFile) -> str | None:
        if chunk_file.kind != "local":
            return chunk_file.sha256
        return self._read().get(self._key(chunk_file))

    def remember(self, chunk_file: ChunkFile) -> None:
        if chunk_file.kind != "local" or not chunk_file.sha256:
            return
        memo = self._read()
        memo[self._key(chunk_file)] = chunk_file.sha256
        write_atomic(json.dumps(memo).encode(), self.path)
