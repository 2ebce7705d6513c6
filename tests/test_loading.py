"""Loading checkpoints: load_checkpoint (one shard at a time, bit-identical to from_pretrained), stored_dtype,
weights_fingerprint, and the argument checks. Tiny LLaMAs written into tmp_path in Amber's layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from actors import loading
from actors.loading import (OneShardAtATime, find_weight_files, load_checkpoint, resolve_attn_implementation,
                            resolve_device, shard_by_shard_weights, stored_dtype, weights_fingerprint)
from tests.amber_layout import write_bin_shards, write_safetensors_shards
from tests.tiny_lm import tiny_llama_config

REPO = Path(__file__).resolve().parents[1]


def tiny_llama(seed: int = 0, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size=64, num_layers=4)
    config.tie_word_embeddings = tied
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    model = tiny_llama()
    path = tmp_path_factory.mktemp("ckpt") / "ckpt_001"
    model.save_pretrained(path)  # one model.safetensors: left to from_pretrained
    return path, model


@pytest.fixture(scope="module")
def amber_layouts(tmp_path_factory):
    """The same fp32 weights as Amber's ckpt_* layout (.bin), as fp32 and bf16 safetensors shards, and a
    tied-embedding model's .bin shards; plus the model they came from."""
    root = tmp_path_factory.mktemp("amber")
    model = tiny_llama()
    model.generation_config.max_new_tokens = 7  # so that a generation_config.json left unread would show
    write_bin_shards(model, root / "bin-fp32")
    write_safetensors_shards(model, root / "safetensors-fp32", torch.float32)
    write_safetensors_shards(model, root / "safetensors-bf16", torch.bfloat16)
    write_bin_shards(tiny_llama(tied=True), root / "bin-tied")
    return root, model


