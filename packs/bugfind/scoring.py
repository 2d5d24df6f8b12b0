"""Turn an extracted answer into a Score with per-subdimension values and a readable reason.

Buggy program: ``localization`` (the named line is a bug line), ``fix_correctness`` (the fixed
program passes every hidden test, or every static check for languages not run here) and
``answer_format``. Correct program: ``no_false_alarm`` (answered "no bug") and ``answer_format``.
``answer_format`` is 1 for the asked format, 0.5 when only a tolerant rule could read the answer,
0 when no verdict could be read at all.

Value: buggy 0.4 localization + 0.5 fix + 0.1 format; correct 0.9 no-false-alarm + 0.1 format.
Passed: buggy needs the right line and a correct fix; correct needs "no bug".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.pack import Score
from bench.packs.bugfind.extract import Answer, extract_answer
from bench.packs.bugfind.hidden import FixVerdict, check_static_fix, run_hidden_tests

if TYPE_CHECKING:
    from bench.records import ItemRecord


def format_value(answer: Answer) -> float:
    if answer.verdict == "none":
        return 0.0
    return 1.0 if answer.strict else 0.5


def judge(data: Mapping[str, Any], content: str, *, timeout_s: float) -> Score:
    """Score one reply to the item whose ``data`` is given."""
    answer = extract_answer(content, data["language"])
    details: dict[str, Any] = {
        "language": data["language"],
        "bug_kind": data["bug"]["kind"] if data["bug"] else None,
        "verdict": answer.verdict,
        "claimed_line": answer.line,
    }
    if data["bug"] is None:
        return _judge_correct_program(answer, details)
    return _judge_buggy_program(data, answer, details, timeout_s=timeout_s)


def _judge_correct_program(answer: Answer, details: dict[str, Any]) -> Score:
    fmt = format_value(answer)
    clear = answer.verdict == "no_bug"
    if clear:
        reason = "correctly said the program has no bug"
    elif answer.verdict == "line":
        reason = f"false alarm: said line {answer.line}, the program is correct"
    else:
        reason = "no verdict found (expected 'NO BUG'); the program is correct"
    return Score(
        value=(9 * float(clear) + fmt) / 10,
        passed=clear,
        subscores={"no_false_alarm": float(clear), "answer_format": fmt},
        reason=reason + _format_note(answer),
        extraction=answer.rule,
        details=details,
    )


def _judge_buggy_program(
    data: Mapping[str, Any], answer: Answer, details: dict[str, Any], *, timeout_s: float
) -> Score:
    bug_lines: list[int] = data["bug"]["lines"]
    where = _lines_text(bug_lines)
    located = answer.verdict == "line" and answer.line in bug_lines
    if answer.verdict == "no_bug":
        parts = [f"said no bug, the bug is on {where}"]
    elif answer.verdict == "line":
        parts = [f"found the bug on line {answer.line}" if located
                 else f"said line {answer.line}, the bug is on {where}"]
    else:
        parts = [f"no verdict found (expected 'LINE: <n>'); the bug is on {where}"]

    fix: FixVerdict | None = None
    if answer.code is None:
        if answer.verdict != "no_bug":
            parts.append("no fixed program found")
    else:
        fix = _check_fix(data, answer.code, timeout_s=timeout_s)
        parts.append(fix.summary)
        details["fix"] = {"passed": fix.passed, "total": fix.total, "failures": fix.failures[:5],
                          "sandbox": dict(fix.sandbox)}
    fixed = fix is not None and fix.correct
    fmt = format_value(answer)
    return Score(
        value=(4 * float(located) + 5 * float(fixed) + fmt) / 10,
        passed=located and fixed,
        subscores={"localization": float(located), "fix_correctness": float(fixed), "answer_format": fmt},
        reason="; ".join(parts) + _format_note(answer),
        extraction=answer.rule,
        details=details,
    )


def _check_fix(data: Mapping[str, Any], code: str, *, timeout_s: float) -> FixVerdict:
    if data["language"] == "python":
        return run_hidden_tests(code, list(data["tests"]), timeout_s=float(data.get("timeout_s", timeout_s)))
    checks = data["fix_checks"]
    return check_static_fix(code, list(checks.get("require", [])), list(checks.get("forbid", [])))


def _lines_text(lines: Sequence[int]) -> str:
    if len(lines) == 1:
        return f"line {lines[0]}"
    return "lines " + " or ".join(str(line) for line in lines)


def _format_note(answer: Answer) -> str:
    if answer.verdict == "none" or answer.strict:
        return ""
    return f" [loose format: {answer.rule}]"


def aggregate(records: Sequence[ItemRecord]) -> dict[str, Any]:
    """The false-alarm rate on correct programs and which rules read the answers.

    Pass rates per language and bug kind are the pack's breakdowns, computed by the harness.
    """
    rules: dict[str, int] = defaultdict(int)
    correct_programs = false_alarms = unscored = 0
    for record in records:
        score = record.score
        if score is None or record.error is not None or score.status != "scored" or "language" not in score.details:
            unscored += 1
            continue
        rules[score.extraction or "none"] += 1
        if score.details.get("bug_kind") is None:
            correct_programs += 1
            false_alarms += int(score.details.get("verdict") == "line")
    return {
        "false_alarm_rate": (false_alarms / correct_programs) if correct_programs else None,
        "extraction_rules": dict(sorted(rules.items())),
        "unscored": unscored,
    }
