"""What one generated problem holds, the seeded draw that makes it, and its difficulty bands.

A template turns a :class:`Draw` (a seeded generator plus a number scale) into a
:class:`Problem`: the parameters it drew, the question text, and the exact answer as a
``Fraction``. Parameters are kept as plain JSON so that an item can be re-derived and checked
from its own data, and the difficulty groups are computed from what was drawn, never guessed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

# Number ranges per scale: small problems stay under 100, medium under 10,000, large above.
SCALES = ("small", "medium", "large")
MAGNITUDE_LIMITS = ((100, "small"), (10_000, "medium"))
STEP_BANDS = ((2, "1-2"), (4, "3-4"), (8, "5-8"))


@dataclass(frozen=True)
class Problem:
    """One problem as a template made it.

    Attributes:
        template: the template's name (the test suite re-derives the answer per template).
        params: every number drawn, as JSON (ints, strings, lists of them).
        question: the text asked, without the answer-format instruction.
        answer: the exact answer.
        unit: the unit the answer is in (``$`` for money, ``%``, ``km/h``, ... or ``""``).
        steps: how many arithmetic operations the intended solution takes.
    """

    template: str
    params: dict[str, Any]
    question: str
    answer: Fraction
    unit: str
    steps: int


class Draw:
    """A seeded generator with a number scale (0 small, 1 medium, 2 large).

    Every random choice of a template goes through here, so one ``random.Random`` seeded from a
    string decides the whole problem; string seeds hash with SHA-512 inside ``random``, which
    makes them the same on every machine and Python run (``hash()`` would not be).
    """

    def __init__(self, seed: str, scale: int) -> None:
        self.rng = random.Random(seed)
        self.scale = scale

    def pick(self, small: tuple[int, int], medium: tuple[int, int], large: tuple[int, int]) -> int:
        """An integer from the range that belongs to this draw's scale (bounds included)."""
        low, high = (small, medium, large)[self.scale]
        return self.rng.randint(low, high)

    def between(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def choice(self, options: tuple[Any, ...] | list[Any]) -> Any:
        return self.rng.choice(options)


def sizes_in(value: Any, cents: bool = False) -> list[Fraction]:
    """The size of every number inside a JSON parameter value, as the question writes it: a
    parameter named ``*_cents`` is shown in dollars, so 2580 counts as 25.80."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [abs(Fraction(value, 100 if cents else 1))]
    if isinstance(value, dict):
        return [size for key, inner in value.items() for size in sizes_in(inner, str(key).endswith("_cents"))]
    if isinstance(value, list):
        return [size for inner in value for size in sizes_in(inner, cents)]
    return []


def answer_size(answer: Fraction) -> Fraction:
    """How big an answer is to write: a short decimal by its value ($11.61 is small), any other
    fraction by its larger term (87781/248832 is not a small-number answer)."""
    if 10_000 % answer.denominator == 0:
        return abs(answer)
    return Fraction(max(abs(answer.numerator), answer.denominator))


def magnitude_of(params: dict[str, Any], answer: Fraction) -> str:
    """``small``/``medium``/``large`` by the largest number in the question or the answer."""
    largest = max([*sizes_in(params), answer_size(answer)])
    for limit, name in MAGNITUDE_LIMITS:
        if largest <= limit:
            return name
    return "large"


def steps_band(steps: int) -> str:
    """``1-2``, ``3-4`` or ``5-8`` operations."""
    for limit, name in STEP_BANDS:
        if steps <= limit:
            return name
    return STEP_BANDS[-1][1]
