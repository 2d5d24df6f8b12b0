"""reasonmath pack: answers re-derived independently, determinism, tiers, breakdowns, the
final-answer reader on a table of reply styles, and scoring of right, wrong and refused replies."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.compare.spec import DEFAULT_VERDICTS
from bench.errors import UserError
from bench.pack import Item
from bench.packs.reasonmath import ReasonMathPack, extract_answer
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.testing import record_for, transcript_for_answer, transcript_for_text

FAMILIES = {"arithmetic", "rates_units", "percent_money", "algebra", "number_theory", "counting_probability", "multi_step"}


@pytest.fixture(scope="module")
def pack() -> ReasonMathPack:
    return ReasonMathPack()


# --- the answers, re-derived from each item's own parameters by code that shares nothing with the pack


def _divisors(n: int) -> int:
    count, k = 0, 1
    while k * k <= n:
        if n % k == 0:
            count += 1 if k * k == n else 2
        k += 1
    return count


def _power_mod(base: int, exponent: int, modulus: int) -> int:
    result = 1
    for _ in range(exponent):
        result = result * base % modulus
    return result


def _either(n: int, a: int, b: int) -> int:
    if n <= 20_000:
        return sum(1 for k in range(1, n + 1) if k % a == 0 or k % b == 0)
    both = a * b // math.gcd(a, b)
    return n // a + n // b - n // both


def _dice(faces: int, target: int) -> Fraction:
    hits = sum(1 for i in range(1, faces + 1) for j in range(1, faces + 1) if i + j == target)
    return Fraction(hits, faces**2)


def _chain(start: int, ops: list[list[Any]]) -> Fraction:
    value = Fraction(start)
    for op, k in ops:
        value = {"add": value + k, "subtract": value - k, "multiply": value * k, "divide": value / k}[op]
        assert value.denominator == 1 and value > 0  # the chain promises whole, positive steps
    return value


def _system(p: dict[str, int]) -> Fraction:
    det = p["a1"] * p["b2"] - p["a2"] * p["b1"]
    x = Fraction(p["c1"] * p["b2"] - p["c2"] * p["b1"], det)
    y = Fraction(p["a1"] * p["c2"] - p["a2"] * p["c1"], det)
    return x + y


def _consecutive(p: dict[str, int]) -> Fraction:
    n = p["count"]
    first = Fraction(p["total"] - n * (n - 1) // 2, n)
    assert first.denominator == 1
    return first + n - 1


def _convert(p: dict[str, Any]) -> Fraction:
    # 1 km/h = 1000 m / 3600 s
    return Fraction(p["speed"]) * Fraction(36, 10) if p["to"] == "km/h" else Fraction(p["speed"]) / Fraction(36, 10)


RECOMPUTE: dict[str, Callable[[dict[str, Any]], Fraction]] = {
    "crates_left": lambda p: Fraction(p["crates"] * p["per"] - p["shipped"]),
    "equal_share": lambda p: Fraction(p["total"] - p["kept"], p["friends"]),
    "two_purchases": lambda p: Fraction(p["packs_a"] * p["size_a"] + p["packs_b"] * p["size_b"]),
    "free_seats": lambda p: Fraction(p["rows"] * p["seats"] - p["reserved"] - p["sold"]),
    "travel_time": lambda p: Fraction(p["distance"], p["speed"]),
    "average_speed": lambda p: Fraction(p["distance_1"] + p["distance_2"])
    / (Fraction(p["distance_1"], p["speed_1"]) + Fraction(p["distance_2"], p["speed_2"])),
    "convert_speed": _convert,
    "work_together": lambda p: 1 / (Fraction(1, p["hours_a"]) + Fraction(1, p["hours_b"])),
    "fuel_use": lambda p: Fraction(p["per_100"], 100) * p["distance"],
    "discount": lambda p: Fraction(p["price_cents"], 100) * (1 - Fraction(p["percent"], 100)),
    "percent_change": lambda p: abs(Fraction(p["end"], p["start"]) - 1) * 100,
    "simple_interest": lambda p: p["principal"] * (1 + Fraction(p["rate"] * p["years"], 100)),
    "bill_with_tax": lambda p: p["count"] * Fraction(p["price_cents"], 100) * Fraction(100 + p["tax"], 100),
    "rise_then_fall": lambda p: p["price"] * Fraction(100 + p["rise"], 100) * Fraction(100 - p["fall"], 100),
    "percent_of": lambda p: Fraction(p["number"] * p["percent"], 100),
    "solve_linear": lambda p: Fraction(p["c"] - p["b"], p["a"]),
    "two_sided": lambda p: Fraction(p["d"] - p["b"], p["a"] - p["c"]),
    "system_sum": _system,
    "ages": lambda p: Fraction(p["total"] - 2 * p["later"], p["times"] + 1),
    "evaluate_quadratic": lambda p: Fraction((p["a"] * p["t"] + p["b"]) * p["t"] + p["c"]),
    "consecutive": _consecutive,
    "gcd": lambda p: Fraction(math.gcd(p["a"], p["b"])),
    "lcm": lambda p: Fraction(math.lcm(p["a"], p["b"])),
    "power_remainder": lambda p: Fraction(_power_mod(p["base"], p["exponent"], p["modulus"])),
    "divisor_count": lambda p: Fraction(_divisors(p["n"])),
    "multiples_either": lambda p: Fraction(_either(p["n"], p["a"], p["b"])),
    "committee": lambda p: Fraction(math.factorial(p["n"]), math.factorial(p["k"]) * math.factorial(p["n"] - p["k"])),
    "podium": lambda p: Fraction(math.factorial(p["n"]), math.factorial(p["n"] - p["k"])),
    "two_red": lambda p: Fraction(p["red"] * (p["red"] - 1), (p["red"] + p["blue"]) * (p["red"] + p["blue"] - 1)),
    "dice_sum": lambda p: _dice(p["faces"], p["target"]),
    "at_least_one": lambda p: Fraction(p["faces"] ** p["rolls"] - (p["faces"] - 1) ** p["rolls"], p["faces"] ** p["rolls"]),
    "expected_payout": lambda p: Fraction(p["win_big"] * p["big"] + p["win_small"] * p["small"], p["slots"]),
    "chain": lambda p: _chain(p["start"], p["ops"]),
}


def _magnitude(item: Item) -> str:
    """Size of the largest number written in the question or the answer, computed again here:
    money drawn in cents is written in dollars; a short decimal answer counts by its value, any
    other fraction by its larger term."""
    stack: list[tuple[Any, bool]] = [(item.data["params"], False)]
    largest = Fraction(0)
    while stack:
        value, in_cents = stack.pop()
        if isinstance(value, dict):
            stack.extend((inner, key.endswith("_cents")) for key, inner in value.items())
        elif isinstance(value, list):
            stack.extend((inner, in_cents) for inner in value)
        elif isinstance(value, int) and not isinstance(value, bool):
            largest = max(largest, abs(Fraction(value, 100 if in_cents else 1)))
    answer = Fraction(item.data["answer"])
    short_decimal = (answer * 10_000).denominator == 1
    largest = max(largest, abs(answer) if short_decimal else Fraction(max(abs(answer.numerator), answer.denominator)))
    return "small" if largest <= 100 else "medium" if largest <= 10_000 else "large"


def _stated(question: str, n: int) -> bool:
    """The question shows ``n`` (its size; signs are written as operators)."""
    return abs(n) <= 1 or str(abs(n)) in question or f"{abs(n):,}" in question


SAMPLES = [ReasonMathPack(), ReasonMathPack(seed=1, count=140), ReasonMathPack(seed=987_654, count=140)]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: f"seed{p.seed}")
def test_every_answer_rederives_from_the_items_own_parameters(sample: ReasonMathPack) -> None:
    templates = Counter()
    for item in sample.items("full"):
        data = item.data
        params = data["params"]
        assert RECOMPUTE[data["template"]](params) == Fraction(data["answer"]), item.id
        assert data["magnitude"] == _magnitude(item), item.id
        for key, value in params.items():
            if (data["template"], key) == ("podium", "k"):  # said in words: "first and second places"
                assert ("third" in data["question"]) == (value == 3), item.id
            elif isinstance(value, int) and not key.endswith("_cents"):
                assert _stated(data["question"], value), (item.id, key)
            elif key.endswith("_cents"):
                assert f"${value // 100:,}" in data["question"], (item.id, key)
        if data["template"] == "chain":
            assert 3 <= data["steps"] == len(params["ops"]) <= 8
        if data["unit"] == "$":
            assert (Fraction(data["answer"]) * 100).denominator == 1, item.id  # whole cents
        templates[data["template"]] += 1
    assert set(templates) == set(RECOMPUTE)  # every template is exercised


def test_same_seed_same_items_across_calls_and_processes(pack: ReasonMathPack) -> None:
    again = ReasonMathPack()
    assert [item.model_dump() for item in again.items()] == [item.model_dump() for item in pack.items()]
    assert again.data_hash() == pack.data_hash()
    # A fresh interpreter with another hash seed makes the same items: nothing rests on hash().
    code = "from bench.packs.reasonmath import ReasonMathPack; print(ReasonMathPack().data_hash())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=60)
    assert out.stdout.strip() == pack.data_hash()


def test_more_items_keep_the_first_ones_and_another_seed_makes_new_ones(pack: ReasonMathPack) -> None:
    bigger = ReasonMathPack(count=400)
    assert [item.model_dump() for item in bigger.items()[:210]] == [item.model_dump() for item in pack.items()]
    assert bigger.data_hash() != pack.data_hash()
    other = ReasonMathPack(seed=7)
    assert not {item.id for item in other.items()} & {item.id for item in pack.items()}
    assert [i.data["question"] for i in other.items()] != [i.data["question"] for i in pack.items()]
    assert other.data_hash() != pack.data_hash() and other.version == "1-seed7" and pack.version == "1"


def test_tiers_options_and_registration(pack: ReasonMathPack) -> None:
    full, quick = pack.items("full"), pack.items("quick")
    assert len(full) == 210 >= 150 and len(quick) == 15
    assert [item.id for item in quick] == [item.id for item in full[:15]]
    assert {item.data["family"] for item in quick} == FAMILIES
    assert Counter(item.data["family"] for item in full) == {family: 30 for family in FAMILIES}
    assert len({item.id for item in full}) == len(full)
    assert pack.item_by_id(full[42].id) is full[42] and pack.item_by_id("nope") is None
    assert pack.default_sampling.thinking and pack.default_sampling.max_tokens == 512
    made = ReasonMathPack.from_options({"seed": "11", "count": "30"})
    assert (made.seed, made.count, len(made.items()), len(made.items("quick"))) == (11, 30, 30, 15)
    with pytest.raises(UserError, match=r"pack 'reasonmath' option count='5': input should be greater than or equal to 15"):
        ReasonMathPack.from_options({"count": "5"})
    with pytest.raises(UserError, match="has no option 'seeds'"):
        ReasonMathPack.from_options({"seeds": "1"})
    with pytest.raises(UserError, match="seed >= 0"):
        ReasonMathPack(seed=-1)
    assert "reasonmath" in registry.available() and "reasonmath" in registry.resolve("all")
    assert type(registry.load("reasonmath", {"seed": "3"})).__name__ == "ReasonMathPack"
    assert DEFAULT_VERDICTS["reasonmath"] == "FailReasoning"


def test_breakdowns_cover_every_band(pack: ReasonMathPack) -> None:
    groups = [pack.groups(item) for item in pack.items()]
    steps = Counter(g["steps"] for g in groups)
    magnitude = Counter(g["magnitude"] for g in groups)
    assert set(steps) == {"1-2", "3-4", "5-8"} and min(steps.values()) >= 20, steps
    assert set(magnitude) == {"small", "medium", "large"} and min(magnitude.values()) >= 20, magnitude
    for item, group in zip(pack.items(), groups):
        band = "1-2" if item.data["steps"] <= 2 else "3-4" if item.data["steps"] <= 4 else "5-8"
        assert group == {"steps": band, "magnitude": item.data["magnitude"]}


# --- reading the final answer


@pytest.mark.parametrize(
    ("content", "value", "rule"),
    [
        ("Let me work it out: 6 * 7 = 42.\n\n**Final answer:** 42", "42", "final_answer"),
        ("Final answer: 42.", "42", "final_answer"),
        ("The final answer is $\\boxed{\\dfrac{7}{4}}$.", "7/4", "boxed"),
        ("\\boxed{\\frac{3}{4}}", "3/4", "boxed"),
        ("So the probability is \\boxed{3/4}.\n\nFinal answer: 0.75", "3/4", "boxed"),
        ("\\[ \\boxed{x = -7} \\]", "-7", "boxed"),
        ("Total: 1250 dollars.\n\n$1,250.00", "1250", "final_line"),
        ("x = 7", "7", "final_line"),
        ("x = \u22127", "-7", "final_line"),
        ("120 / 40 = 3", "3", "final_line"),
        ("The trip takes 100/3 hours, about 33.33.", "100/3", "final_line"),
        ("The answer is 12.", "12", "answer_is"),
        ("The answer is 61/17.", "61/17", "answer_is"),
        ("So the probability is 1507/4041.", "1507/4041", "final_line"),
        ("Answer: x = 7", "7", "answer_is"),
        ("The answer is therefore 1,234,567", "1234567", "answer_is"),
        ("Final answer: 15 km/h", "15", "final_answer"),
        ("Final answer: $12.50", "25/2", "final_answer"),
        ("Final Answer:\n\n3/4", "3/4", "final_answer"),
        ("Final answer: 2 1/2 hours", "5/2", "final_answer"),
        ("Final answer: \\$48.60", "243/5", "final_answer"),
        ("Final answer: 12\\%", "12", "final_answer"),
        ("The answer is not 5: redoing the sum, the final answer is 7.", "7", "final_answer"),
        ("<think>the answer is 5</think>\nThe answer is 7", "7", "answer_is"),
        ("so it is 5, I think</think>\n\nFinal answer: 9", "9", "final_answer"),
        ("The answer is the sum of 3 and 4.\nFinal answer: 7", "7", "final_answer"),  # only a leading number is stated
        ("To answer: first 3 x 4 = 12, then add 30.\n\n**Final answer: 42**", "42", "final_answer"),
    ],
)
def test_reads_the_final_answer(content: str, value: str, rule: str) -> None:
    found = extract_answer(content)
    assert found.number is not None, content
    assert (found.number.value, found.rule) == (Fraction(value), rule)


@pytest.mark.parametrize(
    ("content", "candidates"),
    [
        ("\\boxed{5}\n\nor perhaps \\boxed{7}", ("5", "7")),
        ("The answer is 5. Checking again... the answer is 7.", ("5", "7")),
        ("Final answer: 5\nFinal answer: 6", ("5", "6")),
        ("\\boxed{12}\n\nFinal answer: 13", ("12", "13")),
        ("The answer is 0.33, that is 1/3.\nFinal answer: 1/3", ("0.33", "1/3")),  # 0.33 is too coarse for 1/3
    ],
)
def test_two_different_final_answers_are_refused(content: str, candidates: tuple[str, ...]) -> None:
    found = extract_answer(content)
    assert found.ambiguous and found.number is None
    assert found.candidates == candidates


@pytest.mark.parametrize(
    "content",
    ["", "I am not sure how to solve this.", "It takes between 3 and 4 hours.", "<think>Final answer: 42</think>", "<think>Final answer: 42"],
)
def test_no_answer_is_found_where_there_is_none(content: str) -> None:
    assert extract_answer(content).rule == "none"


# --- scoring


def test_every_reference_scores_right_and_every_wrong_reply_wrong(pack: ReasonMathPack) -> None:
    for item in pack.items():
        family = item.data["family"]
        assert item.reference is not None
        good = pack.score(item, transcript_for_answer(item.reference))
        assert (good.value, good.passed, good.subscores, good.extraction) == (1.0, True, {family: 1.0}, "final_answer"), item.id
        off, both = (pack.score(item, transcript_for_answer(wrong)) for wrong in item.wrong)
        assert (off.value, off.passed, off.subscores) == (0.0, False, {family: 0.0}) and off.extraction == "final_answer"
        assert both.value == 0.0 and both.extraction == "ambiguous" and both.reason.startswith("ambiguous")


DATA = {"family": "rates_units", "template": "work_together", "answer": "100/3"}


@pytest.mark.parametrize(
    ("content", "right", "match"),
    [
        ("Final answer: 100/3", True, "exact"),
        ("Final answer: \\frac{200}{6}", True, "exact"),
        ("Final answer: 33 1/3 hours", True, "exact"),
        ("Final answer: 33.33", True, "rounded"),
        ("Final answer: 33.3", True, "rounded"),
        ("Final answer: 33", False, None),
        ("Final answer: 33.34", False, None),
        ("Final answer: 3/100", False, None),
    ],
)
def test_exact_and_rounded_answers(content: str, right: bool, match: str | None) -> None:
    item = Item(id="x", data=DATA)
    score = ReasonMathPack().score(item, transcript_for_text(content))
    assert score.passed is right and score.value == float(right)
    assert score.details["match"] == match


def test_reasoning_is_never_read_and_unjudgeable_replies_keep_their_status(pack: ReasonMathPack) -> None:
    item = pack.items()[0]
    answer = item.data["answer"]
    wrong = str(Fraction(answer) + 1)
    # The right answer only in the reasoning field does not count; the content's answer does.
    score = pack.score(item, transcript_for_text(f"Final answer: {wrong}", reasoning=f"Final answer: {answer}"))
    assert not score.passed
    score = pack.score(item, transcript_for_text(f"Final answer: {answer}", reasoning=f"the answer is {wrong}"))
    assert score.passed
    empty = pack.score(item, transcript_for_text("", reasoning=f"Final answer: {answer}"))
    assert empty.status == "empty" and empty.subscores == {item.data["family"]: 0.0}
    cut = pack.score(item, transcript_for_text("Let me comp", finish_reason="length"))
    assert cut.status == "truncated" and not cut.passed
    silent = pack.score(item, transcript_for_text("I could not solve it."))
    assert silent.status == "scored" and silent.details["unparseable"] and silent.extraction is None


def test_results_score_each_family_only_on_its_own_items(pack: ReasonMathPack, tmp_path: Path) -> None:
    items = pack.items("quick")
    records = []
    for index, item in enumerate(items):
        assert item.reference is not None
        reply = item.reference if item.data["family"] != "algebra" else item.wrong[index % 2]
        records.append(record_for(pack, item, transcript_for_answer(reply)))
    store = RunStore.create(tmp_path, "r")
    store.write_results(build_results("r", {"reasonmath": pack}, records, {"reasonmath": len(records)}))  # schema-checked
    packed = store.read_results().packs["reasonmath"]
    per_family = Counter(item.data["family"] for item in items)
    assert set(packed.subdimensions) == FAMILIES
    for family, summary in packed.subdimensions.items():
        assert summary.n == per_family[family]
        assert summary.mean == (0.0 if family == "algebra" else 1.0)
    assert set(packed.breakdowns) == {"steps", "magnitude"}
    assert sum(group.score.n for group in packed.breakdowns["magnitude"].values()) == len(items)
    extra = pack.aggregate(records)
    algebra = per_family["algebra"]
    assert extra["seed"] == 20250 and extra["count"] == 210
    assert extra["ambiguous"] == sum(1 for i, item in enumerate(items) if item.data["family"] == "algebra" and i % 2 == 1)
    assert extra["extraction"]["final_answer"] + extra["extraction"].get("ambiguous", 0) == len(items)
    assert algebra >= 2
