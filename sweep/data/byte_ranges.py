"""Byte ranges of one file, local or in a Hub repository at a pinned commit: read coalesced, and counted.

Every reader of training data asks for the bytes it needs as (start, length) ranges; neighbouring ranges share one
read (a local `read`, a Hub `Range: bytes=a-b` request), several requests run at once, and each file keeps count of
the bytes and requests it cost (`bytes_read`, `requests`), which the probe ledger and the run summary report.

- `LocalFile(path)`: seek and read; ranges closer than LOCAL_GAP_BYTES are one read.
- `HubFile(repo, commit, path, size)`: HTTP range requests to the file's resolve URL at the commit (immutable, so a
  range read at a pinned commit always returns the same bytes); every 206 answer's `Content-Range` total must equal
  the size the Hub listed for the file, so a changed file is an error, never a silent mix. A server that ignores
  Range and answers 200 (some Hub mirrors) raises RangesIgnoredError before the body is read; callers then stream
  the file once and pick the ranges (`read_ranges_streaming`).

Both also stream the whole file in blocks (`blocks`), for the passes that must read everything (a JSONL chunk's
line index, an exposure scan).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sweep.errors import MemsweepError

# A streaming pass reads blocks this big: numpy's per-call overhead vanishes, memory stays a few MB.
SCAN_BLOCK_BYTES = 4 * 1024 * 1024
# Hub range reads: ranges closer than this share a request; a request holds at most RANGE_MAX_BYTES; RANGE_WORKERS
# requests run at a time.
RANGE_GAP_BYTES = 256 * 1024
RANGE_MAX_BYTES = 16 * 1024 * 1024
RANGE_WORKERS = 8
# Local reads: ranges closer than this are one read (a seek costs more than reading a few KB more).
LOCAL_GAP_BYTES = 64 * 1024


class RangeReadError(MemsweepError):
    """A range of a file could not be read as asked (short read, a server's wrong answer); names the file."""


class RangesIgnoredError(Exception):
    """The server answered a Range request with the whole file (as some Hub mirrors do)."""


def coalesce(ranges: list[tuple[int, int]], gap: int, max_bytes: int) -> list[tuple[int, int, list[int]]]:
    """Spans (start, end, members) covering `ranges` (start, length), in file order: a range joins the span before it
    when it starts within `gap` bytes of that span's end and the span stays within `max_bytes`."""
    spans: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i][0]):
        start, length = ranges[i]
        if spans and start - spans[-1][1] <= gap and start + length - spans[-1][0] <= max_bytes:
            spans[-1] = (spans[-1][0], max(spans[-1][1], start + length), spans[-1][2] + [i])
        else:
            spans.append((start, start + length, [i]))
    return spans


def _split(spans: list[tuple[int, int, list[int]]], bodies: list[bytes], ranges: list[tuple[int, int]]) -> list[bytes]:
    out: list[bytes] = [b""] * len(ranges)
    for (span_start, _, members), body in zip(spans, bodies):
        if len(members) == 1 and ranges[members[0]] == (span_start, len(body)):  # the whole span: no copy
            out[members[0]] = body
            continue
        view = memoryview(body)
        for i in members:
            start, length = ranges[i]
            out[i] = bytes(view[start - span_start: start - span_start + length])
    return out


