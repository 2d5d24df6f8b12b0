"""Generation drift: how a candidate's greedy continuation departs from the base's on the same prompt.

Pure functions over token ids. Degeneration is counted apart from drift: a continuation that ends
in a loop (its tail repeats with a short period) or runs to the token limit without an end-of-
sequence is a failure mode of its own, whatever its first divergent token.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

LOOP_MAX_PERIOD = 32
LOOP_REPEATS = 3  # the tail must repeat its period this many times to count as a loop
LOOP_MIN_SPAN = 12  # tokens: two repeated words are not a loop


class Drift(BaseModel):
    """One prompt's base and candidate continuations, compared."""

    model_config = ConfigDict(extra="forbid")
    id: str
    domain: str
    base_tokens: int
    candidate_tokens: int
    first_divergence: int | None  # index of the first differing token; None when both are identical
    length_ratio: float | None  # candidate tokens / base tokens
    base_eos: bool
    candidate_eos: bool
    base_distinct2: float | None
    candidate_distinct2: float | None
    base_repetition4: float | None
    candidate_repetition4: float | None
    base_loop: bool
    candidate_loop: bool


def first_divergence(base: list[int], candidate: list[int]) -> int | None:
    """Index of the first token where the two differ (a prefix ends where the shorter ends)."""
    for index, (a, b) in enumerate(zip(base, candidate)):
        if a != b:
            return index
    return None if len(base) == len(candidate) else min(len(base), len(candidate))


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(tokens: list[int], n: int) -> float | None:
    """Share of n-grams that are distinct (1.0: no n-gram repeats); None below n tokens."""
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else None


def repetition(tokens: list[int], n: int = 4) -> float | None:
    """Share of n-grams that repeat an earlier one: 1 - distinct-n."""
    share = distinct(tokens, n)
    return None if share is None else 1.0 - share


def loops(tokens: list[int]) -> bool:
    """True when the continuation ends in a cycle: its tail repeats with some period p <= 32
    at least three times over, and over at least 12 tokens."""
    for period in range(1, LOOP_MAX_PERIOD + 1):
        span = max(period * LOOP_REPEATS, LOOP_MIN_SPAN)
        if span > len(tokens):
            break
        tail = tokens[-span:]
        if all(tail[i] == tail[i - period] for i in range(period, span)):
            return True
    return False


def compare_continuations(text_id: str, domain: str, base: list[int], base_finish: str | None,
                          candidate: list[int], candidate_finish: str | None) -> Drift:
    """All drift figures of one prompt; an end-of-sequence is a ``stop`` finish."""
    return Drift(
        id=text_id, domain=domain, base_tokens=len(base), candidate_tokens=len(candidate),
        first_divergence=first_divergence(base, candidate),
        length_ratio=len(candidate) / len(base) if base else None,
        base_eos=base_finish == "stop", candidate_eos=candidate_finish == "stop",
        base_distinct2=distinct(base, 2), candidate_distinct2=distinct(candidate, 2),
        base_repetition4=repetition(base), candidate_repetition4=repetition(candidate),
        base_loop=loops(base), candidate_loop=loops(candidate),
    )
