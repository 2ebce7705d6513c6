"""The GPU path, checked without a GPU: what would crash or give wrong numbers on first contact with one.

Each test stands in for the GPU where it must: models on the meta device (configs and dtypes without memory), a
faked `torch.cuda.mem_get_info`, fake forwards that raise CUDA's errors, an attention function that reads the keys'
length from the mask as flash attention does, and Ray with logical GPUs.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.pytorch_utils import Conv1D

import actors.scorer_actor as scorer_actor
import actors.scoring as scoring
from actors.scorer_actor import CheckpointScorer, score_in_batches
from actors.scoring import PLAIN_HEAD_MODEL_TYPES, ScoringOptions, pick_batch_size, score_batch
from sweep.spec import SpecError, load_spec
from tests.tiny_lm import make_sequences, tiny_llama_config, train_memorizing_llama, write_tiny_world

REPO = Path(__file__).resolve().parents[1]
K, L, VOCAB = 12, 12, 64
GREEDY = ScoringOptions(prompt_len=K, continuation_len=L)
GiB = 2**30


@pytest.fixture(scope="module")
def sequences() -> torch.LongTensor:
    return make_sequences(48, K + L, VOCAB, seed=0)


@pytest.fixture(scope="module")
def model(sequences):
    return train_memorizing_llama(sequences[:32], VOCAB, steps=20, seed=0)


def fake_gpu(monkeypatch, total_bytes: int, used: list[int]) -> None:
    """`torch.cuda.mem_get_info` of a device of `total_bytes` whose use is `used[0]` bytes (the test moves it)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total_bytes - used[0], total_bytes))


def on_meta(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def spec_file(tmp_path: Path, model: dict, resources: dict | None = None) -> Path:
    spec = {"name": "t", "model": {"source": "org/model", **model}, "data": {"source": "org/data"},
            "checkpoints": [0], "chunks": [0], "resources": resources or {}, "output": str(tmp_path / "out")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_command(*args: str) -> tuple[int, str]:
    from sweep.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


# ---- 1. the auto batch size reads every config the kernel claims -----------------------------------------------

# every model type the kernel names (plain head: decoder and head run apart) and the common ones that run their
# own forward
MODEL_TYPES = sorted(PLAIN_HEAD_MODEL_TYPES | {"gptj", "opt", "bloom", "falcon"})


def widest_projection_input(model) -> int:
    """The widest activation a layer projects from, read off the modules (the MLP's down projection): what the
    config's MLP width must name. GPT-2's Conv1D keeps its weight as [in, out]."""
    head = model.get_output_embeddings()
    widths = [module.in_features for module in model.modules() if isinstance(module, torch.nn.Linear) and
              module is not head]
    widths += [module.weight.shape[0] for module in model.modules() if isinstance(module, Conv1D)]
    return max(widths)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_auto_batch_size_on_cuda_reads_the_mlp_width_of_every_claimed_model_type(model_type, monkeypatch):
    model = on_meta(AutoConfig.for_model(model_type))
    fake_gpu(monkeypatch, 80 * GiB, [20 * GiB])
    batch = pick_batch_size(model, GREEDY, "cuda")  # raised AttributeError (intermediate_size) for gpt2 & co.
    assert 8 <= batch <= scoring.MAX_CUDA_BATCH_SIZE and batch % 8 == 0
    assert scoring.mlp_width(model.config) == widest_projection_input(model)


# ---- 5. a CPU actor sees no GPU; actors sharing one size their batches to fit together ---------------------------

CUDA_VISIBLE_DEVICES_SEEN = """
import json, os, ray
from sweep.scheduler import actor_options
ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)

@ray.remote
class Sees:
    def devices(self):
        return os.environ.get("CUDA_VISIBLE_DEVICES")

cpu = Sees.options(**actor_options(0, 0.5, {})).remote()
gpu = Sees.options(**actor_options(1, 0.5, {"MEMSWEEP_X": "1"})).remote()
print(json.dumps(ray.get([cpu.devices.remote(), gpu.devices.remote()])))
"""


@pytest.mark.ray
def test_a_cpu_actor_on_a_gpu_node_sees_no_gpu():
    """Ray 2.60 hands a zero-GPU actor its node's CUDA_VISIBLE_DEVICES (here "0,1"): it would run on cuda:0."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["CUDA_VISIBLE_DEVICES"] = "0,1"  # a node with two GPUs, as Ray's workers inherit it
    result = subprocess.run([sys.executable, "-c", CUDA_VISIBLE_DEVICES_SEEN], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    cpu, gpu = json.loads(result.stdout.strip().splitlines()[-1])
    assert cpu == "" and gpu in ("0", "1")


def test_a_cpu_actor_runs_on_the_cpu_whatever_the_device_key_says(tmp_path):
    from actors.protocol import ScorerSettings

    spec = load_spec(spec_file(tmp_path, {}))
    assert ScorerSettings.from_spec(spec, gpus_per_actor=0).device == "cpu"
    assert ScorerSettings.from_spec(spec, gpus_per_actor=1).device == "auto"
    assert ScorerSettings.from_spec(spec, gpus_per_actor=0.5).gpus_per_actor == 0.5


def test_actors_sharing_a_gpu_size_their_batches_to_fit_it_together(monkeypatch):
    """Two actors at gpus_per_actor 0.5 on one 80 GiB GPU, each with a 7B bf16 checkpoint: the second loads before
    the first scores, so each sees the other's memory only partly as used."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         vocab_size=32000)
    options = ScoringOptions(prompt_len=32, continuation_len=32)
    used = [0]
    fake_gpu(monkeypatch, 80 * GiB, used)
    batches = []
    for _ in range(2):
        checkpoint = on_meta(config).to(torch.bfloat16)
        used[0] += scoring.resident_bytes(checkpoint)  # this actor's weights are loaded: then it sizes its batch
        batches.append(pick_batch_size(checkpoint, options, "cuda", gpu_share=0.5))
    peak = used[0] + sum(batches) * scoring.sequence_bytes(config, 2, options)
    assert peak <= 80 * GiB, f"batches {batches} need {peak / GiB:.1f} GiB of 80"
    assert min(batches) >= 256  # and the share is still used, not left idle
