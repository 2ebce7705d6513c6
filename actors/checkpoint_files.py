"""How a checkpoint reaches this node's disk and leaves it: the data plane's side of the disk budget.

A Hub checkpoint (27 GB of fp32 ``.bin`` for Amber) is downloaded into
``<download_dir>/<org>--<name>/<commit>/`` by the actor that will load it (``fetch_checkpoint``), and deleted
as soon as its weights are loaded into memory (``evict_checkpoint``) unless the user keeps downloads; a
checkpoint already complete in the Hugging Face cache is used from there and never deleted. A local source is
used in place. Everything that touches the network goes through ``huggingface_hub`` (looked up at call time,
so tests can point ``HF_ENDPOINT`` at a local server).

A *source* is one string from the spec: a local directory (checkpoints at ``<source>/<revision>/``) or a Hub
repository id (checkpoints are Hub revisions).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import shutil
from dataclasses import dataclass
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
    """A checkpoint on this node's disk. `downloaded`: memsweep put it there, so it may delete it."""

    path: Path
    downloaded: bool
    bytes: int = 0


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
    complete included: a checkpoint that does not fit is not resumed, and its shards would otherwise stay.
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
    target.mkdir(parents=True, exist_ok=True)
    marker = target / DOWNLOAD_MARKER
    marker.write_text(json.dumps({"source": source, "revision": revision, "commit": commit}))
    plan = huggingface_hub.snapshot_download(source, revision=commit, allow_patterns=patterns, local_dir=target,
                                             dry_run=True)
    needed = sum(item.file_size or 0 for item in plan if item.will_download)
    free = shutil.disk_usage(target).free
    if needed + DISK_MARGIN_BYTES > free:
        shutil.rmtree(target, ignore_errors=True)  # shards of an earlier, interrupted try would stay for good
        raise InsufficientDiskError(errno.ENOSPC, f"not enough disk space in {target} for {source}@{revision} "
                                    f"({commit[:12]}): needs {human_bytes(needed)} (+{human_bytes(DISK_MARGIN_BYTES)} margin), "
                                    f"{human_bytes(free)} free")
    try:
        huggingface_hub.snapshot_download(source, revision=commit, allow_patterns=patterns, local_dir=target)
    except OSError as error:
        if error.errno == errno.ENOSPC or "No space left" in str(error):
            free = shutil.disk_usage(target).free
            shutil.rmtree(target, ignore_errors=True)  # the shards already complete: nobody would delete them
            raise InsufficientDiskError(errno.ENOSPC, f"disk full in {target} while downloading {source}@{revision} "
                                        f"({commit[:12]}, {human_bytes(needed)}); {human_bytes(free)} free now") from None
        raise
    return CheckpointFolder(target, downloaded=True, bytes=needed)


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
    """Delete a checkpoint memsweep downloaded (never a local source or the user's HF cache); returns bytes freed."""
    if not folder.downloaded or not (folder.path / DOWNLOAD_MARKER).exists():
        return 0
    freed = sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file())
    shutil.rmtree(folder.path, ignore_errors=True)
    return freed


def fetch_tokenizer(source: str, revision: str, commit: str | None = None) -> Path:
    """A folder holding the checkpoint's tokenizer files (local folder, or the Hub cache: a few MB, kept)."""
    if is_local(source):
        return local_checkpoint(source, revision)
    return Path(huggingface_hub.snapshot_download(source, revision=commit or revision,
                                                  allow_patterns=list(CONFIG_AND_TOKENIZER_PATTERNS)))
