"""What a plan costs before anything runs: downloads, disk per node, checkpoint loads and GPU-hours.

`memsweep plan` prints it. Sizes come from the Hub (file listings of every checkpoint revision to load, one
paths-info call for the chunk files, the stream's listing and index header) or from the local folders; `--offline`
(or a Hub that cannot be reached) falls back to the release's published sizes (sweep/run/releases.py: Amber,
Pythia, K2; anything else is priced as Amber, and says so). GPU time uses the rate measured in this very output when
it has landed GPU cells, else the reference tool's A100 rate on Amber (13.3 sequences/s) as the pessimistic bound,
next to the compute bound of a forward on one H200 (about 900 sequences/s for a 7B model, FACTS.md, scaled by the
model's parameters) as the optimistic one.

A JSONL chunk is streamed once to index its lines; a binary stream chunk (megatron, numpy) is never streamed: its
probe set costs its index slice (12 bytes an item; an order file's entries) and the sampled items' first k + l
tokens, read by ranges. A census (`data.samples_per_chunk: all`) builds no probe set: each cell reads its chunk
whole in the actor (a stream chunk's every item, a JSONL file streamed), once per checkpoint.
"""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from sweep.run.plan import Plan
from sweep.run.releases import AMBER, Release, published_release
from actors.checkpoint_files import DISK_MARGIN_BYTES, checkpoint_download_size, is_local
from actors.protocol import one_line
from sweep.landed.reader import LandedOutput
from sweep.data.sources import describe_chunks, resolve_commit
from sweep.data.stream_chunks import describe_stream, open_stream
from sweep.spec import SweepSpec

AMBER_CKPT_BYTES = AMBER.checkpoint_bytes
AMBER_MAIN_BYTES = AMBER.main_bytes
AMBER_CHUNK_BYTES = AMBER.chunk_file_bytes
AMBER_ROW_BYTES = AMBER.chunk_file_bytes / 1_706_976  # one JSON line of 2049 ids
LINE_INDEX_BYTES_PER_ROW = 1.6  # compressed row lengths (measured on Amber-like rows: see BENCHMARKS.md)
LANDED_BYTES_PER_ROW = 11.0  # sequences + cells Parquet per scored row without `generated` (1.4 GB / 129.6M)
GENERATED_BYTES_PER_ROW = 58.0  # the greedy tokens, l = 32: measured on real Amber continuations (BENCHMARKS.md)
REFERENCE_RATE = 1000 / 75  # the reference tool on one A100, sequences/s (FACTS.md)
COMPUTE_BOUND_RATE = 900.0  # a 7B forward at ~790 TFLOP/s bf16 on an H200, sequences/s (FACTS.md)
ASSUMED_DOWNLOAD_BYTES_PER_S = 500e6  # a Hub download per node, for the load-time estimate only
AMBER_BYTES_PER_TOKEN = 20.8e9 / (1_706_976 * 2049)  # a chunk file's JSON per token id (about 5.95)
SCAN_TOKENS_PER_CORE_S = 50e6  # the exposure-scan kernel at 360k probes (BENCHMARKS.md, "Exposure counts")
BINARY_SCAN_TOKENS_PER_CORE_S = 70e6  # the binary path on uint16 items at 360k probes (BENCHMARKS.md, "Binary items")
MEGATRON_ENTRY_BYTES = 12  # an item's int32 size and int64 pointer in the .idx


