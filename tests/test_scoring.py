"""The scoring kernel against HF `generate` on a tiny LLaMA that memorized part of its data."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from actors.scoring import (BatchScores, ScoringOptions, argmax_and_margin, first_argmax, pick_batch_size,
                            score_batch)
from tests.tiny_lm import EOS_ID, make_sequences, train_memorizing_llama

K, L = 12, 12  # L is not a multiple of 8, so the packed mask's padding bits are exercised
VOCAB = 64
N_TRAINED = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads and lose a lot when other tests share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sequences() -> torch.LongTensor:
    return make_sequences(48, K + L, VOCAB, seed=0)


@pytest.fixture(scope="module")
def model(sequences):
    torch.manual_seed(0)
    return train_memorizing_llama(sequences[:N_TRAINED], VOCAB, steps=20, seed=0)


@contextmanager
def generation_eos(model, eos_token_id: int | None):
    """The model's own generation config with `eos_token_id`, restored after: generate fills a passed config's None
    fields from the model's defaults, so eos_token_id=None only sticks there."""
    original = model.generation_config
    model.generation_config = copy.deepcopy(original)
    model.generation_config.eos_token_id = eos_token_id
    try:
        yield
    finally:
        model.generation_config = original


def hf_generate(model, tokens: torch.LongTensor, eos_token_id: int | None) -> torch.LongTensor:
    """HF generate's l new tokens, int64[B, L]; positions it never produced (early stop) hold -1."""
    with generation_eos(model, eos_token_id), torch.no_grad():
        out = model.generate(tokens[:, :K], attention_mask=torch.ones_like(tokens[:, :K]), do_sample=False,
                             num_beams=1, max_new_tokens=L)
    generated = torch.full((tokens.shape[0], L), -1, dtype=torch.long)
    generated[:, : out.shape[1] - K] = out[:, K:]
    return generated


def expected_from_generated(generated: torch.LongTensor, tokens: torch.LongTensor):
    hits = (generated == tokens[:, K:]).numpy()
    return hits.sum(1), np.cumprod(hits, axis=1).sum(1), hits


def unpack(mask: np.ndarray) -> np.ndarray:
    return np.unpackbits(mask, axis=1, bitorder="little", count=L).astype(bool)


def greedy(**overrides) -> ScoringOptions:
    return ScoringOptions(prompt_len=K, continuation_len=L, **overrides)


def concat(parts: list[BatchScores]) -> BatchScores:
    fields = BatchScores.__dataclass_fields__
    return BatchScores(**{name: None if getattr(parts[0], name) is None
                          else np.concatenate([getattr(p, name) for p in parts]) for name in fields})


