"""load_checkpoint on a tiny LLaMA saved with save_pretrained into tmp_path."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from actors.loading import load_checkpoint, resolve_attn_implementation, resolve_device
from tests.tiny_lm import tiny_llama_config


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=64)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "ckpt_001"
    model.save_pretrained(path)
    return path, model


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
