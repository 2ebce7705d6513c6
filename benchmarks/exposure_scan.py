"""Exposure-scan throughput: the compiled kernel against the plain way, on the same Amber-shaped bytes.

    python benchmarks/exposure_scan.py                         # 360,000 probes, 5,000 rows (68 MB), 5 rounds
    python benchmarks/exposure_scan.py --probes 1000 --rows 2000

Writes a temporary chunk of AmberDatasets rows (``{"token_ids": [2049 ids], "source": ...}``, ids uniform in
[0, 32000) written by ``json.dumps``: mostly 4-5 digits, about 6.7 bytes a token as in Amber) with planted
copies (the first k + l ids of some rows are probes, as in a probe's own chunk; other probes are copied 1-5
times anywhere, or copied with one id changed), and a probe index of --probes rows (the rest random, as
probes from other chunks mostly are). Then, in one process, reading the file from the page cache:

  (a) plain: sha256 of the bytes, ``json.loads`` per line, numpy polynomial hashes of every k-id window of
      the row, candidates by ``searchsorted`` in the sorted prompt hashes, each verified through dicts keyed
      by k-gram and (k + l)-gram tuples;
  (b) kernel: ``scan_chunk`` (sweep/exposures/kernel.py), 4 MB blocks as ``LocalChunkReader`` streams them;
  (c) binary: the same rows as a Megatron dataset of uint16 items (Pythia's layout: ``document.idx`` and the tokens
      in two byte-range shards), scanned as a sweep scans a stream chunk (``scan_stream_chunk``, sweep/exposures/
      scans.py: the index slice and the items' bytes read in 8 MB batches, hashed with sha256, counted by
      ``count_items``, which also logs each window occurrence's stream position);
  (d) binary kernel alone: ``count_items`` over the same items already in memory (no reading, no hashing);

and checks that all give identical counts for every probe. Methods take turns for --rounds rounds; the best
and the spread are printed. Tokens/s per core = tokens / CPU seconds of this (single-threaded) process, so
other load on the machine costs less than it would in wall time (printed too). Peak RSS: the process's VmHWM
during each method's rounds, and how far above the RSS before the rounds. Compile time: fresh processes with
an empty numba cache (compile), then with it filled (load). Whole corpus: 1.26T tokens (360 chunks x
1,706,976 rows x 2049 ids) / tokens per core-second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import psutil
from numpy.lib.stride_tricks import sliding_window_view
from peak_memory import peak_rss_bytes, reset_peak_rss  # benchmarks/ (this script's folder)

from sweep.data.probes import LocalChunkReader
from sweep.data.stream_chunks import describe_stream, open_stream, stream_chunk
from sweep.exposures.kernel import build_probe_index, count_items, scan_chunk
from sweep.exposures.scans import scan_stream_chunk
from sweep.spec import DataSpec
from sweep.timeline import Timeline

ROW_LEN = 2049  # Amber rows hold 2049 token ids
VOCAB = 32000
AMBER_TOKENS = 360 * 1_706_976 * ROW_LEN
PLAIN_BASE = np.uint64(0x2545F4914F6CDD1D)  # the plain way's own hash, independent of the kernel's


def write_chunk(path: Path, n_rows: int, n_probes: int, k: int, l: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write the chunk; return the probes, int64[n_probes, k + l], and the rows, int64[n_rows, ROW_LEN]."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, VOCAB, (n_rows, ROW_LEN))
    own = rows[: min(n_rows, 1000, n_probes // 2), : k + l].copy()  # probes sampled from this chunk
    planted = rng.integers(0, VOCAB, (min(200, n_probes - len(own)), k + l))
    for probe in planted:  # copies anywhere, several per row possible
        for _ in range(int(rng.integers(1, 6))):
            offset = int(rng.integers(ROW_LEN - k - l + 1))
            rows[int(rng.integers(n_rows)), offset : offset + k + l] = probe
    for probe in planted[:50]:  # copies with one id changed
        offset = int(rng.integers(ROW_LEN - k - l + 1))
        changed = probe.copy()
        changed[int(rng.integers(k + l))] = VOCAB
        rows[int(rng.integers(n_rows)), offset : offset + k + l] = changed
    others = rng.integers(0, VOCAB, (n_probes - len(own) - len(planted), k + l))
    sources = ["refinedweb", "starcoderdata", "arxiv", "c4"]
    with open(path, "w") as handle:
        for i, row in enumerate(rows.tolist()):
            handle.write(json.dumps({"token_ids": row, "source": sources[i % 4]}) + "\n")
    return np.concatenate([own, planted, others]), rows


def write_megatron(folder: Path, rows: np.ndarray) -> None:
    """`rows` as a Megatron dataset of uint16 items: `document.idx` (the format's header, sizes, pointers, document
    index) and the tokens cut into two shards inside an item, as Pythia's shards are cut."""
    folder.mkdir()
    tokens = rows.astype(np.uint16).tobytes()
    n = len(rows)
    header = b"MMIDIDX\x00\x00" + np.array([1], "<u8").tobytes() + bytes([8]) + np.array([n, n + 1], "<u8").tobytes()
    sizes = np.full(n, ROW_LEN, dtype="<i4")
    pointers = (np.arange(n, dtype="<i8") * ROW_LEN * 2).astype("<i8")
    (folder / "document.idx").write_bytes(header + sizes.tobytes() + pointers.tobytes()
                                          + np.arange(n + 1, dtype="<i8").tobytes())
    cut = len(tokens) // 2 + 1  # an odd byte: inside an item, inside a token
    (folder / "document-00000-of-00001.bin").write_bytes(tokens[:cut])
    (folder / "document-00001-of-00001.bin").write_bytes(tokens[cut:])


