"""Recitation, reconstruction, recollection: the taxonomy of memorized sequences of Prashanth et al. 2024 ("Recite,
Reconstruct, Recollect: Memorization in LMs as a Multifaceted Phenomenon", arXiv 2406.17746).

A memorized sequence is, in this order of precedence (as the paper's `taxonomy_function`):
- **recitation** when it is highly duplicated: seen at least RECITATION_MIN_EXPOSURES times;
- **reconstruction** when it is an inherently predictable template: it repeats or increments a pattern;
- **recollection** otherwise (memorized from few exposures, nothing to reconstruct it from).

Where we differ from the paper, on purpose or by necessity:
- Duplicates. The paper counts, in the whole Pile, the copies of a sequence's 32-token continuation (the memorized
  part, at offset 32). We count the exposures of the whole k + l window (prompt and continuation) in the chunk
  files scanned up to the checkpoint asked about (what that checkpoint has trained on), so a sequence can move
  from recollection to recitation as training sees more copies, and a copy of the continuation after another
  prompt does not count.
- Repeating. The paper's filter asks whether the decoded text of the whole sequence is periodic, character by
  character. We ask it of token ids, and of the continuation: does every continuation token equal the token p
  positions before it, for one p <= k (the continuation repeats the prompt's last p tokens, a period that starts
  in the prompt)? No tokenizer is needed.
- Incrementing. As the paper's filter, on the decoded text of the whole window: numbers in arithmetic progression
  (a nonzero step, at least three terms) with the text between them repeating, the first and last pieces (cut by the
  window's edges) left out. It needs the checkpoint's tokenizer; without one (`decode=None`) only repeating
  templates are found, and the report says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

# "More than 5 duplicates": semantic-memorization's model_training.py runs the taxonomy with
# --sequence_duplication_threshold 6, applied as `sequence_duplicates >= threshold` (model_parameters.py).
RECITATION_MIN_EXPOSURES = 6
KINDS = ("recitation", "reconstruction", "recollection")

_NUMBER_OR_TEXT = re.compile(r"\d+(?:\.\d+)?|\D+")
_MIN_PROGRESSION = 3  # terms: two equal steps make a progression


def repeats_its_prompt(tokens: np.ndarray, prompt_len: int) -> np.ndarray:
    """bool[n]: for each window of `tokens` (int[n, k + l]), whether its continuation repeats the prompt's last p
    tokens for some 1 <= p <= k, i.e. tokens[i] == tokens[i - p] for every continuation position i."""
    n, width = tokens.shape
    found = np.zeros(n, dtype=bool)
    continuation = tokens[:, prompt_len:]
    for period in range(1, prompt_len + 1):
        undecided = ~found
        if not undecided.any() or width <= prompt_len:
            break
        earlier = tokens[undecided, prompt_len - period: width - period]
        found[undecided] = (continuation[undecided] == earlier).all(axis=1)
    return found


def increments_a_pattern(text: str) -> bool:
    """Whether `text` is a template of numbers in arithmetic progression (Prashanth et al.'s "incrementing"): split
    into numbers and the text between them, some period of q pieces repeats the text pieces exactly and moves every
    number by its own constant step, at least one step nonzero over three or more terms (the first and last piece
    left out). "Row 1: a, Row 2: a, Row 3: a" and "1, 2, 3, 4, 5" are; "1, 2, 4, 8, 16" and "7, 7, 7, 7" are not."""
    pieces = [_piece(part) for part in _NUMBER_OR_TEXT.findall(" ".join(text.split()))]
    pieces = [piece for piece in pieces if piece != " " and piece != ""]
    if len(pieces) > 4:  # the window cuts its first and last piece anywhere
        pieces = pieces[1:-1]
    for period in range(1, len(pieces) // 2 + 1):
        if _is_progression(pieces, period):
            return True
    return False


def _piece(part: str) -> float | str:
    return float(part) if part[0].isdigit() else part.strip() or " "


def _is_progression(pieces: list, period: int) -> bool:
    steps: dict[int, float] = {}
    terms: dict[int, int] = {}
    for i in range(period, len(pieces)):
        here, before = pieces[i], pieces[i - period]
        if isinstance(here, str) or isinstance(before, str):
            if here != before:
                return False
            continue
        offset = i % period
        step = here - before
        if offset in steps and abs(steps[offset] - step) > 1e-9:
            return False
        steps.setdefault(offset, step)
        terms[offset] = terms.get(offset, 1) + 1
    return any(step != 0 and terms[offset] >= _MIN_PROGRESSION for offset, step in steps.items())


def reconstructable(tokens: np.ndarray, prompt_len: int, decode: Callable[[list[int]], str] | None) -> np.ndarray:
    """bool[n]: repeating (token ids) or incrementing (decoded text, when `decode` is given) windows of
    `tokens` (int[n, k + l])."""
    found = repeats_its_prompt(tokens, prompt_len)
    if decode is not None:
        for index in np.flatnonzero(~found):
            found[index] = increments_a_pattern(decode(tokens[index].tolist()))
    return found
