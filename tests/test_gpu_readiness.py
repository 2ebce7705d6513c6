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
    ray_before = ray.is_initialized()  # (the session's Ray may be up: then it must be left as it is)
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
            generated, _, _ = scoring._greedy_decode_static(checkpoint, sequences[:8, :K], L, None, compiled=True)
            eager, _, _ = scoring._greedy_decode_static(checkpoint, sequences[:8, :K], L, None, compiled=False)
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
from sweep.run.scheduler import actor_options
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
                            capture_output=True, timeout=600)  # a hang guard: a Ray start on a loaded machine is slow
    assert result.returncode == 0, result.stderr[-3000:]
    cpu, gpu = json.loads(result.stdout.strip().splitlines()[-1])
    assert cpu == "" and gpu in ("0", "1")


def test_a_cpu_actor_runs_on_the_cpu_whatever_the_device_key_says(tmp_path):
    from sweep.run.scorer_settings import scorer_settings

    spec = load_spec(spec_file(tmp_path, {}))
    assert scorer_settings(spec, gpus_per_actor=0).device == "cpu"
    assert scorer_settings(spec, gpus_per_actor=1).device == "auto"
    assert scorer_settings(spec, gpus_per_actor=0.5).gpus_per_actor == 0.5


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


# ---- 6. out of memory from a library is retried smaller; a lost CUDA context restarts the actor ------------------

def raising_above(limit: int, error: Exception, calls: list[int]):
    def fake(model, batch, options, **kwargs):
        calls.append(len(batch))
        if len(batch) > limit:
            raise error
        return score_batch(model, batch, options, **kwargs)
    return fake


@pytest.mark.parametrize("message", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call",
])
def test_out_of_memory_inside_a_library_halves_the_batch(model, sequences, monkeypatch, message):
    calls: list[int] = []
    monkeypatch.setattr(scorer_actor, "score_batch", raising_above(16, torch.AcceleratorError(message), calls))
    scores, used = score_in_batches(model, sequences.numpy(), GREEDY, 64, shrink_on_oom=True)
    assert used == 16 and calls[:3] == [48, 32, 16]
    np.testing.assert_array_equal(scores.matches, score_batch(model, sequences, GREEDY).matches)


def test_a_sticky_cuda_error_is_not_taken_for_out_of_memory(model, sequences, monkeypatch):
    sticky = RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA")
    calls: list[int] = []
    monkeypatch.setattr(scorer_actor, "score_batch", raising_above(0, sticky, calls))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        score_in_batches(model, sequences.numpy(), GREEDY, 64, shrink_on_oom=True)
    assert calls == [48]  # no halving: a smaller batch cannot help


@ray.remote(concurrency_groups={"io": 1, "compute": 1})
class LosesItsContextOnce(CheckpointScorer.__ray_actor_class__):
    """CheckpointScorer whose first cell meets a device-side assert, as a CUDA kernel would report it. Each process
    it runs in leaves a file `started-PID` in $MEMSWEEP_TEST_CONTEXT_LOST."""

    def __init__(self, settings):
        super().__init__(settings)
        (Path(os.environ["MEMSWEEP_TEST_CONTEXT_LOST"]) / f"started-{os.getpid()}").touch()

    def _score(self, tokens):
        raised = Path(os.environ["MEMSWEEP_TEST_CONTEXT_LOST"]) / "raised"
        if not raised.exists():
            raised.touch()
            raise torch.AcceleratorError("CUDA error: device-side assert triggered\nCUDA kernel errors might be "
                                         "asynchronously reported at some other API call")
        return super()._score(tokens)


