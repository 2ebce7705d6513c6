"""Write a model's weights in LLM360 Amber's two on-disk layouts (test and benchmark helper).

    write_bin_shards(model, folder)                          # like ckpt_000..ckpt_358: fp32 pickled .bin
    write_safetensors_shards(model, folder, torch.bfloat16)  # like main: bf16 safetensors

Both write config.json and generation_config.json, then the weights in 3 shards with an index, named
as on the Hub (`pytorch_model-0000N-of-00003.bin` + `pytorch_model.bin.index.json`;
`model-0000N-of-00003.safetensors` + `model.safetensors.index.json`). The `.bin` shards are written
with `torch.save` (transformers 5.23 ignores `safe_serialization=False`), and every tensor carries a
Python attribute so that the pickles, like Amber's, rebuild tensors through
`torch._tensor._rebuild_from_type_v2`. Tied weights are written once, as transformers does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

SHARDS = 3
# Amber's shards are 9.88, 9.89 and ~7.2 GB of 26.97 GB: transformers' 10 GB limit over a 27 GB model.
SHARD_LIMIT_FRACTION = 10.0 / 26.97


def shard_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    """The state dict in module order, tied duplicates dropped, cut into SHARDS pieces the way
    transformers cuts shards: fill one until the next tensor would pass the size limit."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight: stored under its first name only
            continue
        seen.add(tensor.data_ptr())
        # a new tensor object (its own Python attributes), sharing the model's memory unless cast
        tensors[name] = tensor.detach().to(dtype).contiguous()
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    limit = total * SHARD_LIMIT_FRACTION
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) != SHARDS:
        raise ValueError(f"the model cuts into {len(shards)} shards, not {SHARDS}: too few tensors for Amber's layout")
    return shards


def _write_index(folder: Path, index_name: str, shard_names: list[str], shards: list[dict[str, torch.Tensor]]) -> None:
    weight_map = {name: shard_name for shard_name, shard in zip(shard_names, shards) for name in shard}
    total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_configs(model, folder: Path, dtype: torch.dtype) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.dtype = dtype  # config.json's "dtype" (Amber's main says "torch_dtype": "bfloat16")
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)


def write_bin_shards(model, folder: Path) -> list[Path]:
    """Amber's `ckpt_*` layout: the weights in fp32 as 3 torch.save shards + index; returns the shard paths."""
    folder = Path(folder)
    shards = shard_state_dict(model, torch.float32)
    _write_configs(model, folder, torch.float32)
    names = [f"pytorch_model-{i + 1:05d}-of-{SHARDS:05d}.bin" for i in range(SHARDS)]
    for name, shard in zip(names, shards):
        for tensor in shard.values():
            tensor.written_by = "amber_layout"  # Python state: pickled through _rebuild_from_type_v2, as Amber's
        torch.save(shard, folder / name)
    _write_index(folder, "pytorch_model.bin.index.json", names, shards)
    return [folder / name for name in names]


def write_safetensors_shards(model, folder: Path, dtype: torch.dtype = torch.bfloat16) -> list[Path]:
    """Amber's `main` layout: the weights cast to `dtype` in 3 safetensors shards + index; returns the shards."""
    folder = Path(folder)
    shards = shard_state_dict(model, dtype)
    _write_configs(model, folder, dtype)
    names = [f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors" for i in range(SHARDS)]
    for name, shard in zip(names, shards):
        save_file(shard, folder / name, metadata={"format": "pt"})
    _write_index(folder, "model.safetensors.index.json", names, shards)
    return [folder / name for name in names]
