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


# ---- 2. flash attention in float32 is refused before Ray starts ------------------------------------------------

def test_flash_attention_in_float32_is_refused_before_ray_starts(tmp_path):
    path = spec_file(tmp_path, {"dtype": "float32", "attn_implementation": "flash_attention_2"})
    with pytest.raises(SpecError, match=r"spec.yaml:\d+: model.attn_implementation: .*model.dtype"):
        load_spec(path)
    ray_before = ray.is_initialized()  # (another module's Ray may be up: then it must be left as it is)
    code, err = run_command("run", str(path))
    assert ray.is_initialized() == ray_before  # refused before any Ray starts
    assert code == 2
    assert err.count("\n") == 1 and "model.attn_implementation" in err and "model.dtype" in err, err
    assert load_spec(spec_file(tmp_path, {"dtype": "bfloat16", "attn_implementation": "flash_attention_2"}))


# ---- 3. a static cache under flash attention: the mask tells it where the cache ends ---------------------------

def attention_reading_kv_length_from_mask(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                          **kwargs):
    """What flash attention computes in transformers, without flash-attn: given a 2D mask, keys beyond its length
    are cut (transformers' _upad_input does so for static caches) and masked-out keys are skipped; given none, every
    key counts. Causal alignment is bottom-right, as flash attention's: query i sees keys up to i + kv - q."""
    if attention_mask is not None:
        key, value = key[:, :, : attention_mask.shape[-1]], value[:, :, : attention_mask.shape[-1]]
    q_length, kv_length = query.shape[2], key.shape[2]
    allowed = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril(kv_length - q_length)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


# (a name holding "flash" makes transformers look for the flash-attn package)
AttentionInterface.register("kv_length_from_mask", attention_reading_kv_length_from_mask)
AttentionMaskInterface.register("kv_length_from_mask", flash_attention_mask)


def test_static_cache_decode_under_flash_like_attention_equals_the_growing_cache(model, sequences):
    growing = score_batch(model, sequences, GREEDY).generated
    flash_like = copy.deepcopy(model)
    flash_like.set_attn_implementation("kv_length_from_mask")
    assert np.array_equal(score_batch(flash_like, sequences, GREEDY).generated, growing)  # the stand-in is faithful
    for _ in range(2):  # the second batch reuses the first's cache, zeroed
        static = score_batch(flash_like, sequences, ScoringOptions(prompt_len=K, continuation_len=L, decode="static"))
        assert np.array_equal(static.generated, growing), f"{int((static.generated != growing).sum())} tokens differ"


def test_a_compiled_static_decode_under_flash_attention_is_refused(model, tmp_path):
    flash = LlamaForCausalLM(tiny_llama_config(VOCAB))
    flash.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="static-compiled.*flash"):
        scoring._check_static_decode(flash, torch.device("cuda"), compiled=True)
    scoring._check_static_decode(flash, torch.device("cuda"), compiled=False)
    scoring._check_static_decode(model, torch.device("cuda"), compiled=True)  # sdpa masks by cache position
    path = spec_file(tmp_path, {"attn_implementation": "flash_attention_2"}, {"decode": "static-compiled"})
    with pytest.raises(SpecError, match=r"resources.decode: static-compiled .*flash_attention_2"):
        load_spec(path)


# ---- 4. the compile path lets each checkpoint go -----------------------------------------------------------------

def holding_compile(function, **options):
    """A torch.compile stand-in that, like the real one, keeps what it compiled."""
    def compiled(*args, **kwargs):
        return function(*args, **kwargs)
    return compiled


def test_a_compiled_static_decode_keeps_no_model_alive(sequences, monkeypatch):
    monkeypatch.setattr(torch, "compile", holding_compile)
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    expected = None
    for seed in (1, 2):  # one checkpoint after another, as an actor loads them
        checkpoint = LlamaForCausalLM(tiny_llama_config(VOCAB)).eval()
        gone = weakref.ref(checkpoint)
        with torch.inference_mode():
            generated, _ = scoring._greedy_decode_static(checkpoint, sequences[:8, :K], L, None, compiled=True)
            eager, _ = scoring._greedy_decode_static(checkpoint, sequences[:8, :K], L, None, compiled=False)
        assert torch.equal(generated, eager)
        del checkpoint, generated, eager
        gc.collect()
        assert gone() is None, "the compiled step (or its static caches) keeps the model and its caches alive"
    assert len(scoring._static_decode_states) == 0
    checkpoint = LlamaForCausalLM(tiny_llama_config(VOCAB)).eval()
    with torch.inference_mode():
        scoring._greedy_decode_static(checkpoint, sequences[:8, :K], L, None, compiled=True)
    scoring.release_decode_state(checkpoint)  # what the actor does before the next load: compile caches reset
    assert resets == [1] and checkpoint not in scoring._static_decode_states


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
