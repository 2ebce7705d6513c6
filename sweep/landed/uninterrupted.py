"""A landing that Ctrl-C does not cut short: SIGINT is held while the store writes and commits, then delivered.

Every landing is safe to kill at any instruction (its files reach their names by rename, and a ledger commit makes
them data; `ResultStore.recover` deletes what a killed one left). But a Ctrl-C that arrives between a landing's
first file and its ledger commit would throw away results a user has watched land: the scheduler's Ctrl-C path lands
the cells waiting in memory, and an interrupt inside one of those landings would abandon it half-way. So the store
runs each landing inside `uninterrupted()`: a SIGINT arriving then is remembered, the landing finishes (its files,
its commit, the deletes a compaction owes), and the signal is raised again as the block ends, where the handler
that was in place (Python's: KeyboardInterrupt) acts on it.

Only the main thread receives signals and may set their handlers; elsewhere the block runs as it is. A process
whose SIGINT handler was not set from Python (an embedding host) keeps it untouched.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class _Hold:
    """The state of the outermost `uninterrupted()` block of the main thread (blocks nest: a landing that
    compacts lands a second pair inside the first)."""

    depth = 0
    previous = None  # the SIGINT handler the outermost block replaced
    held = False  # a SIGINT arrived while held


def _remember(signum, frame) -> None:
    _Hold.held = True


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT for the block; deliver it (to the handler in place before) once the block has ended."""
    if threading.current_thread() is not threading.main_thread() or (
            _Hold.depth == 0 and signal.getsignal(signal.SIGINT) is None):
        yield
        return
    if _Hold.depth == 0:
        _Hold.previous, _Hold.held = signal.signal(signal.SIGINT, _remember), False
    _Hold.depth += 1
    try:
        yield
    finally:
        _Hold.depth -= 1
        if _Hold.depth == 0:
            signal.signal(signal.SIGINT, _Hold.previous)
            if _Hold.held:
                _Hold.held = False
                signal.raise_signal(signal.SIGINT)
