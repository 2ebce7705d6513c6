"""One way to write a file so that readers see the old bytes or the new ones, never a part, even after a crash.

Write a temporary file, fsync it, rename it over the final name (atomic on POSIX), then fsync the folder so
the rename itself survives a power loss. Every file memsweep lands or caches goes through `write_atomic`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(payload: bytes, final: Path, temp_dir: Path | None = None) -> None:
    """Write `payload` to `final` atomically and durably.

    The temporary file is made in `temp_dir` (default: `final`'s folder; both must be on one filesystem), so
    an owner that sweeps its temp folder after a crash (the store's `_tmp/`) finds every leftover there.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(temp_dir) if temp_dir is not None else final.parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, final)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
