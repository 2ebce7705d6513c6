"""Peak disk per node of a sweep from the Hub: checkpoints downloaded and deleted, chunks streamed, never stored.

    PYTHONPATH=. .venv/bin/python benchmarks/disk_budget.py            # as root: tmpfs mounts (see below)
    PYTHONPATH=. .venv/bin/python benchmarks/disk_budget.py --hidden 192 --chunk-mb 40 --json out.json

Builds a local Hub laid out exactly like LLM360/Amber (tests/hub_world.py: `ckpt_000` .. branches of fp32
pickled `.bin` in 3 shards + index, the last checkpoint on `main` as bf16 safetensors; `train/train_00c.jsonl`
chunks of raw rows of 2049 ids, LFS), serves it with olah behind the Hub-conformance wrapper, and runs real
memsweep sweeps from the Hub ids (`run_sweep`, local Ray with 2 logical GPUs, bf16 on CPU) in these scenarios:

  actors-1       one actor, downloads deleted once loaded (the default)
  actors-2       two actors on the one node, sharing one download dir
  keep-1         one actor with `model.keep_downloads: true`, for contrast
  fp32-1         (not by default) one actor scoring in float32: on CPU the model then keeps views of the mapped
                 fp32 shards, so a deleted checkpoint's files hold their disk until the model is freed
  small-disk     `model.download_dir` on a filesystem that holds a bf16 `main` download but not an fp32 one
                 (free space between 2 GiB + the bf16 size and 2 GiB + the fp32 size: fetch_checkpoint keeps a
                 2 GiB margin, actors/checkpoint_files.py DISK_MARGIN_BYTES); the failed cells' one-line errors are printed
  disk-fills     `model.download_dir` on a loop-mounted ext4 with room for the margin and a few checkpoints,
                 which another writer (AnotherWriter) fills once a download has a complete shard and others in
                 flight, and frees once every cell of the checkpoint it interrupted has failed; shows the errors,
                 that later checkpoints are scored, and what the failed download left on the disk

A sampler thread in this process measures, every --interval-ms, the bytes allocated (st_blocks) under each
folder of the run: `model.download_dir`, HF_HOME (the Hub client's cache), `data.cache_dir` (the probe cache)
and the output; and, where the download dir is a filesystem of its own (a tmpfs mounted here, as root), that
filesystem's used bytes (statvfs), which also counts files deleted while still mapped by a process. It keeps
each peak, when it happened, and which checkpoints were in the download dir then. The server's request log
shows how each chunk file was read (whole GETs without Range vs 206 range reads) and how often each checkpoint
was downloaded.

Everything lives under one work folder (--workdir, default a new /tmp folder) and is removed at the end, mounts
unmounted, the server stopped and Ray shut down, also on Ctrl-C or when the watchdog stops a run whose process
tree passes --limit-gb of RSS. Cost here (defaults): about 30 s of building, then 30 s to 5 minutes per scenario
on a shared 2-core VM depending on its load (load average 30-80: 3.5-5 minutes, mostly Ray start-up of the
actors and the probe-set builds), ~0.7 GB of /tmp, tmpfs pages only for what is written (< 0.3 GB), a peak of
~5 GB RSS over the process tree (Ray workers). Root is needed for the mounts; without it (or with --no-mount)
the folder sizes are measured and the two small-disk scenarios are skipped.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.probe_memory import write_synthetic_chunk
from sweep.run.cost import (
    AMBER_CHUNK_BYTES,
    AMBER_CKPT_BYTES,
    AMBER_MAIN_BYTES,
    AMBER_ROW_BYTES,
)
from actors.checkpoint_files import DISK_MARGIN_BYTES

MODEL_ID, DATA_ID = "LLM360/Amber", "LLM360/AmberDatasets"
AMBER_CHECKPOINTS = AMBER_CHUNKS = 360
AMBER_SAMPLES = 1000
GPUS_PER_NODE = 8
ROOMY_DISK_BYTES = 4 * 1024**3  # a measured download tmpfs: the 2 GiB margin + room for every checkpoint here
FOLDERS = ("downloads", "hf_home", "probe_cache", "output")
WEIGHT_SUFFIXES = (".bin", ".safetensors")


# ---- measuring --------------------------------------------------------------------------------------------------

def allocated_bytes(folder: Path) -> int:
    """Bytes allocated to the files under `folder` (st_blocks x 512), tolerant of files deleted while walking."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def filesystem_used(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@dataclass
