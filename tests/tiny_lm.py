"""A tiny LLaMA trained on CPU in seconds until it memorizes part of its data.

Test helper shared by the scoring, actor and end-to-end tests. Nothing here is committed data:
every test builds its sequences and model from a seed.

    sequences = make_sequences(n=48, length=24, vocab_size=64, seed=0)
    model = train_memorizing_llama(sequences[:32], vocab_size=64, steps=20, seed=0)
    # rows 0..31 were trained on (many memorized, some partly), rows 32..47 never seen (near 0)
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

EOS_ID = 2  # as in LLaMA / Amber: BOS 1, EOS 2
FIRST_ORDINARY_ID = 3  # ids 0..2 are special; random content starts here


def tiny_llama_config(vocab_size: int = 64, hidden_size: int = 64, num_layers: int = 2,
                      max_positions: int = 128) -> LlamaConfig:
    """A LLaMA small enough to train in seconds on two CPU cores (about 0.1M parameters at defaults)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=None,
        tie_word_embeddings=False,
    )


def make_sequences(n: int, length: int, vocab_size: int, seed: int, eos_every: int = 4) -> torch.LongTensor:
    """Random token sequences, int64[n, length], with EOS (id 2) placed inside every `eos_every`-th row.

    The EOS lands in the second half of the row (the continuation when prompt = continuation = length/2),
    so a model that memorized the row emits EOS early in its greedy continuation.
    """
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.randint(FIRST_ORDINARY_ID, vocab_size, (n, length), generator=generator)
    half = length // 2
    for row in range(0, n, eos_every):
        position = half + 1 + int(torch.randint(0, max(1, length - half - 2), (1,), generator=generator))
        sequences[row, position] = EOS_ID
    return sequences


def train_memorizing_llama(sequences: torch.LongTensor, vocab_size: int, steps: int = 20, seed: int = 0,
                           hidden_size: int = 64, num_layers: int = 2, learning_rate: float = 3e-3
                           ) -> LlamaForCausalLM:
    """Train a tiny fp32 LLaMA on `sequences` (int64[n, t]) with full-batch AdamW; returns it in eval mode.

    With 32 rows of 24 tokens over a 64-token vocabulary, about 20 steps leave training rows spread from
    partly to fully memorized (about 60 steps memorize nearly all of them) while unseen rows stay near
    chance. Takes about a second on two CPU cores. The generation config keeps EOS = 2 (the
    reference tool's default), so `generate` stops rows at EOS unless a test turns that off.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small gain nothing from threads, and lose 10x on a busy machine
    try:
        return _train(sequences, vocab_size, steps, seed, hidden_size, num_layers, learning_rate)
    finally:
        torch.set_num_threads(threads)


def _train(sequences, vocab_size, steps, seed, hidden_size, num_layers, learning_rate) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size, hidden_size, num_layers, max_positions=max(128, sequences.shape[1]))
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = None
    model.generation_config.bos_token_id = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=sequences, labels=sequences).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def write_tiny_world(root, checkpoints: int = 2, chunks: int = 2, rows: int = 40, length: int = 32,
                     vocab_size: int = 64, steps: int = 15):
    """A miniature training run on disk: `root/data/train/train_00c.jsonl` (raw Amber rows) and
    `root/model/ckpt_00i/` (save_pretrained), checkpoint i trained on chunks 0..i. Returns `root`.

    A few seconds on two cores: for tests that need real checkpoints and chunk files, not memorization studies.
    """
    import json
    from pathlib import Path

    root = Path(root)
    (root / "data" / "train").mkdir(parents=True, exist_ok=True)
    data = [make_sequences(rows, length, vocab_size, seed=100 + chunk) for chunk in range(chunks)]
    for chunk, sequences in enumerate(data):
        (root / "data" / "train" / f"train_{chunk:03d}.jsonl").write_text("".join(
            json.dumps({"token_ids": row.tolist(), "source": f"source{i % 3}"}) + "\n"
            for i, row in enumerate(sequences)))
    for ckpt in range(checkpoints):
        seen = torch.cat(data[: min(ckpt + 1, chunks)])
        train_memorizing_llama(seen, vocab_size, steps=steps, seed=ckpt).save_pretrained(
            root / "model" / f"ckpt_{ckpt:03d}")
    return root