def test_scores_are_spread_between_0_and_1(model, sequences):
    scores = score_batch(model, sequences, greedy())
    assert scores.full_match.sum() >= 5, scores.matches
    assert (scores.matches <= L // 4).sum() >= 10, scores.matches
    assert ((scores.matches > L // 4) & (scores.matches < L)).sum() >= 1, scores.matches
    assert scores.full_match[N_TRAINED:].sum() == 0  # unseen rows are not reproduced


def test_greedy_equals_hf_generate_fp32(model, sequences):
    scores = score_batch(model, sequences, greedy())
    matches, prefix, hits = expected_from_generated(hf_generate(model, sequences, eos_token_id=None), sequences)
    np.testing.assert_array_equal(scores.matches, matches)
    np.testing.assert_array_equal(scores.prefix_match, prefix)
    np.testing.assert_array_equal(scores.full_match, prefix == L)
    np.testing.assert_array_equal(unpack(scores.match_mask), hits)
    assert scores.matches.dtype == np.int16 and scores.prefix_match.dtype == np.int16
    assert scores.match_mask.shape == (len(sequences), 2) and scores.match_mask.dtype == np.uint8
    assert scores.nll is None and scores.tf_accuracy is None


@pytest.mark.parametrize("block", [4, 5])  # 64 = 16 x 4; 64 = 12 x 5 + a short tail block of 4
def test_greedy_equals_hf_generate_through_the_two_level_argmax(model, sequences, monkeypatch, block):
    """The tiny vocabulary is below first_argmax's threshold; shrink the block so the kernel's CPU argmax is used."""
    monkeypatch.setattr("actors.scoring.ARGMAX_BLOCK", block)
    monkeypatch.setattr("actors.scoring.ARGMAX_MIN_VOCAB", VOCAB)
    calls = []
    real_unfold = torch.Tensor.unfold
    monkeypatch.setattr(torch.Tensor, "unfold", lambda self, *a: calls.append(a) or real_unfold(self, *a))
    scores = score_batch(model, sequences, greedy())
    assert calls, "the two-level argmax was not used"
    matches, prefix, hits = expected_from_generated(hf_generate(model, sequences, eos_token_id=None), sequences)
    np.testing.assert_array_equal(scores.matches, matches)
    np.testing.assert_array_equal(unpack(scores.match_mask), hits)
    extractable = score_batch(model, sequences, greedy(mode="extractable"))
    np.testing.assert_array_equal(extractable.prefix_match, prefix)


def test_first_argmax_equals_torch_argmax_on_ties_tails_and_nan():
    generator = torch.Generator().manual_seed(0)
    for vocab in (4096, 32000, 32001, 50257):
        logits = torch.randn((9, vocab), generator=generator)
        top = logits.max() + 1
        logits[0, [7, 300]] = top  # tie across blocks: the first wins
        logits[1, [300, 301]] = top  # tie inside one block
        logits[2, [vocab - 1]] = top  # maximum in the last (maybe short) block
        logits[3, [vocab - 2, vocab - 1]] = top
        logits[4] = float("-inf")  # all equal: index 0
        logits[5, 0] = top  # first column
        logits[6, 1000:] = top  # a run of ties ending at the last column
        for variant in (logits, logits.half(), logits.bfloat16(), logits.reshape(3, 3, vocab)):
            assert torch.equal(first_argmax(variant), variant.argmax(-1)), (vocab, variant.dtype, variant.shape)
        with_nan = logits.clone()
        with_nan[8, 123] = float("nan")  # argmax counts NaN as the maximum
        assert torch.equal(first_argmax(with_nan), with_nan.argmax(-1))


def test_argmax_and_margin_equal_argmax_and_topk_on_ties_tails_and_infinities():
    generator = torch.Generator().manual_seed(1)
    for vocab in (4096, 32000, 32001, 50257):
        logits = torch.randn((8, vocab), generator=generator)
        top = logits.max() + 1
        logits[0, [7, 300]] = top  # an exact tie across blocks: margin 0
        logits[1, [300, 301]] = top  # ... inside one block
        logits[2, [vocab - 1]] = top  # the maximum in the last (maybe short) block: its repeats are no runner-up
        logits[3, [vocab - 2]], logits[3, [vocab - 1]] = top, top - 0.5  # runner-up in the same short block
        logits[4] = float("-inf")  # all equal
        logits[5, 0], logits[5, vocab // 2] = top, top - 0.25  # runner-up in another block
        logits[6, 1000:] = top  # a run of ties ending at the last column
        for variant in (logits, logits.half(), logits.bfloat16(), logits.reshape(2, 4, vocab)):
            index, margin = argmax_and_margin(variant)
            top2 = variant.topk(2, dim=-1).values.float()
            assert torch.equal(index, variant.argmax(-1)), (vocab, variant.dtype)
            torch.testing.assert_close(margin, top2[..., 0] - top2[..., 1], rtol=0, atol=0, equal_nan=True)
            assert margin.dtype == torch.float32
        assert argmax_and_margin(logits)[1][[0, 1, 6]].tolist() == [0, 0, 0]


@pytest.mark.parametrize("block", [None, 5])  # None: torch's topk (the tiny vocabulary); 5: the CPU block path
def test_decision_margin_equals_hf_generates_scores(model, sequences, monkeypatch, block):
    """The margin is the smallest top-1 minus top-2 of generate's own scores (output_scores: the logits of each
    step) over the positions up to and at the first mismatch; extractable mode gives the same from one pass."""
    if block is not None:
        monkeypatch.setattr("actors.scoring.ARGMAX_BLOCK", block)
        monkeypatch.setattr("actors.scoring.ARGMAX_MIN_VOCAB", VOCAB)
    with generation_eos(model, None), torch.no_grad():
        out = model.generate(sequences[:, :K], attention_mask=torch.ones_like(sequences[:, :K]), do_sample=False,
                             num_beams=1, max_new_tokens=L, output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores, dim=1).topk(2, dim=-1).values  # [B, L, 2]
    gaps = (top2[..., 0] - top2[..., 1]).numpy()
    _, prefix, _ = expected_from_generated(out.sequences[:, K:], sequences)
    deciding = np.arange(L)[None, :] <= prefix[:, None]
    expected = np.where(deciding, gaps, np.inf).min(1)
    assert (expected > gaps.min(1)).any()  # positions past the first miss are left out
    assert np.ptp(expected) > 1.0  # near and far decisions both
    for options in (greedy(), greedy(nll=True), greedy(mode="extractable")):
        scores = score_batch(model, sequences, options)
        assert scores.decision_margin.dtype == np.float32
        np.testing.assert_allclose(scores.decision_margin, expected, rtol=1e-4, atol=1e-4, err_msg=str(options))


def test_models_without_a_plain_head_go_through_their_own_forward(model, sequences, monkeypatch):
    """Unknown model types may scale or soft-cap logits inside forward: the kernel must not bypass it."""
    modes = {"greedy": greedy(), "nll": greedy(nll=True), "extractable": greedy(mode="extractable")}
    split = {name: score_batch(model, sequences, options) for name, options in modes.items()}
    monkeypatch.setattr("actors.scoring.PLAIN_HEAD_MODEL_TYPES", frozenset())
    forwards = []
    handle = model.register_forward_hook(lambda module, args, output: forwards.append(output.logits.shape))
    try:
        for name, options in modes.items():
            whole = score_batch(model, sequences, options)
            np.testing.assert_array_equal(whole.prefix_match, split[name].prefix_match, err_msg=name)
            if whole.matches is not None:
                np.testing.assert_array_equal(whole.match_mask, split[name].match_mask, err_msg=name)
            if whole.nll is not None:
                np.testing.assert_allclose(whole.nll, split[name].nll, rtol=1e-6)
    finally:
        handle.remove()
    assert len(forwards) == 2 * L + 1  # greedy: prefill + L-1 steps; nll: one pass + L-1 steps; extractable: one pass


def test_static_cache_decode_loop_equals_hf_generate(model, sequences):
    """The CUDA compile path's loop (StaticCache reused per batch shape, reset between batches), run
    eagerly on CPU; torch.compile and CUDA graphs themselves need a GPU and are not covered here."""
    from actors.scoring import _EosStop, _greedy_decode_static

    _, _, hits = expected_from_generated(hf_generate(model, sequences, eos_token_id=None), sequences)
    with torch.inference_mode():
        for offset in (0, 24):  # same shape: the second batch reuses the first's cache
            half = sequences[offset:offset + 24]
            generated, produced, _ = _greedy_decode_static(model, half[:, :K], L, None, compiled=False)
            assert produced is None
            np.testing.assert_array_equal((generated == half[:, K:]).numpy(), hits[offset:offset + 24])
        stop = _EosStop.from_model(model, EOS_ID, None, torch.device("cpu"))
        generated, produced, _ = _greedy_decode_static(model, sequences[:, :K], L, stop, compiled=False)
    reference = score_batch(model, sequences, greedy(eos="reference"))
    np.testing.assert_array_equal(unpack(reference.match_mask), ((generated == sequences[:, K:]) & produced).numpy())


def test_results_do_not_depend_on_batch_size(model, sequences):
    whole = score_batch(model, sequences, greedy(nll=True))
    for batch in (1, 7):
        parts = concat([score_batch(model, sequences[i:i + batch], greedy(nll=True))
                        for i in range(0, len(sequences), batch)])
        for name in ("matches", "prefix_match", "full_match", "match_mask"):
            np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name), err_msg=f"{name} batch {batch}")
        np.testing.assert_allclose(parts.nll, whole.nll, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(parts.decision_margin, whole.decision_margin, rtol=1e-5, atol=1e-5)


def test_extractable_equals_greedy(model, sequences):
    greedy_scores = score_batch(model, sequences, greedy())
    extractable = score_batch(model, sequences, greedy(mode="extractable"))
    np.testing.assert_array_equal(extractable.prefix_match, greedy_scores.prefix_match)
    np.testing.assert_array_equal(extractable.full_match, greedy_scores.full_match)
    assert extractable.matches is None and extractable.match_mask is None
    assert 0 < extractable.full_match.sum() < len(sequences)


def test_reference_eos_policy_equals_hf_generate(model, sequences):
    ordinary = score_batch(model, sequences, greedy())
    reference_generated = hf_generate(model, sequences, eos_token_id=EOS_ID)
    # the test can fail: some rows emit EOS early and then differ from the ordinary policy
    emits_eos_early = (reference_generated[:, : L - 1] == EOS_ID).any(1)
    assert emits_eos_early.sum() >= 2
    batches = [sequences]  # the whole batch, then single rows: a lone row that emits EOS stops generate early
    batches += [sequences[i:i + 1] for i in torch.nonzero(emits_eos_early).flatten().tolist()[:3]]
    stopped_early = 0
    for batch in batches:
        scores = score_batch(model, batch, greedy(eos="reference"))
        generated = hf_generate(model, batch, eos_token_id=EOS_ID)
        stopped_early += int((generated[:, -1] == -1).all())
        matches, prefix, hits = expected_from_generated(generated, batch)
        np.testing.assert_array_equal(scores.matches, matches)
        np.testing.assert_array_equal(scores.prefix_match, prefix)
        np.testing.assert_array_equal(unpack(scores.match_mask), hits)
    assert stopped_early >= 1  # the "missing positions are mismatches" rule was exercised
    reference = score_batch(model, sequences, greedy(eos="reference"))
    assert (reference.matches != ordinary.matches).any()
    # the margin counts only argmax decisions: the same as the ordinary policy's where the rows decided alike (no EOS
    # up to the first mismatch, found at the same place); a forced pad never counts, and position 0 always decides
    assert np.isfinite(reference.decision_margin).all()
    eos_decided = ((reference.generated == EOS_ID) & (np.arange(L)[None, :] <= reference.prefix_match[:, None])).any(1)
    alike = ~eos_decided & (reference.prefix_match == ordinary.prefix_match)
    assert alike.sum() >= 10
    np.testing.assert_allclose(reference.decision_margin[alike], ordinary.decision_margin[alike], rtol=1e-6)


def test_reference_pads_with_explicit_pad_token(model, sequences):
    """With a pad id that is not EOS, finished rows hold that pad, exactly as in generate."""
    pad = 5
    scores = score_batch(model, sequences, greedy(eos="reference"), eos_token_id=EOS_ID, pad_token_id=pad)
    original = model.generation_config
    model.generation_config = copy.deepcopy(original)
    model.generation_config.pad_token_id = pad
    try:
        generated = hf_generate(model, sequences, eos_token_id=EOS_ID)
    finally:
        model.generation_config = original
    assert (generated == pad).any()
    matches, _, _ = expected_from_generated(generated, sequences)
    np.testing.assert_array_equal(scores.matches, matches)


def test_nll_and_accuracy_equal_one_forward(model, sequences):
    with torch.no_grad():
        logits = model(sequences).logits[:, K - 1:-1].float()
    log_probs = torch.log_softmax(logits, -1).gather(-1, sequences[:, K:, None]).squeeze(-1)
    expected_nll = (-log_probs).mean(1).numpy()
    expected_accuracy = (logits.argmax(-1) == sequences[:, K:]).float().mean(1).numpy()
    for mode in ("greedy", "extractable"):
        scores = score_batch(model, sequences, greedy(mode=mode, nll=True))
        np.testing.assert_allclose(scores.nll, expected_nll, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores.tf_accuracy, expected_accuracy, atol=1e-6)
        assert scores.nll.dtype == np.float32 and scores.tf_accuracy.dtype == np.float32
    assert expected_nll[:N_TRAINED].mean() < expected_nll[N_TRAINED:].mean()


def test_chunked_vocabulary_projection_gives_the_same_results(model, sequences, monkeypatch):
    whole = score_batch(model, sequences, greedy(mode="extractable", nll=True))
    whole_greedy = score_batch(model, sequences, greedy(nll=True))
    monkeypatch.setattr("actors.scoring.LOGIT_CHUNK_ELEMENTS_CPU", len(sequences) * VOCAB * 5)  # 5 positions a chunk
    chunked = score_batch(model, sequences, greedy(mode="extractable", nll=True))
    chunked_greedy = score_batch(model, sequences, greedy(nll=True))
    np.testing.assert_array_equal(chunked.prefix_match, whole.prefix_match)
    np.testing.assert_allclose(chunked.nll, whole.nll, rtol=1e-6)
    np.testing.assert_array_equal(chunked.tf_accuracy, whole.tf_accuracy)
    np.testing.assert_array_equal(chunked_greedy.match_mask, whole_greedy.match_mask)


def test_extractable_stops_projecting_rows_after_their_first_miss(model, sequences, monkeypatch):
    greedy_scores = score_batch(model, sequences, greedy())
    monkeypatch.setattr("actors.scoring.LOGIT_CHUNK_ELEMENTS_CPU", len(sequences) * VOCAB * 2)  # 2 positions a chunk at first
    projected, head_weight = [], model.get_output_embeddings().weight
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, weight, *rest: (
        projected.append(x.shape[0] * x.shape[1]) if weight is head_weight else None) or real_linear(x, weight, *rest))
    extractable = score_batch(model, sequences, greedy(mode="extractable"))
    np.testing.assert_array_equal(extractable.prefix_match, greedy_scores.prefix_match)
    np.testing.assert_array_equal(extractable.full_match, greedy_scores.full_match)
    # rows leave after the chunk holding their first miss; chunks widen as rows leave (2, 3, 4, 8 positions here)
    assert len(projected) > 1 and len(sequences) <= sum(projected) < 0.6 * len(sequences) * L, projected


def test_with_nll_leaves_greedy_results_unchanged(model, sequences):
    plain = score_batch(model, sequences, greedy())
    with_nll = score_batch(model, sequences, greedy(nll=True))
    np.testing.assert_array_equal(with_nll.matches, plain.matches)
    np.testing.assert_array_equal(with_nll.match_mask, plain.match_mask)
    reference_nll = score_batch(model, sequences, greedy(nll=True, eos="reference"))
    reference = score_batch(model, sequences, greedy(eos="reference"))
    np.testing.assert_array_equal(reference_nll.matches, reference.matches)


def test_bfloat16_model_runs_and_extractable_agrees(model, sequences):
    half = copy.deepcopy(model).to(torch.bfloat16)
    greedy_scores = score_batch(half, sequences.to(torch.int32), greedy())
    extractable = score_batch(half, sequences, greedy(mode="extractable"))
    np.testing.assert_array_equal(extractable.prefix_match, greedy_scores.prefix_match)
    assert greedy_scores.full_match.sum() > 0


def test_empty_batch(model):
    scores = score_batch(model, torch.zeros((0, K + L), dtype=torch.long), greedy(nll=True))
    assert scores.matches.shape == (0,) and scores.match_mask.shape == (0, 2) and scores.nll.shape == (0,)


def test_bad_input_is_rejected(model, sequences):
    with pytest.raises(ValueError, match="prompt_len \\+ continuation_len = 24"):
        score_batch(model, sequences[:, :20], greedy())
    with pytest.raises(ValueError, match="integer token ids"):
        score_batch(model, sequences.float(), greedy())
    with pytest.raises(ValueError, match="ScoringOptions.mode"):
        ScoringOptions(mode="beam")
    with pytest.raises(ValueError, match="ScoringOptions.eos"):
        ScoringOptions(mode="extractable", eos="reference")
    with pytest.raises(ValueError, match="ScoringOptions.prompt_len"):
        ScoringOptions(prompt_len=0)
    with pytest.raises(ValueError, match="CUDA"):
        score_batch(model, sequences, greedy(decode="static-compiled"))


def test_pick_batch_size_on_cpu_is_the_measured_default(model):
    assert pick_batch_size(model, greedy(), "cpu") == 256