class PlainCounter:
    """The plain way: json.loads per line, numpy window hashes, tuple dicts to verify. Counts per probe."""

    def __init__(self, probes: np.ndarray, k: int):
        self.k, self.width = k, probes.shape[1]
        self.powers = PLAIN_BASE ** np.arange(k - 1, -1, -1, dtype=np.uint64)
        self.prompt_hashes = np.unique(probes[:, :k].astype(np.uint64) @ self.powers)
        self.by_prompt: dict[tuple, list[int]] = {}
        self.by_window: dict[tuple, list[int]] = {}
        for i, probe in enumerate(probes.tolist()):
            self.by_prompt.setdefault(tuple(probe[:k]), []).append(i)
            self.by_window.setdefault(tuple(probe), []).append(i)
        self.n_probes = len(probes)

    def scan(self, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
        """(window_count, prompt_count, tokens), int64[n_probes] each."""
        window, prompt = np.zeros(self.n_probes, dtype=np.int64), np.zeros(self.n_probes, dtype=np.int64)
        digest, tokens = hashlib.sha256(), 0
        with open(path, "rb") as handle:
            for line in handle:
                digest.update(line)
                if not line.strip():
                    continue
                record = json.loads(line)
                ids = record["token_ids"] if "token_ids" in record else record["prompt"] + record["continuation"]
                tokens += len(ids)
                if len(ids) < self.k:
                    continue
                hashes = sliding_window_view(np.array(ids, dtype=np.uint64), self.k) @ self.powers
                slots = np.minimum(np.searchsorted(self.prompt_hashes, hashes), len(self.prompt_hashes) - 1)
                for start in np.flatnonzero(self.prompt_hashes[slots] == hashes).tolist():
                    for probe in self.by_prompt.get(tuple(ids[start : start + self.k]), ()):
                        prompt[probe] += 1
                    if start + self.width <= len(ids):
                        for probe in self.by_window.get(tuple(ids[start : start + self.width]), ()):
                            window[probe] += 1
        digest.hexdigest()
        return window, prompt, tokens


def fresh_process(code: str, **env: str) -> dict:
    """Run ``code`` (which prints one JSON object) in a new Python process started from benchmarks/."""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          check=True, cwd=Path(__file__).parent)
    return json.loads(done.stdout)