def assert_same_model(got, want):
    """Every parameter and buffer (non-persistent ones too) bit for bit, in the same dtype; same config."""
    got_tensors = dict(got.named_parameters(remove_duplicate=False)) | dict(got.named_buffers())
    want_tensors = dict(want.named_parameters(remove_duplicate=False)) | dict(want.named_buffers())
    assert got_tensors.keys() == want_tensors.keys()
    for name, tensor in want_tensors.items():
        other = got_tensors[name]
        assert (other.dtype, other.shape, other.device) == (tensor.dtype, tensor.shape, tensor.device), name
        # bit patterns, so -0.0 vs 0.0 or NaN payloads would show
        assert torch.equal(other.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    assert got.config.to_dict() == want.config.to_dict()
    assert got.generation_config.to_dict() == want.generation_config.to_dict()
    assert not got.training


@pytest.mark.parametrize("layout", ["bin-fp32", "safetensors-fp32", "safetensors-bf16"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_shard_by_shard_is_bit_identical_to_from_pretrained(amber_layouts, layout, dtype):
    root, _ = amber_layouts
    folder = root / layout
    assert shard_by_shard_weights(folder) is not None  # the one-shard-at-a-time path is the one tested
    got = load_checkpoint(str(folder), None, dtype, "cpu")
    want = AutoModelForCausalLM.from_pretrained(str(folder), dtype=loading.DTYPES[dtype], attn_implementation="sdpa")
    assert_same_model(got, want)
    assert {p.dtype for p in got.parameters()} == {loading.DTYPES[dtype]}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["bin-fp32", "safetensors-bf16"])
def test_shard_by_shard_on_cuda_is_bit_identical_to_from_pretrained(amber_layouts, layout):
    folder = amber_layouts[0] / layout
    got = load_checkpoint(str(folder), None, "bfloat16", "cuda")
    want = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, attn_implementation="sdpa",
                                                device_map=torch.device("cuda"))
    assert_same_model(got, want)
    assert {p.device.type for p in got.parameters()} == {"cuda"}


def test_remapping_every_read_changes_nothing(amber_layouts, monkeypatch):
    root, _ = amber_layouts
    reader = OneShardAtATime(find_weight_files(root / "bin-fp32"), remap_bytes=1)
    for name in reader.shard_of:
        reader.read(name)
    assert reader.opened == len(reader.shard_of)  # remap_bytes=1: a new mapping for every tensor
    monkeypatch.setattr(loading, "REMAP_BYTES", 1)
    got = load_checkpoint(str(root / "bin-fp32"), None, "bfloat16", "cpu")
    want = AutoModelForCausalLM.from_pretrained(str(root / "bin-fp32"), dtype=torch.bfloat16)
    assert_same_model(got, want)


def test_tied_weights_stay_tied(amber_layouts):
    root, _ = amber_layouts
    got = load_checkpoint(str(root / "bin-tied"), None, "bfloat16", "cpu")
    want = AutoModelForCausalLM.from_pretrained(str(root / "bin-tied"), dtype=torch.bfloat16)
    assert got.lm_head.weight.data_ptr() == got.model.embed_tokens.weight.data_ptr()
    assert_same_model(got, want)


def test_what_goes_to_plain_from_pretrained(saved_checkpoint, amber_layouts, tmp_path):
    single, _ = saved_checkpoint
    root, _ = amber_layouts
    assert shard_by_shard_weights(single) is None  # one file: nothing to gain
    assert shard_by_shard_weights(tmp_path / "missing") is None
    quantized = tmp_path / "quantized"
    write_bin_shards(tiny_llama(), quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    assert shard_by_shard_weights(quantized) is None
    adapter = tmp_path / "adapter"
    write_bin_shards(tiny_llama(), adapter)
    (adapter / "adapter_config.json").write_text("{}")
    assert shard_by_shard_weights(adapter) is None
    assert shard_by_shard_weights(root / "bin-fp32").files == tuple(sorted((root / "bin-fp32").glob("*.bin")))


def test_hub_loads_never_start_the_safetensors_conversion(monkeypatch):
    seen = {}

    def fake_from_pretrained(repo, **kwargs):
        seen["env"] = os.environ.get("DISABLE_SAFETENSORS_CONVERSION")
        seen["revision"] = kwargs["revision"]
        return tiny_llama(), {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}

    monkeypatch.delenv("DISABLE_SAFETENSORS_CONVERSION", raising=False)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    load_checkpoint("LLM360/Amber", "ckpt_001", "float32", "cpu")
    assert seen == {"env": "1", "revision": "ckpt_001"}
    assert "DISABLE_SAFETENSORS_CONVERSION" not in os.environ  # restored after the call


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc (Linux)")
def test_peak_memory_is_about_the_bf16_model_not_the_mapped_shards(amber_layouts, tmp_path):
    """fp32 .bin shards loaded as bf16 peak at about the bf16 model (0.5x the files) plus REMAP_BYTES of mapped
    pages: measured 0.57x here. Keeping every shard mapped, as from_pretrained does, peaks at about 1.5x
    (benchmarks/load_memory.py); keeping one whole shard mapped (no re-mapping) measured 0.72-0.73x here."""
    torch.manual_seed(0)
    config = tiny_llama_config(vocab_size=4000, hidden_size=256, num_layers=16)
    shards = write_bin_shards(LlamaForCausalLM(config), tmp_path / "ckpt")
    files = sum(path.stat().st_size for path in shards)  # about 58 MB
    assert max(path.stat().st_size for path in shards) > 0.33 * files
    script = textwrap.dedent(f"""
        from actors import loading
        def kib(field):
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
        loading.load_checkpoint({str(amber_layouts[0] / "bin-fp32")!r}, None, "bfloat16", "cpu")  # imports
        loading.REMAP_BYTES = {files // 20}  # 5% of the files; 1 GiB is 4% of Amber's 27 GB
        before = kib("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
        model = loading.load_checkpoint({str(tmp_path / "ckpt")!r}, None, "bfloat16", "cpu")
        print((kib("VmHWM") - before) * 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr[-2000:]
    peak = int(done.stdout.split()[-1])
    assert 0.45 * files < peak < 0.65 * files, f"peak RSS growth {peak / files:.2f}x the files"


# --- stored_dtype --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,expected", [("bin-fp32", "float32"), ("safetensors-fp32", "float32"),
                                             ("safetensors-bf16", "bfloat16")])
def test_stored_dtype_of_sharded_layouts(amber_layouts, layout, expected):
    root, _ = amber_layouts
    assert stored_dtype(root / layout) == expected
    assert stored_dtype(str(root / layout)) == expected


def test_stored_dtype_of_single_files(tmp_path):
    model = tiny_llama()
    model.to(torch.float16).save_pretrained(tmp_path / "fp16")  # model.safetensors
    assert stored_dtype(tmp_path / "fp16") == "float16"
    (tmp_path / "bin").mkdir()
    torch.save({k: v.float() for k, v in model.state_dict().items()}, tmp_path / "bin" / "pytorch_model.bin")
    assert stored_dtype(tmp_path / "bin") == "float32"
    # transformers' order: model.safetensors wins over pytorch_model.bin in the same folder
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16)}, tmp_path / "bin" / "model.safetensors")
    assert stored_dtype(tmp_path / "bin") == "bfloat16"


def test_stored_dtype_mixed_and_what_it_ignores(tmp_path):
    (tmp_path / "mixed").mkdir()
    save_file({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float16)}, tmp_path / "mixed" / "model.safetensors")
    assert stored_dtype(tmp_path / "mixed") == "mixed"
    # across shards too: the first .bin shard fp32, the second bf16
    model = tiny_llama()
    shards = write_bin_shards(model, tmp_path / "mixed-shards")
    second = torch.load(shards[1], weights_only=True)
    torch.save({k: v.bfloat16() for k, v in second.items()}, shards[1])
    assert stored_dtype(tmp_path / "mixed-shards") == "mixed"
    # integer buffers and old fp32 rotary tables beside bf16 weights do not make a checkpoint "mixed"
    (tmp_path / "bf16").mkdir()
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16), "model.position_ids": torch.arange(4),
               "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(2)}, tmp_path / "bf16" / "model.safetensors")
    assert stored_dtype(tmp_path / "bf16") == "bfloat16"


def test_stored_dtype_errors_name_the_folder(tmp_path, amber_layouts):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"empty: no model weights found"):
        stored_dtype(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"missing.*does not exist"):
        stored_dtype(tmp_path / "missing")
    root, _ = amber_layouts
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pytorch_model.bin.index.json").write_text((root / "bin-fp32" / "pytorch_model.bin.index.json").read_text())
    with pytest.raises(ValueError, match=r"pytorch_model.bin.index.json: names shard\(s\) missing"):
        stored_dtype(broken)


# --- weights_fingerprint -----------------------------------------------------------------------------------------


def test_fingerprint_is_the_weights_not_the_layout(amber_layouts):
    root, model = amber_layouts
    from_bin = weights_fingerprint(load_checkpoint(str(root / "bin-fp32"), None, "bfloat16", "cpu"))
    from_safetensors = weights_fingerprint(load_checkpoint(str(root / "safetensors-fp32"), None, "bfloat16", "cpu"))
    from_transformers = weights_fingerprint(AutoModelForCausalLM.from_pretrained(str(root / "bin-fp32"),
                                                                                 dtype=torch.bfloat16))
    assert len(from_bin) == 16 and int(from_bin, 16) >= 0
    assert from_bin == from_safetensors == from_transformers
    as_fp32 = weights_fingerprint(load_checkpoint(str(root / "bin-fp32"), None, "float32", "cpu"))
    assert as_fp32 == weights_fingerprint(model)  # the fp32 files hold exactly the model's values
    assert as_fp32 != from_bin  # another dtype
    assert weights_fingerprint(tiny_llama(seed=1)) != weights_fingerprint(model)  # another checkpoint


def test_fingerprint_sees_a_sampled_element_and_refuses_meta():
    model = tiny_llama()
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before  # deterministic
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] += 1.0  # element 0 is always in the sample
    assert weights_fingerprint(model) != before
    with torch.device("meta"):
        empty = LlamaForCausalLM(tiny_llama_config(vocab_size=64))
    with pytest.raises(ValueError, match="meta device"):
        weights_fingerprint(empty)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fingerprint_on_cuda_matches_cpu():
    model = tiny_llama().to(torch.bfloat16)
    on_cpu = weights_fingerprint(model)
    assert weights_fingerprint(model.to("cuda")) == on_cpu


# --- arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,expected", [("float32", torch.float32), ("bfloat16", torch.bfloat16),
                                            ("float16", torch.float16)])
def test_load_checkpoint_dtype_device_eval(saved_checkpoint, dtype, expected):
    path, original = saved_checkpoint
    model = load_checkpoint(str(path), revision="ignored-for-local-dirs", dtype=dtype, device="cpu")
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {expected}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model.config._attn_implementation == "sdpa"
    tokens = torch.randint(3, 64, (2, 10))
    with torch.no_grad():
        got = model(tokens).logits.float()
        want = original(tokens).logits
    tolerance = 1e-5 if dtype == "float32" else 5e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu:banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_attention_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_attn_implementation(None, cpu) == "sdpa"
    monkeypatch.setattr("actors.loading.flash_attention_available", lambda: True)
    assert resolve_attn_implementation("auto", torch.device("cuda")) == "sdpa"  # flash-attn only by name
    assert resolve_attn_implementation("flash_attention_2", torch.device("cuda")) == "flash_attention_2"
    monkeypatch.setattr("actors.loading.flash_attention_available", lambda: False)
    assert resolve_attn_implementation("eager", cpu) == "eager"
    with pytest.raises(ValueError, match="flash_attention_2"):
        resolve_attn_implementation("flash_attention_2", cpu)
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve_attn_implementation("fast", cpu)


def test_bad_arguments_name_the_problem(saved_checkpoint, tmp_path):
    path, _ = saved_checkpoint
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(str(path), None, dtype="float8", device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing"), None, dtype="float32", device="cpu")


def test_weights_that_do_not_match_the_config_are_refused_not_randomly_filled(tmp_path):
    """transformers fills weights a checkpoint lacks with random values and only logs it."""
    import json

    tiny_llama().save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    layers = config["num_hidden_layers"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers + 1}))
    with pytest.raises(ValueError, match=rf"the weights do not match config.json: missing model\.layers\.{layers}\."):
        load_checkpoint(str(tmp_path / "ckpt"), None, "float32", "cpu")
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers - 1}))
    with pytest.raises(ValueError, match=rf"unexpected model\.layers\.{layers - 1}\."):
        load_checkpoint(str(tmp_path / "ckpt"), None, "float32", "cpu")

