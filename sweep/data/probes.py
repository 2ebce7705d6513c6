"""Probe sets: the rows of one data chunk we score, sampled exactly like the reference tool, without ever
keeping the chunk on disk.

The reference tool loads a whole chunk (about 20.8 GB of JSON lines, 1,706,976 rows) through ``datasets`` and
takes ``shuffle(seed=42).select(range(1000))``, which picks rows
``numpy.random.default_rng(42).permutation(n_rows)[:1000]`` in that order. We pick the same rows and keep their
row numbers, in two passes over the file that never hold more than a few MB:

1. one streaming pass records where every line starts (the *line index*) and the sha256 of the bytes, which is
   the chunk's content identity (checked against the Hub's LFS sha256 when there is one);
2. the permutation picks the rows; only the chosen lines are read back (local: seek + read; Hub: HTTP range
   requests, neighbouring rows coalesced) and parsed with ``json.loads``.

Cost for an Amber chunk: pass 1 streams 20.8 GB once (network- or disk-bound; nothing is written); pass 2
reads the 1000 chosen lines (~12 MB). The line index is cached as row lengths (``ProbeCache``: about 2-3 MB
compressed per chunk, so ~1 GB for all 360), keyed by the content sha256: another seed or sample count later
costs only pass 2. Probe sets are cached too, keyed by (sha256, seed, n, k, l): a chunk file that changes gets
a new key, so a stale probe set is never reused, and a chunk added to the dataset later invalidates nothing.

Two line formats are understood, detected from the first line:

- raw AmberDatasets rows ``{"token_ids": [>= k+l ints], "source": str}``: the first k+l ids are kept;
- the reference tool's cached samples ``{"source": str, "prompt": [k ints], "continuation": [l ints]}``.

A probe set is a Polars DataFrame with, in sample order: ``chunk`` Int32, ``row`` Int64 (0-based line number
in the file), ``source`` String, ``tokens`` List(UInt32) (the first k+l ids: prompt, then true continuation).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sweep.landed.atomic_write import write_atomic
from sweep.errors import MemsweepError
from sweep.landed.schema import probe_frame
from sweep.data.byte_ranges import HubFile, LocalFile, RangesIgnoredError, read_ranges_streaming
from sweep.data.sources import ChunkFile

logger = logging.getLogger(__name__)

# Bumped whenever the probe-set layout changes, so old cache files are never reused.
PROBE_SET_FORMAT_VERSION = 2
_NEWLINE = ord("\n")
_INT32_MAX = 2**31 - 1
_GZIP_MAGIC = b"\x1f\x8b"


class ProbeSetError(MemsweepError):
    """A chunk file that cannot give a probe set. The message is one line: ``file:line: why``."""


@dataclass(frozen=True)
class LineIndex:
    """Where each line of a JSON-lines file lies.

    Line ``i`` (0-based) is ``bytes[starts[i] : starts[i + 1] - 1]`` (the ``- 1`` drops its newline; a last
    line without one is handled by ``starts[-1] = file size + 1``).
    """

    starts: np.ndarray  # int64[n_rows + 1], byte offsets
    seconds: float = 0.0  # time the scan took

    @property
    def n_rows(self) -> int:
        return len(self.starts) - 1

    def line_bounds(self, row: int) -> tuple[int, int]:
        """(byte offset, byte length) of line ``row`` without its newline."""
        start = int(self.starts[row])
        return start, int(self.starts[row + 1]) - 1 - start

    def lengths(self) -> np.ndarray:
        """Line lengths including the newline, uint32[n_rows]: what the cache stores."""
        return np.diff(self.starts).astype(np.uint32)

    @classmethod
    def from_lengths(cls, lengths: np.ndarray) -> "LineIndex":
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        return cls(starts)


@dataclass(frozen=True)
class ScannedChunk:
    index: LineIndex
    sha256: str
    size: int


def scan_lines(blocks: Iterable[bytes], label: str) -> ScannedChunk:
    """One pass over a file's bytes (an iterable of blocks): line index, sha256 and size. Parses nothing.

    Trailing empty lines are dropped; an empty line anywhere else is an error, since it would shift every
    later row number away from the reference tool's. A gzip-compressed file is refused by name.
    Memory: 8 bytes per line plus one block.
    """
    began = time.perf_counter()
    digest = hashlib.sha256()
    newline_offsets: list[np.ndarray] = []
    size = 0
    for block in blocks:
        if not block:
            continue
        if size == 0 and bytes(block[:2]) == _GZIP_MAGIC:
            raise ProbeSetError(f"{label}: file is gzip-compressed; decompress it (JSON lines are expected)")
        digest.update(block)
        array = np.frombuffer(block, dtype=np.uint8)
        newline_offsets.append(np.flatnonzero(array == _NEWLINE) + size)
        size += len(block)
    if size == 0:
        raise ProbeSetError(f"{label}: file is empty")
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
        raise ProbeSetError(f"{label}: file is empty (only blank lines)")
    blank = np.flatnonzero(lengths[:n_rows] == 0)
    if len(blank):
        raise ProbeSetError(f"{label}:{blank[0] + 1}: empty line (would shift every later row number)")
    index = LineIndex(starts=starts[: n_rows + 1].copy(), seconds=time.perf_counter() - began)
    return ScannedChunk(index, digest.hexdigest(), size)


# ---- reading chunk files: local or Hub (sweep/data/byte_ranges.py) ------------------------------------------


class LocalChunkReader(LocalFile):
    def __init__(self, path: Path):
        super().__init__(path)
        if not self.path.is_file():
            raise ProbeSetError(f"{self.path}: chunk file not found")


class HubChunkReader(HubFile):
    """A chunk file in a Hub dataset repository at a pinned commit: streamed once, then read by ranges."""

    def __init__(self, chunk_file: ChunkFile):
        super().__init__(chunk_file.repo, chunk_file.commit, chunk_file.file, chunk_file.size, label=chunk_file.label)
        self.chunk_file = chunk_file


def open_chunk(chunk_file: ChunkFile):
    """A reader for `chunk_file` (LocalChunkReader or HubChunkReader)."""
    if chunk_file.kind == "local":
        return LocalChunkReader(Path(chunk_file.path))
    return HubChunkReader(chunk_file)


# ---- parsing the chosen rows ----------------------------------------------------------------------------


def _fail(label: str, row: int, why: str) -> ProbeSetError:
    return ProbeSetError(f"{label}:{row + 1}: {why}")


def parse_line(label: str, row: int, line: bytes) -> dict:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise _fail(label, row, f"malformed JSON ({reason})") from None
    if not isinstance(record, dict):
        raise _fail(label, row, f"expected a JSON object, got {type(record).__name__}")
    return record


def detect_format(label: str, row: int, record: dict) -> str:
    if "token_ids" in record:
        return "raw"
    if "prompt" in record or "continuation" in record:
        return "cached"
    raise _fail(label, row, f"unknown row format: keys {sorted(record)}; expected 'token_ids' and 'source' "
                "(raw chunk) or 'prompt', 'continuation' and 'source' (cached sample)")


def token_list(label: str, row: int, record: dict, key: str) -> list:
    if key not in record:
        raise _fail(label, row, f"missing key {key!r} (keys: {sorted(record)})")
    ids = record[key]
    if not isinstance(ids, list):
        raise _fail(label, row, f"{key!r} must be a list of token ids, got {type(ids).__name__}")
    return ids


def check_ids(label: str, row: int, ids: list, vocab_size: int | None) -> None:
    upper = _INT32_MAX if vocab_size is None else vocab_size - 1
    for position, token in enumerate(ids):
        # bool is a subclass of int, and 3.0 is a float: both are not token ids.
        if type(token) is not int:
            raise _fail(label, row, f"token {position} is {token!r} ({type(token).__name__}), not an integer")
        if token < 0 or token > upper:
            bound = f"vocab_size {vocab_size}" if vocab_size is not None else "Int32"
            raise _fail(label, row, f"token {position} = {token} is outside [0, {upper}] ({bound})")


def _row_tokens(label: str, row: int, record: dict, row_format: str, prompt_len: int, continuation_len: int,
                vocab_size: int | None) -> tuple[list[int], str]:
    """(first k+l token ids, source) of one parsed row, validated."""
    if row_format == "raw":
        ids = token_list(label, row, record, "token_ids")
        if len(ids) < prompt_len + continuation_len:
            raise _fail(label, row, f"row has {len(ids)} token ids, fewer than k+l = "
                        f"{prompt_len}+{continuation_len} = {prompt_len + continuation_len}")
        ids = ids[: prompt_len + continuation_len]
    else:
        prompt = token_list(label, row, record, "prompt")
        continuation = token_list(label, row, record, "continuation")
        if len(prompt) != prompt_len or len(continuation) != continuation_len:
            raise _fail(label, row, f"cached row has prompt {len(prompt)} / continuation "
                        f"{len(continuation)} ids, expected k = {prompt_len} / l = {continuation_len}")
        ids = prompt + continuation
    check_ids(label, row, ids, vocab_size)
    if "source" not in record:
        raise _fail(label, row, f"missing key 'source' (keys: {sorted(record)})")
    source = record["source"]
    if not isinstance(source, str):
        raise _fail(label, row, f"'source' must be a string, got {type(source).__name__}")
    return ids, source


def check_streamed(chunk_file: ChunkFile, sha256: str, size: int, label: str) -> None:
    """Raise (one line) if the bytes streamed from `chunk_file` are not what it was described as: another sha256
    than the Hub's LFS one (or the one remembered for a local file), or another size."""
    if chunk_file.sha256 and sha256 != chunk_file.sha256:
        raise ProbeSetError(f"{label}: content sha256 {sha256} does not match the expected "
                            f"{chunk_file.sha256} (corrupted transfer, or the file changed while it was read)")
    if chunk_file.size is not None and size != chunk_file.size:
        raise ProbeSetError(f"{label}: read {size} bytes, expected {chunk_file.size} (the file changed "
                            "while it was read?)")


