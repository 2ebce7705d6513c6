"""Exposure counts: how often each probe sequence, and its prompt, occurs in one chunk of training data. Exact.

For every probe (a row's first k + l token ids) and one chunk, ``scan_chunk`` (a JSONL chunk file) and
``count_items`` (the items of a binary stream chunk: Megatron, numpy token files) count over all rows:

- ``window_count``: the (row, offset) positions where the probe's k + l ids occur;
- ``prompt_count``: the same for its first k ids.

Occurrences may overlap; none crosses from one row into the next (rows are separate training sequences).
A probe's own row counts at offset 0 when its own chunk is scanned.

How (one pass over the data, in compiled code, no per-token Python; binary items skip step 1, having no text):

1. each line is parsed into a scratch buffer of ids by a strict JSON reader for the two row formats
   (``{"token_ids": [...], ...}`` and ``{"prompt": [...], "continuation": [...], ...}``). A line it does
   not fully understand (escapes, other keys, floats, a key order it does not handle, ...) is handed to
   ``json.loads`` and validated as the probe sampler does (``sweep/data/probes.py``): the slow path decides,
   so the fast path never guesses;
2. a polynomial rolling hash of every k-id window of the row (mod 2^64) is tested against a bitmap of the
   distinct prompts' hashes; a set bit leads to a binary search of the sorted prompt hashes and a token
   by token comparison, and a verified prompt to its distinct continuations (sorted by their own hash
   within the prompt's group), again verified token by token. A hash only ever selects candidates.

Probes are deduplicated in the index (distinct prompts, distinct windows); counts are kept per distinct
prompt and window and handed back per probe, so identical probes, and probes sharing a prompt, each get
their own correct counts.

Memory: the index, one block, the carried-over partial line, and a scratch row; never the file.

The compiled functions are cached on disk by numba (``cache=True``: the first call in a fresh checkout
compiles for a few seconds, later processes load it). They stay in this one file on purpose: numba keys
a cached function to its own file's timestamp, so one calling a compiled function of another file could
be reused stale after that other file changed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numba import njit

from sweep.errors import MemsweepError
from sweep.data.probes import ProbeSetError, check_ids, detect_format, parse_line, token_list

_GZIP_MAGIC = b"\x1f\x8b"
_NEWLINE = 10
_INT32_MAX = 2**31 - 1
# Odd, so that multiplication by it is a bijection mod 2^64; its bits look random, so the top bits of a
# window's hash depend on every id of it.
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)
# Bitmap bits per distinct prompt: about 1 in _FILTER_BITS_PER_PROMPT windows that are no prompt pass the
# bitmap and cost a binary search. 64 was fastest (BENCHMARKS.md); capped so the bitmap stays in cache.
_FILTER_BITS_PER_PROMPT = 64
_FILTER_MAX_LOG2 = 28
_FILTER_MIN_LOG2 = 12
# Scratch row: Amber rows hold 2049 ids; longer lines grow it.
_SCRATCH_IDS = 4096

# What the compiled line reader answers: _OK (all read), _FALLBACK (a line for json.loads), _GROW (a line
# longer than the scratch row), _BLANK (a line after an empty one).
_OK, _FALLBACK, _GROW, _BLANK = 0, 1, 2, 3
# Slots of the scan's state (int64[4]) that the compiled reader and Python share.
_ROWS, _TOKENS, _LINES, _FIRST_BLANK = 0, 1, 2, 3


class ExposureScanError(MemsweepError):
    """A chunk file that cannot be scanned. The message is one line: ``file:line: why``."""


# ---- the probe index ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeIndex:
    """What every scan of a chunk needs to know about the probes: plain numpy arrays, picklable.

    P distinct prompts, W distinct windows (prompt + continuation), n probes. Token arrays are uint16 when
    every id fits, else uint32. Prompts are ordered by hash; windows by (prompt, continuation hash), so the
    windows of prompt p are ``group_start[p]:group_start[p + 1]``.
    """

    prompt_len: int  # k
    continuation_len: int  # l
    filter_bits: np.ndarray  # uint64[2^b / 64]: bit (hash >> (64 - b)) set for every prompt's hash
    filter_shift: int  # 64 - b
    prompt_hash: np.ndarray  # uint64[P], ascending
    prompt_tokens: np.ndarray  # uint16|uint32[P, k]
    group_start: np.ndarray  # int64[P + 1]
    window_hash: np.ndarray  # uint64[W]: hash of the continuation (ascending within a group)
    continuation_tokens: np.ndarray  # uint16|uint32[W, l]
    probe_window: np.ndarray  # int32[n]: each probe's window

    @property
    def n_probes(self) -> int:
        return len(self.probe_window)

    def probe_prompt(self) -> np.ndarray:
        """int64[n]: each probe's prompt (the group its window lies in)."""
        return np.searchsorted(self.group_start, self.probe_window, side="right") - 1

    @property
    def nbytes(self) -> int:
        """Size of the arrays in bytes (what travels to every scan task)."""
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))

    def tables(self) -> tuple:
        """The arrays and constants the compiled scan reads, as one tuple (see _count_row)."""
        return (self.prompt_len, self.continuation_len, self.filter_bits, np.uint64(self.filter_shift),
                self.prompt_hash, self.prompt_tokens, self.group_start, self.window_hash,
                self.continuation_tokens)


