"""The greedy loop's KV cache, compared: growing (torch.cat each step), static, static + torch.compile.

    python benchmarks/decode_memory.py --arch amber-7b --n 2048                   # CUDA: all three decodes
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python benchmarks/decode_memory.py --arch amber-7b --n 2048
    python benchmarks/decode_memory.py --device cpu --decodes growing,static      # the code paths on CPU

The growing cache (`resources.decode: growing`, the default) concatenates every layer's keys and values with
the new token's at each step: at batch 2048 on LLaMA-7B about 1 GiB of cache per position is copied again, and
each step asks the allocator for blocks one position larger than the last, which it may only find by freeing its
cached blocks and retrying (`num_alloc_retries`, each a synchronising cudaFree). The static cache allocates k + l
positions once per batch shape; static-compiled also runs the one-token step as one CUDA graph.

For each decode, in turn, on one model: the warm-up (the first batch of each shape; static-compiled compiles
here), the best of --repeats timed runs over all rows, then the allocator's counters over that decode alone (its
caches freed and the peaks reset before it): peak reserved and allocated memory, free-and-retry passes, and
agreement of its tokens with the growing cache's (benchmarks/token_agreement.py: in bf16 a near-tie can differ).
Needs torch + transformers + numpy only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.loading import DTYPES, resolve_device  # noqa: E402
from actors.protocol import DECODES  # noqa: E402
from actors.scoring import ScoringOptions, pick_batch_size, release_decode_state  # noqa: E402
from benchmarks.score_throughput import add_model_arguments, build_model, load_tokens, run_kernel  # noqa: E402
from benchmarks.token_agreement import agreement, top2_gap_ulps  # noqa: E402


def allocator_counters(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {"reserved GiB": stats["reserved_bytes.all.peak"] / 2**30,
            "allocated GiB": stats["allocated_bytes.all.peak"] / 2**30,
            "alloc retries": stats["num_alloc_retries"], "ooms": stats["num_ooms"]}


def measure(model, tokens, options, batch_size, device, repeats) -> tuple[float, float, np.ndarray, dict]:
    """(warm-up seconds, best timed seconds, the tokens, allocator counters of this decode alone)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        retries_before = torch.cuda.memory_stats(device)["num_alloc_retries"]
        ooms_before = torch.cuda.memory_stats(device)["num_ooms"]
    n = len(tokens)
    shapes = [tokens[:min(n, batch_size)]] + ([tokens[n - n % batch_size:]] if n % batch_size and n > batch_size else [])
    start = time.perf_counter()
    for warm in shapes:  # static-compiled: compiles, then records its CUDA graphs, on the second call of a shape
        for _ in range(2 if options.decode == "static-compiled" else 1):
            run_kernel(model, warm, options, batch_size, device)
    warm_seconds = time.perf_counter() - start
    best, generated = float("inf"), None
    for _ in range(repeats):
        seconds, generated = run_kernel(model, tokens, options, batch_size, device)
        best = min(best, seconds)
    counters = allocator_counters(device)
    if counters:
        counters["alloc retries"] -= retries_before
        counters["ooms"] -= ooms_before
    return warm_seconds, best, generated, counters


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_n_7b=2048)
    parser.add_argument("--decodes", default=",".join(DECODES),
                        help=f"comma-separated, compared in this order against the first ({', '.join(DECODES)})")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per decode; the best is reported")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    decodes = args.decodes.split(",")
    unknown = [d for d in decodes if d not in DECODES]
    if unknown:
        raise SystemExit(f"--decodes: unknown {unknown}; choose from {DECODES}")
    device = resolve_device(args.device)
    dtype_name = args.dtype or ("bfloat16" if args.arch == "amber-7b" else "float32")
    n = args.n or (2048 if args.arch == "amber-7b" else 256)
    model = build_model(args.arch, DTYPES[dtype_name], device, args.attn)
    tokens, data_source = load_tokens(n, args.k, args.l, args.samples)
    options = {decode: ScoringOptions(prompt_len=args.k, continuation_len=args.l, decode=decode) for decode in decodes}
    batch_size = args.batch_size or pick_batch_size(model, options[decodes[0]], device)
    print(f"device {device}; model {args.arch} {dtype_name}, attention {args.attn}; data {data_source}; n={n}, "
          f"batch {batch_size}; PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r}")

    rows, base, base_gaps = [], None, None
    for decode in decodes:
        if decode == "static-compiled" and device.type != "cuda":
            print(f"{decode}: skipped (CUDA only)")
            continue
        warm, best, generated, counters = measure(model, tokens, options[decode], batch_size, device, args.repeats)
        release_decode_state(model)  # its static caches (and compiled graphs) must not count against the next
        if base is None:
            base = generated
            base_gaps = top2_gap_ulps(model, torch.cat([tokens[:, :args.k], torch.from_numpy(base)], 1), args.l,
                                      min(batch_size, 256))
        rows.append((decode, warm, n / best, counters, agreement(base, generated, base_gaps)))
        print(f"{decode}: warm-up {warm:.1f} s, {n / best:.1f} seq/s, {counters or 'allocator: CUDA only'}",
              flush=True)

    print(f"\n{'decode':<16} {'warm-up s':>9} {'seq/s':>9} {'vs first':>8} {'alloc retries':>13} "
          f"{'peak reserved GiB':>17} {'peak allocated GiB':>18}")
    for decode, warm, rate, counters, _ in rows:
        print(f"{decode:<16} {warm:9.1f} {rate:9.1f} {rate / rows[0][2]:7.2f}x {counters.get('alloc retries', '-'):>13} "
              f"{counters.get('reserved GiB', float('nan')):17.1f} {counters.get('allocated GiB', float('nan')):18.1f}")
    print(f"\nagreement with {rows[0][0]}'s tokens:")
    for decode, *_, agreed in rows[1:]:
        print("  " + agreed.describe(decode))


if __name__ == "__main__":
    main()
