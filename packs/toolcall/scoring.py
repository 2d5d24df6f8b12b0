"""Scoring of one tool-calling transcript against the item's expected turns.

Each expected turn is either a *call turn* (the reply must make these calls) or an *answer turn*
(the reply must be plain text, stating the listed facts when there are any). Subscores, each
present only where it applies to the item:

- ``tool_selection``: first turn calls the right tools, no more, no fewer
  (matched calls / (matched + max(missed, unexpected))); a call the item marks optional is
  judged when made and not missed when left out.
- ``parameter_precision``: share of the first turn's per-parameter matchers that the calls meet;
  an expected call that was never made meets none of its matchers.
- ``call_structure``: share of all calls made that are well formed: an offered tool, arguments
  that parse as a JSON object, validate against the tool's parameters schema, and invent no
  parameter. No call at all on an item that needs one scores 0.
- ``restraint``: on an item whose right answer is text, the reply made no call and said something.
- ``multi_step``: the turns after the first, each judged whole: the follow-up call uses what the
  mock tool returned, or the final answer states it.

The item's value is the mean of its subscores; it passes only when every subscore is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator
from scipy.optimize import linear_sum_assignment

from bench.pack import Score, unscorable
from bench.packs.toolcall.matchers import MISSING, Matcher, check, check_fact, describe, show
from bench.transcript import Response, ToolCall, Transcript

ToolDefs = dict[str, dict[str, Any]]  # tool name -> OpenAI "function" object (name, description, parameters)


@dataclass
class PairedCall:
    """An expected call and the call made for it, with what its arguments got wrong."""

    expected: dict[str, Any]
    call: ToolCall
    problems: list[str]
    matcher_count: int

    @property
    def met(self) -> int:
        return self.matcher_count - len(self.problems)


@dataclass
class TurnMatch:
    """How one reply's calls line up with one turn's expected calls."""

    pairs: list[PairedCall] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[ToolCall] = field(default_factory=list)

    @property
    def slots(self) -> int:
        return len(self.pairs) + max(len(self.missing), len(self.extra))

    def selection(self) -> float:
        return len(self.pairs) / self.slots if self.slots else 1.0

    def matchers_met(self) -> tuple[int, int]:
        total = sum(p.matcher_count for p in self.pairs) + sum(len(e.get("args", {})) for e in self.missing)
        return sum(p.met for p in self.pairs), total

    def exactness(self) -> float:
        """Whole-turn correctness: each slot earns its call's share of matchers met."""
        earned = sum(p.met / p.matcher_count if p.matcher_count else 1.0 for p in self.pairs)
        return earned / self.slots if self.slots else 1.0

    def reasons(self) -> list[str]:
        out = [problem for pair in self.pairs for problem in pair.problems]
        if len(self.missing) == 1 and len(self.extra) == 1:
            out.append(f"called {self.extra[0].name}, expected {expected_signature(self.missing[0])}")
            return out
        out.extend(f"missing call {expected_signature(e)}" for e in self.missing)
        out.extend(f"unexpected call to {call.name}" for call in self.extra)
        return out


def expected_signature(expected: dict[str, Any]) -> str:
    """``get_weather(location='Lisbon')``: an expected call as a reason names it."""
    args: dict[str, Matcher] = expected.get("args", {})
    shown = ", ".join(f"{key}={describe(m)}" for key, m in args.items() if not m.get("optional", False))
    return f"{expected['name']}({shown})"


def argument_problems(expected: dict[str, Any], call: ToolCall) -> list[str]:
    """One phrase per parameter matcher the call's arguments fail."""
    arguments = call.parsed_arguments()
    if arguments is None:
        return [f"called {call.name} with arguments that are not a JSON object"] * len(expected.get("args", {}))
    problems = []
    for key, matcher in expected.get("args", {}).items():
        if (mismatch := check(matcher, arguments.get(key, MISSING))) is not None:
            where = f"{key}{mismatch.path}"
            given = f"without {where}" if mismatch.actual is MISSING else f"with {where}={show(mismatch.actual)}"
            problems.append(f"called {call.name} {given}, {mismatch.expected}")
    return problems


def match_turn(expected_calls: list[dict[str, Any]], calls: list[ToolCall]) -> TurnMatch:
    """Pair expected and made calls one to one, same name first, then best arguments.

    Parallel items may call one tool several times (two cities), so pairing is an assignment
    problem, not a lookup by name.
    """
    candidates: dict[tuple[int, int], PairedCall] = {}
    weights = np.zeros((len(expected_calls), len(calls)))
    for row, expected in enumerate(expected_calls):
        for col, call in enumerate(calls):
            if call.name != expected["name"]:
                continue
            pair = PairedCall(expected, call, argument_problems(expected, call), len(expected.get("args", {})))
            candidates[(row, col)] = pair
            weights[row, col] = 1.0 + (pair.met / pair.matcher_count if pair.matcher_count else 1.0)
    match = TurnMatch()
    paired_rows: set[int] = set()
    paired_cols: set[int] = set()
    if weights.size:
        for row, col in zip(*linear_sum_assignment(weights, maximize=True)):
            if weights[row, col] > 0:
                match.pairs.append(candidates[(int(row), int(col))])
                paired_rows.add(int(row))
                paired_cols.add(int(col))
    # An optional call (a sensible extra check) is judged when made and not missed when left out.
    match.missing = [
        e for row, e in enumerate(expected_calls) if row not in paired_rows and not e.get("optional", False)
    ]
    match.extra = [c for col, c in enumerate(calls) if col not in paired_cols]
    return match


