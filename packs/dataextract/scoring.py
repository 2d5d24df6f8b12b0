"""Score one extraction reply against its item: four subdimensions and a reason a person can read.

- ``valid_json``: a JSON answer could be found (bare, fenced or embedded; see ``extract``).
- ``schema_adherence``: the answer validates against the item's JSON Schema (formats checked).
- ``field_accuracy``: share of the fields the document states that the answer got right,
  compared tolerantly (see ``normalize``).
- ``no_hallucination``: share of the fields the document is silent on that the answer left
  null or out. Not judged when no JSON was found: there is nothing to have invented.

The value is the share of fields the answer got right (stated fields correct, unstated ones
left null), with a quarter off when the answer breaks its schema, and 0 without JSON. So an
answer of all nulls, or the schema echoed back, scores near 0 rather than collecting credit for
being well-formed and inventing nothing. The item passes only when every subscore is 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from bench.pack import Score
from bench.packs.dataextract.extract import Extracted, find_json
from bench.packs.dataextract.fields import Check, compare_fields

if TYPE_CHECKING:
    from bench.records import ItemRecord

SCHEMA_PENALTY = 0.75  # factor on the value of an answer that breaks its schema
MAX_PROBLEMS_SHOWN = 6


def schema_problems(schema: dict[str, Any], answer: Any) -> list[str]:
    """Each way ``answer`` breaks ``schema``, as "field: message", in document order."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(answer), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(e.absolute_path)}: {e.message}" for e in errors]


def _where(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "answer"


def score_reply(data: dict[str, Any], content: str) -> Score:
    """Judge ``content`` (the model's reply) against the item ``data`` (document, schema, expected)."""
    kind = data["kind"]
    found = find_json(content)
    if not isinstance(found, Extracted):
        return Score(
            value=0.0,
            passed=False,
            subscores={"valid_json": 0.0, "schema_adherence": 0.0, "field_accuracy": 0.0},
            reason=f"invalid JSON: {found.error}",
            details={"kind": kind},
        )
    schema_errors = schema_problems(data["schema"], found.value)
    report = compare_fields(data["expected"], found.value, data["schema"], data.get("compare"))
    subscores = {"valid_json": 1.0, "schema_adherence": 0.0 if schema_errors else 1.0}
    if report.accuracy:
        subscores["field_accuracy"] = _share(report.accuracy)
    if report.silence:
        subscores["no_hallucination"] = _share(report.silence)
    value = report.fraction_ok() * (SCHEMA_PENALTY if schema_errors else 1.0)
    wrong = [c for c in report.accuracy if not c.ok]
    invented = [c for c in report.silence if not c.ok]
    problems = [c.problem for c in wrong + invented] + [f"schema: {p}" for p in schema_errors]
    return Score(
        value=round(value, 6),
        passed=all(v == 1.0 for v in subscores.values()),
        subscores=subscores,
        reason=_reason(problems, len(report.accuracy), len(report.silence)),
        extraction=found.rule,
        details={
            "kind": kind,
            "wrong_fields": [c.path for c in wrong],
            "hallucinated_fields": [c.path for c in invented],
            "schema_errors": schema_errors[:MAX_PROBLEMS_SHOWN],
        },
    )


def _share(checks: list[Check]) -> float:
    return sum(c.ok for c in checks) / len(checks)


def _reason(problems: list[str], stated: int, silent: int) -> str:
    if not problems:
        return f"all {stated} stated fields correct; all {silent} unstated fields left null"
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    hidden = len(problems) - MAX_PROBLEMS_SHOWN
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def extraction_rules(records: Sequence[ItemRecord]) -> dict[str, int]:
    """Scored replies per extraction rule (bare, fenced, embedded JSON, none)."""
    rules: Counter[str] = Counter()
    for record in records:
        if record.score is not None and record.error is None and record.score.status == "scored":
            rules[record.score.extraction or "none"] += 1
    return dict(sorted(rules.items()))
