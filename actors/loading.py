"""Load one checkpoint for scoring within a bounded host memory; say what it stores and what was loaded.

    model = load_checkpoint("/ckpts/ckpt_355", None, "bfloat16", "cuda:0")
    stored_dtype("/ckpts/ckpt_355")   # "float32": what the files hold, read from headers only
    weights_fingerprint(model)        # "3f9c0e1d2a4b5c6d": names, shapes, dtypes and a sample of the values

Host memory. transformers 5.23's `from_pretrained` maps every shard of a sharded checkpoint before it
copies any weight and keeps them mapped to the end, so every page it reads stays in the process's
RSS: loading Amber's fp32 `.bin` shards (27 GB) as bf16 on CPU peaks near 1.5x the files (the
mapped shards plus the 13.5 GB bf16 copy). `load_checkpoint` instead hands `from_pretrained` a
state dict whose tensors are read on demand with ONE shard mapped at a time, re-mapped every
REMAP_BYTES (1 GiB) read, so the peak is about the bf16 model plus 1 GiB (BENCHMARKS.md, "Loading a
checkpoint"). The cast, the placement and everything else stay transformers' own, which is why the
weights are bit-identical.

Safety. `.bin` shards are read with `torch.load(weights_only=True)` only. Loads are from local
folders, where transformers never starts its background safetensors auto-conversion (Hub API calls,
possibly to a service outside `HF_ENDPOINT`); for a Hub id it would, on `.bin`-only revisions, so
the Hub path runs with `DISABLE_SAFETENSORS_CONVERSION=1`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.utils import check_torch_load_is_safe

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")

# A local folder's weight files in the order transformers 5.23 looks for them (variant-free names).
WEIGHT_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
# safetensors header dtypes -> torch's names (others are kept lower-cased)
SAFETENSORS_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                           "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
                           "U8": "uint8", "BOOL": "bool"}
NOT_WEIGHT_DTYPES = ("int", "uint", "bool", "complex")  # name prefixes stored_dtype does not count
FINGERPRINT_SAMPLES_PER_TENSOR = 1024
# A shard is re-mapped after this many bytes were read through its mapping (OneShardAtATime): the bound on
# mapped checkpoint pages in RSS while loading, against 9.9 GB for one Amber shard and 27 GB for all three.
REMAP_BYTES = 1 << 30


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
                             "(after torch: pip install flash-attn --no-build-isolation; README, \"Installing on a GPU "
                             "cluster\")")
    return attn_implementation


# --- which files hold the weights -------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFiles:
    """The weight files of a local checkpoint folder, chosen as transformers chooses them."""

    folder: Path
    format: str  # "safetensors" | "bin"
    files: tuple[Path, ...]  # the shards in the index's sorted order, or the one file
    sharded: bool  # True when an index JSON names the shards


def find_weight_files(checkpoint_dir: str | os.PathLike) -> WeightFiles:
    """The folder's weights: model.safetensors, else its sharded index, else pytorch_model.bin, else its
    index (transformers' order, so both loaders read the same files). Raises a one-line ValueError when
    the folder is missing, holds none of them, or an index names a shard that is not there."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise ValueError(f"checkpoint directory {str(folder)!r} does not exist")
    for name in WEIGHT_FILE_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        weight_format = "safetensors" if name.startswith("model.safetensors") else "bin"
        if not name.endswith(".index.json"):
            return WeightFiles(folder, weight_format, (path,), sharded=False)
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a shard index with a 'weight_map' ({error})") from None
        shards = tuple(folder / shard for shard in sorted(set(weight_map.values())))
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise ValueError(f"{path}: names shard(s) missing from the folder: {', '.join(missing)}")
        return WeightFiles(folder, weight_format, shards, sharded=True)
    raise ValueError(f"{folder}: no model weights found (looked for {', '.join(WEIGHT_FILE_NAMES)})")


def _torch_load_mapped(path: Path) -> dict[str, torch.Tensor]:
    """One `.bin` file's tensors, memory-mapped (zip format, torch >= 1.6) so nothing is read until used.
    The legacy pre-zip format cannot be mapped and is read whole, as transformers does."""
    check_torch_load_is_safe()
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _file_dtypes(path: Path, weight_format: str) -> dict[str, str]:
    """tensor name -> stored dtype name ("float32", "int64", ...) of one weight file, reading no tensor data:
    a safetensors header, or a `.bin` pickle with its tensors mapped but untouched."""
    if weight_format == "safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: SAFETENSORS_DTYPE_NAMES.get(dtype, dtype.lower())
                    for name in handle.keys() for dtype in [handle.get_slice(name).get_dtype()]}
    return {name: str(tensor.dtype).removeprefix("torch.") for name, tensor in _torch_load_mapped(path).items()
            if isinstance(tensor, torch.Tensor)}


