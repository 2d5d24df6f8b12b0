"""Items from seeded templates: the same seed gives the same items on every machine.

Item ``i`` of seed ``s`` depends on nothing but ``(s, i)``: its family is ``i mod 7``, its
template and number scale cycle with ``i`` too (so any prefix of the items covers the families,
the templates and the scales evenly), and one string-seeded generator draws its numbers. The
quick tier is therefore the first 15 items of the full tier, and asking for more items never
changes the ones before.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

from bench.pack import Item
from bench.packs.reasonmath.chains import MULTI_STEP
from bench.packs.reasonmath.everyday import ARITHMETIC, PERCENT_MONEY, RATES_UNITS
from bench.packs.reasonmath.problem import SCALES, Draw, Problem, magnitude_of
from bench.packs.reasonmath.symbolic import ALGEBRA, COUNTING, NUMBER_THEORY
from bench.packs.reasonmath.written import answer_text

FAMILIES: dict[str, tuple[Callable[[Draw], Problem], ...]] = {
    "arithmetic": ARITHMETIC,
    "rates_units": RATES_UNITS,
    "percent_money": PERCENT_MONEY,
    "algebra": ALGEBRA,
    "number_theory": NUMBER_THEORY,
    "counting_probability": COUNTING,
    "multi_step": MULTI_STEP,
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

INSTRUCTION = (
    "Give the exact answer: a whole number, an exact decimal, or a fraction in lowest terms "
    '(such as 7/4). End your reply with a line of the form "Final answer: <number>".'
)


def problem_at(seed: int, index: int) -> tuple[str, Problem]:
    """The family and problem of item ``index`` under ``seed``."""
    family = FAMILY_NAMES[index % len(FAMILY_NAMES)]
    rounds = index // len(FAMILY_NAMES)
    templates = FAMILIES[family]
    # Each pass over the templates shifts the scales by one, so every three passes pair every
    # template with every scale, whatever the number of templates.
    which, passes = rounds % len(templates), rounds // len(templates)
    scale = (which + passes) % len(SCALES)
    return family, templates[which](Draw(f"reasonmath:{seed}:{index}", scale))


def make_item(seed: int, index: int, quick: bool) -> Item:
    family, problem = problem_at(seed, index)
    answer = problem.answer
    data: dict[str, Any] = {
        "family": family,
        "template": problem.template,
        "params": problem.params,
        "question": problem.question,
        "answer": str(answer),
        "unit": problem.unit,
        "steps": problem.steps,
        "magnitude": magnitude_of(problem.params, answer),
        "seed": seed,
        "index": index,
    }
    written, off_by_one = answer_text(answer, problem.unit), answer_text(answer + 1, problem.unit)
    return Item(
        id=f"{family}/{seed}-{index:04d}",
        data=data,
        tiers=["quick", "full"] if quick else ["full"],
        reference={"content": f"Working through it step by step.\n\n**Final answer:** {written}"},
        wrong=[
            {"content": f"Final answer: {off_by_one}"},
            {"content": f"The answer is {written}.\n\nOn reflection, the answer is {off_by_one}."},
        ],
    )


def generate(seed: int, count: int, quick_count: int) -> list[Item]:
    """``count`` items of ``seed``; the first ``quick_count`` are also the quick tier."""
    return [make_item(seed, index, index < quick_count) for index in range(count)]


def expected_answer(item: Item) -> Fraction:
    return Fraction(item.data["answer"])