def compile_seconds(cache_dir: str) -> dict:
    """Import, then first build + scan of a tiny input, in a fresh process with NUMBA_CACHE_DIR=cache_dir."""
    return fresh_process(
        "import json, time; began = time.perf_counter(); import numpy as np\n"
        "from sweep.exposures.kernel import build_probe_index, scan_chunk\n"
        "imported = time.perf_counter(); index = build_probe_index(np.array([[1, 2, 3]]), 2)\n"
        "scan_chunk([b'{\"token_ids\": [1, 2, 3]}\\n'], index, 'tiny')\n"
        "print(json.dumps({'import': imported - began, 'first call': time.perf_counter() - imported}))",
        NUMBA_CACHE_DIR=cache_dir)


def scan_alone_memory(probes_path: Path, chunk: Path, prompt_len: int) -> dict:
    """RSS and peaks (bytes) of a fresh process: imported and compiled, building the index (the driver's
    part), then holding it and scanning the chunk (a scan task's part)."""
    return fresh_process(
        "import json, numpy as np, psutil\n"
        "from peak_memory import peak_rss_bytes, reset_peak_rss\n"
        "from sweep.exposures.kernel import build_probe_index, scan_chunk\n"
        "from sweep.data.probes import LocalChunkReader\n"
        "scan_chunk([b'{\"token_ids\": [1, 2, 3]}\\n'], build_probe_index(np.array([[1, 2, 3]]), 2), 'tiny')\n"
        "rss = lambda: psutil.Process().memory_info().rss\n"
        f"imported = rss(); reset_peak_rss(); probes = np.load({str(probes_path)!r})\n"
        f"index = build_probe_index(probes, {prompt_len}); build_peak = peak_rss_bytes(); del probes\n"
        "with_index = rss(); reset_peak_rss()\n"
        f"scan_chunk(LocalChunkReader({str(chunk)!r}).blocks(), index, 'chunk')\n"
        "print(json.dumps({'imported': imported, 'build_peak': build_peak, 'with_index': with_index,"
        " 'scan_peak': peak_rss_bytes()}))")