def sample_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """Rows ``datasets.Dataset.shuffle(seed).select(range(n))`` picks: int64[min(n, n_rows)]."""
    return np.random.default_rng(seed).permutation(n_rows)[:n].astype(np.int64)


@dataclass(frozen=True)
class ProbeBuild:
    """What building one probe set gives: the frame, the chunk file with its sha256, and the line index
    (as lengths) when this build computed it (None when it was handed one)."""

    frame: pl.DataFrame
    chunk_file: ChunkFile
    line_lengths: np.ndarray | None
    scan_seconds: float
    read_seconds: float


def build_probe_set_from(chunk_file: ChunkFile, chunk: int, n: int, seed: int, prompt_len: int,
                         continuation_len: int, vocab_size: int | None = None,
                         line_lengths: np.ndarray | None = None) -> ProbeBuild:
    """Sample ``n`` rows of one chunk file (local or Hub) as the reference tool does; see the module doc.

    With ``line_lengths`` (a cached line index of this very content) the streaming pass is skipped.
    Raises ProbeSetError (one line, ``file:line: why``) for a file that cannot give a probe set, and when the
    streamed bytes do not match the Hub's LFS sha256.
    """
    if n < 1 or prompt_len < 1 or continuation_len < 1:
        raise ValueError(f"n, prompt_len and continuation_len must be >= 1, got {n}, {prompt_len}, {continuation_len}")
    reader = open_chunk(chunk_file)
    label = reader.label
    began = time.perf_counter()
    if line_lengths is None:
        scanned = scan_lines(reader.blocks(), label)
        check_streamed(chunk_file, scanned.sha256, scanned.size, label)
        index, chunk_file = scanned.index, chunk_file.with_sha256(scanned.sha256)
    else:
        index = LineIndex.from_lengths(line_lengths)
    scan_seconds = time.perf_counter() - began

    chosen = sample_rows(index.n_rows, n, seed)
    if index.n_rows < n:
        logger.warning("%s has only %d rows, fewer than the %d asked for: taking all of them, in permutation "
                       "order", label, index.n_rows, n)
    began = time.perf_counter()
    ranges = [index.line_bounds(0)] + [index.line_bounds(int(row)) for row in chosen]
    try:
        first_line, *lines = reader.read_ranges(ranges)
    except RangesIgnoredError as ignored:
        logger.warning("%s; picking the %d sampled rows in a second streaming pass", ignored, len(chosen))
        (first_line, *lines), sha256, size = read_ranges_streaming(reader.blocks(), ranges)
        check_streamed(chunk_file, sha256, size, label)
    row_format = detect_format(label, 0, parse_line(label, 0, first_line))
    tokens = np.empty((len(chosen), prompt_len + continuation_len), dtype=np.int64)
    sources: list[str] = [""] * len(chosen)
    for slot, (row, line) in enumerate(zip(chosen, lines)):
        record = parse_line(label, int(row), line)
        ids, sources[slot] = _row_tokens(label, int(row), record, row_format, prompt_len, continuation_len, vocab_size)
        tokens[slot] = ids
    read_seconds = time.perf_counter() - began
    logger.info("%s: %d rows, %.1f MB scanned in %.2f s; %d chosen %s rows read in %.2f s", label, index.n_rows,
                index.starts[-1] / 1e6, scan_seconds, len(chosen), row_format, read_seconds)
    return ProbeBuild(probe_frame(chunk, chosen, sources, tokens), chunk_file,
                      index.lengths() if line_lengths is None else None, scan_seconds, read_seconds)


