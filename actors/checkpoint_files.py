"""How a checkpoint reaches this node's disk and leaves it: the data plane's side of the disk budget.

A Hub checkpoint (27 GB of fp32 ``.bin`` for Amber) is downloaded into
``<download_dir>/<org>--<name>/<commit>/`` by the actor that will load it (``fetch_checkpoint``), and deleted
as soon as its weights are loaded into memory (``evict_checkpoint``) unless the user keeps downloads; a
checkpoint already complete in the Hugging Face cache is used from there and never deleted. Two actors of one node
that want the same checkpoint at once (the shares of a split checkpoint) share one folder and one download: each
holds a shared lock on ``<commit>.lock`` beside it while it uses the folder, and the last one to let go deletes it. A local source is
used in place. Everything that touches the network goes through ``huggingface_hub`` (looked up at call time,
so tests can point ``HF_ENDPOINT`` at a local server).

A *source* is one string from the spec: a local directory (checkpoints at ``<source>/<revision>/``) or a Hub
repository id (checkpoints are Hub revisions).
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub

# Files `from_pretrained` needs for a causal LM and its tokenizer. Weights are chosen separately
# (safetensors if the revision has them, else pickled .bin) so that a repository holding both never
# downloads both: an Amber checkpoint is about 27 GB.
CONFIG_AND_TOKENIZER_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model*.bin.index.json")
DOWNLOAD_MARKER = ".memsweep-download.json"
DEFAULT_DOWNLOAD_DIR = Path("~/.cache/memsweep/checkpoints")
# Keep this much free beyond a download, for the page cache's dirty pages, logs and the probe cache.
DISK_MARGIN_BYTES = 2 * 1024**3

_LOCAL_PREFIXES = ("/", "./", "../", "~")


class InsufficientDiskError(OSError):
    """Not enough free disk for a download; the message names the folder and both sizes."""


def is_local(source: str) -> bool:
    """True if ``source`` names a local directory rather than a Hub repository id.

    Local means: an existing directory, or a path-like string (starting with ``/``, ``./``, ``../`` or
    ``~``) even if it does not exist yet, so that a mistyped local path gives a "not found" error instead
    of a confusing Hub lookup. Hub ids look like ``org/name``.
    """
    return source.startswith(_LOCAL_PREFIXES) or Path(source).expanduser().is_dir()


def local_checkpoint(source: str, revision: str) -> Path:
    """``<source>/<revision>``, which must be a folder."""
    path = Path(source).expanduser() / revision
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path} (source {source!r}, revision {revision!r})")
    return path


def model_file_patterns(source: str, revision: str) -> list[str]:
    """``allow_patterns`` for one Hub revision: config, tokenizer, and one kind of weights."""
    files = huggingface_hub.list_repo_files(source, revision=revision)
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    weights = SAFETENSORS_PATTERNS if has_safetensors else PICKLE_WEIGHT_PATTERNS
    return [*CONFIG_AND_TOKENIZER_PATTERNS, *weights]


@dataclass(frozen=True)
class CheckpointFolder:
    """A checkpoint on this node's disk. `downloaded`: memsweep put it there, so it may delete it (once no other
    process of this node uses it: `users` is this process's shared lock on it, an open file descriptor)."""

    path: Path
    downloaded: bool
    bytes: int = 0
    users: int | None = field(default=None, compare=False, repr=False)


def _join_users(folder: Path) -> int:
    """A shared lock on `folder`'s users file (waits while another process deletes the folder)."""
    descriptor = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_SH)
    return descriptor


def _leave_users(descriptor: int | None, delete: Path | None = None) -> int:
    """Let go of a folder; if this process is its last user, delete `delete` first, under an exclusive lock (so no
    other process starts using it meanwhile). Returns the bytes deleted (0 while another process uses it)."""
    try:
        if descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted only when no other process holds it
            except BlockingIOError:
                return 0
        if delete is None or not delete.exists():
            return 0
        freed = sum(p.stat().st_size for p in delete.rglob("*") if p.is_file())
        shutil.rmtree(delete, ignore_errors=True)
        return freed
    finally:
        if descriptor is not None:
            os.close(descriptor)


def checkpoint_download_size(source: str, commit: str) -> int:
    """Bytes a checkpoint download would take (config, tokenizer and one kind of weights)."""
    patterns = model_file_patterns(source, commit)
    total = 0
    for entry in huggingface_hub.HfApi().list_repo_tree(source, revision=commit, recursive=True):
        if hasattr(entry, "size") and any(fnmatch.fnmatch(entry.path, p) for p in patterns):
            total += int(entry.lfs.size if getattr(entry, "lfs", None) else entry.size)
    return total


