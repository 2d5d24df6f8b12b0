"""Multi-step chains: a starting number and 3 to 8 operations applied in order.

The length of the chain is the difficulty being measured, so every intermediate value stays a
whole number inside the draw's scale (divisions only by exact divisors, subtractions never below
one): a wrong answer then means a lost step, not a rounding choice.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

from bench.packs.reasonmath.problem import Draw, Problem
from bench.packs.reasonmath.written import whole

CAPS = (100, 10_000, 1_000_000)  # the largest intermediate value per scale
WORDS = {"add": "add {k}", "subtract": "subtract {k}", "multiply": "multiply by {k}", "divide": "divide by {k}"}


def _next_step(draw: Draw, value: int) -> tuple[str, int]:
    """One operation that keeps the running value a whole number in (0, cap]."""
    cap = CAPS[draw.scale]
    top = max(2, cap // 20)
    options: list[tuple[str, int]] = []
    add = draw.between(1, top)
    if value + add <= cap:
        options.append(("add", add))
    if value > 1:
        options.append(("subtract", draw.between(1, min(value - 1, top))))
    factor = draw.between(2, (5, 9, 12)[draw.scale])
    if value * factor <= cap:
        options.append(("multiply", factor))
    divisors = [k for k in range(2, 13) if value % k == 0]
    if divisors:
        options.append(("divide", draw.choice(divisors)))
    chosen: tuple[str, int] = draw.choice(options)
    return chosen


def _apply(value: int, op: str, k: int) -> int:
    if op == "add":
        return value + k
    if op == "subtract":
        return value - k
    if op == "multiply":
        return value * k
    return value // k


def chain(draw: Draw) -> Problem:
    length = draw.between(3, 8)
    start = draw.pick((2, 40), (100, 4000), (10_001, 400_000))
    value = start
    ops: list[list[Any]] = []
    for _ in range(length):
        op, k = _next_step(draw, value)
        ops.append([op, k])
        value = _apply(value, op, k)
    said = [WORDS[op].format(k=whole(k)) for op, k in ops]
    question = (
        f"Start with {whole(start)}. Then, in this order: {', '.join(said[:-1])} and finally {said[-1]}. "
        "What number do you end with?"
    )
    return Problem("chain", {"start": start, "ops": ops}, question, Fraction(value), "", length)


MULTI_STEP: tuple[Callable[[Draw], Problem], ...] = (chain,)
