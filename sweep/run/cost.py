"""What a plan costs before anything runs: downloads, disk per node, checkpoint loads and GPU-hours.

`memsweep plan` prints it. Sizes come from the Hub (file listings of every checkpoint revision to load, one
paths-info call for the chunk files) or from the local folders; `--offline` (or a Hub that cannot be reached)
falls back to Amber's published sizes (FACTS.md: 27 GB of fp32 `.bin` per `ckpt_*` revision, 13.5 GB of bf16
safetensors on `main`, 20.8 GB per chunk). GPU time uses the rate measured in this very output when it has
landed GPU cells, else the reference tool's A100 rate (13.3 sequences/s) as the pessimistic bound, next to
the compute bound of a 7B forward on one H200 (about 900 sequences/s, FACTS.md) as the optimistic one.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from sweep.run.plan import Plan
from actors.checkpoint_files import DISK_MARGIN_BYTES, checkpoint_download_size, is_local
from actors.protocol import one_line
from sweep.landed.reader import LandedOutput
from sweep.data.sources import describe_chunks, resolve_commit
from sweep.spec import SweepSpec

AMBER_CKPT_BYTES = 27.0e9
AMBER_MAIN_BYTES = 13.5e9
AMBER_CHUNK_BYTES = 20.8e9
AMBER_ROW_BYTES = 20.8e9 / 1_706_976  # one JSON line of 2049 ids
LINE_INDEX_BYTES_PER_ROW = 1.6  # compressed row lengths (measured on Amber-like rows: see BENCHMARKS.md)
LANDED_BYTES_PER_ROW = 11.0  # sequences + cells Parquet per scored row without `generated` (1.4 GB / 129.6M)
GENERATED_BYTES_PER_ROW = 58.0  # the greedy tokens, l = 32: measured on real Amber continuations (BENCHMARKS.md)
REFERENCE_RATE = 1000 / 75  # the reference tool on one A100, sequences/s (FACTS.md)
COMPUTE_BOUND_RATE = 900.0  # a 7B forward at ~790 TFLOP/s bf16 on an H200, sequences/s (FACTS.md)
ASSUMED_DOWNLOAD_BYTES_PER_S = 500e6  # a Hub download per node, for the load-time estimate only
AMBER_BYTES_PER_TOKEN = 20.8e9 / (1_706_976 * 2049)  # a chunk file's JSON per token id (about 5.95)
SCAN_TOKENS_PER_CORE_S = 50e6  # the exposure-scan kernel at 360k probes (BENCHMARKS.md, "Exposure counts")


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

    @property
    def largest_checkpoint(self) -> float:
        return max(self.checkpoint_bytes.values(), default=0.0)

    def describe(self) -> str:
        gb = 1e9
        ckpt_total = sum(self.checkpoint_bytes.values())
        chunk_total = sum(self.chunk_bytes.values())
        rows = sum(size / AMBER_ROW_BYTES for size in self.chunk_bytes.values())
        per_actor_disk = 2 * self.largest_checkpoint  # the one loading + the prefetched next
        landed = self.sequences * (LANDED_BYTES_PER_ROW + (GENERATED_BYTES_PER_ROW if self.keep_generated else 0))
        margin = f" (+{DISK_MARGIN_BYTES / 1024**3:.0f} GiB kept free beyond each download)"
        if self.keep_downloads:
            disk = (f"peak disk: every checkpoint an actor loads stays (model.keep_downloads): up to "
                    f"{ckpt_total / gb:,.1f} GB over the nodes that load them{margin}")
        else:
            disk = (f"peak disk per actor: {per_actor_disk / gb:,.1f} GB (the checkpoint loading + the next one "
                    f"prefetched; each is deleted once its weights are in memory){margin}; x the actors on a node "
                    f"(8 GPUs: {8 * per_actor_disk / gb:,.0f} GB)")
        lines = [
            f"downloads: {ckpt_total / gb:,.1f} GB of checkpoints ({self.checkpoints} loads, sizes from "
            f"{self.sizes_from}) + {chunk_total / gb:,.1f} GB of chunk files streamed once "
            f"({len(self.chunk_bytes)} probe sets to build; chunks are never stored)",
            disk,
            f"driver disk: ~{rows * LINE_INDEX_BYTES_PER_ROW / gb:,.2f} GB of line indexes in the probe cache, "
            f"~{landed / gb:,.2f} GB of landed Parquet",
        ]
        hours = {label: self.sequences / rate / 3600 for label, rate in
                 (("reference (13.3 seq/s, A100)", REFERENCE_RATE), ("compute bound (~900 seq/s, H200)",
                                                                      COMPUTE_BOUND_RATE))}
        if self.measured_rate:
            hours = {f"measured here ({self.measured_rate:,.0f} seq/s per GPU actor)":
                     self.sequences / self.measured_rate / 3600, **hours}
        load_hours = sum(size / ASSUMED_DOWNLOAD_BYTES_PER_S for size in self.checkpoint_bytes.values()) / 3600
        lines.append("GPU-hours for scoring: " + "; ".join(f"{h:,.1f} at the {label} rate" for label, h in hours.items()))
        lines.append(f"checkpoint downloads: ~{load_hours:,.1f} actor-hours at {ASSUMED_DOWNLOAD_BYTES_PER_S / 1e6:.0f} "
                     "MB/s, overlapped with scoring by the prefetch")
        if self.scan_bytes:
            scan_total = sum(self.scan_bytes.values())
            core_hours = scan_total / AMBER_BYTES_PER_TOKEN / SCAN_TOKENS_PER_CORE_S / 3600
            lines.append(f"exposure scans: {len(self.scan_bytes)} chunk files, {scan_total / gb:,.1f} GB to stream "
                         f"(~{scan_total / AMBER_BYTES_PER_TOKEN / 1e9:,.1f}B tokens), ~{core_hours:,.1f} core-hours "
                         f"at {SCAN_TOKENS_PER_CORE_S / 1e6:.0f}M tokens/s per core, on CPUs beside the GPUs")
        lines += self.notes
        return "\n".join(lines)


def estimate_cost(spec: SweepSpec, plan: Plan, landed: LandedOutput | None = None,
                  offline: bool = False) -> CostEstimate:
    """What `plan` costs; `landed`: the spec's output when it exists (its probe sets need no build, and its GPU
    cells give a measured rate)."""
    estimate = CostEstimate(checkpoints=len(plan.work), sequences=plan.sequences_to_do,
                            keep_generated=spec.keeps_generated(), keep_downloads=spec.model.keep_downloads)
    _checkpoint_sizes(spec, plan, estimate, offline)
    _chunk_sizes(spec, plan, landed, estimate, offline)
    _scan_sizes(spec, landed, estimate, offline)
    if landed is not None and landed.done_cells():
        cells = landed.cells().filter(pl.col("device") != "cpu").select("sequences_per_s").collect()
        rates = [r for r in cells["sequences_per_s"].to_list() if r]
        if rates:
            estimate.measured_rate = statistics.median(rates)
    return estimate


def _checkpoint_sizes(spec: SweepSpec, plan: Plan, estimate: CostEstimate, offline: bool) -> None:
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
    estimate.sizes_from = "Amber's published sizes (offline)"
    estimate.checkpoint_bytes = {c: AMBER_MAIN_BYTES if spec.revision_for(c) == "main" else AMBER_CKPT_BYTES
                                 for c in ckpts}


def _chunk_sizes(spec: SweepSpec, plan: Plan, landed: LandedOutput | None, estimate: CostEstimate,
                 offline: bool) -> None:
    """The chunk files whose probe sets still need a build (streamed once each)."""
    sampled = {chunk for chunk, _ in landed.ledgers.probe_files()} if landed is not None else set()
    chunks = [chunk for chunk in plan.chunks_needed if chunk not in sampled]
    estimate.chunk_bytes = _file_sizes(spec, chunks, estimate, offline, "their cells would fail")


def _scan_sizes(spec: SweepSpec, landed: LandedOutput | None, estimate: CostEstimate, offline: bool) -> None:
    """The chunk files of `exposure.chunks` not yet scanned for every scored chunk's probe sequences."""
    if spec.exposure is None:
        return
    scanned = landed.ledgers.scanned_probe_chunks if landed is not None else (lambda seen: set())
    todo = [seen for seen in spec.exposure.chunks if not set(spec.chunks) <= scanned(seen)]
    estimate.scan_bytes = _file_sizes(spec, todo, estimate, offline, "their scans would fail")


def _file_sizes(spec: SweepSpec, chunks: list[int], estimate: CostEstimate, offline: bool,
                if_missing: str) -> dict[int, float]:
    """Bytes of each chunk file (Amber's published size offline, or when the dataset cannot be listed: said in a
    note); a missing file is left out and named in a note."""
    if offline and not is_local(spec.data.source):
        return {chunk: AMBER_CHUNK_BYTES for chunk in chunks}
    try:
        described = describe_chunks(spec.data.source, {c: spec.data.file_for(c) for c in chunks}, spec.data.revision)
    except Exception as error:  # noqa: BLE001 - fall back to the published sizes, and say so
        estimate.notes.append(f"(could not list chunk sizes: {one_line(error)}; assuming Amber's)")
        return {chunk: AMBER_CHUNK_BYTES for chunk in chunks}
    missing = [c for c, d in described.items() if isinstance(d, Exception)]
    if missing:
        estimate.notes.append(f"{len(missing)} chunk files not found ({if_missing}): chunks {missing[:10]}")
    return {c: float(d.size or 0) for c, d in described.items() if not isinstance(d, Exception)}
