"""One writer per output: an advisory lock on `<output>/.memsweep.lock`, held for the whole run.

`fcntl.flock` is released by the kernel when the holding process dies (killed, crashed, node rebooted for a
local disk), so a lock left by a dead run is simply taken over: there is no stale-lock timeout to guess.
The lock file's content names the holder (host, pid, start time, command) so a second run can say who it
is waiting for. On network filesystems flock works where the filesystem supports it (NFSv4, Lustre with
`flock` mounted); on one that ignores it, two runs on two hosts are not kept apart.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sweep.errors import MemsweepError

LOCK_NAME = ".memsweep.lock"


class OutputLockedError(MemsweepError):
    """Another live process is writing this output; the message names it."""


def _describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another process"
    return (f"a run on host {holder.get('host', '?')} (pid {holder.get('pid', '?')}, started "
            f"{holder.get('started_at', '?')}: {holder.get('command', '?')})")


@contextmanager
def writer_lock(output: Path, wait_seconds: float = 0.0):
    """Hold the writer lock of `output` (created if needed) for the `with` block.

    Raises OutputLockedError naming the holder if another live process holds it after `wait_seconds`.
    """
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd = os.open(output / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise MemsweepError(f"output {output}: cannot create or write it ({error.strerror})") from None
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise OutputLockedError(
                        f"{output} is being written by {_describe_holder(output / LOCK_NAME)}; "
                        "wait for it to finish (or stop it) and run again") from None
                time.sleep(0.5)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        # Closing the descriptor releases the lock; the file stays (deleting it would race a waiter).
        os.close(fd)
