"""How far two greedy decodes of the same rows agree, and whether they part where the model was undecided.

In bf16 (and fp16) a matmul's result depends on the batch size and on the kernel the library picks for its shape,
so two correct decodes of one row (HF generate at batch 32 and the kernel at batch 1024; greedy with and without
the NLL pass; a cell rescored at half the batch after running out of memory) can pick different tokens where the
top two logits are within a few units in the last place (ulps), and from there on continue differently. Such a
difference is the dtype's, not a bug; a difference where the top logit led clearly is worth a look.

`agreement` reports the share of equal tokens and of identical rows, and for each row that differs, the gap between
the top two logits at its FIRST differing position, in ulps of the top logit. The gaps come from one teacher-forced
pass over the base decode's own tokens (`top2_gap_ulps`): the prefix both decodes saw up to their first difference.
A gap of at most NEAR_TIE_ULPS counts as a near-tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEAR_TIE_ULPS = 8  # top-2 gaps up to this many ulps of the top logit: within what batch-size changes move


@torch.inference_mode()
def top2_gap_ulps(model, tokens: torch.Tensor, continuation_len: int, batch_size: int) -> np.ndarray:
    """float32[n, l]: at each of the last l positions of `tokens` (int64[n, k+l]: prompt, then a decode's tokens),
    the gap between the two largest logits predicting it, in ulps of the largest, in the model's dtype."""
    device = next(model.parameters()).device
    eps = torch.finfo(next(model.parameters()).dtype).eps
    gaps = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size, :-1].to(device)
        logits = model(input_ids=batch, logits_to_keep=continuation_len).logits
        top2 = logits.topk(2, dim=-1).values.float()
        _, exponent = torch.frexp(top2[..., 0].abs().clamp_min(torch.finfo(torch.float32).tiny))
        ulp = eps * torch.pow(2.0, exponent.float() - 1)  # the spacing of the dtype's values around the top logit
        gaps.append(((top2[..., 0] - top2[..., 1]) / ulp).cpu())
    return torch.cat(gaps).numpy()


@dataclass
class Agreement:
    rows: int
    positions: int  # rows x l
    tokens_equal: int
    rows_identical: int
    first_difference_gaps: np.ndarray  # float32[rows that differ]: top-2 gap (ulps) where each first differs
    near_tie_positions: int  # positions of the base decode with a near-tie, differing or not

    @property
    def near_ties_at_difference(self) -> int:
        return int((self.first_difference_gaps <= NEAR_TIE_ULPS).sum())

    def describe(self, name: str) -> str:
        differing = self.rows - self.rows_identical
        line = (f"{name}: tokens {self.tokens_equal / self.positions:.2%} equal, rows {self.rows_identical}/"
                f"{self.rows} identical")
        if differing:
            clear = differing - self.near_ties_at_difference
            line += (f"; of the {differing} rows that differ, {self.near_ties_at_difference} first differ at a "
                     f"near-tie (top-2 gap <= {NEAR_TIE_ULPS} ulps), {clear} where the top logit led by more"
                     f" (largest gap {self.first_difference_gaps.max():.0f} ulps)")
        return line + (f" [near-ties: {self.near_tie_positions} of the base's {self.positions} positions, "
                       f"{self.near_tie_positions / self.positions:.2%}]")


def agreement(base: np.ndarray, other: np.ndarray, base_gaps: np.ndarray) -> Agreement:
    """Compare two decodes int[n, l] of the same rows; `base_gaps` float[n, l] from top2_gap_ulps on `base`."""
    base, other = np.asarray(base), np.asarray(other)
    equal = base == other
    differs = ~equal.all(axis=1)
    first = np.argmin(equal[differs], axis=1)  # the first False of each differing row
    return Agreement(rows=len(base), positions=base.size, tokens_equal=int(equal.sum()),
                     rows_identical=int((~differs).sum()),
                     first_difference_gaps=base_gaps[differs][np.arange(len(first)), first],
                     near_tie_positions=int((base_gaps <= NEAR_TIE_ULPS).sum()))
