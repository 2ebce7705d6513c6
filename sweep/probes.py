"""Probe sets: the rows of one data chunk we score, sampled exactly like the reference tool.

The reference tool loads a whole chunk (about 20.8 GB of JSON lines, 1,706,976 rows) through
``datasets`` and takes ``shuffle(seed=42).select(range(1000))``, which picks rows
``numpy.random.default_rng(42).permutation(n_rows)[:1000]`` in that order. We pick the same
rows with memory flat in the chunk size, and keep their row numbers:

1. one binary pass records where every line starts (``int64[n_rows + 1]``, 14 MB for Amber);
2. the permutation picks the rows;
3. only the chosen lines are read (by seeking) and parsed with ``json.loads``.

Two line formats are understood, detected per file from its first line:

- raw AmberDatasets rows ``{"token_ids": [>= k+l ints], "source": str}``: the first k+l ids
  are kept;
- the reference tool's cached samples ``{"source": str, "prompt": [k ints],
  "continuation": [l ints]}``: exactly k and l ids.

A probe set is a Polars DataFrame (cached as Parquet) with, in sample order:
``chunk`` Int32, ``row`` Int64 (0-based line number in the file), ``source`` String,
``tokens`` List(UInt16) if every id < 65536 else List(Int32) (the first k+l ids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

# Bumped whenever the probe-set layout changes, so old cache files are never reused.
PROBE_SET_FORMAT_VERSION = 1
# Scan buffer: big enough that numpy's per-call overhead vanishes, small enough that the
# scan's memory stays a few tens of MB whatever the chunk size.
SCAN_BLOCK_BYTES = 4 * 1024 * 1024
_NEWLINE = ord("\n")
_INT32_MAX = 2**31 - 1


class ProbeSetError(ValueError):
    """A chunk file that cannot give a probe set. The message is one line: ``path:line: why``."""


@dataclass(frozen=True)
class LineIndex:
    """Where each line of a JSON-lines file lies.

    Line ``i`` (0-based) is ``bytes[starts[i] : starts[i + 1] - 1]`` (the ``- 1`` drops its
    newline; a last line without one is handled by ``starts[-1] = file size + 1``).
    """

    path: Path
    starts: np.ndarray  # int64[n_rows + 1], byte offsets
    seconds: float  # time the scan took

    @property
    def n_rows(self) -> int:
        return len(self.starts) - 1

    def line_bounds(self, row: int) -> tuple[int, int]:
        """(byte offset, byte length) of line ``row`` without its newline."""
        start = int(self.starts[row])
        return start, int(self.starts[row + 1]) - 1 - start


def index_lines(path: str | os.PathLike) -> LineIndex:
    """Scan ``path`` once, in binary, and record where every line starts. Parses nothing.

    Trailing empty lines at the end of the file are dropped; an empty line anywhere else is
    an error, since it would shift every later row number away from the reference tool's.
    Memory: one ``SCAN_BLOCK_BYTES`` buffer plus 8 bytes per line.
    """
    path = Path(path)
    if not path.is_file():
        raise ProbeSetError(f"{path}: chunk file not found")
    began = time.perf_counter()
    newline_offsets: list[np.ndarray] = []
    # Both buffers are reused for every block, so the scan allocates nothing per block but
    # the (small) array of that block's newline positions.
    buffer = bytearray(SCAN_BLOCK_BYTES)
    view = memoryview(buffer)
    is_newline = np.empty(SCAN_BLOCK_BYTES, dtype=bool)
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            n_read = handle.readinto(view)
            if not n_read:
                break
            block = np.frombuffer(buffer, dtype=np.uint8, count=n_read)
            np.equal(block, _NEWLINE, out=is_newline[:n_read])
            newline_offsets.append(np.flatnonzero(is_newline[:n_read]) + size)
            size += n_read
    if size == 0:
        raise ProbeSetError(f"{path}: file is empty")
    newlines = np.concatenate(newline_offsets).astype(np.int64, copy=False)
    ends_with_newline = len(newlines) > 0 and newlines[-1] == size - 1
    # starts[i + 1] = one past line i's newline (a virtual newline after an unterminated last line).
    starts = np.empty(len(newlines) + (1 if ends_with_newline else 2), dtype=np.int64)
    starts[0] = 0
    starts[1 : len(newlines) + 1] = newlines + 1
    if not ends_with_newline:
        starts[-1] = size + 1
    lengths = np.diff(starts) - 1
    n_rows = len(lengths)
    while n_rows > 0 and lengths[n_rows - 1] == 0:  # trailing blank lines are harmless
        n_rows -= 1
    if n_rows == 0:
        raise ProbeSetError(f"{path}: file is empty (only blank lines)")
    blank = np.flatnonzero(lengths[:n_rows] == 0)
    if len(blank):
        raise ProbeSetError(f"{path}:{blank[0] + 1}: empty line (would shift every later row number)")
    return LineIndex(path=path, starts=starts[: n_rows + 1].copy(), seconds=time.perf_counter() - began)


def _fail(path: Path, row: int, why: str) -> ProbeSetError:
    return ProbeSetError(f"{path}:{row + 1}: {why}")


def _parse_line(path: Path, row: int, line: bytes) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise _fail(path, row, f"malformed JSON ({reason})") from None
    if not isinstance(record, dict):
        raise _fail(path, row, f"expected a JSON object, got {type(record).__name__}")
    return record


def _detect_format(path: Path, first: dict) -> str:
    if "token_ids" in first:
        return "raw"
    if "prompt" in first or "continuation" in first:
        return "cached"
    raise _fail(
        path, 0, f"unknown row format: keys {sorted(first)}; expected 'token_ids' and 'source' "
        "(raw chunk) or 'prompt', 'continuation' and 'source' (cached sample)"
    )


def _token_list(path: Path, row: int, record: dict, key: str) -> list:
    if key not in record:
        raise _fail(path, row, f"missing key {key!r} (keys: {sorted(record)})")
    ids = record[key]
    if not isinstance(ids, list):
        raise _fail(path, row, f"{key!r} must be a list of token ids, got {type(ids).__name__}")
    return ids


def _check_ids(path: Path, row: int, ids: list, vocab_size: int | None) -> None:
    upper = _INT32_MAX if vocab_size is None else vocab_size - 1
    for position, token in enumerate(ids):
        # bool is a subclass of int, and 3.0 is a float: both are not token ids.
        if type(token) is not int:
            raise _fail(path, row, f"token {position} is {token!r} ({type(token).__name__}), not an integer")
        if token < 0 or token > upper:
            bound = f"vocab_size {vocab_size}" if vocab_size is not None else "Int32"
            raise _fail(path, row, f"token {position} = {token} is outside [0, {upper}] ({bound})")


def _row_tokens(path: Path, row: int, record: dict, row_format: str, prompt_len: int,
                continuation_len: int, vocab_size: int | None) -> tuple[list[int], str]:
    """(first k+l token ids, source) of one parsed row, validated."""
    if row_format == "raw":
        ids = _token_list(path, row, record, "token_ids")
        if len(ids) < prompt_len + continuation_len:
            raise _fail(path, row, f"row has {len(ids)} token ids, fewer than k+l = "
                        f"{prompt_len}+{continuation_len} = {prompt_len + continuation_len}")
        ids = ids[: prompt_len + continuation_len]
    else:
        prompt = _token_list(path, row, record, "prompt")
        continuation = _token_list(path, row, record, "continuation")
        if len(prompt) != prompt_len or len(continuation) != continuation_len:
            raise _fail(path, row, f"cached row has prompt {len(prompt)} / continuation "
                        f"{len(continuation)} ids, expected k = {prompt_len} / l = {continuation_len}")
        ids = prompt + continuation
    _check_ids(path, row, ids, vocab_size)
    if "source" not in record:
        raise _fail(path, row, f"missing key 'source' (keys: {sorted(record)})")
    source = record["source"]
    if not isinstance(source, str):
        raise _fail(path, row, f"'source' must be a string, got {type(source).__name__}")
    return ids, source


def sample_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Rows ``datasets.Dataset.shuffle(seed).select(range(n))`` picks: int64[min(n, n_rows)]."""
    return np.random.default_rng(seed).permutation(n_rows)[:n].astype(np.int64)