class LocalFile:
    """A file on this node's disk."""

    def __init__(self, path: str | Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(self.path)
        self.bytes_read = 0
        self.requests = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def blocks(self) -> Iterator[bytes]:
        with open(self.path, "rb", buffering=0) as handle:
            while block := handle.read(SCAN_BLOCK_BYTES):
                self.bytes_read += len(block)
                yield block

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (start, length); a range past the end of the file is an error naming it."""
        spans = coalesce(ranges, LOCAL_GAP_BYTES, RANGE_MAX_BYTES)
        bodies = []
        with open(self.path, "rb") as handle:
            for start, end, _ in spans:  # forward seeks only
                handle.seek(start)
                body = handle.read(end - start)
                if len(body) != end - start:
                    raise RangeReadError(f"{self.label}: bytes {start}-{end - 1} asked, the file ends at byte "
                                         f"{start + len(body)}")
                bodies.append(body)
        self.bytes_read += sum(end - start for start, end, _ in spans)
        self.requests += len(spans)
        return _split(spans, bodies, ranges)


class HubFile:
    """A file of a Hub repository at a pinned commit, `size` bytes as the Hub lists it."""

    def __init__(self, repo: str, commit: str, path: str, size: int | None, repo_type: str = "dataset",
                 label: str | None = None):
        self.repo, self.commit, self.path, self.size, self.repo_type = repo, commit, path, size, repo_type
        self.label = label or f"{repo}@{(commit or '')[:12]}:{path}"
        self.bytes_read = 0
        self.requests = 0

    def blocks(self) -> Iterator[bytes]:
        from huggingface_hub import HfFileSystem

        prefix = "datasets/" if self.repo_type == "dataset" else ""
        with HfFileSystem().open(f"{prefix}{self.repo}@{self.commit}/{self.path}", "rb", block_size=0) as stream:
            self.requests += 1
            while block := stream.read(SCAN_BLOCK_BYTES):  # block_size=0: a plain stream, no cache
                self.bytes_read += len(block)
                yield block

    def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each (start, length) through HTTP range requests; neighbours share a request."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, http_stream_backoff

        url = hf_hub_url(self.repo, self.path, repo_type=self.repo_type, revision=self.commit)
        spans = coalesce(ranges, RANGE_GAP_BYTES, RANGE_MAX_BYTES)
        headers = build_hf_headers()

        def fetch(span: tuple[int, int, list[int]]) -> bytes:
            start, end, _ = span
            with http_stream_backoff("GET", url, headers={**headers, "Range": f"bytes={start}-{end - 1}"}) as response:
                # The body is read only once the status says it is the range: a server that ignores Range answers
                # 200 with the whole file (20.8 GB for an Amber chunk), which must not be read into memory.
                content_range = response.headers.get("Content-Range", "")
                if response.status_code == 200:
                    raise RangesIgnoredError(f"{self.label}: the server ignores Range requests (HTTP 200)")
                if response.status_code == 416:
                    raise RangeReadError(f"{self.label}: bytes {start}-{end - 1} asked, past the end of the file "
                                         f"({content_range or 'HTTP 416'})")
                if response.status_code != 206 or not content_range.startswith(f"bytes {start}-"):
                    raise RangeReadError(f"{self.label}: the server answered a range request for bytes "
                                         f"{start}-{end - 1} with HTTP {response.status_code} "
                                         f"({content_range or 'no Content-Range'})")
                total = content_range.rpartition("/")[2]
                if self.size is not None and total.isdigit() and int(total) != self.size:
                    raise RangeReadError(f"{self.label}: the server holds {int(total)} bytes, the Hub listed "
                                         f"{self.size} (the file changed?)")
                body = response.read()
            if len(body) != end - start:
                raise RangeReadError(f"{self.label}: range {start}-{end - 1} returned {len(body)} bytes")
            return body

        with ThreadPoolExecutor(RANGE_WORKERS) as pool:
            bodies = list(pool.map(fetch, spans))
        self.bytes_read += sum(end - start for start, end, _ in spans)
        self.requests += len(spans)
        return _split(spans, bodies, ranges)


def read_ranges_streaming(blocks: Iterable[bytes], ranges: list[tuple[int, int]]) -> tuple[list[bytes], str, int]:
    """The bytes of each (start, length) of a file, picked in one pass over its blocks, for a server that ignores
    Range requests; also the sha256 and size of everything streamed (to check it is still the same file).
    Memory: the picked bytes and one block."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    out: list[bytearray] = [bytearray() for _ in ranges]
    digest, offset, first = hashlib.sha256(), 0, 0  # first: the earliest range not yet complete, in `order`
    for block in blocks:
        digest.update(block)
        end = offset + len(block)
        for position in range(first, len(order)):
            i = order[position]
            start, length = ranges[i]
            if start >= end:
                break
            have = len(out[i])
            if have < length:
                lo = max(start + have, offset)
                out[i] += block[lo - offset: min(start + length, end) - offset]
            if len(out[i]) == length and position == first:
                first += 1
        offset = end
    return [bytes(part) for part in out], digest.hexdigest(), offset


def read_ranges_any(source: LocalFile | HubFile, ranges: list[tuple[int, int]]) -> list[bytes]:
    """`source.read_ranges(ranges)`, or, from a server that ignores Range, one streaming pass that picks them."""
    try:
        return source.read_ranges(ranges)
    except RangesIgnoredError:
        picked, _, size = read_ranges_streaming(source.blocks(), ranges)
        short = [ranges[i] for i, part in enumerate(picked) if len(part) != ranges[i][1]]
        if short:
            raise RangeReadError(f"{source.label}: bytes {short[0][0]}-{sum(short[0]) - 1} asked, the file ends at "
                                 f"byte {size}") from None
        return picked