def timed(function):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def spread(rates: list[float]) -> str:
    return f"{max(rates) / 1e6:.1f}M (rounds: {', '.join(f'{r / 1e6:.1f}' for r in rates)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5000, help="rows in the synthetic chunk")
    parser.add_argument("--probes", type=int, default=360_000, help="probes in the index")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--continuation-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="turns each method takes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    k, l = args.prompt_len, args.continuation_len
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; numba {numba.__version__}, numpy {np.__version__}")

    with tempfile.TemporaryDirectory() as scratch:
        cold, warm = compile_seconds(scratch), compile_seconds(scratch)
        print(f"compile: import {cold['import']:.2f} s, first call {cold['first call']:.2f} s with an empty numba "
              f"cache; {warm['import']:.2f} s + {warm['first call']:.2f} s loading it")

        path = Path(scratch) / "train_000.jsonl"
        probes, rows = write_chunk(path, args.rows, args.probes, k, l, args.seed)
        write_megatron(Path(scratch) / "megatron", rows)
        source = describe_stream(DataSpec(source=str(Path(scratch) / "megatron"), format="megatron", file="document"))
        chunk = stream_chunk(source, Timeline(args.rows, 1), 0)
        in_memory = [(batch.tokens.copy(), batch.offsets, batch.positions)
                     for batch in open_stream(source).iter_items(0, args.rows)]
        del rows
        size = path.stat().st_size
        np.save(Path(scratch) / "probes.npy", probes)
        alone = scan_alone_memory(Path(scratch) / "probes.npy", path, k)
        index, build_seconds, _ = timed(lambda: build_probe_index(probes, k))
        plain = PlainCounter(probes, k)
        tokens = args.rows * ROW_LEN
        print(f"chunk: {args.rows:,} rows, {tokens:,} tokens, {size / 1e6:.1f} MB ({size / tokens:.2f} bytes a "
              f"token); index: {index.n_probes:,} probes, {index.nbytes / 1e6:.1f} MB, built in {build_seconds:.2f} s")

        scan_chunk(LocalChunkReader(path).blocks(), index, str(path))  # page cache filled, nothing to compile
        scan_stream_chunk(chunk, index)
        count_items(in_memory, index)  # its own compile: writable arrays are another numba type than read buffers
        methods = {
            "plain": lambda: plain.scan(path),
            "kernel": lambda: scan_chunk(LocalChunkReader(path).blocks(), index, str(path)),
            "binary": lambda: scan_stream_chunk(chunk, index)[0],
            "binary kernel": lambda: count_items(in_memory, index),
        }
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        peaks = dict.fromkeys(methods, 0)  # peak RSS, bytes
        results = {}
        before = psutil.Process().memory_info().rss
        for _ in range(args.rounds):
            for name in rates:
                reset_peak_rss()
                results[name], wall, cpu = timed(methods[name])
                peaks[name] = max(peaks[name], peak_rss_bytes())
                rates[name].append((tokens / cpu, tokens / wall))

    exposure = results["kernel"]
    window, prompt = np.zeros(len(probes), dtype=np.int64), np.zeros(len(probes), dtype=np.int64)
    window[exposure.probe], prompt[exposure.probe] = exposure.window_count, exposure.prompt_count
    plain_window, plain_prompt, plain_tokens = results["plain"]
    identical = (np.array_equal(window, plain_window) and np.array_equal(prompt, plain_prompt)
                 and plain_tokens == exposure.tokens == tokens)
    for name in ("binary", "binary kernel"):
        counted = results[name]
        identical &= (np.array_equal(counted.probe, exposure.probe) and counted.tokens == tokens
                      and np.array_equal(counted.window_count, exposure.window_count)
                      and np.array_equal(counted.prompt_count, exposure.prompt_count))
    print(f"identical counts: {'yes' if identical else 'NO'} ({len(exposure.probe):,} probes with a nonzero "
          f"count; {int(window.sum()):,} window and {int(prompt.sum()):,} prompt occurrences)")
    best = {name: max(cpu for cpu, _ in pairs) for name, pairs in rates.items()}
    for name, pairs in rates.items():
        print(f"{name:>6}: {spread([cpu for cpu, _ in pairs])} tokens per CPU-second; wall "
              f"{spread([wall for _, wall in pairs])}; peak RSS {peaks[name] / 1e6:.0f} MB "
              f"(+{max(0, peaks[name] - before) / 1e6:.1f} MB); "
              f"Amber (1.26T tokens): {AMBER_TOKENS / best[name] / 3600:,.1f} core-hours")
    print(f"(peak RSS: this process's, during each method's rounds; in brackets, above the {before / 1e6:.0f} MB it "
          "held before them: interpreter, libraries, the index and the plain way's dicts)")
    print(f"a fresh process: RSS {alone['imported'] / 1e6:.0f} MB imported and compiled; building the index peaks "
          f"at {alone['build_peak'] / 1e6:.0f} MB; {alone['with_index'] / 1e6:.0f} MB holding it; the scan peaks at "
          f"{alone['scan_peak'] / 1e6:.0f} MB (+{(alone['scan_peak'] - alone['with_index']) / 1e6:.1f} MB)")
    print(f"kernel / plain: {best['kernel'] / best['plain']:.1f}x; binary / kernel: "
          f"{best['binary'] / best['kernel']:.1f}x; binary kernel alone / kernel: "
          f"{best['binary kernel'] / best['kernel']:.1f}x (best CPU rates); load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    digest, _, cpu = timed(lambda: hashlib.sha256(b"".join(t.tobytes() for t, _, _ in in_memory)).hexdigest())
    print(f"sha256 of the binary items alone: {tokens / cpu / 1e6:.0f}M tokens per CPU-second (2 bytes a token)")
    if not identical:
        sys.exit("the kernel and the plain way disagree")


if __name__ == "__main__":
    main()