class Peak:
    bytes: int = 0
    at_s: float = 0.0  # seconds after the sampler started
    detail: dict = field(default_factory=dict)  # what was there at the peak


class DiskSampler:
    """Samples folder sizes every `interval_s` on a thread; `peaks` per folder and "total", and where the download
    dir has a filesystem of its own (`disk`): "downloads_fs", that filesystem's used bytes less what it used at
    the start and less `foreign` files (another writer's), and "downloads_held", downloads_fs less the download
    dir's allocated bytes: files deleted but still open or mapped by a process, invisible to a walk of the folder.

    `revisions`: commit sha -> revision name, to say which checkpoints sat in the download dir at its peaks.
    """

    def __init__(self, folders: dict[str, Path], disk: Path | None, revisions: dict[str, str], interval_s: float,
                 foreign: tuple[Path, ...] = ()):
        self.folders, self.disk, self.revisions, self.interval_s = folders, disk, revisions, interval_s
        self.foreign = foreign
        names = [*folders, "total", *(("downloads_fs", "downloads_held") if disk is not None else ())]
        self.peaks: dict[str, Peak] = {name: Peak() for name in names}
        self.samples = 0
        self.gaps: list[float] = []
        self.download_timeline: list[tuple] = []  # (s, du bytes, fs bytes, revisions present) at each change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-sampler", daemon=True)

    def __enter__(self) -> Self:
        self.started = time.perf_counter()
        self.baseline = filesystem_used(self.disk) if self.disk is not None else 0
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _present(self) -> dict[str, int]:
        """revision -> bytes of each checkpoint folder (`<org>--<name>/<commit>`) in the download dir."""
        found = {}
        for repo in _subfolders(self.folders["downloads"]):
            for commit in _subfolders(repo):
                found[self.revisions.get(commit.name, commit.name[:12])] = allocated_bytes(commit)
        return found

    def _disk_used(self) -> int:
        foreign = 0
        for path in self.foreign:
            try:
                foreign += os.stat(path).st_blocks * 512
            except FileNotFoundError:
                pass
        return filesystem_used(self.disk) - self.baseline - foreign

    def sample(self) -> dict[str, int]:
        before = self._disk_used() if self.disk is not None else 0
        sizes = {name: allocated_bytes(path) for name, path in self.folders.items()}
        sizes["total"] = sum(sizes.values())
        if self.disk is not None:
            after = self._disk_used()
            sizes["downloads_fs"] = max(before, after)
            # a file written or deleted during the walk moves statvfs before/after to either side of the walk's
            # count; a file deleted but still held keeps both above it
            sizes["downloads_held"] = max(0, min(before, after) - sizes["downloads"])
        return sizes

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            now = time.perf_counter() - self.started
            if last is not None:
                self.gaps.append(now - last)
            last = now
            sizes = self.sample()
            present = self._present() if sizes["downloads"] else {}
            for name, size in sizes.items():
                if size > self.peaks[name].bytes:
                    detail = {"present": present} if name.startswith("downloads") else \
                        {k: v for k, v in sizes.items() if k != "total"} if name == "total" else {}
                    self.peaks[name] = Peak(size, now, detail)
            state = (sizes["downloads"], sizes.get("downloads_fs"), sorted(present))
            if not self.download_timeline or tuple(self.download_timeline[-1][1:]) != state:
                self.download_timeline.append((round(now, 3), *state))
            self.samples += 1
            self._stop.wait(self.interval_s)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [entry for entry in folder.iterdir() if entry.is_dir()]
    except FileNotFoundError:
        return []


