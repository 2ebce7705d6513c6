"""Query parameters, checked before anything is read: a bad one is a 400 with one line naming it.

Path parameters need no checking here: the routes take only digits (Starlette's `int` convertor), so a path
that is not a number, or that tries to leave the output (`..`, `/etc`), matches no route and is a 404; a
number that names no landed cell or row is a 404 from the data layer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.datastructures import QueryParams

from sweep.explorer.data import SEQUENCE_SORTS, SequenceQuery
from sweep.explorer.exposures import EXPOSURE_SORTS

MAX_ID = 10**9  # no checkpoint, chunk or row number comes near this; bigger ones are refused before any read
MAX_PAGE = 1000  # sequences per page
MAX_SOURCE_CHARS = 200
_INTEGER = re.compile(r"^-?\d{1,10}$")
CELL_PAGE_PARAMS = ("source", "full_match", "min_prefix", "min_exposures", "max_exposures", "sort", "order", "limit",
                    "offset")
EXPOSURE_PARAMS = ("min_exposures", "max_exposures")  # taken once exposure counts have landed
CELLS_PARAMS = ("ckpt_min", "ckpt_max", "chunk_min", "chunk_max")


class BadParameter(ValueError):
    """A query parameter the server refuses; the message is one line naming it."""


def check_names(params: QueryParams, allowed: Iterable[str]) -> None:
    """Refuse unknown and repeated parameters (a typo would otherwise be silently ignored)."""
    allowed = tuple(allowed)
    for name in params.keys():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no parameters"
            raise BadParameter(f"unknown parameter {_shown(name)} (this page takes: {takes})")
        if len(params.getlist(name)) > 1:
            raise BadParameter(f"parameter {_shown(name)} given more than once")


def integer(params: QueryParams, name: str, low: int, high: int) -> int | None:
    """An integer in [low, high], or None when absent or empty."""
    text = params.get(name, "").strip()
    if not text:
        return None
    if not _INTEGER.match(text):
        raise BadParameter(f"{name}: expected an integer, got {_shown(text)}")
    value = int(text)
    if not low <= value <= high:
        raise BadParameter(f"{name}: {value} is outside [{low}, {high}]")
    return value


def choice(params: QueryParams, name: str, options: Iterable[str], default: str) -> str:
    options = tuple(options)
    value = params.get(name, "") or default
    if value not in options:
        raise BadParameter(f"{name}: {_shown(value)} is not one of {', '.join(options)}")
    return value


def metric(params: QueryParams, available: list[str], default: str) -> str:
    return choice(params, "metric", available, default)


def id_range(params: QueryParams, name: str) -> tuple[int, int] | None:
    """`<name>_min` .. `<name>_max` as an inclusive range; None when neither is given."""
    low = integer(params, f"{name}_min", 0, MAX_ID)
    high = integer(params, f"{name}_max", 0, MAX_ID)
    if low is None and high is None:
        return None
    low, high = low or 0, MAX_ID if high is None else high
    if low > high:
        raise BadParameter(f"{name}_min {low} is greater than {name}_max {high}")
    return low, high


def sequence_query(params: QueryParams, has_exposures: bool) -> SequenceQuery:
    """The cell page's filters, order and page, as `SequenceQuery`."""
    allowed = [name for name in CELL_PAGE_PARAMS if has_exposures or name not in EXPOSURE_PARAMS]
    check_names(params, allowed)
    source = params.get("source") or None
    if source is not None and (len(source) > MAX_SOURCE_CHARS or not source.isprintable()):
        raise BadParameter(f"source: expected a data source name, got {_shown(source)}")
    full_match = {"any": None, "yes": True, "no": False}[choice(params, "full_match", ("any", "yes", "no"), "any")]
    sorts = SEQUENCE_SORTS + (EXPOSURE_SORTS if has_exposures else ())
    sort = choice(params, "sort", sorts, "memorized")
    # Most memorized, highest and longest first by default; row and source read naturally ascending.
    natural = "asc" if sort in ("row", "source", "nll") else "desc"
    return SequenceQuery(
        source=source,
        full_match=full_match,
        min_prefix=integer(params, "min_prefix", 0, 1_000_000),
        min_exposures=integer(params, "min_exposures", 0, 10**15) if has_exposures else None,
        max_exposures=integer(params, "max_exposures", 0, 10**15) if has_exposures else None,
        sort=sort,
        descending=choice(params, "order", ("asc", "desc"), natural) == "desc",
        limit=integer(params, "limit", 1, MAX_PAGE) or 50,
        offset=integer(params, "offset", 0, MAX_ID) or 0,
    )


def _shown(text: str) -> str:
    """A refused value, quoted and cut short, so that the one-line message stays one short line."""
    return repr(text[:40] + ("..." if len(text) > 40 else ""))