def stored_dtype(checkpoint_dir: str | os.PathLike) -> str:
    """The dtype the checkpoint's weights are stored in on disk: "float32", "bfloat16", "float16", ... or
    "mixed" when its floating-point tensors disagree.

    Every shard is read, headers only: safetensors headers, or each `.bin` pickle through
    `torch.load(mmap=True, weights_only=True)`, which maps the file but reads no tensor data. Measured on
    Amber's layouts at 1/14 scale (291 tensors, as Amber; the cost follows the tensor count, not the
    bytes): three `.bin` shards 27-53 ms with the files in the page cache, 140 ms cold; three safetensors
    shards 1-2 ms, 17 ms cold.
    Counted: floating-point tensors. Not counted: integer/bool buffers (e.g. position ids) and rotary
    `inv_freq` tables, which older transformers saved in fp32 next to fp16/bf16 weights and which
    `from_pretrained` recomputes instead of loading. Raises a one-line ValueError naming the folder when
    it holds no weights.
    """
    weights = find_weight_files(checkpoint_dir)
    found: set[str] = set()
    for path in weights.files:
        for name, dtype in _file_dtypes(path, weights.format).items():
            if dtype.startswith(NOT_WEIGHT_DTYPES) or name.endswith("inv_freq"):
                continue
            found.add(dtype)
    if not found:
        raise ValueError(f"{weights.folder}: no floating-point weights in {', '.join(p.name for p in weights.files)}")
    return found.pop() if len(found) == 1 else "mixed"


# --- reading shards one at a time ---------------------------------------------------------------------


class OneShardAtATime:
    """Reads a sharded checkpoint's tensors on demand, with one shard mapped at a time and that one
    re-mapped after every `remap_bytes` read through it.

    Why: every page read through a mapping counts in the process's RSS until the mapping goes, and
    `from_pretrained` keeps all shards mapped to the end. Here, asking for a tensor of another shard, or
    of the same shard once `remap_bytes` were read through the current mapping, drops the open mapping and
    maps the file again; a dropped mapping is unmapped as soon as the tensors already handed out are cast
    and freed. So the mapped pages in RSS stay near `remap_bytes` (twice that while the last tensors of
    the previous mapping are cast, transformers casting with up to 4 threads), whatever the shard size. A re-map costs one `torch.load` of the shard's
    pickle (milliseconds) or one safetensors header; Amber (27 GB at 1 GiB) takes about 30.
    A returned tensor views the mapped file: for a load in the stored dtype on CPU the model keeps those
    views, exactly as `from_pretrained` does, and their pages stay (as the model itself).
    """

    def __init__(self, weights: WeightFiles, remap_bytes: int | None = None):
        self.weights = weights
        self.remap_bytes = REMAP_BYTES if remap_bytes is None else remap_bytes
        self.shard_of: dict[str, Path] = {}
        for path in weights.files:  # later files win a duplicated name, as in transformers' merged dict
            for name in _file_dtypes(path, weights.format):
                self.shard_of[name] = path
        self.opened = 0  # mappings made, for tests and the benchmark
        self._lock = threading.Lock()
        self._open_path: Path | None = None
        self._open_shard = None
        self._read_through_open = 0  # bytes handed out from the open mapping

    def read(self, name: str) -> torch.Tensor:
        with self._lock:
            path = self.shard_of[name]
            if path != self._open_path or self._read_through_open >= self.remap_bytes:
                self._close()
                self._open_shard = self._open(path)
                self._open_path = path
                self.opened += 1
            if self.weights.format == "bin":
                tensor = self._open_shard[name]
            else:
                tensor = self._open_shard.get_slice(name)[...]  # a view of the mapped file, as transformers reads it
            self._read_through_open += tensor.numel() * tensor.element_size()
            return tensor

    def _open(self, path: Path):
        if self.weights.format == "bin":
            return _torch_load_mapped(path)
        return safe_open(str(path), framework="pt", device="cpu")

    def _close(self) -> None:
        if self.weights.format == "safetensors" and self._open_shard is not None:
            self._open_shard.__exit__(None, None, None)  # tensors handed out keep their mapping alive
        self._open_shard, self._open_path, self._read_through_open = None, None, 0

    def close(self) -> None:
        with self._lock:
            self._close()

    def state_dict(self) -> Mapping[str, _DeferredTensor]:
        """name -> a deferred tensor that `from_pretrained(state_dict=...)` materialises with `value[...]`,
        the protocol of the safetensors slices it reads itself."""
        return _DeferredStateDict(self)