def structure_problems(call: ToolCall, tools: ToolDefs) -> list[str]:
    """What makes one call malformed: unknown tool, unparsable or schema-invalid arguments."""
    if call.name not in tools:
        return [f"called {call.name!r}, which is not one of the offered tools"]
    arguments = call.parsed_arguments()
    if arguments is None:
        return [f"arguments of {call.name} do not parse as a JSON object: {call.arguments[:80]!r}"]
    parameters = tools[call.name]["parameters"]
    problems = [
        f"{call.name}: invented parameter {key!r}" for key in arguments if key not in parameters.get("properties", {})
    ]
    for error in sorted(Draft202012Validator(parameters).iter_errors(arguments), key=lambda e: list(e.path)):
        if error.validator == "additionalProperties" and not error.path:
            continue  # already reported as invented parameters
        where = "/".join(str(part) for part in error.absolute_path)
        problems.append(f"{call.name}: {where + ': ' if where else ''}{error.message}")
    return problems


def _plain_text(response: Response) -> str:
    return (response.content or "").strip()


def judge_answer(answer: dict[str, Any], response: Response) -> tuple[float, list[str]]:
    """A text turn: no call, something said, and every listed fact stated."""
    if response.tool_calls:
        names = ", ".join(call.name for call in response.tool_calls)
        return 0.0, [f"called {names} when a plain answer was expected"]
    text = _plain_text(response)
    if not text:
        return 0.0, ["empty reply"]
    facts: list[dict[str, Any]] = answer.get("facts", [])
    problems = [f"the answer {problem}" for fact in facts if (problem := check_fact(fact, text)) is not None]
    return (1.0 - len(problems) / len(facts) if facts else 1.0), problems


def _first_turn_calls(turn: dict[str, Any], response: Response) -> tuple[dict[str, float], list[str]]:
    match = match_turn(turn["calls"], response.tool_calls)
    subscores = {"tool_selection": match.selection()}
    met, total = match.matchers_met()
    if total:
        subscores["parameter_precision"] = met / total
    if response.tool_calls:
        return subscores, match.reasons()
    expected = ", ".join(map(expected_signature, turn["calls"]))
    said = _plain_text(response)
    return subscores, [f"no tool call was made, expected {expected}" + (f"; the reply was text: {said[:120]!r}" if said else "")]


def _later_turn(step: int, turn: dict[str, Any], response: Response | None) -> tuple[float, list[str]]:
    if response is None:
        return 0.0, [f"step {step} never happened: the previous reply made no tool call"]
    if "answer" in turn:
        value, problems = judge_answer(turn["answer"], response)
        return value, [f"step {step}: {problem}" for problem in problems]
    if not response.tool_calls:
        return 0.0, [f"step {step}: no call was made; expected {', '.join(map(expected_signature, turn['calls']))}"]
    match = match_turn(turn["calls"], response.tool_calls)
    return match.exactness(), [f"step {step}: {reason}" for reason in match.reasons()]


def score_transcript(data: dict[str, Any], tools: ToolDefs, transcript: Transcript) -> Score:
    """Judge one item's transcript. ``tools`` are the definitions offered to the model."""
    if (bad := unscorable(transcript)) is not None:
        return bad
    turns: list[dict[str, Any]] = data["turns"]
    responses = [exchange.response for exchange in transcript.exchanges]
    subscores: dict[str, float] = {}
    reasons: list[str] = []
    first_turn, first = turns[0], responses[0]

    if "answer" in first_turn:
        subscores["restraint"], restraint_problems = judge_answer(first_turn["answer"], first)
        reasons += restraint_problems
    else:
        first_subscores, first_reasons = _first_turn_calls(first_turn, first)
        subscores.update(first_subscores)
        reasons += first_reasons

    if any("calls" in turn for turn in turns):
        problems_per_call = [structure_problems(call, tools) for call in transcript.all_tool_calls]
        well_formed = sum(1 for problems in problems_per_call if not problems)
        subscores["call_structure"] = well_formed / len(problems_per_call) if problems_per_call else 0.0
        reasons += [problem for problems in problems_per_call for problem in problems]

    if len(turns) > 1:
        step_values = []
        for step, turn in enumerate(turns[1:], start=2):
            response = responses[step - 1] if step - 1 < len(responses) else None
            value, step_reasons = _later_turn(step, turn, response)
            step_values.append(value)
            reasons += step_reasons
        subscores["multi_step"] = sum(step_values) / len(step_values)

    value = sum(subscores.values()) / len(subscores)
    passed = all(v == 1.0 for v in subscores.values())
    details = {
        "category": data["category"],
        "calls": [[call.name for call in response.tool_calls] for response in responses],
    }
    return Score(
        value=value,
        passed=passed,
        subscores=subscores,
        reason="; ".join(dict.fromkeys(reasons)) if reasons else "all calls and answers as expected",
        details=details,
    )
