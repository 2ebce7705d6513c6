"""Source resolution: local folders used in place, Hub ids handed to huggingface_hub."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from sweep.sources import is_local, prefetch_model, resolve_data_file, resolve_model


def test_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert is_local(str(tmp_path))
    assert is_local("demo")  # an existing directory, relative
    for path_like in ["/no/such/dir", "./missing", "../missing", "~/missing"]:
        assert is_local(path_like), path_like
    for hub_id in ["LLM360/Amber", "LLM360/AmberDatasets", "gpt2"]:
        assert not is_local(hub_id), hub_id


def test_local_data_file(tmp_path):
    (tmp_path / "train").mkdir()
    chunk = tmp_path / "train" / "train_007.jsonl"
    chunk.write_text("{}\n")
    assert resolve_data_file(str(tmp_path), "train/train_007.jsonl") == chunk
    with pytest.raises(FileNotFoundError) as raised:
        resolve_data_file(str(tmp_path), "train/train_008.jsonl")
    assert str(tmp_path / "train" / "train_008.jsonl") in str(raised.value)


def test_hub_data_file_is_downloaded_from_the_dataset_repo(tmp_path, monkeypatch):
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "cached.jsonl")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = resolve_data_file("LLM360/AmberDatasets", "train/train_143.jsonl")
    assert path == tmp_path / "cached.jsonl"
    assert calls == [{"repo_id": "LLM360/AmberDatasets", "filename": "train/train_143.jsonl",
                      "repo_type": "dataset"}]


def test_resolve_model(tmp_path):
    (tmp_path / "ckpt_003").mkdir()
    assert resolve_model(str(tmp_path), "ckpt_003") == (str(tmp_path / "ckpt_003"), None)
    assert resolve_model("LLM360/Amber", "ckpt_143") == ("LLM360/Amber", "ckpt_143")
    with pytest.raises(FileNotFoundError) as raised:
        resolve_model(str(tmp_path), "ckpt_004")
    assert str(tmp_path / "ckpt_004") in str(raised.value)


@pytest.mark.parametrize("repo_files,weights,not_weights", [
    (["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"],
     "pytorch_model*.bin", "*.safetensors"),
    (["config.json", "model.safetensors", "pytorch_model.bin"], "*.safetensors", "pytorch_model*.bin"),
])
def test_prefetch_hub_model_downloads_one_kind_of_weights(monkeypatch, repo_files, weights, not_weights):
    calls = []
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kwargs: calls.append(kwargs))
    prefetch_model("LLM360/Amber", "ckpt_010")
    assert len(calls) == 1
    assert calls[0]["repo_id"] == "LLM360/Amber" and calls[0]["revision"] == "ckpt_010"
    patterns = calls[0]["allow_patterns"]
    assert "config.json" in patterns and weights in patterns and not_weights not in patterns


def test_prefetch_local_model_touches_no_network(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a local source must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", forbidden)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", forbidden)
    prefetch_model(str(tmp_path), "ckpt_000")