class _DeferredTensor:
    __slots__ = ("name", "reader")

    def __init__(self, reader: OneShardAtATime, name: str):
        self.reader, self.name = reader, name

    def __getitem__(self, index) -> torch.Tensor:
        return self.reader.read(self.name)[index]


class _DeferredStateDict(Mapping):
    def __init__(self, reader: OneShardAtATime):
        self._reader = reader

    def __getitem__(self, name: str) -> _DeferredTensor:
        if name not in self._reader.shard_of:
            raise KeyError(name)
        return _DeferredTensor(self._reader, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._reader.shard_of)

    def __len__(self) -> int:
        return len(self._reader.shard_of)


def shard_by_shard_weights(checkpoint_dir: str | os.PathLike) -> WeightFiles | None:
    """The checkpoint's shards when `load_checkpoint` reads them one at a time; None where it leaves the
    load to plain `from_pretrained`: a Hub id, a single weight file (nothing to gain), and configs whose
    load does more than read and cast tensors (quantized weights, remote code, an explicit
    `transformers_weights` file, a PEFT adapter, a model type without a causal-LM class)."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir() or (folder / "adapter_config.json").exists():
        return None
    try:
        weights = find_weight_files(folder)
    except ValueError:
        return None  # from_pretrained raises its own error
    if not weights.sharded:
        return None
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError):  # e.g. remote code: from_pretrained says what is wrong
        return None
    if (getattr(config, "quantization_config", None) is not None or getattr(config, "auto_map", None)
            or getattr(config, "transformers_weights", None) or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING):
        return None
    return weights


@contextlib.contextmanager
def _no_safetensors_conversion() -> Iterator[None]:
    """transformers starts a background safetensors conversion on a Hub `.bin` load unless this is set."""
    previous = os.environ.get("DISABLE_SAFETENSORS_CONVERSION")
    os.environ["DISABLE_SAFETENSORS_CONVERSION"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DISABLE_SAFETENSORS_CONVERSION", None)
        else:
            os.environ["DISABLE_SAFETENSORS_CONVERSION"] = previous


def load_checkpoint(path_or_repo: str, revision: str | None = None, dtype: str = "bfloat16", device: str = "auto",
                    attn_implementation: str | None = None):
    """Load a causal LM in eval mode on the target device.

    A local sharded checkpoint (Amber's `.bin` and safetensors layouts) is read one shard at a time
    (`OneShardAtATime`); anything else goes to plain `from_pretrained` (see `shard_by_shard_weights`).
    Either way transformers builds the model on the meta device, casts each tensor while placing it and
    makes no second copy. On CUDA the weights land directly on the GPU (`device_map`, needs
    `accelerate`): the host then holds about REMAP_BYTES of mapped shard pages plus the few tensors being
    cast and copied (up to 4 loader threads), not a copy of the model (reasoned, not yet measured on a GPU).

    Host memory at Amber scale (27 GB of fp32 `.bin` as bf16, CPU), extrapolated from a scaled model:
    peak about 0.54x the files (the 13.5 GB bf16 model plus REMAP_BYTES of mapped pages), against 1.51x
    with `from_pretrained` on its own (BENCHMARKS.md, "Loading a checkpoint").

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
    options = dict(dtype=DTYPES[dtype], attn_implementation=attention, output_loading_info=True, **placement)
    weights = shard_by_shard_weights(path_or_repo) if is_local else None
    if weights is not None:
        model, loading_info = _load_shard_by_shard(weights, options)
    else:
        with _no_safetensors_conversion():
            model, loading_info = AutoModelForCausalLM.from_pretrained(
                path_or_repo, revision=None if is_local else revision, **options)
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


def _load_shard_by_shard(weights: WeightFiles, options: dict):
    """`from_pretrained` with the weights as a deferred state dict; then what it does for a folder and
    not for a state dict: the folder's name in the config and its generation_config.json.
    Returns (model, loading info)."""
    folder = str(weights.folder)
    config = AutoConfig.from_pretrained(folder)
    reader = OneShardAtATime(weights)
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        model, loading_info = model_class.from_pretrained(None, config=config, state_dict=reader.state_dict(),
                                                          **options)
    finally:
        reader.close()
    model.config.name_or_path = folder
    if model.can_generate():
        model.adjust_generation_fn(None, True, None, folder, cache_dir=None, force_download=False, proxies=None,
                                   local_files_only=True, token=None, revision=None, subfolder="",
                                   trust_remote_code=False)
    return model, loading_info


# --- what was loaded ------------------------------------------------------------------------------------


def weights_fingerprint(model: torch.nn.Module) -> str:
    """16 hex chars: sha256 over every parameter's name, shape and dtype and the bytes of a fixed sample of
    its values (FINGERPRINT_SAMPLES_PER_TENSOR evenly strided elements, the whole tensor if smaller).

    Deterministic and independent of the file layout: the same values in the same dtype give the same
    fingerprint whether read from `.bin` or safetensors. Another checkpoint of a training run differs in
    (practically) every element, so in the sample; another dtype differs in the header. A change confined
    to unsampled elements goes unseen. On CUDA only the samples (291 x 1024 x 2 bytes for Amber in bf16,
    600 KB) go to the host, in one copy per device. Cost on this 2-core CPU: 7-40 ms for a 470M-parameter
    LLaMA with Amber's 291 tensors, about 12 ms estimated at LLaMA-7B shapes (benchmarks/load_memory.py);
    the first call on a model still mapped from bf16 safetensors and never used also pays the page
    faults of the sampled pages (143 ms once for 0.9 GB). On a GPU about 300 small kernels and one copy: milliseconds (not measured here). Tied weights count once (`named_parameters`). The
    sample of a tensor is every (numel // 1024)-th element from the first, so its tail may go unsampled.
    """
    digest = hashlib.sha256()
    samples: list[torch.Tensor] = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.device.type == "meta":
                raise ValueError(f"weights_fingerprint: parameter {name} is on the meta device (not loaded)")
            digest.update(f"{name}|{tuple(parameter.shape)}|{parameter.dtype}\n".encode())
            flat = parameter.detach().reshape(-1)
            stride = max(1, flat.numel() // FINGERPRINT_SAMPLES_PER_TENSOR)
            samples.append(flat[::stride][:FINGERPRINT_SAMPLES_PER_TENSOR].contiguous().view(torch.uint8))
    # one device-to-host copy per device, then the bytes in parameter order whatever the placement
    on_host: list[torch.Tensor | None] = [None] * len(samples)
    for device in {sample.device for sample in samples}:
        positions = [i for i, sample in enumerate(samples) if sample.device == device]
        copied = torch.cat([samples[i] for i in positions]).cpu()
        for i, part in zip(positions, copied.split([samples[i].numel() for i in positions])):
            on_host[i] = part
    for part in on_host:
        digest.update(part.numpy().tobytes())
    return digest.hexdigest()[:16]