def fetch_checkpoint(source: str, revision: str, commit: str | None, download_dir: str | Path | None = None
                     ) -> CheckpointFolder:
    """Put checkpoint (`source`, `revision` pinned to `commit`, required for a Hub source) on this node's disk
    and return its folder.

    Local source: the folder itself. Hub source: the Hugging Face cache if it already holds the whole
    snapshot (never deleted by memsweep), else a download into ``<download_dir>/<org>--<name>/<commit>``
    after checking the free space (InsufficientDiskError names the folder, the bytes needed and free). A
    disk that fills during the download raises the same error. Either way the folder is deleted, shards already
    complete included (unless another process of this node uses it): a checkpoint that does not fit is not
    resumed, and its shards would otherwise stay. A second process that asks for the same commit meanwhile shares
    the folder (see the module docstring).
    """
    if is_local(source):
        return CheckpointFolder(local_checkpoint(source, revision), downloaded=False)
    if not commit:  # the driver pins every Hub revision before an actor sees it (sweep/data/sources.py)
        raise ValueError(f"{source}@{revision}: a Hub checkpoint is fetched at a pinned commit, and none was given")
    patterns = model_file_patterns(source, commit)
    try:
        cached = huggingface_hub.snapshot_download(source, revision=commit, allow_patterns=patterns,
                                                   local_files_only=True)
        if _has_weights(Path(cached)):
            return CheckpointFolder(Path(cached), downloaded=False)
    except (huggingface_hub.errors.LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    target = Path(download_dir or DEFAULT_DOWNLOAD_DIR).expanduser() / source.replace("/", "--") / commit
    target.parent.mkdir(parents=True, exist_ok=True)
    users = _join_users(target)
    try:
        return _download(source, revision, commit, patterns, target, users)
    except BaseException:
        _leave_users(users)  # a refused or failed download deleted its folder already, if it was alone in it
        raise


def _download(source: str, revision: str, commit: str, patterns: list[str], target: Path, users: int
              ) -> CheckpointFolder:
    """Download into `target` (another process of this node may be downloading or using it too: the Hub client's
    own file locks make the second one wait for the first one's files instead of fetching them again)."""
    target.mkdir(parents=True, exist_ok=True)
    marker = target / DOWNLOAD_MARKER
    marker.write_text(json.dumps({"source": source, "revision": revision, "commit": commit}))
    plan = huggingface_hub.snapshot_download(source, revision=commit, allow_patterns=patterns, local_dir=target,
                                             dry_run=True)
    needed = sum(item.file_size or 0 for item in plan if item.will_download)
    free = shutil.disk_usage(target).free
    if needed + DISK_MARGIN_BYTES > free:
        _delete_if_alone(target, users)  # shards of an earlier, interrupted try would stay for good
        raise InsufficientDiskError(errno.ENOSPC, f"not enough disk space in {target} for {source}@{revision} "
                                    f"({commit[:12]}): needs {human_bytes(needed)} (+{human_bytes(DISK_MARGIN_BYTES)} margin), "
                                    f"{human_bytes(free)} free")
    try:
        huggingface_hub.snapshot_download(source, revision=commit, allow_patterns=patterns, local_dir=target)
    except OSError as error:
        if error.errno == errno.ENOSPC or "No space left" in str(error):
            free = shutil.disk_usage(target).free
            _delete_if_alone(target, users)  # the shards already complete: nobody would delete them
            raise InsufficientDiskError(errno.ENOSPC, f"disk full in {target} while downloading {source}@{revision} "
                                        f"({commit[:12]}, {human_bytes(needed)}); {human_bytes(free)} free now") from None
        raise
    return CheckpointFolder(target, downloaded=True, bytes=needed, users=users)


def _delete_if_alone(target: Path, users: int) -> None:
    """Delete a folder no other process of this node uses, keeping the shared lock (the caller lets go of it)."""
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    shutil.rmtree(target, ignore_errors=True)
    fcntl.flock(users, fcntl.LOCK_SH)


def human_bytes(count: float) -> str:
    """12.3 GB, 36.0 MB, 512 KB: a size a person reads at a glance (decimal units, as the Hub shows them)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _has_weights(folder: Path) -> bool:
    """True if `folder` holds a complete set of weights (every shard its index names, or a single file)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            return bool(shards) and all((folder / shard).exists() for shard in shards)
    return (folder / "model.safetensors").exists() or (folder / "pytorch_model.bin").exists()


def evict_checkpoint(folder: CheckpointFolder) -> int:
    """Delete a checkpoint memsweep downloaded (never a local source or the user's HF cache) unless another process
    of this node still uses it (then the last one deletes it); returns bytes freed."""
    mine = folder.downloaded and (folder.path / DOWNLOAD_MARKER).exists()
    return _leave_users(folder.users, folder.path if mine else None)


def fetch_tokenizer(source: str, revision: str, commit: str | None = None) -> Path:
    """A folder holding the checkpoint's tokenizer files (local folder, or the Hub cache: a few MB, kept)."""
    if is_local(source):
        return local_checkpoint(source, revision)
    return Path(huggingface_hub.snapshot_download(source, revision=commit or revision,
                                                  allow_patterns=list(CONFIG_AND_TOKENIZER_PATTERNS)))
