"""A spec's chunks as things to read, described without reading their data: a JSONL chunk file (`ChunkFile`,
sweep/data/sources.py) or a range of a binary stream (`StreamChunk`), and the stream's files listed from a local
folder or a Hub dataset repository.

    described = describe_spec_chunks(spec, [0, 1, 2])   # chunk -> ChunkFile | StreamChunk | Exception

For `megatron` and `numpy` data the stream's files are listed once (a local folder: one stat each; the Hub: the
dataset's commit, then one tree listing or paths-info call), the stream is opened to learn its length (a Megatron
index: its 34-byte header and last entry; numpy: the listed sizes), and each chunk becomes the range of stream
positions the timeline gives it (sweep/timeline.py). A chunk past the end of the stream maps to its one-line error;
a stream that cannot be read at all maps every chunk to the same one.

**Pins.** A `StreamChunk` is pinned by two identities:
- `files_sha256`, a digest of the stream's files as listed: each file's path, size and the Hub's LFS sha256 (the
  content hash the Hub computed on upload, for every file, without a download), or for a local file its size and
  modification time. On the Hub every read names the pinned commit (immutable) and every answer's total size must
  equal the listed one. Any change to any file of the stream changes it.
- `sha256`, the digest of every byte read from it (the index header and slice, and the sampled tokens; or, for an
  exposure scan, every byte of the chunk's items): what the landed rows were actually read from.
Neither hashes a whole shard: a Range read cannot, and a local 300 GB `.bin` would cost minutes of sha256 per run
(BENCHMARKS.md, "Training streams").
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import huggingface_hub

from actors.checkpoint_files import is_local
from actors.protocol import one_line
from sweep.data.megatron import MegatronStream, megatron_files
from sweep.data.sources import ChunkFile, describe_chunks
from sweep.data.token_files import TokenFilesStream
from sweep.data.token_stream import StreamError, StreamFile, StreamSource, TokenStream
from sweep.spec import DataSpec, SweepSpec
from sweep.timeline import Timeline, TimelineError


@dataclass(frozen=True)
class StreamChunk:
    """Chunk `chunk` of a binary stream: stream positions [start, stop), and what it is pinned to (module docstring).

    `stream` is the stream's full description, for the tasks that read it; it is left out of `to_dict` (the ledger
    keeps the digest of it), so a chunk rebuilt from a ledger record can be compared but not read."""

    kind: str  # local | hub
    format: str  # megatron | numpy
    data_source: str
    file: str  # what a cell's `data_file` says: "<data.file>[start:stop)"
    chunk: int
    start: int
    stop: int
    files_sha256: str
    commit: str | None = None
    sha256: str | None = None  # of the bytes read from it (None until read)
    bytes_read: int | None = None
    requests: int | None = None
    stream: StreamSource | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        where = self.data_source if self.kind == "local" else f"{self.data_source}@{(self.commit or '')[:12]}"
        return f"{where}:{self.file}"

    @property
    def size(self) -> int:
        """Sequences in the chunk."""
        return self.stop - self.start

    def to_dict(self) -> dict:
        record = asdict(self)
        record.pop("stream")
        return record

    def with_sha256(self, sha256: str) -> StreamChunk:
        return replace(self, sha256=sha256)

    def stat_matches(self, other: StreamChunk | ChunkFile) -> bool:
        """The same range of the same files (the cheap 'unchanged' test against a pinned record)."""
        return isinstance(other, StreamChunk) and (self.kind, self.format, self.start, self.stop, self.files_sha256) \
            == (other.kind, other.format, other.start, other.stop, other.files_sha256)


def pinned_source(record: dict) -> ChunkFile | StreamChunk:
    """A chunk's pinned source as a ledger records it (`to_dict` of either kind)."""
    if record.get("format") in ("megatron", "numpy"):
        return StreamChunk(**record)
    return ChunkFile(**record)


def open_stream(source: StreamSource) -> TokenStream:
    """The reader of a described stream (reads a Megatron index's header and last entry)."""
    return MegatronStream(source) if source.format == "megatron" else TokenFilesStream(source)


def describe_spec_chunks(spec: SweepSpec, chunks: list[int]) -> tuple[dict[int, ChunkFile | StreamChunk | Exception],
                                                                        int | None]:
    """What each chunk is, without reading its data, and the stream's length in sequences (None for jsonl, or when
    the stream cannot be read: then every chunk maps to that one error). A JSONL chunk file that is missing maps to
    its FileNotFoundError; a stream chunk past the end of the stream to a TimelineError naming it."""
    data = spec.data
    if not data.is_stream:
        return describe_chunks(data.source, {chunk: data.file_for(chunk) for chunk in chunks}, data.revision), None
    try:
        stream = open_stream(describe_stream(data))
    except StreamError as error:
        return {chunk: error for chunk in chunks}, None
    timeline = spec.timeline_positions()
    described: dict[int, ChunkFile | StreamChunk | Exception] = {}
    for chunk in chunks:
        if timeline.check_within(stream.length, [], [chunk])["chunks"]:
            described[chunk] = TimelineError(timeline.beyond_stream_message("chunk", [chunk], stream.length,
                                                                            stream.label))
            continue
        described[chunk] = stream_chunk(stream.source, timeline, chunk)
    return described, stream.length


