"""Score one structured-output reply against its item.

Subdimensions:

- ``parses``: a JSON answer was found in the content (rule in ``Score.extraction``; see ``extract``).
- ``schema_valid``: the answer validates against the item's JSON Schema (draft 2020-12, jsonschema).
- ``field_accuracy``: share of the item's gold fields the answer got right (see ``gold``).
- ``no_extra_fields``: the answer holds no key its schema does not declare (see ``extra_fields``);
  not judged when nothing parsed.

The item passes when the answer parses, is valid against the schema and gets every gold field
right. The value is the share of gold fields right, halved when the schema is broken and cut by a
quarter when the answer adds undeclared fields, so a well-formed but empty or padded answer
collects no free credit, and a reference answer is the only way to 1.0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from bench.pack import Score
from bench.packs.structout.extra_fields import undeclared
from bench.packs.structout.extract import Unparsed, find_json
from bench.packs.structout.gold import check_gold

if TYPE_CHECKING:
    from bench.records import ItemRecord

SCHEMA_FACTOR = 0.5  # on the value of an answer that breaks its schema
EXTRA_FACTOR = 0.75  # on the value of an answer with undeclared fields
MAX_SHOWN = 5


def schema_errors(schema: dict[str, Any], answer: Any) -> list[str]:
    """Each way ``answer`` breaks ``schema``, as ``path: message``, in path order."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(answer), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_path(e.absolute_path) or 'answer'}: {e.message}" for e in errors]


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def score_reply(data: dict[str, Any], content: str) -> Score:
    """Judge the reply's ``content`` against the item ``data`` (schema, gold, mode, kind)."""
    details: dict[str, Any] = {"mode": data["mode"], "kind": data["kind"]}
    found = find_json(content)
    if isinstance(found, Unparsed):
        return Score(
            value=0.0,
            passed=False,
            subscores={"parses": 0.0, "schema_valid": 0.0, "field_accuracy": 0.0},
            reason=f"does not parse: {found.why}",
            details=details,
        )
    broken = schema_errors(data["schema"], found.value)
    checks = check_gold(data["gold"], found.value)
    extras = undeclared(data["schema"], found.value)
    right = sum(check.ok for check in checks)
    accuracy = right / len(checks)
    subscores = {
        "parses": 1.0,
        "schema_valid": 0.0 if broken else 1.0,
        "field_accuracy": accuracy,
        "no_extra_fields": 0.0 if extras else 1.0,
    }
    value = accuracy * (SCHEMA_FACTOR if broken else 1.0) * (EXTRA_FACTOR if extras else 1.0)
    problems = [c.problem for c in checks if not c.ok] + [f"schema: {e}" for e in broken]
    problems += [f"undeclared field {path}" for path in extras]
    return Score(
        value=round(value, 6),
        passed=not broken and right == len(checks),
        subscores=subscores,
        reason=_reason(problems, len(checks)),
        extraction=found.rule,
        details={
            **details,
            "wrong_fields": [c.path for c in checks if not c.ok],
            "schema_errors": broken[:MAX_SHOWN],
            "extra_fields": extras[:MAX_SHOWN],
        },
    )


def not_measured(data: dict[str, Any], why: str) -> Score:
    """The score of a guided item the server would not constrain: counted apart, never as a zero."""
    return Score(
        value=0.0,
        passed=False,
        status="unmeasured",
        reason=f"not measured: {why}",
        details={"mode": data["mode"], "kind": data["kind"]},
    )


def _reason(problems: list[str], fields: int) -> str:
    if not problems:
        return f"parses, valid against the schema, all {fields} gold fields right, no extra fields"
    shown = "; ".join(problems[:MAX_SHOWN])
    hidden = len(problems) - MAX_SHOWN
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def extraction_rules(records: Sequence[ItemRecord]) -> dict[str, dict[str, int]]:
    """Per mode, how many judged replies each extraction rule found (``none``: nothing parsed)."""
    counts: dict[str, Counter[str]] = {}
    for record in records:
        score = record.score
        if score is None or record.error is not None or score.status != "scored":
            continue
        mode = str(score.details.get("mode", "unknown"))
        counts.setdefault(mode, Counter())[score.extraction or "none"] += 1
    return {mode: dict(sorted(found.items())) for mode, found in sorted(counts.items())}