@dataclass
class CostEstimate:
    checkpoints: int
    checkpoint_bytes: dict[int, float] = field(default_factory=dict)
    chunk_bytes: dict[int, float] = field(default_factory=dict)  # chunks that still need a build
    sizes_from: str = "Hub"
    sequences: int = 0
    measured_rate: float | None = None  # sequences/s per actor on a GPU, from this output
    keep_generated: bool = False
    keep_downloads: bool = False
    scan_bytes: dict[int, float] = field(default_factory=dict)  # chunk files still to scan for exposure counts
    notes: list[str] = field(default_factory=list)
    parameters: float = AMBER.parameters  # of the model: scales the compute bound
    gpus_per_actor: float = 1.0  # resources.gpus_per_actor (auto: 1): actors on an 8-GPU node
    read_bytes: dict[int, float] = field(default_factory=dict)  # stream chunks: bytes their probe sets read by ranges
    scan_tokens: dict[int, float] = field(default_factory=dict)  # stream chunks to scan: their tokens (known)
    chunk_name: str = "chunk files"  # what a chunk's data is called in the lines
    census_bytes: float = 0.0  # a census: the bytes its cells read (each reads its chunk whole, in the actor)
    census_chunks: int = 0  # ... of this many chunks
    census_mode: str | None = None  # a census: memorization.mode
    tokens_per_sequence: int = 64  # k + l

    @property
    def largest_checkpoint(self) -> float:
        return max(self.checkpoint_bytes.values(), default=0.0)

    def describe(self) -> str:
        gb = 1e9
        ckpt_total = sum(self.checkpoint_bytes.values())
        chunk_total = sum(self.chunk_bytes.values())
        rows = sum(size / AMBER_ROW_BYTES for size in self.chunk_bytes.values())
        compute_bound = COMPUTE_BOUND_RATE * AMBER.parameters / self.parameters
        per_actor_disk = 2 * self.largest_checkpoint  # the one loading + the prefetched next
        landed = self.sequences * (LANDED_BYTES_PER_ROW + (GENERATED_BYTES_PER_ROW if self.keep_generated else 0))
        margin = f" (+{DISK_MARGIN_BYTES / 1024**3:.0f} GiB kept free beyond each download)"
        if self.keep_downloads:
            disk = (f"peak disk: every checkpoint an actor loads stays (model.keep_downloads): up to "
                    f"{ckpt_total / gb:,.1f} GB over the nodes that load them{margin}")
        else:
            per_node = max(1, int(8 // self.gpus_per_actor)) if self.gpus_per_actor >= 1 else 8
            disk = (f"peak disk per actor: {per_actor_disk / gb:,.1f} GB (the checkpoint loading + the next one "
                    f"prefetched; each is deleted once its weights are in memory){margin}; x the actors on a node "
                    f"(8 GPUs: {per_node * per_actor_disk / gb:,.0f} GB)")
        if self.census_mode is not None:
            data = (f"{self.census_bytes / gb:,.1f} GB of {self.chunk_name} read by the actors (a census: every cell "
                    f"reads its chunk whole, a piece at a time, nothing streamed through the driver or stored)")
            indexes = "no line indexes, no probe sets (a census reads each chunk in order)"
        elif self.read_bytes:
            data = (f"{sum(self.read_bytes.values()) / gb:,.2f} GB read by Range requests ({len(self.read_bytes)} "
                    "probe sets to build: each chunk's index slice and its sampled items' first k + l tokens; "
                    "nothing is streamed or stored)")
            indexes = "no line indexes (a stream's index finds its items)"
        else:
            data = (f"{chunk_total / gb:,.1f} GB of {self.chunk_name} streamed once ({len(self.chunk_bytes)} probe "
                    "sets to build; chunks are never stored)")
            indexes = f"~{rows * LINE_INDEX_BYTES_PER_ROW / gb:,.2f} GB of line indexes in the probe cache"
        lines = [
            f"downloads: {ckpt_total / gb:,.1f} GB of checkpoints ({self.checkpoints} loads, sizes from "
            f"{self.sizes_from}) + {data}",
            disk,
            f"driver disk: {indexes}, ~{landed / gb:,.2f} GB of landed Parquet",
        ]
        hours = {label: self.sequences / rate / 3600 for label, rate in
                 (("reference (13.3 seq/s, A100, 7B)", REFERENCE_RATE),
                  (f"compute bound (~{compute_bound:,.0f} seq/s, H200)", compute_bound))}
        if self.measured_rate:
            hours = {f"measured here ({self.measured_rate:,.0f} seq/s per GPU actor)":
                     self.sequences / self.measured_rate / 3600, **hours}
        load_hours = sum(size / ASSUMED_DOWNLOAD_BYTES_PER_S for size in self.checkpoint_bytes.values()) / 3600
        lines.append("GPU-hours for scoring: " + "; ".join(f"{h:,.1f} at the {label} rate" for label, h in hours.items()))
        lines.append(f"checkpoint downloads: ~{load_hours:,.1f} actor-hours at {ASSUMED_DOWNLOAD_BYTES_PER_S / 1e6:.0f} "
                     "MB/s, overlapped with scoring by the prefetch")
        if self.scan_bytes:
            scan_total = sum(self.scan_bytes.values())
            if self.scan_tokens:
                tokens, rate, what = sum(self.scan_tokens.values()), BINARY_SCAN_TOKENS_PER_CORE_S, "stream chunks"
            else:
                tokens, rate, what = scan_total / AMBER_BYTES_PER_TOKEN, SCAN_TOKENS_PER_CORE_S, self.chunk_name
            lines.append(f"exposure scans: {len(self.scan_bytes)} {what}, {scan_total / gb:,.1f} GB to stream "
                         f"(~{tokens / 1e9:,.1f}B tokens), ~{tokens / rate / 3600:,.1f} core-hours "
                         f"at {rate / 1e6:.0f}M tokens/s per core, on CPUs beside the GPUs")
        if self.census_mode is not None:
            lines += self._census_lines()
        lines += self.notes
        return "\n".join(lines)

    def _census_lines(self) -> list[str]:
        gb = 1e9
        landed = self.sequences * LANDED_BYTES_PER_ROW
        probe_rows = self.sequences // max(1, self.checkpoints) * 4 * self.tokens_per_sequence
        lines = [f"census: {self.sequences:,} sequences, every one of {self.census_chunks} chunks at each checkpoint "
                 f"to load; reads {self.census_bytes / gb:,.1f} GB, lands ~{landed / gb:,.2f} GB of Parquet "
                 f"(~{LANDED_BYTES_PER_ROW:.0f} bytes a sequence) and no probe rows (landing them would add "
                 f"{probe_rows / gb:,.1f} GB of uint32 tokens; show and the explorer read none for a census)"]
        if self.census_mode == "greedy":
            lines.append("note: memorization.mode is greedy, which decodes l tokens one step at a time for every "
                         "sequence; extractable mode (one teacher-forced forward: exact prefix_match and full_match, "
                         "what Biderman et al. count) is the natural mode for a census and needs fewer GPU-hours: "
                         "--set memorization.mode=extractable")
        return lines


def estimate_cost(spec: SweepSpec, plan: Plan, landed: LandedOutput | None = None,
                  offline: bool = False) -> CostEstimate:
    """What `plan` costs; `landed`: the spec's output when it exists (its probe sets need no build, and its GPU
    cells give a measured rate)."""
    release = published_release(spec.model.source)
    estimate = CostEstimate(checkpoints=len(plan.work), sequences=plan.sequences_to_do or 0,
                            keep_generated=spec.keeps_generated(), keep_downloads=spec.model.keep_downloads,
                            parameters=(release or AMBER).parameters,
                            gpus_per_actor=1.0 if spec.resources.gpus_per_actor == "auto"
                            else float(spec.resources.gpus_per_actor))
    _checkpoint_sizes(spec, plan, estimate, offline, release)
    if spec.data.census:
        _census_sizes(spec, plan, estimate, offline, release)
    elif spec.data.is_stream:
        _stream_sizes(spec, plan, landed, estimate, offline, release)
    else:
        _chunk_sizes(spec, plan, landed, estimate, offline, release)
        _scan_sizes(spec, landed, estimate, offline, release)
    estimate.measured_rate = measured_gpu_rate(landed)
    return estimate


def measured_gpu_rate(landed: LandedOutput | None) -> float | None:
    """Sequences/s per actor on a GPU: the median over the cells this output landed from GPUs (None: none yet)."""
    if landed is None or not landed.done_cells():
        return None
    cells = landed.cells().filter(pl.col("device") != "cpu").select("sequences_per_s").collect()
    rates = [r for r in cells["sequences_per_s"].to_list() if r]
    return statistics.median(rates) if rates else None


def _checkpoint_sizes(spec: SweepSpec, plan: Plan, estimate: CostEstimate, offline: bool,
                      release: Release | None) -> None:
    model = spec.model
    ckpts = [work.ckpt for work in plan.work]
    if is_local(model.source):
        estimate.sizes_from = "local folders"
        for ckpt in ckpts:
            folder = Path(model.source) / spec.revision_for(ckpt)
            estimate.checkpoint_bytes[ckpt] = 0.0 if not folder.is_dir() else float(sum(
                p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")))
        return
    if not offline:
        try:
            with ThreadPoolExecutor(16) as pool:
                sizes = list(pool.map(lambda c: checkpoint_download_size(
                    model.source, resolve_commit(model.source, spec.revision_for(c))), ckpts))
            estimate.checkpoint_bytes = {c: float(s) for c, s in zip(ckpts, sizes)}
            return
        except Exception as error:  # noqa: BLE001 - fall back to the published sizes, and say so
            estimate.notes.append(f"(could not list checkpoint sizes on the Hub: {one_line(error)})")
    published = release or AMBER
    estimate.sizes_from = f"{published.name}'s published sizes (offline)"
    if release is None:
        estimate.notes.append(f"({spec.model.source} is no release memsweep knows the sizes of: priced as Amber)")
    estimate.checkpoint_bytes = {c: published.main_bytes if published.main_bytes and spec.revision_for(c) == "main"
                                 else published.checkpoint_bytes for c in ckpts}


def _chunks_to_sample(plan: Plan, landed: LandedOutput | None) -> list[int]:
    sampled = {chunk for chunk, _ in landed.ledgers.probe_files()} if landed is not None else set()
    return [chunk for chunk in plan.chunks_needed if chunk not in sampled]


def _chunks_to_scan(spec: SweepSpec, landed: LandedOutput | None) -> list[int]:
    """The chunks of `exposure.chunks` not yet scanned for every scored chunk's probe sequences."""
    if spec.exposure is None:
        return []
    scanned = landed.ledgers.scanned_probe_chunks if landed is not None else (lambda seen: set())
    return [seen for seen in spec.exposure.chunks if not set(spec.chunks) <= scanned(seen)]


def _chunk_sizes(spec: SweepSpec, plan: Plan, landed: LandedOutput | None, estimate: CostEstimate,
                 offline: bool, release: Release | None) -> None:
    """The chunk files whose probe sets still need a build (streamed once each)."""
    estimate.chunk_bytes = _file_sizes(spec, _chunks_to_sample(plan, landed), estimate, offline,
                                       "their cells would fail", release)


def _scan_sizes(spec: SweepSpec, landed: LandedOutput | None, estimate: CostEstimate, offline: bool,
                release: Release | None) -> None:
    estimate.scan_bytes = _file_sizes(spec, _chunks_to_scan(spec, landed), estimate, offline,
                                      "their scans would fail", release)


def _census_sizes(spec: SweepSpec, plan: Plan, estimate: CostEstimate, offline: bool, release: Release | None) -> None:
    """A census: every cell reads its chunk whole (a stream chunk's index entries and items, whose first k + l tokens
    lie closer than a coalesced read's gap; a JSONL file streamed), and scores every sequence of it."""
    chunks = Counter(chunk for work in plan.work for chunk in work.chunks)  # cells to do of each chunk
    estimate.census_chunks, estimate.census_mode = len(chunks), spec.memorization.mode
    estimate.tokens_per_sequence = spec.memorization.prompt_len + spec.memorization.continuation_len
    if spec.data.is_stream:
        token_bytes, item_tokens, entry_bytes = _stream_item_bytes(spec, estimate, offline, release)
        per_chunk = spec.timeline_positions().chunk_sequences
        estimate.chunk_name = "stream chunks"
        estimate.census_bytes = float(sum(chunks.values()) * per_chunk * (entry_bytes + item_tokens * token_bytes))
        estimate.sequences = sum(chunks.values()) * per_chunk
        return
    sizes = _file_sizes(spec, sorted(chunks), estimate, offline, "their cells would fail", release)
    row_bytes = AMBER_ROW_BYTES if release is None or release.row_tokens is None else \
        release.row_tokens * AMBER_BYTES_PER_TOKEN
    estimate.census_bytes = float(sum(sizes[chunk] * cells for chunk, cells in chunks.items() if chunk in sizes))
    estimate.sequences = int(sum(sizes[chunk] / row_bytes * cells for chunk, cells in chunks.items() if chunk in sizes))
    estimate.notes.append(f"(a JSONL census counts its rows once it reads them: estimated here at "
                          f"{row_bytes / 1e3:,.1f} KB a row of {(release or AMBER).row_tokens or 2049} ids)")


def _stream_item_bytes(spec: SweepSpec, estimate: CostEstimate, offline: bool,
                       release: Release | None) -> tuple[int, float, int]:
    """(bytes a token id takes, ids an item holds, index bytes an item takes) of a binary stream: from the stream
    itself (its index header, its listed sizes), else the release's published ones."""
    data = spec.data
    token_bytes, item_tokens = (release.token_bytes, release.row_tokens) if release and release.token_bytes else (
        2 if data.dtype in (None, "uint16") else 4, data.sequence_len or 2049)
    if not offline or is_local(data.source):
        try:
            stream = open_stream(describe_stream(data))
            if data.format == "megatron":
                token_bytes = stream.header.dtype.itemsize
                item_tokens = stream.bin_bytes / token_bytes / max(1, stream.length)
            else:
                token_bytes, item_tokens = stream.dtype.itemsize, data.sequence_len
            estimate.sizes_from += f"; the stream's own ({stream.length:,} items)"
        except Exception as error:  # noqa: BLE001 - fall back to the published sizes, and say so
            estimate.notes.append(f"(could not read the stream's index: {one_line(error)}; assuming "
                                  f"{token_bytes}-byte tokens, {item_tokens:,} a sequence)")
    entry_bytes = MEGATRON_ENTRY_BYTES if data.format == "megatron" else (
        {"uint16": 2, "uint32": 4, "uint64": 8, "int32": 4, "int64": 8}[data.order_dtype] if data.order else 0)
    return token_bytes, item_tokens, entry_bytes


def _stream_sizes(spec: SweepSpec, plan: Plan, landed: LandedOutput | None, estimate: CostEstimate, offline: bool,
                  release: Release | None) -> None:
    """A binary stream's chunks: what their probe sets read by ranges, what their exposure scans stream (item sizes:
    `_stream_item_bytes`)."""
    timeline, data, memorization = spec.timeline_positions(), spec.data, spec.memorization
    token_bytes, item_tokens, entry_bytes = _stream_item_bytes(spec, estimate, offline, release)
    per_chunk = timeline.chunk_sequences
    width = memorization.prompt_len + memorization.continuation_len
    samples = min(data.samples_per_chunk, per_chunk)
    estimate.chunk_name = "stream chunks"
    estimate.read_bytes = {chunk: float(per_chunk * entry_bytes + samples * width * token_bytes)
                           for chunk in _chunks_to_sample(plan, landed)}
    for chunk in _chunks_to_scan(spec, landed):
        estimate.scan_bytes[chunk] = float(per_chunk * (entry_bytes + item_tokens * token_bytes))
        estimate.scan_tokens[chunk] = float(per_chunk * item_tokens)


def _file_sizes(spec: SweepSpec, chunks: list[int], estimate: CostEstimate, offline: bool,
                if_missing: str, release: Release | None) -> dict[int, float]:
    """Bytes of each chunk file (the release's published size offline, or when the dataset cannot be listed: said
    in a note); a missing file is left out and named in a note."""
    published = (release.chunk_file_bytes if release and release.chunk_file_bytes else None) or AMBER_CHUNK_BYTES
    if offline and not is_local(spec.data.source):
        return {chunk: published for chunk in chunks}
    try:
        described = describe_chunks(spec.data.source, {c: spec.data.file_for(c) for c in chunks}, spec.data.revision)
    except Exception as error:  # noqa: BLE001 - fall back to the published sizes, and say so
        estimate.notes.append(f"(could not list chunk sizes: {one_line(error)}; assuming the published ones)")
        return {chunk: published for chunk in chunks}
    missing = [c for c, d in described.items() if isinstance(d, Exception)]
    if missing:
        estimate.notes.append(f"{len(missing)} chunk files not found ({if_missing}): chunks {missing[:10]}")
    return {c: float(d.size or 0) for c, d in described.items() if not isinstance(d, Exception)}
