"""What a probe set of a full-size training-stream chunk reads: bytes, requests, seconds (issue 22).

    python benchmarks/stream_reads.py                  # Pythia's geometry: chunks of 1,024,000 items of 2049 uint16
    python benchmarks/stream_reads.py --chunks 4 --samples 1000

Writes, as sparse files (the token bytes take no disk), a Megatron dataset with Pythia's geometry: `document.idx`
(real: the header, int32 sizes, int64 pointers, the document index) for --chunks chunks of 1000 steps x 1024
sequences, and the tokens as shards of --shard-gb each, cut inside items as Pythia's are; and an OLMo-style numpy
stream of the same size (raw uint16 token files of 2048-token instances, a raw uint32 order file of a random
permutation). Then builds the probe set of the last chunk of each the way a sweep does (sweep/data/stream_probes.py)
and prints what it read locally (ranges closer than 64 KB are one read), what the same ranges cost as Hub requests
(coalesced as sweep/data/byte_ranges.py does at 256 KB: computed, no Hub here), and the time. Also prints the sha256
rate of this machine, which prices hashing a whole local `.bin` (what memsweep does not do: see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sweep.data.byte_ranges import RANGE_GAP_BYTES, RANGE_MAX_BYTES, coalesce
from sweep.data.probes import sample_rows
from sweep.data.stream_chunks import describe_stream, open_stream, stream_chunk
from sweep.data.stream_probes import build_stream_probe_set
from sweep.spec import DataSpec
from sweep.timeline import Timeline

PER_STEP, STEPS_PER_CHUNK, ITEM_TOKENS = 1024, 1000, 2049
PYTHIA_ITEMS = 143_000 * 1024


def write_megatron(folder: Path, items: int, shard_bytes: int) -> None:
    folder.mkdir(parents=True)
    header = b"MMIDIDX\x00\x00" + np.array([1], "<u8").tobytes() + bytes([8]) + np.array([items, items + 1], "<u8").tobytes()
    with open(folder / "document.idx", "wb") as index:
        index.write(header)
        index.write(np.full(items, ITEM_TOKENS, dtype="<i4").tobytes())
        index.write((np.arange(items, dtype="<i8") * ITEM_TOKENS * 2).tobytes())
        index.write(np.arange(items + 1, dtype="<i8").tobytes())
    total = items * ITEM_TOKENS * 2
    shards = -(-total // shard_bytes)
    for k in range(shards):
        with open(folder / f"document-{k:05d}-of-{shards - 1:05d}.bin", "wb") as shard:
            shard.truncate(min(shard_bytes, total - k * shard_bytes))  # sparse: no disk, reads as zeros


def write_numpy(folder: Path, instances: int, files: int, seed: int) -> None:
    (folder / "tokens").mkdir(parents=True)
    for k, part in enumerate(np.array_split(np.arange(instances), files)):
        with open(folder / "tokens" / f"part-{k:03d}.npy", "wb") as handle:
            handle.truncate(len(part) * 2048 * 2)
    np.random.default_rng(seed).permutation(instances).astype("<u4").tofile(folder / "global_indices.npy")


def hub_cost(spec: DataSpec, chunk: int, samples: int, width: int) -> tuple[int, int]:
    """(bytes, requests) the same probe set costs as Hub range requests: the header and last entry, the chunk's index
    (or order) slice, and the sampled tokens, each file's ranges coalesced as HubFile does."""
    source = describe_stream(spec)
    stream = open_stream(source)
    timeline = Timeline(PER_STEP, STEPS_PER_CHUNK)
    start, stop = timeline.chunk_range(chunk)
    rows = sample_rows(stop - start, samples, 42) + start
    opened = stream.bytes_read, stream.requests
    if spec.format == "megatron":
        index = [(34 + 4 * start, 4 * (stop - start)), (34 + 4 * stream.length + 8 * start, 8 * (stop - start))]
        item = [(int(p) * 2 * ITEM_TOKENS, width * 2) for p in rows]  # one uint16 item after another
        ends = np.cumsum([f.size for f in stream.bin_files])
        per_file: dict[int, list] = {}
        for offset, length in item:
            f = int(np.searchsorted(ends, offset, side="right"))
            per_file.setdefault(f, []).append((offset, length))  # a straddling range: one more request, ignored here
        spans = [coalesce(index, RANGE_GAP_BYTES, RANGE_MAX_BYTES)] + [coalesce(r, RANGE_GAP_BYTES, RANGE_MAX_BYTES)
                                                                      for r in per_file.values()]
    else:
        order = np.fromfile(Path(spec.source) / "global_indices.npy", dtype="<u4")[rows].astype(np.int64)
        per_file: dict[int, list] = {}
        bounds = np.cumsum([f.size // 4096 for f in stream.token_files])
        for instance in order:
            f = int(np.searchsorted(bounds, instance, side="right"))
            first = int(bounds[f - 1]) if f else 0
            per_file.setdefault(f, []).append(((int(instance) - first) * 4096, width * 2))
        spans = [coalesce([(4 * start, 4 * (stop - start))], RANGE_GAP_BYTES, RANGE_MAX_BYTES)] + [
            coalesce(r, RANGE_GAP_BYTES, RANGE_MAX_BYTES) for r in per_file.values()]
    return (opened[0] + sum(end - begin for group in spans for begin, end, _ in group),
            opened[1] + sum(len(group) for group in spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2, help="chunks of 1000 steps x 1024 sequences to write")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--shard-gb", type=float, default=4.0)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l", type=int, default=32)
    args = parser.parse_args()
    items = args.chunks * PER_STEP * STEPS_PER_CHUNK
    chunk, width = args.chunks - 1, args.k + args.l
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.chunks} chunks, {items:,} items")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        began = time.perf_counter()
        write_megatron(root / "megatron", items, int(args.shard_gb * 1e9))
        write_numpy(root / "numpy", items, files=8, seed=0)
        print(f"wrote the index ({(root / 'megatron' / 'document.idx').stat().st_size / 1e6:.1f} MB) and sparse "
              f"tokens ({items * ITEM_TOKENS * 2 / 1e9:.1f} GB) in {time.perf_counter() - began:.1f} s")
        specs = {"megatron": DataSpec(source=str(root / "megatron"), format="megatron", file="document"),
                 "numpy": DataSpec(source=str(root / "numpy"), format="numpy", file="tokens/*.npy", dtype="uint16",
                                   sequence_len=2048, order="global_indices.npy")}
        for name, spec in specs.items():
            for attempt in range(2):  # the first fills the page cache with the index slice
                began = time.perf_counter()
                source = describe_stream(spec)
                build = build_stream_probe_set(stream_chunk(source, Timeline(PER_STEP, STEPS_PER_CHUNK), chunk),
                                               args.samples, 42, args.k, args.l)
                seconds = time.perf_counter() - began
            read = build.chunk_file
            hub_bytes, hub_requests = hub_cost(spec, chunk, args.samples, width)
            print(f"{name}: chunk {chunk} ({PER_STEP * STEPS_PER_CHUNK:,} items), {args.samples} sampled: local "
                  f"{read.bytes_read / 1e6:.2f} MB in {read.requests:,} reads, {seconds:.2f} s warm; as Hub range "
                  f"requests {hub_bytes / 1e6:.2f} MB in {hub_requests:,} requests (coalesced at "
                  f"{RANGE_GAP_BYTES // 1024} KB)")
    block = os.urandom(64 * 1024 * 1024)
    began = time.process_time()
    for _ in range(8):
        hashlib.sha256(block).hexdigest()
    rate = 8 * len(block) / (time.process_time() - began)
    bin_bytes = PYTHIA_ITEMS * ITEM_TOKENS * 2
    print(f"sha256: {rate / 1e9:.2f} GB per CPU-second; hashing Pythia's whole .bin ({bin_bytes / 1e9:.1f} GB) would "
          f"take {bin_bytes / rate / 60:.1f} CPU-minutes, plus reading it")


if __name__ == "__main__":
    main()
