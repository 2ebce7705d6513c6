"""Checkpoint files on a node's disk: local folders used in place; Hub checkpoints fetched with one kind of
weights, within the disk, and deleted only when memsweep downloaded them. The Hub is monkeypatched to check
decisions (which files, which folder, when to refuse); the real client against a real Hub-compatible server is
exercised in tests/test_hub_amber.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

import actors.checkpoint_files as checkpoint_files
from actors.checkpoint_files import (
    CheckpointFolder,
    InsufficientDiskError,
    evict_checkpoint,
    fetch_checkpoint,
    is_local,
    local_checkpoint,
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


def test_a_missing_local_checkpoint_folder_is_named(tmp_path):
    (tmp_path / "ckpt_003").mkdir()
    assert local_checkpoint(str(tmp_path), "ckpt_003") == tmp_path / "ckpt_003"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ckpt_004")):
        local_checkpoint(str(tmp_path), "ckpt_004")


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


def test_two_actors_of_a_node_share_one_download_and_the_last_one_deletes_it(tmp_path, monkeypatch):
    """The shares of a split checkpoint may load on one node at once: one folder, deleted only by its last user
    (a lock per user: flock locks of two open() calls conflict like two processes' do)."""
    downloads = []

    def fake_snapshot(repo_id, revision=None, allow_patterns=None, local_dir=None, local_files_only=False,
                      dry_run=False):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if dry_run:
            return [SimpleNamespace(file_size=0 if Path(local_dir, "model.safetensors").exists() else 1000,
                                    will_download=not Path(local_dir, "model.safetensors").exists())]
        downloads.append(local_dir)
        Path(local_dir, "model.safetensors").write_bytes(b"w" * 1000)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, revision=None: ["model.safetensors"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    first = fetch_checkpoint("LLM360/Amber", "ckpt_010", "d" * 40, tmp_path / "downloads")
    second = fetch_checkpoint("LLM360/Amber", "ckpt_010", "d" * 40, tmp_path / "downloads")
    assert first.path == second.path
    assert evict_checkpoint(first) == 0 and (second.path / "model.safetensors").exists()  # the other one loads it
    assert evict_checkpoint(second) > 0 and not second.path.exists()
    third = fetch_checkpoint("LLM360/Amber", "ckpt_010", "d" * 40, tmp_path / "downloads")  # later: fetched again
    assert (third.path / "model.safetensors").exists() and evict_checkpoint(third) > 0


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
    assert checkpoint_files.DOWNLOAD_MARKER not in os.listdir(tmp_path / "ckpt_000")
    assert json.dumps(folder.path.name)