@njit(cache=True, nogil=True)
def _hash_span(ids, start, length):
    """sum(ids[start + i] * B^(length - 1 - i)) mod 2^64: the window hash the rolling update keeps."""
    value = np.uint64(0)
    for i in range(start, start + length):
        value = value * _HASH_BASE + np.uint64(ids[i])
    return value


@njit(cache=True, nogil=True)
def _hash_rows(tokens):
    """uint64[n]: _hash_span of each row of int[n, w]."""
    out = np.empty(tokens.shape[0], dtype=np.uint64)
    for row in range(tokens.shape[0]):
        out[row] = _hash_span(tokens[row], 0, tokens.shape[1])
    return out


def _inverse(order: np.ndarray) -> np.ndarray:
    """rank[i] = position of i in ``order`` (a permutation)."""
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order), dtype=order.dtype)
    return rank


def build_probe_index(tokens: np.ndarray, prompt_len: int) -> ProbeIndex:
    """The index of ``tokens`` (int[n_probes, k + l], ids >= 0 and < 2^32) with k = ``prompt_len``."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"probe tokens must be a 2-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    k, width = int(prompt_len), tokens.shape[1]
    if not 1 <= k < width:
        raise ValueError(f"prompt_len {k} must be >= 1 and leave a continuation of >= 1 ids in {width}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**32):
        raise ValueError(f"probe token ids must lie in [0, 2^32), got [{tokens.min()}, {tokens.max()}]")
    dtype = np.uint16 if tokens.size == 0 or tokens.max() < 2**16 else np.uint32
    # Lexicographic order keeps the windows of one prompt adjacent.
    windows, probe_window = np.unique(tokens.astype(dtype), axis=0, return_inverse=True)
    probe_window = probe_window.reshape(-1)
    first_of_prompt = np.ones(len(windows), dtype=bool)
    first_of_prompt[1:] = np.any(windows[1:, :k] != windows[:-1, :k], axis=1)
    window_prompt = np.cumsum(first_of_prompt) - 1
    prompt_tokens = np.ascontiguousarray(windows[first_of_prompt, :k])
    continuation_tokens = np.ascontiguousarray(windows[:, k:])
    prompt_hash = _hash_rows(prompt_tokens)
    window_hash = _hash_rows(continuation_tokens)

    prompt_order = np.argsort(prompt_hash, kind="stable")
    prompt_rank = _inverse(prompt_order)
    window_order = np.lexsort((window_hash, prompt_rank[window_prompt]))
    window_rank = _inverse(window_order)
    group_start = np.zeros(len(prompt_order) + 1, dtype=np.int64)
    np.cumsum(np.bincount(prompt_rank[window_prompt], minlength=len(prompt_order)), out=group_start[1:])

    prompt_hash = prompt_hash[prompt_order]
    log2 = int(np.ceil(np.log2(max(1, len(prompt_hash)) * _FILTER_BITS_PER_PROMPT)))
    log2 = min(max(log2, _FILTER_MIN_LOG2), _FILTER_MAX_LOG2)
    shift = 64 - log2
    filter_bits = np.zeros(2**log2 // 64, dtype=np.uint64)
    bit = prompt_hash >> np.uint64(shift)
    np.bitwise_or.at(filter_bits, bit >> np.uint64(6), np.left_shift(np.uint64(1), bit & np.uint64(63)))
    return ProbeIndex(
        prompt_len=k,
        continuation_len=width - k,
        filter_bits=filter_bits,
        filter_shift=shift,
        prompt_hash=prompt_hash,
        prompt_tokens=prompt_tokens[prompt_order],
        group_start=group_start,
        window_hash=window_hash[window_order],
        continuation_tokens=continuation_tokens[window_order],
        probe_window=window_rank[probe_window].astype(np.int32),
    )


# ---- counting the windows of one row (compiled) -----------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _same(ids, start, reference, length):
    """ids[start : start + length] == reference[:length], id for id."""
    for i in range(length):
        if ids[start + i] != reference[i]:
            return False
    return True


@njit(cache=True, nogil=True)
def _count_at(ids, n, start, value, tables, prompt_counts, window_counts, log, item):
    """The window of k ids at ``start`` has hash ``value`` and passed the bitmap: verify and count it. A window
    occurrence is also logged as (window, item) in ``log`` (int64[1 + 2 cap]: log[0] entries used) unless ``log`` is
    the one-slot no-log array; the caller keeps room for a whole row (see _count_items)."""
    k, l, _, _, prompt_hash, prompt_tokens, group_start, window_hash, continuation_tokens = tables
    prompt = np.searchsorted(prompt_hash, value)
    while prompt < len(prompt_hash) and prompt_hash[prompt] == value:
        if _same(ids, start, prompt_tokens[prompt], k):
            prompt_counts[prompt] += 1
            if start + k + l <= n:
                continuation = _hash_span(ids, start + k, l)
                low, high = group_start[prompt], group_start[prompt + 1]
                window = low + np.searchsorted(window_hash[low:high], continuation)
                while window < high and window_hash[window] == continuation:
                    if _same(ids, start + k, continuation_tokens[window], l):
                        window_counts[window] += 1
                        if log.shape[0] > 1:
                            used = log[0]
                            log[1 + 2 * used] = window
                            log[2 + 2 * used] = item
                            log[0] = used + 1
                        break
                    window += 1
            return  # distinct prompts: no other one can match these ids
        prompt += 1


@njit(cache=True, nogil=True)
def _count_row(ids, n, tables, prompt_counts, window_counts, log, item):
    """Count every verified prompt and window occurrence in the row ids[:n] (any unsigned ids); window occurrences
    are logged as row ``item`` (see _count_at)."""
    k, _, filter_bits, shift = tables[0], tables[1], tables[2], tables[3]
    if n < k:
        return
    top = np.uint64(1)  # B^k mod 2^64: what the id leaving the window weighs
    for _ in range(k):
        top *= _HASH_BASE
    value = _hash_span(ids, 0, k)
    start = 0
    while True:
        bit = value >> shift
        if (filter_bits[bit >> np.uint64(6)] >> (bit & np.uint64(63))) & np.uint64(1):
            _count_at(ids, n, start, value, tables, prompt_counts, window_counts, log, item)
        if start + k >= n:
            return
        value = value * _HASH_BASE + np.uint64(ids[start + k]) - np.uint64(ids[start]) * top
        start += 1


@njit(cache=True, nogil=True)
def _count_items(tokens, offsets, first, tables, prompt_counts, window_counts, log):
    """Count every verified occurrence in each item tokens[offsets[i]:offsets[i + 1]] (any unsigned id type) from
    item ``first`` on, logging window occurrences as (window, i). Returns the item it stopped before: the end, or an
    item the log might not have room for (a row holds at most one window occurrence per position)."""
    room = (log.shape[0] - 1) // 2
    for i in range(first, len(offsets) - 1):
        start, stop = offsets[i], offsets[i + 1]
        if room - log[0] < stop - start:
            return i
        _count_row(tokens[start:stop], stop - start, tables, prompt_counts, window_counts, log, i)
    return len(offsets) - 1


# ---- reading lines (compiled fast path) -------------------------------------------------------------------

_KEY_TOKEN_IDS = tuple(b"token_ids")
_KEY_PROMPT = tuple(b"prompt")
_KEY_CONTINUATION = tuple(b"continuation")
_KEY_SOURCE = tuple(b"source")
_HAS_TOKEN_IDS, _HAS_PROMPT, _HAS_CONTINUATION, _HAS_SOURCE = 1, 2, 4, 8


@njit(cache=True, nogil=True, inline="always")
def _skip_space(buf, pos):
    """First position at or after ``pos`` that is no JSON whitespace. A newline ends a line: not skipped."""
    while buf[pos] == 32 or buf[pos] == 9 or buf[pos] == 13:
        pos += 1
    return pos


@njit(cache=True, nogil=True, inline="always")
def _is_key(buf, start, length, key):
    if length != len(key):
        return False
    for i in range(length):
        if buf[start + i] != key[i]:
            return False
    return True


@njit(cache=True, nogil=True)
def _plain_string_end(buf, pos):
    """Position after the string opening at ``pos``, or -1 when it holds anything but printable ASCII
    without escapes (the slow path reads those)."""
    pos += 1
    while True:
        c = buf[pos]
        if c == 34:  # closing quote
            return pos + 1
        if c < 32 or c >= 128 or c == 92:  # control (the newline included), non-ASCII, backslash
            return -1
        pos += 1


@njit(cache=True, nogil=True)
def _read_ids(buf, pos, ids, count):
    """Parse the JSON array of ints at ``pos`` ('[') into ids[count:]. Returns (status, pos after ']',
    new count). Anything but non-negative ints <= 2^31 - 1 in plain JSON notation is _FALLBACK."""
    pos = _skip_space(buf, pos + 1)
    if buf[pos] == 93:  # ]
        return _OK, pos + 1, count
    while True:
        c = buf[pos]
        if c < 48 or c > 57:
            return _FALLBACK, pos, count
        value = np.int64(c - 48)
        pos += 1
        if c == 48 and 48 <= buf[pos] <= 57:  # a leading zero is not JSON
            return _FALLBACK, pos, count
        while 48 <= buf[pos] <= 57:
            value = value * 10 + (buf[pos] - 48)
            if value > _INT32_MAX:
                return _FALLBACK, pos, count
            pos += 1
        if count == len(ids):
            return _GROW, pos, count
        ids[count] = value
        count += 1
        pos = _skip_space(buf, pos)
        if buf[pos] == 44:  # ,
            pos = _skip_space(buf, pos + 1)
        elif buf[pos] == 93:
            return _OK, pos + 1, count
        else:
            return _FALLBACK, pos, count


@njit(cache=True, nogil=True)
def _read_row(buf, pos, ids):
    """Parse the line at ``pos`` into ids. Returns (status, n ids, position of the line's newline; both
    meaningful when _OK). Understood: an object of the keys token_ids (a raw row) or prompt then continuation (a cached
    row), each an array of ints, and source, a plain string; each key once, any whitespace."""
    pos = _skip_space(buf, pos)
    if buf[pos] != 123:  # {
        return _FALLBACK, 0, pos
    pos = _skip_space(buf, pos + 1)
    seen, count = 0, 0
    while True:
        if buf[pos] != 34:
            return _FALLBACK, 0, pos
        key = pos + 1
        end = _plain_string_end(buf, pos)
        if end < 0:
            return _FALLBACK, 0, pos
        pos = _skip_space(buf, end)
        if buf[pos] != 58:  # :
            return _FALLBACK, 0, pos
        pos = _skip_space(buf, pos + 1)
        length, arrays = end - 1 - key, seen & ~_HAS_SOURCE  # the array keys seen so far
        if _is_key(buf, key, length, _KEY_SOURCE) and not seen & _HAS_SOURCE and buf[pos] == 34:
            seen |= _HAS_SOURCE
            pos = _plain_string_end(buf, pos)
            if pos < 0:
                return _FALLBACK, 0, pos
        else:
            if _is_key(buf, key, length, _KEY_TOKEN_IDS) and arrays == 0:
                seen |= _HAS_TOKEN_IDS
            elif _is_key(buf, key, length, _KEY_PROMPT) and arrays == 0:
                seen |= _HAS_PROMPT
            elif _is_key(buf, key, length, _KEY_CONTINUATION) and arrays == _HAS_PROMPT:
                seen |= _HAS_CONTINUATION
            else:  # another key, a repeated one, or the continuation before the prompt
                return _FALLBACK, 0, pos
            if buf[pos] != 91:  # [
                return _FALLBACK, 0, pos
            status, pos, count = _read_ids(buf, pos, ids, count)
            if status != _OK:
                return status, 0, pos
        pos = _skip_space(buf, pos)
        if buf[pos] == 44:
            pos = _skip_space(buf, pos + 1)
        elif buf[pos] == 125:  # }
            break
        else:
            return _FALLBACK, 0, pos
    pos = _skip_space(buf, pos + 1)
    if buf[pos] != _NEWLINE or not seen & (_HAS_TOKEN_IDS | _HAS_CONTINUATION):
        return _FALLBACK, 0, pos
    return _OK, count, pos


@njit(cache=True, nogil=True)
def _line_end(buf, pos):
    while buf[pos] != _NEWLINE:
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def _scan_lines(buf, pos, ids, tables, prompt_counts, window_counts, state, no_log):
    """Read and count the lines of ``buf`` (complete lines: it ends with a newline) from ``pos`` on.

    Returns (status, line start, line end): _OK; _FALLBACK for a line the slow path must read;
    _GROW when a line holds more ids than ``ids`` (retry it with at least (end - start) // 2 + 1);
    _BLANK when a line follows an empty one (state[_FIRST_BLANK] names it).
    """
    while pos < len(buf):
        if buf[pos] == _NEWLINE:
            if state[_FIRST_BLANK] == 0:
                state[_FIRST_BLANK] = state[_LINES] + 1
            state[_LINES] += 1
            pos += 1
            continue
        if state[_FIRST_BLANK] != 0:
            return _BLANK, pos, pos
        status, count, end = _read_row(buf, pos, ids)
        if status != _OK:
            return status, pos, _line_end(buf, pos)
        _count_row(ids, count, tables, prompt_counts, window_counts, no_log, 0)
        state[_ROWS] += 1
        state[_TOKENS] += count
        state[_LINES] += 1
        pos = end + 1
    return _OK, pos, pos


# ---- the scan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkExposure:
    """Exposure counts of one chunk file; only probes with a nonzero count are listed."""

    label: str  # the file's name, as errors name it
    probe: np.ndarray  # int64[m]: indices into the probe tokens the index was built from, ascending
    window_count: np.ndarray  # int64[m]: occurrences of the probe's k + l ids
    prompt_count: np.ndarray  # int64[m]: occurrences of its first k ids (>= window_count)
    rows: int  # rows (non-empty lines) in the file
    tokens: int  # token ids in all rows
    size: int  # bytes in the file
    sha256: str  # of all bytes: the file's content identity
    seconds: float  # wall time of the scan
    window_positions: list[np.ndarray] | None = None  # binary streams: per listed probe, its occurrences' positions


def _slow_row(label: str, line_number: int, line: bytes) -> np.ndarray:
    """uint32 ids of a line the fast path left: json.loads and the probe sampler's checks decide."""
    row = line_number - 1
    try:
        record = parse_line(label, row, line)
        if detect_format(label, row, record) == "raw":
            ids = token_list(label, row, record, "token_ids")
        else:
            ids = token_list(label, row, record, "prompt") + token_list(label, row, record, "continuation")
        check_ids(label, row, ids, None)
    except ProbeSetError as error:
        raise ExposureScanError(str(error)) from None
    return np.array(ids, dtype=np.uint32)


class _Counts:
    """Per distinct prompt and window counts of one scan, handed back per probe."""

    def __init__(self, index: ProbeIndex):
        self.index = index
        self.tables = index.tables()
        self.prompt_counts = np.zeros(len(index.prompt_hash), dtype=np.int64)
        self.window_counts = np.zeros(len(index.window_hash), dtype=np.int64)
        self.no_log = np.zeros(1, dtype=np.int64)  # the one-slot log: occurrences are counted, not logged

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probe, window_count, prompt_count) of the probes with a nonzero count."""
        prompt_count = self.prompt_counts[self.index.probe_prompt()]
        probe = np.flatnonzero(prompt_count)  # a window occurrence is a prompt occurrence too
        return probe, self.window_counts[self.index.probe_window[probe]], prompt_count[probe]


class _LineCounter(_Counts):
    """The counts and scratch of one scan; fed buffers of complete lines."""

    def __init__(self, index: ProbeIndex, label: str):
        super().__init__(index)
        self.label = label
        self.ids = np.empty(_SCRATCH_IDS, dtype=np.uint32)
        self.state = np.zeros(4, dtype=np.int64)

    def feed(self, lines) -> None:
        """Count the rows in ``lines`` (a bytes-like object of whole lines, each ending with a newline)."""
        buf = np.frombuffer(lines, dtype=np.uint8)
        buf.flags.writeable = False  # one compiled signature whether bytes or bytearray come in
        pos = 0
        while True:
            status, start, end = _scan_lines(buf, pos, self.ids, self.tables, self.prompt_counts,
                                             self.window_counts, self.state, self.no_log)
            if status == _OK:
                return
            if status == _BLANK:
                raise ExposureScanError(f"{self.label}:{self.state[_FIRST_BLANK]}: empty line (would shift every "
                                        "later row number)")
            if status == _GROW:
                self.ids = np.empty(max(2 * len(self.ids), (end - start) // 2 + 1), dtype=np.uint32)
                pos = start
                continue
            ids = _slow_row(self.label, int(self.state[_LINES]) + 1, bytes(buf[start:end]))
            _count_row(ids, len(ids), self.tables, self.prompt_counts, self.window_counts, self.no_log, 0)
            self.state[[_ROWS, _TOKENS, _LINES]] += (1, len(ids), 1)
            pos = end + 1


def scan_chunk(blocks: Iterable[bytes], index: ProbeIndex, label: str) -> ChunkExposure:
    """Exposure counts of every probe in ``index`` over one chunk file given as ``blocks`` (bytes or
    bytearray, any sizes, in order; a line may span blocks). ``label`` names the file in errors.

    Raises ExposureScanError (``label:line: why``) for a gzip file, an empty one, an empty line before
    the last row, or a malformed row. Trailing empty lines are harmless.
    """
    began = time.perf_counter()
    counter = _LineCounter(index, label)
    digest = hashlib.sha256()
    head, size = b"", 0
    carry = bytearray()  # the partial line after the last newline seen
    for block in blocks:
        if not block:
            continue
        if len(head) < len(_GZIP_MAGIC):
            head += bytes(block[: len(_GZIP_MAGIC) - len(head)])
            if head == _GZIP_MAGIC:
                raise ExposureScanError(f"{label}: file is gzip-compressed; decompress it (JSON lines are expected)")
        digest.update(block)
        size += len(block)
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            carry += block
            continue
        view, start = memoryview(block), 0
        if carry:  # complete the carried line alone, so that the block itself is never copied
            start = block.find(b"\n") + 1
            carry += view[:start]
            counter.feed(carry)
        if start < cut:
            counter.feed(view[start:cut])
        carry = bytearray(view[cut:])
    if carry:
        carry += b"\n"  # an unterminated last line
        counter.feed(carry)
    if counter.state[_ROWS] == 0:
        raise ExposureScanError(f"{label}: file is empty" + (" (only blank lines)" if size else ""))
    probe, window_count, prompt_count = counter.counts()
    return ChunkExposure(label, probe, window_count, prompt_count, rows=int(counter.state[_ROWS]),
                         tokens=int(counter.state[_TOKENS]), size=size, sha256=digest.hexdigest(),
                         seconds=time.perf_counter() - began)


# ---- binary items ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemCounts:
    """Exposure counts over the items of a binary stream chunk; only probes with a nonzero count are listed."""

    probe: np.ndarray  # int64[m]: indices into the probe tokens the index was built from, ascending
    window_count: np.ndarray  # int64[m]
    prompt_count: np.ndarray  # int64[m]
    window_positions: list[np.ndarray]  # per listed probe, int64[window_count]: the stream position of the item
    # holding each window occurrence, ascending (what places an occurrence before or after a checkpoint)
    items: int  # items (training sequences) counted
    tokens: int  # tokens in them


# Room for this many logged window occurrences at a time (16 bytes each); at least one item's worth is kept free.
_LOG_ENTRIES = 1 << 20


def count_items(batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], index: ProbeIndex) -> ItemCounts:
    """Exposure counts of every probe in ``index`` over items given as batches of (tokens, offsets, positions): item
    i of a batch is tokens[offsets[i]:offsets[i + 1]] (a 1-D unsigned integer array: uint16 for Pythia; offsets
    int64) at stream position positions[i]. Occurrences do not cross from one item into the next. The caller reads
    (and hashes) the bytes."""
    counter = _Counts(index)
    log = np.zeros(1 + 2 * _LOG_ENTRIES, dtype=np.int64)
    logged_windows: list[np.ndarray] = []
    logged_positions: list[np.ndarray] = []
    items = tokens_total = 0
    for tokens, offsets, positions in batches:
        if len(offsets) < 2:
            continue
        if tokens.dtype.kind == "i":  # a signed Megatron dtype, already checked for negative ids by its reader
            tokens = tokens.astype(np.uint32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if int(np.diff(offsets).max()) > _LOG_ENTRIES:  # an item longer than the log: give it room
            log = np.zeros(1 + 2 * int(np.diff(offsets).max()), dtype=np.int64)
        first = 0
        while first < len(offsets) - 1:
            first = _count_items(tokens, offsets, first, counter.tables, counter.prompt_counts,
                                 counter.window_counts, log)
            used = int(log[0])
            entries = log[1:1 + 2 * used].reshape(used, 2)
            logged_windows.append(entries[:, 0].copy())
            logged_positions.append(np.asarray(positions, dtype=np.int64)[entries[:, 1]])
            log[0] = 0
        items += len(offsets) - 1
        tokens_total += int(offsets[-1] - offsets[0])
    probe, window_count, prompt_count = counter.counts()
    windows = np.concatenate(logged_windows) if logged_windows else np.zeros(0, dtype=np.int64)
    where = np.concatenate(logged_positions) if logged_positions else np.zeros(0, dtype=np.int64)
    order = np.lexsort((where, windows))
    windows, where = windows[order], where[order]
    bounds = np.searchsorted(windows, index.probe_window[probe].astype(np.int64), side="left")
    ends = np.searchsorted(windows, index.probe_window[probe].astype(np.int64), side="right")
    return ItemCounts(probe, window_count, prompt_count, [where[lo:hi] for lo, hi in zip(bounds, ends)], items,
                      tokens_total)