def build_probe_set(path: str | os.PathLike, chunk: int, n: int, seed: int, prompt_len: int,
                    continuation_len: int, vocab_size: int | None = None) -> pl.DataFrame:
    """Sample ``n`` rows of a local chunk file (see build_probe_set_from); returns the frame."""
    path = Path(path)
    if not path.is_file():
        raise ProbeSetError(f"{path}: chunk file not found")
    stat = path.stat()
    chunk_file = ChunkFile("local", str(path.parent), path.name, size=stat.st_size, path=str(path),
                           mtime_ns=stat.st_mtime_ns)
    return build_probe_set_from(chunk_file, chunk, n, seed, prompt_len, continuation_len, vocab_size).frame


def check_vocab(frame: pl.DataFrame, vocab_size: int | None, label: str) -> None:
    """Raise naming the chunk, row and id if a probe set holds an id outside [0, vocab_size)."""
    if vocab_size is None or frame.height == 0:
        return
    exploded = frame.select("row", pl.col("tokens")).explode("tokens")
    bad = exploded.filter(pl.col("tokens") >= vocab_size).head(1)
    if bad.height:
        row, token = bad.row(0)
        raise ProbeSetError(f"{label}:{row + 1}: token {token} is outside [0, {vocab_size - 1}] (data.vocab_size)")


