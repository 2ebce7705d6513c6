"""Sources: local folders used in place; Hub checkpoints fetched with one kind of weights, within the disk,
and deleted only when memsweep downloaded them; chunk files described without being read.

The real Hub client against a real Hub-compatible server is exercised in tests/test_hub_amber.py; here the Hub
is monkeypatched to check decisions (which files, which folder, when to refuse)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

import sweep.sources as sources
from sweep.sources import (
    CheckpointFolder,
    InsufficientDiskError,
    describe_chunks,
    evict_checkpoint,
    fetch_checkpoint,
    is_local,
    local_checkpoint,
    local_data_file,
)


def test_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert is_local(str(tmp_path))
    assert is_local("demo")  # an existing directory, relative
    for path_like in ["/no/such/dir", "./missing", "../missing", "~/missing"]:
        assert is_local(path_like), path_like
    for hub_id in ["LLM360/Amber", "LLM360/AmberDatasets", "gpt2"]:
        assert not is_local(hub_id), hub_id


def test_local_files_and_folders_are_named_when_missing(tmp_path):
    (tmp_path / "train").mkdir()
    chunk = tmp_path / "train" / "train_007.jsonl"
    chunk.write_text("{}\n")
    assert local_data_file(str(tmp_path), "train/train_007.jsonl") == chunk
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "train_008.jsonl")):
        local_data_file(str(tmp_path), "train/train_008.jsonl")
    (tmp_path / "ckpt_003").mkdir()
    assert local_checkpoint(str(tmp_path), "ckpt_003") == tmp_path / "ckpt_003"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ckpt_004")):
        local_checkpoint(str(tmp_path), "ckpt_004")


def test_describe_local_chunks_stats_and_names_the_missing_one(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train_000.jsonl").write_text("{}\n" * 3)
    described = describe_chunks(str(tmp_path), {0: "train/train_000.jsonl", 1: "train/train_001.jsonl"})
    assert described[0].kind == "local" and described[0].size == 9 and described[0].sha256 is None
    assert isinstance(described[1], FileNotFoundError) and "train_001.jsonl" in str(described[1])


def test_describe_hub_chunks_takes_the_lfs_sha256_without_reading(monkeypatch):
    calls = []

    class FakeApi:
        def repo_info(self, repo_id, revision=None, repo_type=None):
            calls.append(("repo_info", repo_id, revision, repo_type))
            return SimpleNamespace(sha="c" * 40)

        def get_paths_info(self, repo_id, paths, revision=None, repo_type=None):
            calls.append(("paths_info", tuple(paths), revision))
            lfs = SimpleNamespace(size=20_800_000_000, sha256="a" * 64)
            return [SimpleNamespace(path=p, size=134, lfs=lfs) for p in paths if p.endswith("143.jsonl")]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    described = describe_chunks("LLM360/AmberDatasets", {143: "train/train_143.jsonl", 999: "train/train_999.jsonl"})
    hub = described[143]
    assert (hub.kind, hub.repo, hub.commit, hub.size, hub.sha256) == (
        "hub", "LLM360/AmberDatasets", "c" * 40, 20_800_000_000, "a" * 64)
    assert isinstance(described[999], FileNotFoundError) and "train_999.jsonl" in str(described[999])
    assert calls[0] == ("repo_info", "LLM360/AmberDatasets", "main", "dataset")
    assert calls[1][2] == "c" * 40  # the files are described at the pinned commit, not the moving branch


@pytest.mark.parametrize("repo_files,weights,not_weights", [
    (["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"],
     "pytorch_model*.bin", "*.safetensors"),
    (["config.json", "model.safetensors", "pytorch_model.bin"], "*.safetensors", "pytorch_model*.bin"),
])
def test_a_hub_checkpoint_is_downloaded_once_with_one_kind_of_weights(tmp_path, monkeypatch, repo_files, weights,
                                                                     not_weights):
    calls = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, local_dir=None, local_files_only=False,
                      dry_run=False):
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns, local_dir=local_dir,
                          local_files_only=local_files_only, dry_run=dry_run))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if dry_run:
            return [SimpleNamespace(file_size=1000, will_download=True)]
        Path(local_dir, "model.safetensors").write_bytes(b"w")
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    folder = fetch_checkpoint("LLM360/Amber", "ckpt_010", "d" * 40, tmp_path / "downloads")
    assert folder.downloaded and folder.path == tmp_path / "downloads" / "LLM360--Amber" / ("d" * 40)
    download = calls[-1]
    assert download["revision"] == "d" * 40 and not download["dry_run"]  # the pinned commit, not the branch
    assert "config.json" in download["allow_patterns"] and weights in download["allow_patterns"]
    assert not_weights not in download["allow_patterns"]
    assert evict_checkpoint(folder) > 0 and not folder.path.exists()


def test_a_download_that_does_not_fit_is_refused_naming_folder_and_sizes(tmp_path, monkeypatch):
    def fake_snapshot(repo_id, revision=None, allow_patterns=None, local_dir=None, local_files_only=False,
                      dry_run=False):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if dry_run:
            return [SimpleNamespace(file_size=27_000_000_000, will_download=True)]
        raise AssertionError("must not start a download that cannot fit")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=4_000_000_000))
    with pytest.raises(InsufficientDiskError) as raised:
        fetch_checkpoint("LLM360/Amber", "ckpt_001", "e" * 40, tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "LLM360--Amber" / ("e" * 40)) in message
    assert "needs 27.0 GB" in message and "4.0 GB free" in message and "ckpt_001" in message


def test_a_download_the_disk_cannot_hold_leaves_nothing_behind(tmp_path, monkeypatch):
    """A disk that fills mid-download: the shards already complete are deleted with the folder (nobody else
    would: the actor never got a folder to evict), and a later try refused up front deletes an earlier try's."""
    import errno

    target = tmp_path / "LLM360--Amber" / ("a" * 40)

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, local_dir=None, local_files_only=False,
                      dry_run=False):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if dry_run:
            return [SimpleNamespace(file_size=3000, will_download=True)]
        Path(local_dir, "pytorch_model-00001-of-00003.bin").write_bytes(b"complete shard")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(InsufficientDiskError, match="disk full in .* while downloading LLM360/Amber@ckpt_002"):
        fetch_checkpoint("LLM360/Amber", "ckpt_002", "a" * 40, tmp_path)
    assert not target.exists()

    (target / "pytorch_model-00001-of-00003.bin").parent.mkdir(parents=True)
    (target / "pytorch_model-00001-of-00003.bin").write_bytes(b"a shard from an earlier try")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(InsufficientDiskError, match="not enough disk space"):
        fetch_checkpoint("LLM360/Amber", "ckpt_002", "a" * 40, tmp_path)
    assert not target.exists()


