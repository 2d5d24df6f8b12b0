"""Token-by-token comparison of two models' top-k next-token distributions on the same tokens.

KL(base || candidate) is computed over a partition of the vocabulary: every token whose logprob
both servers reported (the base's top-k and the actual next token, where the candidate's top-k or
actual token has it too) on its own, and everything else lumped into one tail bucket with the mass
each model left there. Coarsening a distribution can only lower KL (log-sum inequality), so the
figure is a lower bound on the true KL; the gap is ``p(tail) * KL(p|tail || q|tail)``, which
vanishes as the base's tail mass does (reported per position as ``tail``; docs/divergence.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench.divergence.endpoint import PromptLogprobs

# Below this a tail mass is float noise: float32 logprobs sum to 1 only to about 1e-6.
TAIL_FLOOR = 1e-6
_MISSING = -2  # id that matches nothing


@dataclass
class TokenMetrics:
    """Per position (1..n-1) of one text."""

    kl: NDArray[np.float64]
    agree: NDArray[np.bool_]  # the two top-1 tokens are the same
    base_top_lp: NDArray[np.float64]  # candidate's logprob of the base's top token; NaN where not reported
    tail: NDArray[np.float64]  # the base's mass outside the tokens compared one by one
    delta_nll: NDArray[np.float64]  # candidate minus base negative logprob of the actual next token
    base_top: NDArray[np.int32]
    candidate_top: NDArray[np.int32]


def _known(top_ids: NDArray[np.int32], top_lp: NDArray[np.float32], actual: NDArray[np.int32],
           actual_lp: NDArray[np.float32], k: int) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """The top-k plus the actual token, each id once."""
    ids = np.concatenate([top_ids[:, :k], actual[:, None]], axis=1).astype(np.int32)
    lps = np.concatenate([top_lp[:, :k], actual_lp[:, None]], axis=1).astype(np.float64)
    repeated = (ids[:, :k] == actual[:, None]).any(axis=1)
    ids[repeated, k] = _MISSING
    lps[repeated, k] = -np.inf
    ids[ids < 0] = _MISSING
    return ids, lps


def compare(base: PromptLogprobs, candidate: PromptLogprobs, token_ids: list[int]) -> TokenMetrics:
    """Compare one text's positions; ``token_ids`` are the prompt's ids (position 0 included)."""
    positions = len(token_ids) - 1
    if base.top_ids.shape[0] != positions or candidate.top_ids.shape[0] != positions:
        raise ValueError(f"positions differ: {base.top_ids.shape[0]} base, {candidate.top_ids.shape[0]} candidate, "
                         f"{positions} expected")
    k = min(base.top_ids.shape[1], candidate.top_ids.shape[1])
    actual = np.asarray(token_ids[1:], dtype=np.int32)
    p_ids, p_lp = _known(base.top_ids, base.top_lp, actual, base.actual_lp, k)
    q_ids, q_lp = _known(candidate.top_ids, candidate.top_lp, actual, candidate.actual_lp, k)
    match = (p_ids[:, :, None] == q_ids[:, None, :]) & (p_ids[:, :, None] != _MISSING)
    both = match.any(axis=2)
    q_for_p = np.where(match, q_lp[:, None, :], -np.inf).max(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(both, np.exp(p_lp), 0.0)
        q = np.where(both, np.exp(q_for_p), 0.0)
        terms = np.where(both & (p > 0), p * (p_lp - q_for_p), 0.0).sum(axis=1)
        p_tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
        q_tail = np.maximum(1.0 - q.sum(axis=1), TAIL_FLOOR)
        bucket = np.where(p_tail > TAIL_FLOOR, p_tail * (np.log(np.maximum(p_tail, TAIL_FLOOR)) - np.log(q_tail)), 0.0)
    kl = np.maximum(terms + bucket, 0.0)  # >= 0 in exact arithmetic; rounding may dip below
    base_top = base.top_ids[:, 0].astype(np.int32)
    candidate_top = candidate.top_ids[:, 0].astype(np.int32)
    hit = q_ids == base_top[:, None]
    base_top_lp = np.where(hit.any(axis=1), np.where(hit, q_lp, -np.inf).max(axis=1), np.nan)
    delta_nll = base.actual_lp.astype(np.float64) - candidate.actual_lp.astype(np.float64)
    return TokenMetrics(kl=kl, agree=base_top == candidate_top, base_top_lp=base_top_lp, tail=p_tail,
                        delta_nll=delta_nll, base_top=base_top, candidate_top=candidate_top)