# ---- the cache --------------------------------------------------------------------------------------------


class ProbeCache:
    """Line indexes and probe sets on the driver's disk, keyed by the chunk's content sha256.

    ``<cache_dir>/lines/<sha256>.npz``: row lengths (uint32, compressed; ~2-3 MB per Amber chunk);
    ``<cache_dir>/probes/<sha256[:16]>-<seed>-<n>-<k>-<l>-v2.parquet``: a probe set. A damaged entry is
    reported by name and ignored (rebuilt), never trusted.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.root = Path(cache_dir).expanduser()

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise MemsweepError(f"data.cache_dir {self.root}: not writable ({error.strerror})") from None

    def _lines_path(self, sha256: str) -> Path:
        return self.root / "lines" / f"{sha256}.npz"

    def _probe_path(self, sha256: str, seed: int, n: int, k: int, l: int) -> Path:
        return self.root / "probes" / f"{sha256[:16]}-{seed}-{n}-{k}-{l}-v{PROBE_SET_FORMAT_VERSION}.parquet"

    def line_lengths(self, sha256: str | None) -> np.ndarray | None:
        if not sha256 or not self._lines_path(sha256).exists():
            return None
        try:
            with np.load(self._lines_path(sha256)) as stored:
                return stored["lengths"]
        except (OSError, ValueError, KeyError) as error:
            logger.warning("%s: unreadable cached line index (%s); rebuilding", self._lines_path(sha256), error)
            return None

    def put_line_lengths(self, sha256: str, lengths: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, lengths=lengths.astype(np.uint32))
        write_atomic(buffer.getvalue(), self._lines_path(sha256))

    def probe_set(self, sha256: str | None, seed: int, n: int, k: int, l: int) -> pl.DataFrame | None:
        if not sha256:
            return None
        path = self._probe_path(sha256, seed, n, k, l)
        if not path.exists():
            return None
        try:
            return pl.read_parquet(path)
        except Exception as error:  # noqa: BLE001 - a foreign or damaged file: say which, rebuild
            logger.warning("%s: unreadable cached probe set (%s); rebuilding", path, type(error).__name__)
            return None

    def put_probe_set(self, sha256: str, seed: int, n: int, k: int, l: int, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd")
        write_atomic(buffer.getvalue(), self._probe_path(sha256, seed, n, k, l))


def write_raw_chunk(path: str | os.PathLike, rows: Iterable[tuple[list[int], str]]) -> None:
    """Write ``rows`` of ``(token_ids, source)`` as a raw AmberDatasets chunk: one compact JSON object a line."""
    with open(path, "w", encoding="utf-8") as handle:
        for token_ids, source in rows:
            handle.write(json.dumps({"token_ids": list(token_ids), "source": source}, separators=(",", ":")))
            handle.write("\n")
