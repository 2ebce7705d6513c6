"""Sources: what a checkpoint or a chunk file is, pinned (a Hub commit, a content sha256), described without
reading it. The real Hub client against a real Hub-compatible server is exercised in tests/test_hub_amber.py;
here the Hub is monkeypatched to check decisions."""

from __future__ import annotations

from types import SimpleNamespace

import huggingface_hub
import pytest

from actors.protocol import CheckpointTarget
from sweep.data.sources import CheckpointUnresolvedError, describe_chunks, local_data_file, pin_checkpoint


def test_a_missing_local_data_file_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    chunk = tmp_path / "train" / "train_007.jsonl"
    chunk.write_text("{}\n")
    assert local_data_file(str(tmp_path), "train/train_007.jsonl") == chunk
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train" / "train_008.jsonl")):
        local_data_file(str(tmp_path), "train/train_008.jsonl")


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


def test_a_hub_checkpoint_is_pinned_to_its_commit_and_a_moved_branch_keeps_the_pinned_one(monkeypatch):
    commits = {"ckpt_001": "b" * 40}

    class FakeApi:
        def repo_info(self, repo_id, revision=None, repo_type=None):
            if revision not in commits:
                raise huggingface_hub.errors.RevisionNotFoundError(f"{revision} not found")
            return SimpleNamespace(sha=commits[revision])

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    fresh = pin_checkpoint("LLM360/Amber", 1, "ckpt_001", None)
    assert fresh.target == CheckpointTarget(1, "ckpt_001", "b" * 40) and fresh.warning is None
    moved = pin_checkpoint("LLM360/Amber", 1, "ckpt_001", "a" * 40)
    assert moved.target.commit == "a" * 40 and "moved from " + "a" * 40 in moved.warning
    gone = pin_checkpoint("LLM360/Amber", 2, "ckpt_002", "c" * 40)  # pinned before the branch went: kept
    assert gone.target.commit == "c" * 40 and gone.warning is None
    with pytest.raises(CheckpointUnresolvedError, match="checkpoint 2: revision 'ckpt_002' of LLM360/Amber"):
        pin_checkpoint("LLM360/Amber", 2, "ckpt_002", None)
    local = pin_checkpoint("/data/amber", 5, "ckpt_005", None)  # a local folder needs no pin
    assert local.target == CheckpointTarget(5, "ckpt_005", None)
