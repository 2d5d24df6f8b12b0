"""Evaluating a task's declared checks: state values, counts over collections, calls, facts.

One small language serves the gold end state, the required calls and the minefields, so a task
reads as data and every check is explained by its label.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from bench.packs.agent.episode import CallRecord
from bench.packs.agent.spec import CallCheck, Cond, CountCheck, Fact, NumberFact, ValueCheck


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2212"), "-")


def normalize(text: str) -> str:
    """Casefolded, accents and Unicode dashes flattened, markdown emphasis and code marks dropped,
    runs of space made one: how a fact or a label is compared with what a model wrote."""
    flat = unicodedata.normalize("NFKD", text.translate(_DASHES))
    flat = "".join(char for char in flat if not unicodedata.combining(char)).replace("*", "").replace("`", "")
    return " ".join(flat.casefold().split())


def resolve(state: Any, path: Sequence[str | int]) -> Any:
    """The value at ``path`` (object keys and list indexes), or MISSING."""
    node = state
    for key in path:
        if isinstance(node, dict) and str(key) in node:
            node = node[str(key)]
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return MISSING
    return node


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str) and isinstance(actual, str):
        return normalize(expected) == normalize(actual)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return abs(float(expected) - float(actual)) <= 1e-9
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_same(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same(expected[k], actual[k]) for k in expected)
    return bool(expected == actual)


def _has(container: Any, part: Any) -> bool:
    if isinstance(container, str):
        return isinstance(part, str) and normalize(part) in normalize(container)
    if isinstance(container, list):
        return any(_same(part, element) for element in container)
    if isinstance(container, dict):
        return isinstance(part, str) and part in container
    return False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def holds(cond: Cond, value: Any) -> bool:
    """Whether ``value`` (MISSING when absent) passes every key ``cond`` sets."""
    given = cond.model_fields_set
    if "absent" in given and cond.absent is not None and (value is MISSING) != cond.absent:
        return False
    if value is MISSING:
        return given <= {"absent", "ne", "lacks"}
    checks = {
        "eq": lambda: _same(cond.eq, value),
        "ne": lambda: not _same(cond.ne, value),
        "has": lambda: _has(value, cond.has),
        "lacks": lambda: not _has(value, cond.lacks),
        "one_of": lambda: any(_same(option, value) for option in cond.one_of or []),
        "gte": lambda: (number := _number(value)) is not None and number >= (cond.gte or 0.0) - 1e-9,
        "lte": lambda: (number := _number(value)) is not None and number <= (cond.lte or 0.0) + 1e-9,
    }
    return all(check() for key, check in checks.items() if key in given)


def entries(collection: Any) -> list[Any]:
    """The members of a collection: an object's values or a list's elements."""
    if isinstance(collection, dict):
        return list(collection.values())
    if isinstance(collection, list):
        return list(collection)
    return []


def _matches(entry: Any, where: dict[str, Cond]) -> bool:
    return all(holds(cond, resolve(entry, field.split("."))) for field, cond in where.items())


def state_holds(check: ValueCheck | CountCheck, state: dict[str, Any]) -> bool:
    """Whether a value or count check holds on the environment's state."""
    found = resolve(state, check.path)
    if isinstance(check, ValueCheck):
        return holds(check.is_, found)
    count = sum(1 for entry in entries(found) if _matches(entry, check.where))
    return holds(check.count, count)


def call_holds(check: CallCheck, log: Sequence[CallRecord]) -> bool:
    """Whether the successful calls of the check's tools whose arguments pass ``args`` are as many as ``count`` says."""
    tools = check.tools
    count = sum(1 for call in log if call.ok and call.name in tools and call.arguments is not None and _matches(call.arguments, check.args))
    return holds(check.count, count)


_NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` (thousands separators allowed)."""
    return [float(match.group().replace(",", "")) for match in _NUMBER.finditer(text.translate(_DASHES))]


def fact_stated(fact: Fact, answer: str) -> bool:
    """Whether the final answer states the fact."""
    if isinstance(fact, NumberFact):
        return any(abs(number - fact.number) <= fact.tol for number in numbers_in(answer))
    text = normalize(answer)
    return any(normalize(option) in text for option in fact.any)
