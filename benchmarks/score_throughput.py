"""Throughput of the scoring kernel against the reference method, on one model and one data set.

    python benchmarks/score_throughput.py                       # small random LLaMA, CPU, < 1 minute
    python benchmarks/score_throughput.py --arch amber-7b       # LLaMA-7B shape, bf16, CUDA

Measures, in one process on the same model and data:
  (a) reference: HF `generate`, batch 32, num_beams=1, do_sample=False, max_new_tokens=l, EOS disabled
      (eos_token_id=None) so every row gets exactly l tokens and (a) and (b) can be compared row by row;
      with the default EOS, generate would stop a batch only once all 32 rows emitted EOS, which is rare,
      so its speed is essentially the same.
  (b) our greedy kernel (KV-cache argmax loop) at --batch-size (default: pick_batch_size)
  (c) our extractable mode (one teacher-forced forward; prefix/full match only), on the data and (c')
      on generate's own continuations, where every row matches fully: its worst case, since it stops
      projecting a row onto the vocabulary after the row's first miss
  (d) greedy + NLL in one combined pass vs (e) greedy followed by a separate teacher-forced NLL pass
and how far the tokens of (b) agree with (a)'s, (d)'s and (b)'s own at half the batch (what a cell rescored
after running out of memory gets): in fp32 they are identical; in bf16 a near-tie argmax can go either way, so
agreement is a rate, with the near-ties counted (benchmarks/token_agreement.py). On CPU it also sweeps the
greedy batch size to justify the default; on CUDA it prints the allocator's peak and retries.

TFLOP/s is nominal: 2 x parameters x (k + l) tokens per sequence / seconds, the same work count for
every method, so it is proportional to sequences/s. Methods take turns and the best of --repeats
rounds is reported, so load from other processes on the machine hurts all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.loading import DTYPES, resolve_device  # noqa: E402
from actors.protocol import DECODES  # noqa: E402
from actors.scoring import ScoringOptions, pick_batch_size, score_batch  # noqa: E402
from benchmarks.token_agreement import agreement, top2_gap_ulps  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "amber-samples" / "train_355.jsonl"
REFERENCE_BATCH_SIZE = 32

ARCHS = {
    "small": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4),
    "amber-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32),
}


def build_model(arch: str, dtype: torch.dtype, device: torch.device, attn: str = "sdpa") -> LlamaForCausalLM:
    """A randomly initialised LLaMA with Amber's vocabulary (32,000) and the chosen shape."""
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False, **ARCHS[arch])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def load_tokens(n: int, k: int, l: int, samples: Path = SAMPLES) -> tuple[torch.LongTensor, str]:
    """int64[n, k+l]: Amber sample rows (prompt + continuation) when present, cycled to n; else random."""
    if samples.exists() and k == 32 and l == 32:
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
        tokens = torch.tensor([row["prompt"] + row["continuation"] for row in rows], dtype=torch.long)
        return tokens[torch.arange(n) % len(tokens)], f"{samples} (cycled to {n} rows)"
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 32000, (n, k + l), generator=generator), "random tokens"


# dense bf16/fp16 tensor-core peak, TFLOP/s, from the vendors' data sheets (SXM parts)
PEAK_TFLOPS_16BIT = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def known_peak_tflops(device: torch.device, dtype_name: str) -> float | None:
    if device.type != "cuda" or dtype_name not in ("bfloat16", "float16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for model, peak in PEAK_TFLOPS_16BIT.items() if model in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(model, tokens, k, l, device) -> tuple[float, np.ndarray, torch.LongTensor]:
    """(a): HF generate at batch 32, EOS disabled; returns (seconds, matches int[n], continuations int64[n, l])."""
    model.generation_config.eos_token_id = None
    matches, continuations = [], []
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tokens), REFERENCE_BATCH_SIZE):
            batch = tokens[i:i + REFERENCE_BATCH_SIZE].to(device)
            out = model.generate(batch[:, :k], attention_mask=torch.ones_like(batch[:, :k]), do_sample=False,
                                 num_beams=1, max_new_tokens=l)
            matches.append((out[:, k:] == batch[:, k:]).sum(1).cpu())
            continuations.append(out[:, k:].cpu())
    synchronize(device)
    return time.perf_counter() - start, torch.cat(matches).numpy(), torch.cat(continuations)


def run_kernel(model, tokens, options, batch_size, device, passes=(None,)) -> tuple[float, np.ndarray | None]:
    """Score all tokens in batches; returns (seconds, the greedy tokens int64[n, l] or None in extractable mode).
    `passes` lists extra ScoringOptions run on each batch after the first."""
    generated = []
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, len(tokens), batch_size):
        scores = score_batch(model, tokens[i:i + batch_size], options)
        for extra in passes:
            if extra is not None:
                score_batch(model, tokens[i:i + batch_size], extra)
        if scores.generated is not None:
            generated.append(scores.generated)
    synchronize(device)
    return time.perf_counter() - start, (np.concatenate(generated) if generated else None)


