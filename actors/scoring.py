"""The scoring kernel: (model, token batch) -> per-sequence memorization results.

A sequence is k prompt tokens followed by its l true continuation tokens. Greedy decoding from the
prompt produces l tokens; its memorization score is the fraction of them equal to the truth,
position by position. This module is a pure function of a model and a batch: no Ray, no files.

Modes:
- "greedy": a KV-cached argmax loop (one prefill of the k prompt tokens, then l-1 one-token steps).
  Gives `matches`, `prefix_match`, `full_match` and the per-position `match_mask`.
- "extractable": no decode loop at all. Greedy decoding reproduces the truth up to its first mismatch
  exactly when the teacher-forced argmax does, so one forward over the true k+l tokens gives the same
  `prefix_match` / `full_match` as greedy, for a fraction of the cost. `matches` and the mask are None.
  A row leaves the vocabulary projection after its first miss (nothing later can change its result).

EOS policies (greedy mode):
- "ordinary": EOS is a token like any other; always exactly l tokens (HF `generate` with
  `eos_token_id=None`).
- "reference": what HF `generate` does with the model's default `eos_token_id` (the reference tool):
  after a row emits EOS, its later positions hold the pad token (generation config's pad, else the
  first EOS id) and are compared as such; once every row of the batch has finished, `generate` stops
  and the missing positions count as mismatches. That last rule makes a row's score depend on which
  rows share its batch -- a property of the reference method, reproduced on purpose.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from actors.protocol import BatchScores, ScoringOptions

CPU_BATCH_SIZE = 256  # measured best on 2 CPU cores (BENCHMARKS.md): 357 seq/s vs 304 at 128, 352 at 384
MAX_CUDA_BATCH_SIZE = 2048  # beyond this a 7B forward is long compute-bound already (unmeasured cap)

# teacher-forced logits are produced this many elements at a time (fp32: 16 MB on CPU, 128 MB on CUDA)
LOGIT_CHUNK_ELEMENTS_CPU = 2**22
LOGIT_CHUNK_ELEMENTS_CUDA = 2**25



@torch.inference_mode()
def score_batch(model, tokens: torch.Tensor, options: ScoringOptions, eos_token_id: int | list[int] | None = None,
                pad_token_id: int | None = None) -> BatchScores:
    """Score a batch of sequences with one model.

    model: a causal LM (HF `LlamaForCausalLM` or alike) in eval mode, on any device and dtype.
    tokens: int[B, k+l] token ids on any device; the first k are the prompt, the last l the truth.
    eos_token_id / pad_token_id: used by eos "reference" only; when None they come from
        `model.generation_config` as HF `generate` would take them (pad falls back to the first EOS).
    """
    k, l = options.prompt_len, options.continuation_len
    if tokens.ndim != 2 or tokens.shape[1] != k + l:
        raise ValueError(f"tokens must have shape [batch, prompt_len + continuation_len = {k + l}], "
                         f"got {list(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer token ids, got dtype {tokens.dtype}")
    device = _model_device(model)
    tokens = tokens.to(device=device, dtype=torch.long, non_blocking=True)
    if tokens.shape[0] == 0:
        hits = torch.zeros((0, l), dtype=torch.bool)
        empty = torch.zeros(0) if options.nll else None
        greedy = options.mode == "greedy"
        return _finish(hits, l, with_positions=greedy, nll=empty, tf_accuracy=empty, gaps=torch.zeros((0, l)),
                       generated=torch.zeros((0, l), dtype=torch.long) if greedy else None)
    truth = tokens[:, k:]

    nll = tf_accuracy = None
    if options.mode == "extractable":
        passed = _teacher_forced(model, tokens, l, with_nll=options.nll, keep_cache=False)
        if options.nll:
            nll, tf_accuracy = passed.nll, passed.hits.float().mean(1)
        return _finish(passed.hits, l, with_positions=False, nll=nll, tf_accuracy=tf_accuracy, gaps=passed.gaps)

    stop = _EosStop.from_model(model, eos_token_id, pad_token_id, device) if options.eos == "reference" else None
    if options.nll:
        # One pass over the true k+l-1 tokens serves both: its logits give NLL / accuracy, its first
        # continuation logit is greedy's first token, and its KV cache cropped back to the prompt
        # seeds the decode loop. Cheaper than a separate prefill plus a separate teacher-forced pass.
        passed = _teacher_forced(model, tokens, l, with_nll=True, keep_cache=True)
        nll, tf_accuracy = passed.nll, passed.hits.float().mean(1)
        if l > 1:
            passed.cache.crop(-(l - 1))
        generated, produced, gaps = _greedy_decode(model, passed.first_logits, passed.cache, l, stop)
    elif options.decode != "growing":
        compiled = options.decode == "static-compiled"
        _check_static_decode(model, device, compiled)
        generated, produced, gaps = _greedy_decode_static(model, tokens[:, :k], l, stop, compiled)
    else:
        out = model(input_ids=tokens[:, :k], use_cache=True, logits_to_keep=1)
        generated, produced, gaps = _greedy_decode(model, out.logits[:, -1], out.past_key_values, l, stop)
    hits = generated == truth
    if produced is not None:
        hits &= produced[None, :]
    return _finish(hits, l, with_positions=True, nll=nll, tf_accuracy=tf_accuracy, gaps=gaps, generated=generated)


def pick_batch_size(model, options: ScoringOptions, device: torch.device | str | None = None,
                    gpu_share: float = 1.0) -> int:
    """The batch size for `batch_size: auto`.

    CPU: CPU_BATCH_SIZE (measured best). CUDA: the largest batch whose KV cache, peak activations and logits
    (`sequence_bytes`) fit in 85% of this actor's memory, capped at MAX_CUDA_BATCH_SIZE and rounded down to a
    multiple of 8. The weights are resident already. This actor's memory is what is free now, and with
    `gpu_share` < 1 (actors sharing one GPU: `resources.gpus_per_actor`) at most its share of the device less its
    own weights: a co-tenant that has not loaded yet counts as free here, so sizing from free memory alone would
    let the co-tenants together ask for more than the device has. The CUDA estimate is unmeasured.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    element_bytes = next(model.parameters()).element_size()
    per_row = sequence_bytes(model.config, element_bytes, options)
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    budget = free_bytes
    if gpu_share < 1:
        budget = min(free_bytes, gpu_share * total_bytes - resident_bytes(model))
    batch = int(0.85 * max(0, budget) // per_row)
    batch = max(1, min(batch, MAX_CUDA_BATCH_SIZE))
    return batch - batch % 8 if batch >= 8 else batch


def sequence_bytes(config, element_bytes: int, options: ScoringOptions) -> int:
    """Device memory one sequence of a batch needs beyond the weights, in bytes: its KV cache (greedy mode), a few
    MLP-width activations of one layer (alive at once during the longest pass) and its logits."""
    k, l = options.prompt_len, options.continuation_len
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads  # absent (GPT-2, Falcon): at most one per head
    tokens = k + l
    uses_cache = options.mode == "greedy"
    kv_bytes = 2 * config.num_hidden_layers * kv_heads * head_dim * tokens * element_bytes if uses_cache else 0
    activation_bytes = 4 * tokens * max(hidden, mlp_width(config)) * element_bytes
    logit_positions = l if (options.mode == "extractable" or options.nll) else 1
    logit_bytes = logit_positions * config.vocab_size * (element_bytes + 4 + 4)  # logits, fp32 copy, log-softmax
    return kv_bytes + activation_bytes + logit_bytes


# How configs name the MLP's inner width: LLaMA and its kin, GPT-NeoX, Phi-3, Gemma `intermediate_size`; GPT-2 and
# GPT-J `n_inner` (None: 4 x hidden); OPT `ffn_dim`; Falcon `ffn_hidden_size`. BLOOM names none: 4 x hidden.
MLP_WIDTH_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
DEFAULT_MLP_RATIO = 4


def mlp_width(config) -> int:
    """The inner width of a decoder layer's MLP (the widest activation of a layer), as the model's config names it."""
    for key in MLP_WIDTH_KEYS:
        width = getattr(config, key, None)
        if width:
            return int(width)
    return DEFAULT_MLP_RATIO * config.hidden_size


def resident_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (on the meta device too: nothing is read)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


# --- internals -------------------------------------------------------------------------------------------


ARGMAX_BLOCK = 256  # CPU two-level argmax: block width (about sqrt(32,000); 32,000 = 125 x 256)
ARGMAX_MIN_VOCAB = 4096  # below this, plain argmax is as fast (measured: 0.08 ms vs 0.16 ms at V=700)


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)`, bit for bit (the first index of the maximum, NaN counting as maximal), faster on CPU.

    On CPU, torch's argmax over the last dimension is a scalar loop (3.5 ms for [128, 32,000] on one
    core, a quarter of a decode step of the benchmark model) while `amax` is vectorised (0.3 ms). So:
    the max of every block of ARGMAX_BLOCK columns (vectorised), the first block holding the row
    maximum, then a scalar argmax inside that one block only. The first maximal element of the first
    block whose maximum equals the row maximum is the first maximal element of the row, so ties resolve
    exactly as argmax does. On CUDA plain argmax is already one fast kernel and is used as is.
    """
    return argmax_and_margin(logits, with_margin=False)[0]


def argmax_and_margin(logits: torch.Tensor, with_margin: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(`first_argmax(logits)`, the top-1 minus top-2 logit as float32, shape logits.shape[:-1]; None without
    `with_margin`).

    The margin is how far the greedy decision was from flipping, in logits; it equals the gap in log-probabilities
    (log-softmax subtracts one number from a row). It is exactly `topk(2).values` of the row subtracted in float32 (0
    on an exact tie). On CPU torch's topk over 32,000 columns is a scalar loop as slow as argmax, so it reuses the
    block maxima: the runner-up is the larger of the second value inside the winning block and the best maximum of
    the other blocks. Elsewhere (CUDA, small vocabularies) it is one topk.
    """
    if logits.device.type != "cpu" or logits.shape[-1] < ARGMAX_MIN_VOCAB:
        return logits.argmax(-1), (_topk_margin(logits) if with_margin else None)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    full = vocab // ARGMAX_BLOCK * ARGMAX_BLOCK
    block_max = rows.unfold(1, ARGMAX_BLOCK, ARGMAX_BLOCK).amax(-1)  # a view: the short tail block is left out
    if full < vocab:
        block_max = torch.cat([block_max, rows[:, full:].amax(-1, keepdim=True)], dim=1)
    is_row_max = block_max == block_max.amax(-1, keepdim=True)
    if not bool(is_row_max.any(-1).all()):
        # a NaN row (NaN == NaN is False): argmax's own rule picks the NaN
        return logits.argmax(-1), (_topk_margin(logits) if with_margin else None)
    first_block = is_row_max.to(torch.uint8).argmax(-1)
    start = first_block * ARGMAX_BLOCK
    # the last block may be short: its missing columns repeat the row's last column, which cannot
    # come before the true first maximum
    offsets = start[:, None] + torch.arange(ARGMAX_BLOCK, device=rows.device)
    block = rows.gather(1, offsets.clamp(max=vocab - 1))
    index = (start + block.argmax(-1)).reshape(lead)
    if not with_margin:
        return index, None
    # the repeated columns must not count twice (a false tie with the last column)
    inside = block.masked_fill(offsets >= vocab, float("-inf")).topk(2, dim=-1).values.float()
    other_blocks = block_max.scatter(1, first_block[:, None], float("-inf")).amax(-1).float()
    margin = inside[:, 0] - torch.maximum(inside[:, 1], other_blocks)
    return index, margin.reshape(lead)


def _topk_margin(logits: torch.Tensor) -> torch.Tensor:
    top2 = logits.topk(2, dim=-1).values.float()
    return top2[..., 0] - top2[..., 1]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass
class _EosStop:
    """HF generate's stop-and-pad at EOS: the ids that finish a row and the token written after."""
    eos_ids: torch.Tensor  # int64[n_eos]
    pad_id: torch.Tensor  # int64 scalar

    @classmethod
    def from_model(cls, model, eos_token_id, pad_token_id, device) -> _EosStop | None:
        generation_config = getattr(model, "generation_config", None)
        if eos_token_id is None and generation_config is not None:
            eos_token_id = generation_config.eos_token_id
        if eos_token_id is None:
            return None  # generate would run all l steps, exactly like "ordinary"
        eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if pad_token_id is None and generation_config is not None:
            pad_token_id = generation_config.pad_token_id
        if pad_token_id is None:
            pad_token_id = eos_ids[0]
        return cls(torch.tensor(eos_ids, dtype=torch.long, device=device),
                   torch.tensor(pad_token_id, dtype=torch.long, device=device))


def _greedy_decode(model, first_logits: torch.Tensor, cache, l: int, stop: _EosStop | None):
    """Argmax decode l tokens, the first from `first_logits` (float[B, V]), the rest from one-token steps.

    Returns (generated int64[B, l], produced bool[l] or None, gaps float32[B, l]): `produced[i]` is False where HF
    generate would already have stopped (every row finished at EOS) -- only with `stop`; `gaps` the top-1 minus
    top-2 logit of each decision (_DecisionGaps).
    """
    batch = first_logits.shape[0]
    split = _SplitModel.of(model)
    # one logits buffer for all steps instead of a fresh [B, V] tensor (32 MB at B=256 in fp32) each
    # step; measured together with the CPU batch of 256 (BENCHMARKS.md), within noise on its own
    logits = split.logits_buffer(batch) if split is not None else None
    generated = torch.empty((batch, l), dtype=torch.long, device=first_logits.device)
    state = _StopState(stop, batch, l, first_logits.device) if stop is not None else None
    gaps = _DecisionGaps(batch, l, first_logits.device)
    next_token = gaps.decide(first_logits, 0, state)
    for position in range(l):
        if position > 0:
            if split is None:
                step_logits = model(input_ids=next_token[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
            else:
                hidden = split.decoder(input_ids=next_token[:, None], past_key_values=cache,
                                       use_cache=True).last_hidden_state[:, -1]
                step_logits = torch.mm(hidden, split.head_weight.T, out=logits)
            next_token = gaps.decide(step_logits, position, state)
        if state is not None:
            next_token = state.apply(next_token, position)
        generated[:, position] = next_token
    return generated, (state.produced if state is not None else None), gaps.gaps


# model types whose causal-LM forward returns exactly lm_head(final hidden states): no logit scaling
# or soft-capping (checked in transformers 5.23's modeling files), so decoder and head can run apart
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt_neox", "olmo", "olmo2", "gpt2",
                                    "phi3", "gemma"})


@dataclass
class _SplitModel:
    """A causal LM as its decoder (ids -> final hidden states) plus a bias-free linear vocabulary head.

    Running them apart lets the teacher-forced pass project a few positions at a time and the decode
    loop write logits into one reused buffer. Models outside PLAIN_HEAD_MODEL_TYPES (or with another
    head) go through their own forward instead: always correct, only slower.
    """
    decoder: torch.nn.Module
    head_weight: torch.Tensor  # [V, H]

    @classmethod
    def of(cls, model) -> _SplitModel | None:
        head = model.get_output_embeddings()
        config = getattr(model, "config", None)
        if (getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES
                or not isinstance(head, torch.nn.Linear) or head.bias is not None):
            return None
        return cls(decoder=model.get_decoder(), head_weight=head.weight)

    def logits_buffer(self, batch: int) -> torch.Tensor:
        weight = self.head_weight
        return torch.empty((batch, weight.shape[0]), dtype=weight.dtype, device=weight.device)


class _StopState:
    """Device-side bookkeeping for eos "reference", without host syncs in the loop."""

    def __init__(self, stop: _EosStop, batch: int, l: int, device: torch.device):
        self.stop = stop
        self.unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        self.produced = torch.ones(l, dtype=torch.bool, device=device)

    def apply(self, next_token: torch.Tensor, position: int) -> torch.Tensor:
        # generate's loop runs step `position` only while some row is unfinished
        self.produced[position] = self.unfinished.any()
        next_token = torch.where(self.unfinished, next_token, self.stop.pad_id)
        self.unfinished &= ~torch.isin(next_token, self.stop.eos_ids)
        return next_token


class _DecisionGaps:
    """The decode loop's record of how close each greedy decision was: gaps float32[B, l], the top-1 minus top-2
    logit at each generated position. A position whose token was not the argmax's (eos "reference": a row past its
    EOS writes pad, and none is produced once every row has stopped) decided nothing and holds +inf."""

    def __init__(self, batch: int, l: int, device: torch.device):
        self.gaps = torch.empty((batch, l), dtype=torch.float32, device=device)

    def decide(self, logits: torch.Tensor, position: int, state: _StopState | None) -> torch.Tensor:
        """The argmax of `logits` (float[B, V]) at `position`, its gap recorded; before `state.apply`."""
        next_token, margin = argmax_and_margin(logits)
        if state is not None:
            margin = margin.masked_fill(~state.unfinished, float("inf"))
        self.gaps[:, position] = margin
        return next_token


@dataclass
class _TeacherForced:
    hits: torch.Tensor  # bool[B, l]: teacher-forced argmax == truth
    gaps: torch.Tensor  # float32[B, l]: top-1 minus top-2 logit; +inf where a row was no longer projected
    nll: torch.Tensor | None  # float32[B]: mean NLL of the truth, nats/token
    first_logits: torch.Tensor | None  # [B, V]: logits predicting the first continuation token (keep_cache only)
    cache: object | None  # the KV cache over the k+l-1 fed tokens, when asked for


def _teacher_forced(model, tokens: torch.Tensor, l: int, with_nll: bool, keep_cache: bool) -> _TeacherForced:
    """One forward over the true tokens (the last is not fed: nothing after it is scored).

    The vocabulary projection runs a few positions at a time on the decoder's hidden states, so the
    full float[B, l, V] logits (0.5 GB at B=128, l=32, V=32,000 in fp32) never exist at once: on CPU,
    allocating and scanning that tensor cost more than the projection itself. (Models without a
    plain head, see _SplitModel, get their l positions of logits from their own forward.)
    """
    batch = tokens.shape[0]
    truth = tokens[:, -l:]
    split = _SplitModel.of(model)
    if split is not None:
        out = split.decoder(input_ids=tokens[:, :-1], use_cache=keep_cache)
        hidden = out.last_hidden_state[:, -l:]
        vocab = split.head_weight.shape[0]

        def project(start: int, stop: int, rows: torch.Tensor | None) -> torch.Tensor:
            positions = hidden[:, start:stop] if rows is None else hidden[rows, start:stop]
            return torch.nn.functional.linear(positions, split.head_weight)
    else:
        out = model(input_ids=tokens[:, :-1], use_cache=keep_cache, logits_to_keep=l)
        vocab = out.logits.shape[-1]

        def project(start: int, stop: int, rows: torch.Tensor | None) -> torch.Tensor:
            return out.logits[:, start:stop] if rows is None else out.logits[rows, start:stop]
    device = tokens.device
    budget = LOGIT_CHUNK_ELEMENTS_CUDA if device.type == "cuda" else LOGIT_CHUNK_ELEMENTS_CPU
    hits = torch.zeros((batch, l), dtype=torch.bool, device=device)
    gaps = torch.full((batch, l), float("inf"), dtype=torch.float32, device=device)
    token_nll = torch.empty((batch, l), dtype=torch.float32, device=device) if with_nll else None
    first_logits = None
    # Without NLL only the first miss matters (prefix_match / full_match), so a row is not projected
    # again once its teacher-forced argmax has missed: most rows miss early, and on CPU the vocabulary
    # projection is most of the work. Later positions of such rows stay False in `hits`.
    rows = None  # the rows still projected; None: all of them
    start = 0
    while start < l:
        count = batch if rows is None else len(rows)
        if count == 0:
            break
        stop = min(l, start + max(1, budget // max(1, count * vocab)))
        logits = project(start, stop, rows)
        if keep_cache and first_logits is None:
            first_logits = logits[:, 0].clone()
        chunk_truth = truth[:, start:stop] if rows is None else truth[rows, start:stop]
        chunk_argmax, chunk_gaps = argmax_and_margin(logits)
        chunk_hits = chunk_argmax == chunk_truth
        if rows is None:
            hits[:, start:stop] = chunk_hits
            gaps[:, start:stop] = chunk_gaps
        else:
            hits[rows, start:stop] = chunk_hits
            gaps[rows, start:stop] = chunk_gaps
        if with_nll:
            # cross_entropy's fused log-softmax: half the time of logsumexp minus the true logit on CPU
            token_nll[:, start:stop] = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), chunk_truth.flatten(), reduction="none").view_as(chunk_truth)
        else:
            still_matching = chunk_hits.all(1)
            rows = still_matching.nonzero().squeeze(1) if rows is None else rows[still_matching]
        start = stop
    return _TeacherForced(hits=hits, gaps=gaps, nll=token_nll.mean(1) if with_nll else None, first_logits=first_logits,
                          cache=out.past_key_values if keep_cache else None)


def _finish(hits: torch.Tensor, l: int, with_positions: bool, nll, tf_accuracy, gaps: torch.Tensor,
            generated=None) -> BatchScores:
    """Turn per-position hits bool[B, l] and decision gaps float32[B, l] into BatchScores; the single device->host
    copy happens here.

    `decision_margin` is the smallest gap over the positions that decide `prefix_match` and `full_match`: every
    position up to the first mismatch and the mismatch itself (all l for a full match). Flipping any of those
    decisions changes the result; a later one cannot change them (it can change greedy mode's `matches`, which is
    not what the memorized sets are made of). Both modes see the true prefix at those positions, so greedy and
    extractable give the same margin.
    """
    hits_host = hits.cpu().numpy()
    prefix_match = np.cumprod(hits_host, axis=1, dtype=np.int16).sum(axis=1, dtype=np.int16)
    deciding = np.arange(l)[None, :] <= prefix_match[:, None]
    decision_margin = np.where(deciding, gaps.cpu().numpy(), np.inf).min(axis=1, initial=np.inf).astype(np.float32)
    return BatchScores(
        matches=hits_host.sum(axis=1, dtype=np.int16) if with_positions else None,
        prefix_match=prefix_match,
        full_match=prefix_match == l,
        match_mask=np.packbits(hits_host, axis=1, bitorder="little") if with_positions else None,
        nll=nll.cpu().numpy().astype(np.float32) if nll is not None else None,
        tf_accuracy=tf_accuracy.cpu().numpy().astype(np.float32) if tf_accuracy is not None else None,
        generated=generated.cpu().numpy() if generated is not None else None,
        decision_margin=decision_margin,
    )


# --- decode "static" / "static-compiled": a preallocated KV cache (compile: CUDA only; unmeasured) ---


@dataclass
class _StaticDecodeState:
    """What the static decode keeps for one model between batches. It holds no reference to the model (the compiled
    step is the model CLASS's forward, called with the model), so, kept in a WeakKeyDictionary, it goes with the model
    instead of keeping every checkpoint and its caches on the GPU."""
    caches: dict = field(default_factory=dict)  # (batch, k + l) -> StaticCache, reused so CUDA graphs keep addresses
    step: Callable | None = None  # torch.compile(type(model).forward), called as step(model, ...)


_static_decode_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _StaticDecodeState


def release_decode_state(model) -> None:
    """Free what the static decode holds for `model`: its KV caches and, if it compiled, torch's compile caches and
    CUDA-graph memory pools, which hold the parameters the graphs were recorded with. The actor calls this before it
    drops a checkpoint for the next one."""
    state = _static_decode_states.pop(model, None)
    if state is not None and state.step is not None:
        torch._dynamo.reset()  # also resets the CUDA-graph trees (their pools) and compiled code of every frame


def _check_static_decode(model, device: torch.device, compiled: bool) -> None:
    if compiled and device.type != "cuda":
        raise ValueError("ScoringOptions.decode 'static-compiled' needs a CUDA model; the CPU path never compiles")
    attention = getattr(model.config, "_attn_implementation", None) or ""
    if compiled and "flash" in attention:
        raise ValueError(f"ScoringOptions.decode 'static-compiled' cannot run with attention {attention!r}: flash "
                         "attention takes the filled length of a static cache from the attention mask, whose length "
                         "changes every step, and a compiled step cannot follow it; use decode 'static' or 'growing'")


def _greedy_decode_static(model, prompt: torch.Tensor, l: int, stop: _EosStop | None, compiled: bool):
    """Like the plain path, but the KV cache is preallocated (StaticCache, reused across batches of the same shape
    so CUDA graphs keep their addresses) and, with `compiled`, the one-token step is torch.compile'd with
    mode="reduce-overhead". The prefill stays eager, as HF generate does. `compiled=False` runs the same loop eagerly.

    Attention must not see the cache's unfilled tail. sdpa and eager mask it by cache position; flash attention reads
    the filled length from the 2D attention mask (transformers cuts the cache to its length) and, given none, attends
    to all k + l slots, zeros included. So the eager loop passes the mask HF generate passes: ones over the prompt and
    the tokens fed so far. The compiled step passes none (a length that changes every step would recompile it), which
    is why flash attention is refused there (_check_static_decode).
    """
    from transformers import StaticCache

    batch, k = prompt.shape
    kept = _static_decode_states.setdefault(model, _StaticDecodeState())
    cache = kept.caches.get((batch, k + l))
    if cache is None:
        cache = kept.caches[(batch, k + l)] = StaticCache(config=model.config, max_cache_len=k + l)
    else:
        cache.reset()
    if compiled and kept.step is None:
        kept.step = torch.compile(type(model).forward, mode="reduce-overhead", fullgraph=False)
    filled = torch.ones((batch, k + l), dtype=torch.long, device=prompt.device)  # attention_mask = filled[:, :n]

    out = model(input_ids=prompt, attention_mask=filled[:, :k], past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    generated = torch.empty((batch, l), dtype=torch.long, device=prompt.device)
    state = _StopState(stop, batch, l, prompt.device) if stop is not None else None
    gaps = _DecisionGaps(batch, l, prompt.device)
    next_token = gaps.decide(out.logits[:, -1], 0, state)
    for position in range(l):
        if position > 0:
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
                logits = kept.step(model, input_ids=next_token[:, None].clone(), past_key_values=cache,
                                   use_cache=True).logits
            else:
                logits = model(input_ids=next_token[:, None], attention_mask=filled[:, :k + position],
                               past_key_values=cache, use_cache=True).logits
            next_token = gaps.decide(logits[:, -1], position, state)
        if state is not None:
            next_token = state.apply(next_token, position)
        generated[:, position] = next_token
    return generated, (state.produced if state is not None else None), gaps.gaps