def build_probe_set(path: str | os.PathLike, chunk: int, n: int, seed: int, prompt_len: int,
                    continuation_len: int, vocab_size: int | None = None) -> pl.DataFrame:
    """Sample ``n`` rows of chunk file ``path`` as the reference tool does; see the module doc.

    Returns one row per sampled line, in sample order (columns ``chunk``, ``row``, ``source``,
    ``tokens``: ``tokens`` holds the first ``prompt_len + continuation_len`` ids). If the file
    has fewer than ``n`` rows, all of them are returned, in permutation order, with a warning.

    Validation covers the line structure of the whole file (no empty lines) but the content
    of the chosen rows only: unchosen rows are never parsed, which is what keeps a 20 GB
    chunk cheap. Of a chosen row, the kept ids are checked (integers, in ``[0, vocab_size)``
    when given). Errors are ``ProbeSetError("path:line: why")`` with 1-based line numbers.
    """
    path = Path(path)
    if n < 1 or prompt_len < 1 or continuation_len < 1:
        raise ValueError(f"n, prompt_len and continuation_len must be >= 1, got {n}, {prompt_len}, {continuation_len}")
    index = index_lines(path)
    chosen = sample_rows(index.n_rows, n, seed)
    if index.n_rows < n:
        logger.warning("%s has only %d rows, fewer than the %d asked for: taking all of them, "
                       "in permutation order", path, index.n_rows, n)

    began = time.perf_counter()
    tokens = np.empty((len(chosen), prompt_len + continuation_len), dtype=np.int64)
    sources: list[str] = [""] * len(chosen)
    with open(path, "rb") as handle:
        first_start, first_length = index.line_bounds(0)
        handle.seek(first_start)
        row_format = _detect_format(path, _parse_line(path, 0, handle.read(first_length)))
        # Read in file order (forward seeks only), place results in sample order.
        for slot in np.argsort(chosen, kind="stable"):
            row = int(chosen[slot])
            start, length = index.line_bounds(row)
            handle.seek(start)
            record = _parse_line(path, row, handle.read(length))
            ids, sources[slot] = _row_tokens(path, row, record, row_format, prompt_len,
                                             continuation_len, vocab_size)
            tokens[slot] = ids
    parse_seconds = time.perf_counter() - began
    logger.info("%s: scanned %d rows (%.1f MB) in %.2f s (%.0f rows/s, %.0f MB/s); parsed %d "
                "chosen %s rows in %.2f s", path, index.n_rows, index.starts[-1] / 1e6,
                index.seconds, index.n_rows / max(index.seconds, 1e-9),
                index.starts[-1] / 1e6 / max(index.seconds, 1e-9), len(chosen), row_format, parse_seconds)

    token_dtype = pl.UInt16 if tokens.size == 0 or tokens.max() < 65536 else pl.Int32
    token_array = tokens.astype(np.uint16 if token_dtype == pl.UInt16 else np.int32)
    token_series = (pl.Series("tokens", token_array.reshape(-1))
                    .reshape((len(chosen), prompt_len + continuation_len))
                    .cast(pl.List(token_dtype)))
    return pl.DataFrame({
        "chunk": pl.Series("chunk", [chunk] * len(chosen), dtype=pl.Int32),
        "row": pl.Series("row", chosen, dtype=pl.Int64),
        "source": pl.Series("source", sources, dtype=pl.String),
        "tokens": token_series,
    })


