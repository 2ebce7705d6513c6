"""memsweep's own errors: problems it can name for the user in one line.

The CLI turns a `MemsweepError` (and only that) into `memsweep: error: <message>` and its exit status; any
other exception is a bug (in memsweep or a library) and keeps its traceback. Messages are one line naming the
file, line, key, checkpoint or chunk: build them with `one_line` when they quote another error.

`MemsweepError` is not a ValueError (nor any other built-in error a library raises): `except MemsweepError` catches
memsweep's refusals and nothing else, and `except ValueError` around a library call catches the library's errors
and none of memsweep's.
"""

from __future__ import annotations


class MemsweepError(Exception):
    """A problem memsweep can name; `exit_status` is what the CLI exits with (2: refused, nothing was done)."""

    exit_status = 2


class SweepAbortedError(MemsweepError):
    """A sweep that started but cannot go on (an actor that cannot start anywhere); landed cells are kept."""

    exit_status = 1
