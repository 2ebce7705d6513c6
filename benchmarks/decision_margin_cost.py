"""What recording each sequence's decision margin costs the scoring kernel, side by side in one process.

    python benchmarks/decision_margin_cost.py --threads 1           # small random LLaMA, CPU, about a minute
    python benchmarks/decision_margin_cost.py --arch amber-7b       # LLaMA-7B shape, bf16, CUDA

The kernel takes the top-1 minus top-2 logit of every greedy decision (actors/scoring.py, `argmax_and_margin`) on
the logits it already has. Here the same model and rows are scored with it and without it (the margin replaced by
zeros, the argmax unchanged), in greedy and extractable mode, the two taking turns; the best of --repeats rounds of
each is reported, so load from other processes hurts both alike. The small model (hidden 64, Amber's 32,000-token
vocabulary) is the worst case: the vocabulary projection and the per-step argmax are most of its work, where on a
7B model the decoder is.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import actors.scoring as scoring  # noqa: E402
from actors.loading import DTYPES, resolve_device  # noqa: E402
from actors.scoring import ScoringOptions, pick_batch_size  # noqa: E402
from benchmarks.score_throughput import add_model_arguments, build_model, load_tokens, run_kernel  # noqa: E402


@contextmanager
def margins_off():
    """The kernel with its argmax alone: the margin it records is a zero that cost nothing."""
    recorded = scoring.argmax_and_margin

    def argmax_only(logits: torch.Tensor, with_margin: bool = True):
        return recorded(logits, with_margin=False)[0], torch.zeros(logits.shape[:-1], dtype=torch.float32, device=logits.device)

    scoring.argmax_and_margin = argmax_only
    try:
        yield
    finally:
        scoring.argmax_and_margin = recorded


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, default_n_7b=512)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each; the best is reported")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.arch == "amber-7b" else "float32")
    model = build_model(args.arch, DTYPES[dtype_name], device, args.attn)
    n = args.n or (512 if args.arch == "amber-7b" else 256)
    tokens, where = load_tokens(n, args.k, args.l, args.samples)
    print(f"model {args.arch} {dtype_name} on {device}, {n} rows of {where}, k={args.k} l={args.l}, "
          f"threads {torch.get_num_threads()}")
    for mode in ("greedy", "extractable"):
        options = ScoringOptions(prompt_len=args.k, continuation_len=args.l, mode=mode)
        batch_size = args.batch_size or pick_batch_size(model, options, device)
        run_kernel(model, tokens[:batch_size], options, batch_size, device)  # warm-up
        best = {"with": float("inf"), "without": float("inf")}
        for _ in range(args.repeats):
            best["with"] = min(best["with"], run_kernel(model, tokens, options, batch_size, device)[0])
            with margins_off():
                best["without"] = min(best["without"], run_kernel(model, tokens, options, batch_size, device)[0])
        print(f"{mode:>11} batch {batch_size}: with margins {n / best['with']:8.1f} seq/s, without "
              f"{n / best['without']:8.1f} seq/s: time ratio with/without {best['with'] / best['without']:.3f}")


if __name__ == "__main__":
    main()
