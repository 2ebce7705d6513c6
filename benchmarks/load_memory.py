"""Host memory and time of loading a checkpoint in Amber's two layouts, as bf16 on CPU (or a GPU).

    python benchmarks/load_memory.py                 # ~1.9 GB fp32 scaled LLaMA, page cache warm
    python benchmarks/load_memory.py --device cuda   # weights to the GPU: host memory of the device_map path
    python benchmarks/load_memory.py --cold          # shards evicted from the page cache before each load
    python benchmarks/load_memory.py --hidden 512    # smaller (~0.7 GB fp32)

Writes a randomly initialised LLaMA with Amber's vocabulary and depth (32,000 x hidden, 32 layers, 291
tensors as in LLaMA-7B) twice, in Amber's layouts (tests/amber_layout.py): fp32 pickled `.bin` in 3
shards + index (the `ckpt_*` revisions) and bf16 safetensors in 3 shards + index (`main`), with Amber's
shard proportions (37% / 37% / 26%). Then, for each layout, each loader runs in a fresh child process:

  from_pretrained   AutoModelForCausalLM.from_pretrained(dir, dtype=bfloat16, attn_implementation="sdpa")
                    (+ device_map=cuda with --device cuda, as load_checkpoint did before)
  whole_shards      load_checkpoint with one shard mapped at a time, never re-mapped within a shard
  load_checkpoint   actors.loading.load_checkpoint(dir, None, "bfloat16", device): one shard mapped at a time,
                    re-mapped every REMAP_BYTES read; scaled here from 1 GiB per 26.97 GB of Amber files
                    to the same fraction of the scaled files (--remap-mb to set it)

and reports, as growth over the child's post-import baseline:
  peak      the peak RSS of the load (the kernel's VmHWM, reset through /proc/self/clear_refs just before)
            and, as a multiple, of the fp32 files ("x fp32")
  anon/file the peaks of anonymous and file-backed RSS during the load (RssAnon / RssFile sampled every
            5 ms from here, so a shorter peak can be missed; the two peaks need not coincide)
  after     RSS when the load has returned; "in use": after touching every weight once (as the first
            forward pass does: a bf16 safetensors load in bf16 maps the files and reads nothing until then)
File-backed pages are mapped shards: clean page cache the kernel may reclaim under pressure, but counted
in RSS and in a container's memory use; anonymous pages are the model itself. Every load's weights are
fingerprinted (weights_fingerprint on weights already touched; its cost is the best of 5 calls): one fingerprint across
all loads means bit-identical bf16 weights. A watchdog kills a child whose RSS passes --limit-gb. On this
shared 2-core VM timings vary by 20%; the page cache is warm unless --cold.

With --device cuda the child starts CUDA before its baseline, so the CUDA context is not counted; the
host's anonymous part should then be near zero (each tensor is cast and copied to the GPU, a few at a
time) and the file-backed part as on CPU. Not yet run on a GPU (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.loading import REMAP_BYTES, find_weight_files, stored_dtype  # noqa: E402
from tests.amber_layout import write_bin_shards, write_safetensors_shards  # noqa: E402

AMBER_BIN_BYTES = 26.97e9  # the 3 fp32 .bin shards of a ckpt_* revision (9.88 + 9.89 + ~7.2 GB)
AMBER_BF16_BYTES = 13.48e9  # main's 3 bf16 safetensors shards
LOADERS = ("from_pretrained", "whole_shards", "load_checkpoint")
LAYOUTS = {"bin-fp32": "ckpt_bin", "safetensors-bf16": "main_safetensors"}
SAMPLE_SECONDS = 0.005


def scaled_config(hidden: int) -> LlamaConfig:
    """LLaMA-7B's depth, vocabulary and MLP ratio (11008 / 4096) at a smaller width."""
    return LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 11008 / 4096),
                       num_hidden_layers=32, num_attention_heads=max(1, hidden // 64),
                       num_key_value_heads=max(1, hidden // 64), max_position_embeddings=2048, rms_norm_eps=1e-6,
                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def write_checkpoints(root: Path, hidden: int) -> dict[str, Path]:
    torch.manual_seed(0)
    model = LlamaForCausalLM(scaled_config(hidden)).eval()
    folders = {layout: root / name for layout, name in LAYOUTS.items()}
    write_bin_shards(model, folders["bin-fp32"])
    write_safetensors_shards(model, folders["safetensors-bf16"], torch.bfloat16)
    return folders


def evict_from_page_cache(folder: Path) -> None:
    """Drop the folder's clean pages from the page cache (no root needed; pages mapped elsewhere stay)."""
    for path in folder.iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def status_kib(pid: int | str, fields: tuple[str, ...]) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {line.split(":")[0]: int(line.split()[1]) for line in status if line.split(":")[0] in fields}


# --- the child: one load in a fresh process ----------------------------------------------------------------


def child(loader: str, folder: str, remap_bytes: int, device: str) -> None:
    from transformers import AutoModelForCausalLM

    from actors import loading
    from actors.loading import load_checkpoint, weights_fingerprint

    loading.REMAP_BYTES = 2**62 if loader == "whole_shards" else remap_bytes
    placement = {}
    if device != "cpu":
        torch.zeros(1, device=device)  # the CUDA context, before the baseline
        placement = {"device_map": torch.device(device)}

    baseline = status_kib("self", ("VmRSS", "RssAnon", "RssFile"))
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := current RSS, so the peak below is the load's own
    load_began, began = time.time(), time.perf_counter()
    if loader == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                     **placement).eval()
    else:
        model = load_checkpoint(folder, None, "bfloat16", device)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds, load_ended = time.perf_counter() - began, time.time()
    peak = status_kib("self", ("VmHWM",))["VmHWM"]
    after_load = status_kib("self", ("VmRSS",))["VmRSS"]
    with torch.no_grad():  # touch every weight once, as the first forward pass does
        for parameter in model.parameters():
            parameter.view(torch.uint8).amax()  # a byte view: no cast, so no temporary copy
    in_use = status_kib("self", ("VmRSS",))["VmRSS"]
    fingerprint_ms = float("inf")
    for _ in range(5):  # the best of 5: the machine is shared
        began = time.perf_counter()
        fingerprint = weights_fingerprint(model)
        fingerprint_ms = min(fingerprint_ms, 1000 * (time.perf_counter() - began))
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    print("RESULT " + json.dumps(dict(
        seconds=seconds, window=[load_began, load_ended], baseline_kib=baseline,
        peak_growth_kib=peak - baseline["VmRSS"], after_load_growth_kib=after_load - baseline["VmRSS"],
        in_use_growth_kib=in_use - baseline["VmRSS"], fingerprint=fingerprint, fingerprint_ms=fingerprint_ms,
        dtypes=dtypes)), flush=True)


# --- the parent: run and watch each child ------------------------------------------------------------------


def run_case(loader: str, folder: Path, remap_bytes: int, device: str, limit_kib: int) -> dict:
    process = subprocess.Popen([sys.executable, __file__, "--child", loader, str(folder), str(remap_bytes), device],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    samples: list[tuple[float, int, int]] = []  # (time, RssAnon KiB, RssFile KiB)
    killed = False
    while process.poll() is None:
        try:
            now = status_kib(process.pid, ("VmRSS", "RssAnon", "RssFile"))
        except (FileNotFoundError, ProcessLookupError):
            break
        samples.append((time.time(), now.get("RssAnon", 0), now.get("RssFile", 0)))
        if now.get("VmRSS", 0) > limit_kib:
            process.kill()
            killed = True
        time.sleep(SAMPLE_SECONDS)
    output = process.communicate()[0]
    if killed:
        raise SystemExit(f"{loader} on {folder.name}: killed above the --limit-gb watchdog")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise SystemExit(f"{loader} on {folder.name}: child failed (exit {process.returncode})")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    began, ended = result["window"]
    during_load = [sample for sample in samples if began <= sample[0] <= ended] or [(0.0, 0, 0)]
    result["anon_growth_kib"] = max(s[1] for s in during_load) - result["baseline_kib"]["RssAnon"]
    result["file_growth_kib"] = max(s[2] for s in during_load) - result["baseline_kib"]["RssFile"]
    return result


def fingerprint_ms_at_7b() -> float:
    """weights_fingerprint's cost for LLaMA-7B in bf16 on this CPU, estimated without 13.5 GB of memory: one
    tensor of each of the 7B model's shapes is fingerprinted (best of 5) and weighted by how many it has."""
    from actors.loading import weights_fingerprint

    counts = {(32000, 4096): 2, (11008, 4096): 64, (4096, 11008): 32, (4096, 4096): 128, (4096,): 65}
    total = 0.0
    for shape, count in counts.items():
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.randn(shape, dtype=torch.bfloat16), requires_grad=False)
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            weights_fingerprint(module)
            best = min(best, time.perf_counter() - began)
        total += count * best
    return 1000 * total


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(all weight files, the largest one) in bytes."""
    sizes = [path.stat().st_size for path in find_weight_files(folder).files]
    return sum(sizes), max(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024, help="model width (1024: 470M parameters, 1.9 GB fp32)")
    parser.add_argument("--cold", action="store_true", help="evict the shards from the page cache before each load")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; loaders alternate within a round")
    parser.add_argument("--limit-gb", type=float, default=8.0, help="kill a child whose RSS passes this")
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a temp folder)")
    parser.add_argument("--remap-mb", type=float, help="load_checkpoint's REMAP_BYTES in MB (default: scaled)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (weights go to the GPU)")
    parser.add_argument("--child", nargs=4, metavar=("LOADER", "FOLDER", "REMAP_BYTES", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        began = time.perf_counter()
        folders = write_checkpoints(Path(scratch), args.hidden)
        print(f"wrote the scaled checkpoint (hidden {args.hidden}, 32 layers, vocab 32,000) in both layouts in "
              f"{time.perf_counter() - began:.0f} s")
        fp32_bytes = folder_bytes(folders["bin-fp32"])[0]
        remap_bytes = int(args.remap_mb * 1e6 if args.remap_mb else REMAP_BYTES * fp32_bytes / AMBER_BIN_BYTES)
        print(f"load_checkpoint re-maps a shard every {remap_bytes / 1e6:.0f} MB read "
              f"(Amber: {REMAP_BYTES / 2**30:.0f} GiB of {AMBER_BIN_BYTES / 1e9:.2f} GB)")
        for layout, folder in folders.items():
            total, largest = folder_bytes(folder)
            if args.cold:
                evict_from_page_cache(folder)
            began = time.perf_counter()
            dtype = stored_dtype(folder)
            print(f"{layout}: {total / 1e9:.3f} GB in {len(find_weight_files(folder).files)} shards (largest "
                  f"{largest / 1e9:.3f} GB); stored_dtype -> {dtype!r} in {1000 * (time.perf_counter() - began):.1f} ms")
        print(f"{'layout':<17} {'loader':<16} {'load s':>6} {'peak +GB':>8} {'x fp32':>6} {'anon +GB':>8} "
              f"{'file +GB':>8} {'after +GB':>9} {'in use +GB':>10} {'fingerprint':>16} {'fp ms':>5}  dtype")
        fingerprints, peaks = set(), {}
        for _ in range(args.repeats):
            for layout, folder in folders.items():
                for loader in LOADERS:
                    if args.cold:
                        evict_from_page_cache(folder)
                    result = run_case(loader, folder, remap_bytes, args.device, int(args.limit_gb * 2**20))
                    fingerprints.add(result["fingerprint"])
                    gigabytes = {key: result[key] * 1024 / 1e9 for key in
                                 ("peak_growth_kib", "anon_growth_kib", "file_growth_kib", "after_load_growth_kib",
                                  "in_use_growth_kib")}
                    worst = peaks.setdefault((layout, loader), [0.0, 0.0])
                    worst[0] = max(worst[0], gigabytes["peak_growth_kib"])
                    worst[1] = max(worst[1], gigabytes["in_use_growth_kib"])
                    print(f"{layout:<17} {loader:<16} {result['seconds']:6.2f} {gigabytes['peak_growth_kib']:8.3f} "
                          f"{gigabytes['peak_growth_kib'] * 1e9 / fp32_bytes:6.2f} {gigabytes['anon_growth_kib']:8.3f} "
                          f"{gigabytes['file_growth_kib']:8.3f} {gigabytes['after_load_growth_kib']:9.3f} "
                          f"{gigabytes['in_use_growth_kib']:10.3f} {result['fingerprint']:>16} "
                          f"{result['fingerprint_ms']:5.1f}  {','.join(result['dtypes'])}", flush=True)
        print(f"weights_fingerprint at LLaMA-7B shapes (291 tensors, bf16, CPU), estimated: {fingerprint_ms_at_7b():.0f} ms")
        print(f"fingerprints: {len(fingerprints)} distinct over all loads (1 = every load gave the same bf16 weights)")
        print(f"extrapolated to Amber (ratios to the files of the same layout, times Amber's), {args.device}, bf16:")
        for (layout, loader), (peak, in_use) in peaks.items():
            files, amber = ((fp32_bytes, AMBER_BIN_BYTES) if layout == "bin-fp32"
                            else (folder_bytes(folders[layout])[0], AMBER_BF16_BYTES))
            peak_gib, in_use_gib = (x * 1e9 / files * amber / 2**30 for x in (peak, in_use))
            print(f"  {layout:<17} {loader:<16} load peak {peak * 1e9 / files:4.2f} x {amber / 1e9:5.2f} GB = "
                  f"{peak_gib:5.1f} GiB, in use {in_use_gib:5.1f} GiB per actor; "
                  f"{8 * max(peak_gib, in_use_gib):6.1f} GiB for 8 actors")

if __name__ == "__main__":
    main()