def allocator_line(device: torch.device) -> str:
    """The CUDA caching allocator's peaks and its free-and-retry passes (each a synchronising cudaFree of cached
    blocks, when a request found no cached block that fits) since the process started."""
    if device.type != "cuda":
        return "allocator: (CUDA only)"
    stats = torch.cuda.memory_stats(device)
    return (f"allocator: peak reserved {stats['reserved_bytes.all.peak'] / 2**30:.1f} GiB, peak allocated "
            f"{stats['allocated_bytes.all.peak'] / 2**30:.1f} GiB, num_alloc_retries {stats['num_alloc_retries']}, "
            f"num_ooms {stats['num_ooms']}; PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r}")


def add_model_arguments(parser: argparse.ArgumentParser, default_n_7b: int) -> None:
    """The model, data and device arguments of the kernel's benchmarks (decode_memory.py takes them too)."""
    parser.add_argument("--arch", choices=tuple(ARCHS), default="small")
    parser.add_argument("--n", type=int, default=None, help=f"sequences (default 256 small, {default_n_7b} amber-7b)")
    parser.add_argument("--batch-size", type=int, default=None, help="kernel batch (default: pick_batch_size, "
                                                                      "what batch_size: auto takes)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="default float32 for small, bfloat16 for amber-7b")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                        help="attention implementation of the model (flash_attention_2 needs flash-attn)")
    parser.add_argument("--samples", type=Path, default=SAMPLES,
                        help="Amber samples in the reference tool's cached format (random tokens when absent)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--l", type=int, default=32)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_n_7b=1024)
    parser.add_argument("--decode", choices=DECODES, default="growing",
                        help="the greedy loop's KV cache for (b) and (e) (static-compiled: CUDA only)")
    parser.add_argument("--sweep", default=None,
                        help="greedy batch sizes to sweep, e.g. 256,512,1024 ('' to skip; default 32,64,128,256 "
                             "on CPU, none on CUDA)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak for --dtype, to print the fraction reached "
                             "(default: known for H100/H200/A100 in bf16/fp16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is faster on a busy 2-core machine")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; the best of each is reported")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.arch == "amber-7b" else "float32")
    n = args.n or (1024 if args.arch == "amber-7b" else 256)
    model = build_model(args.arch, DTYPES[dtype_name], device, args.attn)
    sweep = args.sweep if args.sweep is not None else ("32,64,128,256" if device.type == "cpu" else "")
    peak = args.peak_tflops or known_peak_tflops(device, dtype_name)
    tokens, data_source = load_tokens(n, args.k, args.l, args.samples)
    k, l = args.k, args.l
    greedy = ScoringOptions(prompt_len=k, continuation_len=l, decode=args.decode)
    extractable = ScoringOptions(prompt_len=k, continuation_len=l, mode="extractable")
    batch_size = args.batch_size or pick_batch_size(model, greedy, device)
    params = sum(p.numel() for p in model.parameters())
    flop_per_sequence = 2 * params * (k + l)

    print(f"device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}), load average {os.getloadavg()[0]:.1f}")
    print(f"model {args.arch}: {params / 1e6:.1f}M parameters, {dtype_name}, attention {args.attn}; data "
          f"{data_source}; n={n}, k={k}, l={l}; kernel decode {args.decode}, batch {batch_size}")
    print("reference (a): HF generate, batch 32, num_beams=1, do_sample=False, max_new_tokens=l, "
          "eos_token_id=None (EOS disabled: exactly l tokens per row, comparable row by row with (b))")

    # warm-up: first calls allocate, pick kernels, and (static-compiled) compile -- for the full batch shape and
    # the last, shorter one, so no compilation lands inside a timed run
    shapes = [tokens[:min(n, batch_size)]] + ([tokens[n - n % batch_size:]] if n % batch_size and n > batch_size else [])
    for warm in shapes:
        for _ in range(2 if args.decode == "static-compiled" else 1):
            run_kernel(model, warm, greedy, batch_size, device)
        run_kernel(model, warm, extractable, batch_size, device)
    run_reference(model, tokens[:REFERENCE_BATCH_SIZE], k, l, device)

    # the first reference run is timed too (it is the slowest method by far): its continuations are the truth of
    # (c'), where every row is fully extractable -- its worst case, since it stops projecting a row after a miss
    reference_seconds, _, generated = run_reference(model, tokens, k, l, device)
    own = torch.cat([tokens[:, :k], generated], dim=1)

    greedy_nll = ScoringOptions(prompt_len=k, continuation_len=l, nll=True)
    extractable_nll = ScoringOptions(prompt_len=k, continuation_len=l, mode="extractable", nll=True)
    methods = {
        "(a) reference generate, batch 32": lambda: run_reference(model, tokens, k, l, device)[0],
        f"(b) kernel greedy, batch {batch_size}": lambda: run_kernel(model, tokens, greedy, batch_size, device)[0],
        f"(c) kernel extractable, batch {batch_size}":
            lambda: run_kernel(model, tokens, extractable, batch_size, device)[0],
        f"(c') extractable, every row fully matching, batch {batch_size}":
            lambda: run_kernel(model, own, extractable, batch_size, device)[0],
        f"(d) greedy + NLL, one combined pass, batch {batch_size}":
            lambda: run_kernel(model, tokens, greedy_nll, batch_size, device)[0],
        f"(e) greedy + separate NLL pass, batch {batch_size}":
            lambda: run_kernel(model, tokens, greedy, batch_size, device, passes=(extractable_nll,))[0],
    }
    # methods take turns, best of --repeats: other load on the machine then hurts them all alike
    results = {name: float("inf") for name in methods}
    results["(a) reference generate, batch 32"] = reference_seconds
    for round_ in range(args.repeats):
        for name, method in methods.items():
            if round_ or not name.startswith("(a)"):
                results[name] = min(results[name], method())

    print(f"\n{'method':<56} {'seq/s':>9} {'vs (a)':>7} {'TFLOP/s':>8}" + (f" {'of peak':>8}" if peak else ""))
    for name, seconds in results.items():
        tflops = flop_per_sequence * n / seconds / 1e12
        print(f"{name:<56} {n / seconds:9.1f} {reference_seconds / seconds:6.2f}x {tflops:8.3f}"
              + (f" {tflops / peak:8.1%}" if peak else ""))
    if peak:
        print(f"(peak: {peak:.0f} TFLOP/s dense 16-bit for {torch.cuda.get_device_name(device)})")
    print(allocator_line(device))

    report_agreement(model, tokens, generated, own, greedy, greedy_nll, extractable, batch_size, device, k, l)
    if sweep:
        print("\ngreedy batch-size sweep (same data):")
        for size in (int(s) for s in sweep.split(",")):
            run_kernel(model, tokens[:size], greedy, size, device)  # warm this shape
            seconds = min(run_kernel(model, tokens, greedy, size, device)[0] for _ in range(args.repeats))
            print(f"  batch {size:>4}: {n / seconds:8.1f} seq/s")


