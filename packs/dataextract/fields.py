"""Walk the expected answer and the model's answer together, one field at a time.

Every expected leaf becomes one check. A leaf with a value is an *accuracy* check (did the
model extract it?); a leaf that is null is a *silence* check (the document does not say, so
the model must leave it null or out; anything else is a hallucination). Lists are compared
in order unless the item declares them ``unordered``; then expected and given entries are
paired to agree as much as possible (an assignment problem, solved by scipy), so a list in
another order loses nothing and one wrong entry costs only its own fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from bench.packs.dataextract.normalize import is_blank, kind_of, show, values_equal


@dataclass(frozen=True)
class Check:
    """One expected field: where it is, whether the answer got it right, and what went wrong."""

    path: str
    ok: bool
    problem: str = ""


@dataclass
class FieldReport:
    """All checks of one answer, split by what they measure."""

    accuracy: list[Check] = field(default_factory=list)
    silence: list[Check] = field(default_factory=list)

    def fraction_ok(self) -> float:
        checks = self.accuracy + self.silence
        return sum(c.ok for c in checks) / len(checks) if checks else 1.0


def rule_key(path: str) -> str:
    """A field path with list positions erased ("items[2].sku" -> "items[].sku"), as compare rules name it."""
    return re.sub(r"\[\d+\]", "[]", path)


def compare_fields(
    expected: dict[str, Any], got: Any, schema: dict[str, Any], rules: dict[str, str] | None = None
) -> FieldReport:
    """Every check of ``got`` against ``expected``; ``rules`` maps field paths to compare modes."""
    report = FieldReport()
    _walk(expected, got, schema, "", rules or {}, report)
    return report


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(expected: Any, got: Any, schema: dict[str, Any] | None, path: str, rules: dict[str, str], report: FieldReport) -> None:
    if expected is None:
        ok = is_blank(got)
        report.silence.append(Check(path, ok, "" if ok else f"{path} should be null, got {show(got)}"))
    elif isinstance(expected, dict):
        given = got if isinstance(got, dict) else {}
        properties = (schema or {}).get("properties", {})
        for key, value in expected.items():
            _walk(value, given.get(key), properties.get(key), _join(path, key), rules, report)
    elif isinstance(expected, list):
        _walk_list(expected, got, schema, path, rules, report)
    else:
        _leaf(expected, got, schema, path, rules, report)


def _leaf(expected: Any, got: Any, schema: dict[str, Any] | None, path: str, rules: dict[str, str], report: FieldReport) -> None:
    kind = kind_of(schema, expected, rules.get(rule_key(path)))
    ok = values_equal(kind, expected, got)
    if ok:
        problem = ""
    elif is_blank(got):
        problem = f"{path}: missing, expected {show(expected)}"
    else:
        problem = f"{path}: got {show(got)}, expected {show(expected)}"
    report.accuracy.append(Check(path, ok, problem))


def _walk_list(expected: list[Any], got: Any, schema: dict[str, Any] | None, path: str, rules: dict[str, str], report: FieldReport) -> None:
    given = got if isinstance(got, list) else []
    if not expected:
        ok = is_blank(got)
        report.accuracy.append(Check(path, ok, "" if ok else f"{path}: expected an empty list, got {show(got)}"))
        return
    item_schema = (schema or {}).get("items")
    if rules.get(rule_key(path)) == "unordered":
        pairs = _best_pairs(expected, given, item_schema, f"{rule_key(path)}[]", rules)
    else:
        pairs = [(i, i) for i in range(min(len(expected), len(given)))]
    paired_expected = {i for i, _ in pairs}
    paired_given = {j for _, j in pairs}
    for i, j in pairs:
        _walk(expected[i], given[j], item_schema, f"{path}[{i}]", rules, report)
    for i, value in enumerate(expected):
        if i not in paired_expected:
            _walk(value, None, item_schema, f"{path}[{i}]", rules, report)
    for j, value in enumerate(given):
        if j not in paired_given and not is_blank(value):
            report.accuracy.append(Check(f"{path}[{j}]", False, f"{path}: unexpected extra entry {show(value)}"))


def _best_pairs(
    expected: list[Any], given: list[Any], item_schema: dict[str, Any] | None, element_path: str, rules: dict[str, str]
) -> list[tuple[int, int]]:
    """Pair expected and given entries to maximise agreeing fields, whatever their order."""
    if not given:
        return []
    agreement = np.zeros((len(expected), len(given)))
    for i, want in enumerate(expected):
        for j, have in enumerate(given):
            scratch = FieldReport()
            _walk(want, have, item_schema, element_path, rules, scratch)
            agreement[i, j] = scratch.fraction_ok()
    rows, cols = linear_sum_assignment(agreement, maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist(), strict=True))