def stream_chunk(source: StreamSource, timeline: Timeline, chunk: int) -> StreamChunk:
    start, stop = timeline.chunk_range(chunk)
    return StreamChunk(kind=source.kind, format=source.format, data_source=source.data_source,
                       file=f"{source.name}[{start}:{stop})", chunk=chunk, start=start, stop=stop,
                       files_sha256=source.files_sha256, commit=source.commit, stream=source)


# ---- listing a stream's files ---------------------------------------------------------------------------------


def describe_stream(data: DataSpec) -> StreamSource:
    """The stream of `data` (format megatron or numpy): its files, listed from the local folder or the Hub dataset at
    `data.revision` (resolved to its commit). Raises StreamError naming a file that is missing or a glob that
    matches nothing."""
    if is_local(data.source):
        root = Path(data.source).expanduser()
        return _stream_source(data, "local", str(root), None, lambda paths: _local_listing(root, paths),
                              lambda pattern: _local_glob(root, pattern))
    api = huggingface_hub.HfApi()
    try:
        commit = api.repo_info(data.source, revision=data.revision, repo_type="dataset").sha
    except Exception as error:  # noqa: BLE001 - any Hub error: one line, every chunk fails with it
        raise StreamError(f"data source {data.source!r} (revision {data.revision!r}): {one_line(error)}") from None
    return _stream_source(data, "hub", data.source, commit, lambda paths: _hub_listing(api, data.source, commit, paths),
                          lambda pattern: _hub_glob(api, data.source, commit, pattern))


def _stream_source(data: DataSpec, kind: str, root: str, commit: str | None, listing, glob) -> StreamSource:
    where = root if kind == "local" else f"{root}@{commit[:12]}"
    common = dict(format=data.format, kind=kind, data_source=root, commit=commit)
    if data.format == "megatron":
        folder = str(PurePosixPath(data.file).parent)
        found = glob(data.file + "*") if folder == "." else glob(f"{folder}/{PurePosixPath(data.file).name}*")
        try:
            files = megatron_files(data.file, {file.path: file for file in found})
        except StreamError as error:
            raise StreamError(f"{where}/{error}") from None
        return StreamSource(name=data.file, files=tuple(files), **common)
    if isinstance(data.file, str):
        files = glob(data.file)
        if not files:
            raise StreamError(f"{where}: data.file {data.file!r} matches no token file")
    else:
        files = listing(list(data.file))
    if data.order is not None:
        files = [*files, *listing([data.order])]
    name = data.file if isinstance(data.file, str) else f"{data.file[0]}..{data.file[-1]}" if len(data.file) > 1 \
        else data.file[0]
    return StreamSource(name=name, files=tuple(files), dtype=data.dtype, sequence_len=data.sequence_len,
                        order=data.order, order_dtype=data.order_dtype, **common)


def _local_listing(root: Path, paths: list[str]) -> list[StreamFile]:
    files = []
    for path in paths:
        full = root / path
        if not full.is_file():
            raise StreamError(f"{full}: not found")
        stat = full.stat()
        files.append(StreamFile(path, stat.st_size, mtime_ns=stat.st_mtime_ns))
    return files


def _local_glob(root: Path, pattern: str) -> list[StreamFile]:
    return _local_listing(root, sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file()))


def _hub_file(info) -> StreamFile:
    lfs = getattr(info, "lfs", None)
    return StreamFile(info.path, int(lfs.size if lfs else info.size), sha256=lfs.sha256 if lfs else None)


def _hub_listing(api, repo: str, commit: str, paths: list[str]) -> list[StreamFile]:
    infos = {}
    for start in range(0, len(paths), 100):
        for info in api.get_paths_info(repo, paths[start:start + 100], revision=commit, repo_type="dataset"):
            infos[info.path] = info
    missing = [path for path in paths if path not in infos or not hasattr(infos[path], "size")]
    if missing:
        raise StreamError(f"{repo}@{commit[:12]}:{missing[0]}: not found")
    return [_hub_file(infos[path]) for path in paths]


def _hub_glob(api, repo: str, commit: str, pattern: str) -> list[StreamFile]:
    folder = str(PurePosixPath(pattern.split("*")[0].split("?")[0].split("[")[0] + "x").parent)
    entries = api.list_repo_tree(repo, path_in_repo=None if folder == "." else folder, revision=commit,
                                 repo_type="dataset", recursive=True)
    files = [entry for entry in entries if hasattr(entry, "size") and fnmatch.fnmatchcase(entry.path, pattern)]
    return [_hub_file(entry) for entry in sorted(files, key=lambda entry: entry.path)]
