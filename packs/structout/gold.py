"""Gold checks: the fields a reply must get right, each compared by a stated rule.

An item's ``gold`` maps a path in the answer to what must be found there. Paths are keys joined
by dots, with ``[n]`` for one list entry and ``[]`` for every entry (``items[].sku`` is the list
of every item's sku). A plain JSON value is compared as a person would: numbers by value (``3``
equals ``3.0``), text case- and whitespace-insensitively, lists in order, booleans and null as
themselves. A one-key object names another rule:

- ``{"approx": x, "tol": t}``: a number within ``t`` of ``x`` (prices, measurements, rates);
- ``{"exact": "Ab-1"}``: the very string, case included (codes, identifiers);
- ``{"set": [...]}``: a list holding these values in any order;
- ``{"any_of": [a, b]}``: any one of the values;
- ``{"contains": "text"}`` (or a list of texts): a string holding each text, case-insensitively;
- ``{"count": n}``: a list of exactly ``n`` entries;
- ``{"omitted": true}``: the field is left out or null (an optional field the prompt gives no value for).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

RULES: Final = ("approx", "exact", "set", "any_of", "contains", "count", "omitted")
PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\d*\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d*\])*)*$")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d*)\]")
NUMBER_EPSILON = 1e-9


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING: Final = _Missing()  # what a path finds where the answer has no such field


@dataclass(frozen=True)
class Check:
    """One gold field judged: where, whether it was right, and what was found when it was not."""

    path: str
    ok: bool
    problem: str = ""


def steps(path: str) -> list[str | int | None]:
    """``a.b[0].c[]`` -> ``["a", "b", 0, "c", None]`` (None: every entry)."""
    if not PATH.match(path):
        raise ValueError(f"bad gold path {path!r}")
    out: list[str | int | None] = []
    for key, index in _STEP.findall(path):
        out.append(key if key else (int(index) if index else None))
    return out


def lookup(value: Any, path: str) -> Any:
    """What ``path`` finds in ``value``: a value, a list of values for ``[]``, or ``MISSING``."""
    return _walk(value, steps(path))


def _walk(node: Any, rest: list[str | int | None]) -> Any:
    if not rest:
        return node
    step, tail = rest[0], rest[1:]
    if isinstance(step, str):
        return _walk(node[step], tail) if isinstance(node, dict) and step in node else MISSING
    if not isinstance(node, list):
        return MISSING
    if step is None:
        return [_walk(entry, tail) for entry in node]
    return _walk(node[step], tail) if step < len(node) else MISSING


def _text(value: str) -> str:
    return " ".join(value.casefold().split())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def same(expected: Any, found: Any) -> bool:
    """Equal as a person reading JSON would judge it (see the module docstring)."""
    if _is_number(expected):
        return _is_number(found) and math.isclose(expected, found, rel_tol=NUMBER_EPSILON, abs_tol=NUMBER_EPSILON)
    if isinstance(expected, str):
        return isinstance(found, str) and _text(expected) == _text(found)
    if isinstance(expected, bool) or expected is None:
        return found is expected
    if isinstance(expected, list):
        return isinstance(found, list) and len(found) == len(expected) and all(map(same, expected, found))
    if isinstance(expected, dict):
        return isinstance(found, dict) and found.keys() == expected.keys() and all(same(v, found[k]) for k, v in expected.items())
    return bool(expected == found)


def _same_set(expected: list[Any], found: Any) -> bool:
    if not isinstance(found, list) or len(found) != len(expected):
        return False
    left = list(found)
    for wanted in expected:
        match = next((i for i, got in enumerate(left) if same(wanted, got)), None)
        if match is None:
            return False
        left.pop(match)
    return True


def is_rule(expected: Any) -> bool:
    """Whether a gold value is a rule object rather than a plain value."""
    return isinstance(expected, dict) and len(expected.keys() & set(RULES)) == 1


def matches(expected: Any, found: Any) -> bool:
    """Whether ``found`` (possibly ``MISSING``) satisfies the gold value or rule ``expected``."""
    if not is_rule(expected):
        return found is not MISSING and same(expected, found)
    if "omitted" in expected:
        return found is MISSING or found is None
    if found is MISSING:
        return False
    if "approx" in expected:
        return _is_number(found) and abs(found - expected["approx"]) <= expected.get("tol", 0.0) + NUMBER_EPSILON
    if "exact" in expected:
        return isinstance(found, str) and found == expected["exact"]
    if "set" in expected:
        return _same_set(expected["set"], found)
    if "any_of" in expected:
        return any(same(option, found) for option in expected["any_of"])
    if "contains" in expected:
        wanted = expected["contains"] if isinstance(expected["contains"], list) else [expected["contains"]]
        return isinstance(found, str) and all(_text(part) in _text(found) for part in wanted)
    return isinstance(found, list) and len(found) == expected["count"]


def check_gold(gold: dict[str, Any], answer: Any) -> list[Check]:
    """Every gold field of an item judged against ``answer``, in the item's order."""
    checks = []
    for path, expected in gold.items():
        found = lookup(answer, path)
        ok = matches(expected, found)
        checks.append(Check(path, ok, "" if ok else f"{path}: expected {_show(expected)}, got {_show(found)}"))
    return checks


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value) if value is MISSING else json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."