def report_agreement(model, tokens, reference, own, greedy, greedy_nll, extractable, batch_size, device, k, l):
    """Per-row agreement of the kernel's greedy tokens with generate's, with greedy + NLL's, and with its own at
    half the batch (an out-of-memory halving), with the near-ties at each first difference."""
    half = max(1, min(batch_size, len(tokens)) // 2)
    _, kernel = run_kernel(model, tokens, greedy, batch_size, device)
    _, with_nll = run_kernel(model, tokens, greedy_nll, batch_size, device)
    _, halved = run_kernel(model, tokens, greedy, half, device)
    gap_batch = min(batch_size, 256)  # [batch, l, V] logits at once: 0.5 GB at 256 x 32 x 32,000 in bf16
    reference = reference.numpy()
    reference_gaps = top2_gap_ulps(model, torch.cat([tokens[:, :k], torch.from_numpy(reference)], 1), l, gap_batch)
    kernel_gaps = top2_gap_ulps(model, torch.cat([tokens[:, :k], torch.from_numpy(kernel)], 1), l, gap_batch)
    print("\nagreement of the greedy tokens (a near-tie: the top two logits within a few ulps; see "
          "benchmarks/token_agreement.py):")
    print("  " + agreement(reference, kernel, reference_gaps).describe("(b) vs (a) generate"))
    print("  " + agreement(kernel, with_nll, kernel_gaps).describe("(d) greedy + NLL vs (b)"))
    print("  " + agreement(kernel, halved, kernel_gaps).describe(f"(b) at batch {half} vs (b) at {half * 2}"))
    # generate's own continuations as the truth: the kernel must reproduce them token for token where it agrees
    _, own_tokens = run_kernel(model, own, greedy, batch_size, device)
    print(f"  kernel reproduces generate's tokens exactly on {int((own_tokens == own[:, k:].numpy()).all(1).sum())}"
          f"/{len(own)} rows")
    own_extractable = score_batch(model, own[:batch_size], extractable).full_match
    print(f"  extractable mode finds {int(own_extractable.sum())}/{len(own_extractable)} of those rows fully "
          "extractable")


if __name__ == "__main__":
    main()
