"""An actor's cell scoring in batches: row order kept, and an out-of-memory batch halves `auto`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actors.scorer_actor as scorer_actor
from actors.scorer_actor import score_in_batches
from actors.scoring import ScoringOptions, score_batch
from tests.tiny_lm import make_sequences, train_memorizing_llama

K, L, VOCAB = 12, 12, 64
OPTIONS = ScoringOptions(prompt_len=K, continuation_len=L)


@pytest.fixture(scope="module")
def model_and_tokens():
    sequences = make_sequences(50, K + L, VOCAB, seed=1)
    return train_memorizing_llama(sequences[:32], VOCAB, steps=20, seed=1), sequences.numpy()


def fits_at_most(limit: int, calls: list[int]):
    """score_batch that raises CUDA's out-of-memory error above `limit` rows, recording every batch size."""
    def fake(model, batch, options, **kwargs):
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return score_batch(model, batch, options, **kwargs)
    return fake


def test_batches_keep_row_order(model_and_tokens):
    model, tokens = model_and_tokens
    whole = score_batch(model, torch.from_numpy(tokens), OPTIONS)
    scores, used = score_in_batches(model, tokens, OPTIONS, 16, shrink_on_oom=False)  # 16+16+16+2 rows
    assert used == 16
    np.testing.assert_array_equal(scores.matches, whole.matches)
    np.testing.assert_array_equal(scores.match_mask, whole.match_mask)
    assert scores.full_match.sum() > 0


def test_auto_batch_halves_on_out_of_memory_and_rescores_the_whole_cell(model_and_tokens, monkeypatch):
    model, tokens = model_and_tokens
    calls: list[int] = []
    monkeypatch.setattr(scorer_actor, "score_batch", fits_at_most(16, calls))
    scores, used = score_in_batches(model, tokens, OPTIONS, 64, shrink_on_oom=True)
    assert used == 16
    assert calls == [50, 32, 16, 16, 16, 2]  # 64 -> 32 -> 16; every kept batch is a 16-row one
    whole = score_batch(model, torch.from_numpy(tokens), OPTIONS)
    np.testing.assert_array_equal(scores.matches, whole.matches)
    assert len(scores.prefix_match) == len(tokens)


def test_fixed_batch_that_does_not_fit_names_the_key(model_and_tokens, monkeypatch):
    model, tokens = model_and_tokens
    monkeypatch.setattr(scorer_actor, "score_batch", fits_at_most(16, []))
    with pytest.raises(RuntimeError, match=r"resources.batch_size: 32 sequences do not fit .*Tried to allocate"):
        score_in_batches(model, tokens, OPTIONS, 32, shrink_on_oom=False)


def test_out_of_memory_at_batch_one_is_raised(model_and_tokens, monkeypatch):
    model, tokens = model_and_tokens
    monkeypatch.setattr(scorer_actor, "score_batch", fits_at_most(0, []))
    with pytest.raises(torch.OutOfMemoryError):
        score_in_batches(model, tokens, OPTIONS, 4, shrink_on_oom=True)
