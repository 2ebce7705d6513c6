"""Load one checkpoint for scoring: `from_pretrained` with a dtype, a revision and direct device placement."""

from __future__ import annotations

import importlib.util
import os

import torch
from transformers import AutoModelForCausalLM

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as torch.device (e.g. "cpu", "cuda:1")."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: unknown device {device!r} ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine")
    return resolved


def flash_attention_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn_implementation(attn_implementation: str | None, device: torch.device) -> str:
    """None / "auto" -> sdpa, also where flash-attn is installed: flash_attention_2 is used only when
    asked for by name, until a GPU benchmark shows it helps here (BENCHMARKS.md: not yet measured)."""
    if attn_implementation in (None, "auto"):
        return "sdpa"
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if attn_implementation == "flash_attention_2":
        if device.type != "cuda":
            raise ValueError("attn_implementation 'flash_attention_2' needs a CUDA device")
        if not flash_attention_available():
            raise ValueError("attn_implementation 'flash_attention_2' requested but flash-attn is not installed "
                             "(pip install memsweep[gpu])")
    return attn_implementation


def load_checkpoint(path_or_repo: str, revision: str | None = None, dtype: str = "bfloat16", device: str = "auto",
                    attn_implementation: str | None = None):
    """Load a causal LM in eval mode on the target device.

    On CPU, transformers builds the model on the meta device and fills it from the shards, so no second
    copy is made. On CUDA the weights land directly on the GPU when `accelerate` is installed
    (device_map); without it they pass through CPU memory once and are then moved.

    path_or_repo: a local checkpoint directory (revision is then ignored) or a Hub repo id.
    revision: Hub branch / tag / commit, e.g. "ckpt_355"; None = the repo's default branch.
    dtype: "float32" | "float16" | "bfloat16" (the weights are cast while loading).
    device: "auto" (cuda if available else cpu), "cpu", "cuda", "cuda:1", ...
    attn_implementation: None / "auto" (sdpa) or an explicit name.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    target = resolve_device(device)
    attention = resolve_attn_implementation(attn_implementation, target)
    is_local = os.path.isdir(path_or_repo)
    looks_like_path = path_or_repo.startswith(("/", ".", "~")) or path_or_repo.count("/") > 1
    if not is_local and looks_like_path:  # a Hub id is "org/name"; anything else is a missing directory
        raise ValueError(f"checkpoint directory {path_or_repo!r} does not exist")
    placement = {}
    if target.type != "cpu" and importlib.util.find_spec("accelerate") is not None:
        # weights are materialised straight on the device, never staged in CPU memory first
        placement = {"device_map": target}
    model, loading_info = AutoModelForCausalLM.from_pretrained(
        path_or_repo,
        revision=None if is_local else revision,
        dtype=DTYPES[dtype],
        attn_implementation=attention,
        output_loading_info=True,
        **placement,
    )
    check_loading_info(loading_info)
    if not placement and target.type != "cpu":
        # transformers needs `accelerate` for device_map; without it the weights pass through CPU memory once
        model = model.to(target)
    return model.eval()


def check_loading_info(info: dict) -> None:
    """transformers fills weights missing from a checkpoint with random values and only logs it (a config that
    names more layers than the shards hold): a checkpoint whose weights do not match its config must not score."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key) for key in info.get(kind) or [])
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{kind.split('_')[0]} {', '.join(keys[:3])}{more}")
    if problems:
        raise ValueError(f"the weights do not match config.json: {'; '.join(problems)}")


# Provisional (replaced by the load-memory work): what the actor records per checkpoint.
def stored_dtype(checkpoint_dir) -> str:
    """The dtype the weights are stored in on disk ("float32", "bfloat16", ...; "mixed" if they disagree)."""
    import json
    from pathlib import Path

    folder = Path(checkpoint_dir)
    dtypes: set[str] = set()
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
        for shard in shards:
            with open(shard, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(length))
            dtypes |= {names.get(v["dtype"], v["dtype"].lower()) for k, v in header.items() if k != "__metadata__"}
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise ValueError(f"{folder}: no weights (*.safetensors or pytorch_model*.bin)")
        state = torch.load(bins[0], map_location="cpu", mmap=True, weights_only=True)
        dtypes |= {str(t.dtype).removeprefix("torch.") for t in state.values() if torch.is_tensor(t)}
    return dtypes.pop() if len(dtypes) == 1 else "mixed"


def weights_fingerprint(model) -> str:
    """sha256 over every parameter's name, shape, dtype and a strided sample of its values: 16 hex chars."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].to("cpu").contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return digest.hexdigest()[:16]