class Watchdog:
    """Interrupts the main thread (KeyboardInterrupt: cleanup runs) when this process tree's RSS passes a limit."""

    def __init__(self, limit_bytes: int):
        self.limit, self.peak, self.tripped = limit_bytes, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watchdog", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(1.0):
            rss = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            if rss > self.limit and not self.tripped:
                self.tripped = True
                print(f"watchdog: process tree RSS {rss / 1e9:.1f} GB > {self.limit / 1e9:.1f} GB, stopping",
                      flush=True)
                _thread.interrupt_main()


# ---- the world --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldSizes:
    fp32_checkpoint: int  # bytes a `ckpt_*` download takes (fp32 .bin shards + index + configs)
    bf16_checkpoint: int  # bytes the `main` download takes (bf16 safetensors + index + configs)
    chunk_files: list[int]
    chunk_rows: list[int]


def build_world(root: Path, checkpoints: int, chunks: int, hidden: int, layers: int, chunk_mb: int):
    """Checkpoints (random LLaMA, Amber's vocabulary, distinct seeds) and chunks, laid out as Amber's repositories.

    Returns (HubWorld, [rows per chunk]). The local folders are deleted once the repositories hold them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.hub_world import build_amber_world

    local = root / "local"
    folders = []
    for ckpt in range(checkpoints):
        torch.manual_seed(ckpt)
        config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 8 * 8,
                             num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                             num_key_value_heads=max(1, hidden // 32), max_position_embeddings=2048,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        folder = local / f"ckpt_{ckpt:03d}"
        LlamaForCausalLM(config).save_pretrained(folder)
        folders.append(folder)
    chunk_files, rows = [], []
    for chunk in range(chunks):
        path = local / f"train_{chunk:03d}.jsonl"
        rows.append(write_synthetic_chunk(path, chunk_mb, seed=chunk))
        chunk_files.append(path)
    world = build_amber_world(root / "mirrors", folders, chunk_files, model_id=MODEL_ID, data_id=DATA_ID)
    shutil.rmtree(local)
    return world, rows


# ---- one sweep --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    label: str
    actors: int
    keep_downloads: bool = False
    download_disk_bytes: int = ROOMY_DISK_BYTES  # size of the filesystem holding model.download_dir
    another_writer: bool = False  # an ext4 disk that another writer fills while a checkpoint downloads
    dtype: str = "bfloat16"  # float32: on CPU the model keeps views of the mapped fp32 shards it loaded


class AnotherWriter:
    """Another process on the download disk: once the first weight shard of a download is complete (others of
    that checkpoint still in flight), it takes all free space but `leave_bytes` (fallocate: instant, no data
    written); it gives the space back once every cell of the checkpoint it interrupted has failed (`cells_per_ckpt`
    failure records), or after `timeout_s`.

    `events` says what happened and when (seconds after start): "filled" (with the checkpoint folders then
    present and the shards still downloading), "released"."""

    def __init__(self, disk: Path, downloads: Path, failures: Path, revisions: dict[str, str], cells_per_ckpt: int,
                 leave_bytes: int, timeout_s: float = 120.0):
        self.disk, self.downloads, self.failures, self.revisions = disk, downloads, failures, revisions
        self.cells_per_ckpt = cells_per_ckpt
        self.leave_bytes, self.timeout_s = leave_bytes, timeout_s
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="another-writer", daemon=True)
        self.fill_path = disk / "another-writer.fill"

    def __enter__(self) -> Self:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.fill_path.unlink(missing_ok=True)

    def _now(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    def _run(self) -> None:
        interrupted = None
        while not self._stop.wait(0.002) and interrupted is None:
            for repo in _subfolders(self.downloads):
                for commit in _subfolders(repo):
                    done = [p.name for p in commit.glob("*") if p.name.endswith(WEIGHT_SUFFIXES)]
                    pending = [p.name for p in commit.glob(".cache/huggingface/download/*.incomplete")]
                    if done and pending:
                        interrupted = self.revisions.get(commit.name, commit.name)
                        break
        if interrupted is None:
            return
        free = shutil.disk_usage(self.disk).free
        with open(self.fill_path, "wb") as fill:
            os.posix_fallocate(fill.fileno(), 0, max(0, free - self.leave_bytes))
        self.events.append({"at_s": self._now(), "event": "filled", "interrupted": interrupted, "done": done,
                            "pending": pending, "free_before": free,
                            "free_after": shutil.disk_usage(self.disk).free})
        ckpt = int(interrupted.removeprefix("ckpt_")) if interrupted.startswith("ckpt_") else len(self.revisions) - 1
        deadline = time.perf_counter() + self.timeout_s
        while not self._stop.wait(0.05) and time.perf_counter() < deadline:
            if len(list(self.failures.glob(f"ckpt={ckpt}-chunk=*.json"))) >= self.cells_per_ckpt:
                break
        self.fill_path.unlink(missing_ok=True)
        self.events.append({"at_s": self._now(), "event": "released"})


@dataclass
class RunResult:
    label: str
    actors: int
    keep_downloads: bool
    download_disk_bytes: int
    seconds: float
    cells_scored: int
    cells_failed: int
    loads: dict
    load_average: tuple  # (1-min before, 1-min after)
    peaks: dict  # name -> Peak as dict
    left_after: dict  # name -> bytes when the sweep returned
    left_files: dict  # name -> file names left in the download dir (if any)
    samples: int
    interval_max_s: float
    interval_median_s: float
    chunk_reads: dict  # chunk file -> {"whole_gets", "whole_bytes", "range_gets", "range_bytes", "range_not_206"}
    weight_gets: dict  # revision -> {"gets", "bytes"}
    errors: list  # distinct one-line errors of the failed cells, with their cells
    download_timeline: list
    mounted: bool
    events: list  # another writer's fill and release
    probe_set_bytes_per_row: float  # apparent bytes of the cached probe sets per sampled row


def write_spec(run_dir: Path, scenario: Scenario, folders: dict[str, Path], checkpoints: int, chunks: int,
               samples: int) -> Path:
    spec = {
        "name": scenario.label,
        "model": {"source": MODEL_ID, "revision": "ckpt_{ckpt:03d}", "revision_overrides": {checkpoints - 1: "main"},
                  "dtype": scenario.dtype, "download_dir": str(folders["downloads"]),
                  "keep_downloads": scenario.keep_downloads},
        "data": {"source": DATA_ID, "file": "train/train_{chunk:03d}.jsonl", "samples_per_chunk": samples, "seed": 42,
                 "cache_dir": str(folders["probe_cache"]), "vocab_size": 32000},
        "checkpoints": f"0-{checkpoints - 1}",
        "chunks": f"0-{chunks - 1}",
        "memorization": {"prompt_len": 32, "continuation_len": 32, "mode": "extractable", "nll": True},
        "resources": {"actors": scenario.actors, "gpus_per_actor": 1, "batch_size": 64, "max_attempts": 2},
        "output": str(folders["output"]),
    }
    path = run_dir / f"{scenario.label}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextmanager
def download_disk(folder: Path, scenario: Scenario, use_mounts: bool):
    """`folder` as a filesystem of its own of `scenario.download_disk_bytes`: a tmpfs (pages taken only as files
    are written), or for `another_writer` a loop-mounted ext4 on a sparse file (its fallocate writes no data).
    Yields whether it is mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted, image = False, None
    if use_mounts:
        if scenario.another_writer:
            image = folder.with_name(folder.name + ".img")
            image.touch()
            os.truncate(image, scenario.download_disk_bytes)  # sparse: blocks are taken only as ext4 writes
            subprocess.run(["mkfs.ext4", "-q", "-m", "0", "-F", str(image)], check=True, capture_output=True)
            command = ["mount", "-o", "loop", str(image), str(folder)]
        else:
            command = ["mount", "-t", "tmpfs", "-o", f"size={scenario.download_disk_bytes}", "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        mounted = result.returncode == 0
        if not mounted:
            print(f"(cannot mount at {folder}: {result.stderr.strip()}; sizes from st_blocks only)")
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        if image is not None:
            image.unlink(missing_ok=True)


def request_stats(requests) -> tuple[dict, dict]:
    chunks: dict[str, dict] = {}
    weights: dict[str, dict] = {}
    for request in requests:
        if request.method != "GET" or "/resolve/" not in request.path:
            continue
        name = request.path.rsplit("/", 1)[1]
        if name.endswith(".jsonl"):
            entry = chunks.setdefault(name, {"whole_gets": 0, "whole_bytes": 0, "range_gets": 0, "range_bytes": 0,
                                             "range_not_206": 0})
            kind = "whole" if request.range is None else "range"
            entry[f"{kind}_gets"] += 1
            entry[f"{kind}_bytes"] += request.length or 0
            if request.range is not None and request.status != 206:
                entry["range_not_206"] += 1
        elif name.endswith((".bin", ".safetensors")):
            revision = request.path.split("/resolve/", 1)[1].split("/", 1)[0]
            entry = weights.setdefault(revision, {"gets": 0, "bytes": 0})
            entry["gets"] += 1
            entry["bytes"] += request.length or 0
    return chunks, weights


def run_scenario(scenario: Scenario, root: Path, server, revisions: dict[str, str], args, use_mounts: bool
                 ) -> RunResult:
    import pytest

    from sweep.run.driver import run_sweep
    from sweep.spec import load_spec
    from tests.hub_world import apply_hub_client_env, hub_client_env

    run_dir = root / "runs" / scenario.label
    disk = run_dir / "disk"  # the download dir's own filesystem (when mounted); model.download_dir inside it
    folders = {name: run_dir / name for name in FOLDERS} | {"downloads": disk / "downloads"}
    run_dir.mkdir(parents=True)
    spec = load_spec(write_spec(run_dir, scenario, folders, args.checkpoints, args.chunks, args.samples))
    since = len(server.requests())
    load_before = os.getloadavg()[0]
    events: list[dict] = []
    with ExitStack() as stack:
        mounted = stack.enter_context(download_disk(disk, scenario, use_mounts))
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        apply_hub_client_env(patch, hub_client_env(server.endpoint, folders["hf_home"]))  # forwarded to actors
        writer = None
        if scenario.another_writer and mounted:
            writer = stack.enter_context(AnotherWriter(disk, folders["downloads"], folders["output"] / "failures",
                                                       revisions, args.chunks, leave_bytes=1 << 20))
        with DiskSampler(folders, disk if mounted else None, revisions, args.interval_ms / 1000,
                         foreign=(writer.fill_path,) if writer else ()) as sampler:
            began = time.perf_counter()
            summary = run_sweep(spec, progress=False)
            seconds = time.perf_counter() - began
        if writer is not None:
            events = writer.events
        left = sampler.sample()
        left_files = sorted(str(p.relative_to(folders["downloads"])) for p in folders["downloads"].rglob("*")
                            if p.is_file())
        probe_sets = sum(p.stat().st_size for p in (folders["probe_cache"] / "probes").glob("*.parquet"))
    chunk_reads, weight_gets = request_stats(server.requests(since))
    errors: dict[str, list] = {}
    for failure in summary.failed:
        errors.setdefault(failure["error"], []).append((failure["ckpt"], failure["chunk"]))
    gaps = sorted(sampler.gaps) or [0.0]
    return RunResult(
        label=scenario.label, actors=scenario.actors, keep_downloads=scenario.keep_downloads,
        download_disk_bytes=scenario.download_disk_bytes, seconds=seconds, cells_scored=summary.schedule.cells_scored,
        cells_failed=len(summary.failed), loads=dict(summary.schedule.loads), load_average=(load_before, os.getloadavg()[0]),
        peaks={name: asdict(peak) for name, peak in sampler.peaks.items()}, left_after=left,
        left_files={"downloads": left_files} if left_files else {}, samples=sampler.samples,
        interval_max_s=gaps[-1], interval_median_s=gaps[len(gaps) // 2], chunk_reads=chunk_reads,
        weight_gets=weight_gets, errors=[{"error": e, "cells": cells} for e, cells in errors.items()],
        download_timeline=sampler.download_timeline, mounted=mounted, events=events,
        probe_set_bytes_per_row=probe_sets / (args.chunks * args.samples))


# ---- the report -------------------------------------------------------------------------------------------------

def mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def report(results: list[RunResult], sizes: WorldSizes, args) -> str:
    ckpt, main = sizes.fp32_checkpoint, sizes.bf16_checkpoint
    chunk_total = sum(sizes.chunk_files)
    lines = [
        (f"world: {args.checkpoints} checkpoints (hidden {args.hidden}, {args.layers} layers, vocab 32,000): "
         f"ckpt_* download {mb(ckpt)} (fp32 .bin, 3 shards), main {mb(main)} (bf16 safetensors, 3 shards); "
         f"{args.chunks} chunks, {mb(chunk_total)} in all ({', '.join(mb(s) for s in sizes.chunk_files)}; "
         f"{sum(sizes.chunk_rows):,} rows of 2049 ids), {args.samples} samples per chunk; "
         f"{args.checkpoints * args.chunks} cells per sweep"),
        "",
        ("| run | actors | s | load avg | cells ok / failed | peak download dir | x ckpt per actor | at that peak "
         "| peak download fs | of it deleted, still held | peak HF_HOME | peak probe cache | output | peak total "
         "| left on the download fs |"),
        "| --- | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        p = {name: peak["bytes"] for name, peak in r.peaks.items()}
        at = {name: f" @{peak['at_s']:.1f}s" for name, peak in r.peaks.items()}
        present = r.peaks["downloads"]["detail"].get("present", {})
        fs = f"{mb(p['downloads_fs'])}{at['downloads_fs']}" if r.mounted else "n/a"
        held = f"{mb(p['downloads_held'])}{at['downloads_held']}" if r.mounted else "n/a"
        left = r.left_after.get("downloads_fs", r.left_after["downloads"])
        lines.append(
            f"| {r.label} | {r.actors} | {r.seconds:.0f} | {r.load_average[0]:.0f} / {r.load_average[1]:.0f} | "
            f"{r.cells_scored} / {r.cells_failed} | {mb(p['downloads'])}{at['downloads']} | "
            f"{p['downloads'] / ckpt / r.actors:.2f} | "
            f"{' + '.join(f'{rev} {v / 1e6:.1f}' for rev, v in sorted(present.items())) or '-'} | {fs} | {held} | "
            f"{mb(p['hf_home'])} | {mb(p['probe_cache'])} | {mb(r.left_after['output'])} | {mb(p['total'])} | "
            f"{mb(left)} |")
    lines.append("")
    for r in results:
        reads = r.chunk_reads
        whole = {name: e["whole_gets"] for name, e in sorted(reads.items())}
        lines.append(
            f"{r.label}: chunk files GET whole (no Range): {whole}, {mb(sum(e['whole_bytes'] for e in reads.values()))}"
            f"; {sum(e['range_gets'] for e in reads.values())} range GETs, "
            f"{mb(sum(e['range_bytes'] for e in reads.values()))} read back, "
            f"{sum(e['range_not_206'] for e in reads.values())} not answered 206; weight-file GETs per commit "
            f"{ {rev[:8]: e['gets'] for rev, e in r.weight_gets.items()} } "
            f"({mb(sum(e['bytes'] for e in r.weight_gets.values()))}) for loads {r.loads}; sampler: {r.samples} "
            f"samples, interval median {1000 * r.interval_median_s:.0f} ms, max {1000 * r.interval_max_s:.0f} ms")
        most = max(r.download_timeline, key=lambda entry: len(entry[3]), default=None)
        if most is not None:
            lines.append(f"  most checkpoint folders in the download dir at once: {len(most[3])} ({' + '.join(most[3])}"
                         f", {mb(most[1])}, first at {most[0]:.1f} s)")
        for event in r.events:
            lines.append(f"  another writer: {event}")
        for entry in r.errors:
            cells = entry["cells"]
            lines.append(f"  {len(cells)} cells of ckpts {sorted({c for c, _ in cells})} failed with: {entry['error']}")
        if r.left_files:
            files = r.left_files["downloads"]
            weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
            lines.append(f"  left in the download dir: {len(files)} files, {mb(r.left_after['downloads'])}; "
                         f"weight files: {weights or 'none'}")
    lines += ["", *extrapolate(results, sizes, args)]
    return "\n".join(lines)


def extrapolate(results: list[RunResult], sizes: WorldSizes, args) -> list[str]:
    """Measured ratios times Amber's sizes (sweep/run/cost.py's published-size constants), as a table."""
    by_label = {r.label: r for r in results}
    ckpt = sizes.fp32_checkpoint
    gb = 1e9
    lines = [(f"Amber: {AMBER_CKPT_BYTES / gb:.1f} GB fp32 ckpt_*, {AMBER_MAIN_BYTES / gb:.1f} GB bf16 main, "
              f"{AMBER_CHUNK_BYTES / gb:.1f} GB per chunk, {AMBER_CHECKPOINTS} x {AMBER_CHUNKS}; "
              f"{GPUS_PER_NODE} actors per node"), "",
             "| quantity | measured here | ratio | Amber |", "| --- | ---: | ---: | ---: |"]
    for label, actors in (("actors-1", 1), ("actors-2", 2)):
        if label not in by_label:
            continue
        r = by_label[label]
        kinds = ("downloads", "downloads_fs") if r.mounted else ("downloads",)
        peak = max(r.peaks[kind]["bytes"] for kind in kinds)
        ratio = peak / ckpt / actors
        lines.append(f"| download dir peak, {actors} actor{'s' * (actors > 1)} on the node (du and statvfs) | "
                     f"{mb(peak)} | {ratio:.2f} x ckpt per actor | {ratio * AMBER_CKPT_BYTES / gb:.1f} GB per actor, "
                     f"{GPUS_PER_NODE * ratio * AMBER_CKPT_BYTES / gb:.0f} GB per node |")
    if "keep-1" in by_label:
        r = by_label["keep-1"]
        every = (args.checkpoints - 1) * ckpt + sizes.bf16_checkpoint
        amber = (AMBER_CHECKPOINTS - 1) * AMBER_CKPT_BYTES + AMBER_MAIN_BYTES
        lines.append(f"| download dir peak, keep_downloads: true | {mb(r.peaks['downloads']['bytes'])} | "
                     f"{r.peaks['downloads']['bytes'] / every:.2f} x every checkpoint | {amber / 1e12:.2f} TB over "
                     f"the nodes that loaded them |")
    if "actors-1" in by_label:
        r = by_label["actors-1"]
        rows = sum(sizes.chunk_rows)
        amber_rows = AMBER_CHUNK_BYTES / AMBER_ROW_BYTES * AMBER_CHUNKS
        lines.append(f"| HF_HOME peak | {mb(r.peaks['hf_home']['bytes'])} | - | the same (nothing is cached "
                     f"there on this path) |")
        lines.append(f"| chunk bytes on disk | 0 of {mb(sum(sizes.chunk_files))} streamed | 0 | 0 of "
                     f"{AMBER_CHUNKS * AMBER_CHUNK_BYTES / 1e12:.1f} TB |")
        lines.append(f"| probe cache peak (allocated) | {mb(r.peaks['probe_cache']['bytes'])} for {rows:,} rows | "
                     f"{r.peaks['probe_cache']['bytes'] / sum(sizes.chunk_files):.4f} x chunk bytes | line indexes "
                     f"~{amber_rows * 1.6 / gb:.2f} GB at cost.py's 1.6 B/row + probe sets "
                     f"~{AMBER_CHUNKS * AMBER_SAMPLES * r.probe_set_bytes_per_row / gb:.2f} GB at "
                     f"{r.probe_set_bytes_per_row:.0f} B per sampled row (measured here, random ids) |")
    return lines


# ---- main -------------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=6, help="checkpoints (the last on main)")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size (128: ~36 MB of fp32 per checkpoint)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--chunk-mb", type=int, default=30)
    parser.add_argument("--samples", type=int, default=64, help="samples per chunk")
    parser.add_argument("--interval-ms", type=float, default=25.0)
    parser.add_argument("--scenarios", default="actors-1,actors-2,keep-1,small-disk,disk-fills")
    parser.add_argument("--no-mount", action="store_true", help="do not mount tmpfs (sizes from st_blocks only)")
    parser.add_argument("--limit-gb", type=float, default=6.0, help="stop if this process tree's RSS passes it")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new folder in /tmp; removed after)")
    parser.add_argument("--json", type=Path, help="also write every result (timelines included) here")
    parser.add_argument("--from-json", type=Path, help="only print the report of an earlier --json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for key in ("checkpoints", "chunks", "hidden", "layers", "samples"):
            setattr(args, key, int(saved["args"][key]))
        print(report([RunResult(**r) for r in saved["results"]], WorldSizes(**saved["sizes"]), args))
        return

    import ray

    from actors.checkpoint_files import checkpoint_download_size
    from tests.hub_world import serve_hub

    root = Path(tempfile.mkdtemp(prefix="disk-budget-", dir=args.workdir))
    use_mounts = not args.no_mount and os.geteuid() == 0
    results: list[RunResult] = []
    try:
        with Watchdog(int(args.limit_gb * 1e9)) as watchdog:
            began = time.perf_counter()
            world, rows = build_world(root, args.checkpoints, args.chunks, args.hidden, args.layers, args.chunk_mb)
            print(f"built the world in {time.perf_counter() - began:.0f} s under {root}", flush=True)
            with serve_hub(world.mirrors, root / "server") as server:
                import huggingface_hub.hf_api
                import pytest

                from tests.hub_world import apply_hub_client_env, hub_client_env
                with pytest.MonkeyPatch.context() as patch:  # the sizes exactly as fetch_checkpoint counts them
                    apply_hub_client_env(patch, hub_client_env(server.endpoint, root / "hf-home-sizes"))
                    # huggingface_hub's module-level functions share one HfApi made at import, before the endpoint
                    patch.setattr(huggingface_hub.hf_api.api, "endpoint", server.endpoint)
                    sizes = WorldSizes(
                        fp32_checkpoint=checkpoint_download_size(MODEL_ID, world.sha(world.revisions[0])),
                        bf16_checkpoint=checkpoint_download_size(MODEL_ID, world.sha("main")),
                        chunk_files=[len(world.read("main", f, "dataset")) for f in world.chunk_files],
                        chunk_rows=rows)
                revisions = {world.sha(rev): rev for rev in world.revisions}
                small = DISK_MARGIN_BYTES + (sizes.fp32_checkpoint + sizes.bf16_checkpoint) // 2
                # room for the margin and a few checkpoints once ext4 took its ~5% (inode tables, journal)
                filling = int((DISK_MARGIN_BYTES + 4 * sizes.fp32_checkpoint) * 1.07)
                scenarios = {s.label: s for s in (Scenario("actors-1", 1), Scenario("actors-2", 2),
                                                  Scenario("keep-1", 1, keep_downloads=True),
                                                  Scenario("small-disk", 1, download_disk_bytes=small),
                                                  Scenario("disk-fills", 1, download_disk_bytes=filling,
                                                           another_writer=True),
                                                  Scenario("fp32-1", 1, dtype="float32"))}
                # log_to_driver: the actors' warnings (a failed prefetch is only logged there) reach this output
                ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=True)
                try:
                    for label in args.scenarios.split(","):
                        scenario = scenarios[label]
                        if label in ("small-disk", "disk-fills") and not use_mounts:
                            print(f"{label}: skipped (needs root to mount a filesystem of its own)")
                            continue
                        result = run_scenario(scenario, root, server, revisions, args, use_mounts)
                        results.append(result)
                        print(f"{label}: {result.seconds:.0f} s, {result.schedule.cells_scored} cells scored, "
                              f"{result.cells_failed} failed, peak downloads {mb(result.peaks['downloads']['bytes'])}",
                              flush=True)
                finally:
                    ray.shutdown()
            print(f"\npeak RSS of this process tree: {watchdog.peak / 1e9:.1f} GB; machine: {os.cpu_count()} cores, "
                  f"load average now {os.getloadavg()[0]:.1f}\n")
            if args.json:  # first: a report that fails to print loses no measurement
                args.json.write_text(json.dumps({"sizes": asdict(sizes), "args": {k: str(v) for k, v in
                                                                                   vars(args).items()},
                                                 "results": [asdict(r) for r in results]}, indent=1))
            print(report(results, sizes, args))
    finally:
        for mount in sorted(root.glob("runs/*/disk")):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)  # after a Ctrl-C
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