def probe_set_path(cache_dir: str | os.PathLike, data_source: str, file: str, chunk: int,
                   seed: int, n: int, prompt_len: int, continuation_len: int) -> Path:
    """Cache file of one probe set: ``<cache_dir>/chunk<chunk>-<hash>.parquet``.

    The hash covers everything that decides the content: data source, file name within it
    (not the local path it resolved to, so the key is the same on every machine), chunk,
    seed, n, k, l, and the probe-set format version.
    """
    identity = json.dumps({
        "format": PROBE_SET_FORMAT_VERSION, "data_source": data_source, "file": file,
        "chunk": chunk, "seed": seed, "n": n, "k": prompt_len, "l": continuation_len,
    }, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"chunk{chunk:03d}-{digest}.parquet"


def write_probe_set(frame: pl.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` to ``path`` atomically: a temp file in the same folder, then os.replace.

    A crash leaves either no file or the whole file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            frame.write_parquet(handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def load_or_build_probe_set(cache_dir: str | os.PathLike, data_source: str, file: str, chunk: int,
                            seed: int, n: int, prompt_len: int, continuation_len: int,
                            vocab_size: int | None = None) -> pl.DataFrame:
    """The probe set of ``file`` in ``data_source``, from the cache if there, else built and cached.

    On a cache hit the data file is not even resolved, so a Hub chunk is never downloaded
    again once its probe set exists.
    """
    from sweep.sources import resolve_data_file  # only needed on a cache miss

    path = probe_set_path(cache_dir, data_source, file, chunk, seed, n, prompt_len, continuation_len)
    if path.exists():
        try:
            return pl.read_parquet(path)
        except Exception as error:  # a foreign or damaged file: say which, don't guess
            raise ProbeSetError(f"{path}: unreadable cached probe set ({type(error).__name__}); "
                                "delete it to rebuild") from None
    frame = build_probe_set(resolve_data_file(data_source, file), chunk, n, seed, prompt_len,
                            continuation_len, vocab_size)
    write_probe_set(frame, path)
    return frame


def write_raw_chunk(path: str | os.PathLike, rows: Iterable[tuple[list[int], str]]) -> None:
    """Write ``rows`` of ``(token_ids, source)`` as a raw AmberDatasets chunk (JSON lines)."""
    with open(path, "w", encoding="utf-8") as handle:
        for token_ids, source in rows:
            handle.write(json.dumps({"token_ids": list(token_ids), "source": source}))
            handle.write("\n")