@pytest.mark.ray
def test_a_lost_cuda_context_restarts_the_actor_and_retries_the_cell(module_ray, tmp_path, monkeypatch):
    from sweep.run.driver import run_sweep
    from sweep.landed.reader import open_output

    world = write_tiny_world(tmp_path / "world", checkpoints=1, chunks=2, rows=24, length=2 * K)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MEMSWEEP_TEST_CONTEXT_LOST", str(marks))  # MEMSWEEP_* reaches the actors
    spec = {"name": "context-lost", "model": {"source": str(world / "model"), "dtype": "float32"},
            "data": {"source": str(world / "data"), "samples_per_chunk": 8, "cache_dir": str(tmp_path / "cache")},
            "checkpoints": [0], "chunks": [0, 1], "memorization": {"prompt_len": K, "continuation_len": K},
            "resources": {"batch_size": 8, "max_attempts": 2, "actors": 1}, "output": str(tmp_path / "out")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    summary = run_sweep(load_spec(path), progress=False, scorer=LosesItsContextOnce)
    assert not summary.failed
    cells = open_output(tmp_path / "out").cells().collect().sort("chunk")
    assert cells.height == 2 and sorted(cells["attempts"].to_list()) == [1, 2]  # the first cell, tried again
    assert len(list(marks.glob("started-*"))) == 2  # the actor's process exited and Ray started a new one


class RecordingTimer:
    """threading.Timer that only records what it would run."""
    started: list = []

    def __init__(self, interval, function, args=()):
        self.interval, self.function, self.args, self.daemon = interval, function, args, False

    def start(self):
        RecordingTimer.started.append((self.function, self.args, self.daemon))


def test_a_lost_cuda_context_fails_the_call_saying_so_and_ends_the_process(tmp_path, monkeypatch):
    from actors.protocol import CheckpointTarget, CudaContextLost, ProbeBatch, ScorerSettings

    settings = ScorerSettings(model_source=str(tmp_path), dtype="float32", attn_implementation="auto",
                              options=GREEDY, batch_size=8, device="cpu")
    actor = CheckpointScorer.__ray_actor_class__(settings)  # the actor's class itself, in this process

    def assert_fails(target, probes):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                           "asynchronously reported at some other API call")

    monkeypatch.setattr(actor, "_score_cell", assert_fails)
    monkeypatch.setattr(RecordingTimer, "started", [])
    monkeypatch.setattr(scorer_actor.threading, "Timer", RecordingTimer)
    probes = ProbeBatch(chunk=3, rows=np.arange(2), tokens=np.zeros((2, 2 * K), dtype=np.uint32))
    with pytest.raises(CudaContextLost) as raised:
        actor.score_cell(CheckpointTarget(7, "ckpt_007"), probes)
    message = str(raised.value)
    assert "checkpoint 7 x chunk 3" in message and "illegal memory access" in message and "\n" not in message
    assert "exits" in message and "Ray restarts it" in message and "retried" in message
    assert RecordingTimer.started == [(os._exit, (1,), True)]  # the process ends, after the error is sent
    assert actor.exiting


# ---- 7. the README's GPU install commands, in the order that works ------------------------------------------------

def test_the_readme_installs_torch_before_flash_attn_without_build_isolation():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Installing on a GPU cluster"):]
    block = section[section.index("```sh") + 5: section.index("```", section.index("```sh") + 5)]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    torch_at = next(i for i, c in enumerate(commands) if re.search(r"pip install torch\b", c))
    flash_at = next(i for i, c in enumerate(commands) if "pip install flash-attn" in c)
    memsweep_at = next(i for i, c in enumerate(commands) if c.endswith("pip install -e ."))
    assert torch_at < memsweep_at < flash_at and "--no-build-isolation" in commands[flash_at]
    # an extra holding flash-attn cannot install in one step (its build imports torch): there must be none
    pyproject = (REPO / "pyproject.toml").read_text()
    assert not re.search(r'^\w+ = \[.*flash-attn', pyproject, re.M)


# ---- 8, 9. what the prepared GPU run reports ----------------------------------------------------------------------

def test_agreement_counts_rows_that_part_at_a_near_tie_apart_from_the_others():
    from benchmarks.token_agreement import NEAR_TIE_ULPS, agreement

    base = np.arange(4 * 5).reshape(4, 5)
    other = base.copy()
    other[1, 2:] = -1  # parts at position 2, a near-tie
    other[2, 4] = -1  # parts at position 4, where the top logit led clearly
    gaps = np.full((4, 5), 100.0, dtype=np.float32)
    gaps[1, 2] = NEAR_TIE_ULPS
    gaps[3, 0] = 0.0  # a near-tie both decodes resolved alike
    agreed = agreement(base, other, gaps)
    assert (agreed.rows, agreed.rows_identical, agreed.tokens_equal) == (4, 2, 20 - 3 - 1)
    assert agreed.near_ties_at_difference == 1 and agreed.near_tie_positions == 2
    assert "of the 2 rows that differ, 1 first differ at a near-tie" in agreed.describe("x")


def test_the_gpu_checks_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks/gpu_checks.sh")]).returncode == 0
