"""memsweep's own errors: problems it can name for the user in one line.

The CLI turns a `MemsweepError` (and only that) into `memsweep: error: <message>` and its exit status; any
other exception is a bug (in memsweep or a library) and keeps its traceback. Messages are one line naming the
file, line, key, checkpoint or chunk: build them with `one_line` when they quote another error.

`MemsweepError` is a ValueError: a refused input is a bad value, and callers that catch ValueError (tests,
notebooks) keep working.
"""

from __future__ import annotations



class MemsweepError(ValueError):
    """A problem memsweep can name; `exit_status` is what the CLI exits with (2: refused, nothing was done)."""

    exit_status = 2


class SweepAbortedError(MemsweepError):
    """A sweep that started but cannot go on (an actor that cannot start anywhere); landed cells are kept."""

    exit_status = 1