def test_a_checkpoint_complete_in_the_hf_cache_is_used_there_and_never_deleted(tmp_path, monkeypatch):
    cached = tmp_path / "hf-cache" / "snapshot"
    cached.mkdir(parents=True)
    (cached / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["model.safetensors"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(cached))
    folder = fetch_checkpoint("LLM360/Amber", "main", "f" * 40, tmp_path / "downloads")
    assert folder == CheckpointFolder(cached, downloaded=False)
    assert evict_checkpoint(folder) == 0 and (cached / "model.safetensors").exists()


def test_a_local_checkpoint_touches_no_network_and_is_never_deleted(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a local source must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", forbidden)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", forbidden)
    (tmp_path / "ckpt_000").mkdir()
    folder = fetch_checkpoint(str(tmp_path), "ckpt_000", None)
    assert folder == CheckpointFolder(tmp_path / "ckpt_000", downloaded=False)
    assert evict_checkpoint(folder) == 0 and (tmp_path / "ckpt_000").is_dir()
    # a folder without memsweep's download marker is never deleted, even if told it was downloaded
    assert evict_checkpoint(CheckpointFolder(tmp_path / "ckpt_000", downloaded=True)) == 0
    assert (tmp_path / "ckpt_000").is_dir()
    assert sources.DOWNLOAD_MARKER not in os.listdir(tmp_path / "ckpt_000")
    assert json.dumps(folder.path.name)
