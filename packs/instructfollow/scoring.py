"""Judging a response against its instructions, strictly and loosely, and summing up a run.

Strict checks the response as written. Loose re-checks lenient variants of it (markdown
decoration removed, first and/or last line dropped; see ``text.loose_variants``) and counts an
instruction as followed when any variant passes, so chatter around a correct answer is told
apart from a wrong answer. The Score's value and pass are strict; loose is in ``details``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bench.pack import Score
from bench.packs.instructfollow import checks
from bench.packs.instructfollow.text import loose_variants

if TYPE_CHECKING:
    from bench.records import ItemRecord


@dataclass(frozen=True)
class InstructionResult:
    """One instruction's outcome: the declaration, its label, strict and loose results."""

    family: str
    kind: str
    args: dict[str, Any]
    label: str
    strict: bool
    loose: bool
    observed: str  # what the strict check saw


def judge(instructions: Sequence[Mapping[str, Any]], response: str) -> list[InstructionResult]:
    """Check every instruction against ``response``. An empty response follows none of them."""
    results: list[InstructionResult] = []
    variants = loose_variants(response)
    for instruction in instructions:
        kind, args = instruction["kind"], dict(instruction.get("args", {}))
        if not response.strip():
            strict, loose, observed = False, False, "empty response"
        else:
            verdict = checks.check(kind, response, args)
            strict, observed = verdict.followed, verdict.observed
            loose = strict or any(checks.check(kind, variant, args).followed for variant in variants[1:])
        results.append(
            InstructionResult(
                family=checks.KINDS[kind].family,
                kind=kind,
                args=args,
                label=checks.label(kind, args),
                strict=strict,
                loose=loose,
                observed=observed,
            )
        )
    return results


def reason(results: Sequence[InstructionResult]) -> str:
    """One readable line, e.g. "2 of 3 instructions: 'no commas' failed (2 commas)"."""
    total = len(results)
    strict = sum(result.strict for result in results)
    loose = sum(result.loose for result in results)
    failed = [f"{result.label!r} failed ({result.observed})" for result in results if not result.strict]
    line = f"{strict} of {total} instructions"
    line += (": " + "; ".join(failed)) if failed else " followed"
    if loose != strict:
        line += f" (loose: {loose} of {total})"
    return line


def family_fractions(results: Sequence[InstructionResult]) -> dict[str, float]:
    """Per family present in the item, the fraction of its instructions followed (strict)."""
    followed: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        followed[result.family].append(result.strict)
    return {family: sum(flags) / len(flags) for family, flags in followed.items()}


def details(results: Sequence[InstructionResult]) -> dict[str, Any]:
    """What ``aggregate`` reads back from stored records: per-instruction outcomes and totals."""
    return {
        "instructions": [asdict(result) for result in results],
        "total": len(results),
        "strict_followed": sum(result.strict for result in results),
        "loose_followed": sum(result.loose for result in results),
        "prompt_strict": all(result.strict for result in results),
        "prompt_loose": all(result.loose for result in results),
    }


def score_results(results: Sequence[InstructionResult]) -> Score:
    """The Score for one item: value = fraction followed (strict), passed = all followed."""
    total = len(results)
    strict = sum(result.strict for result in results)
    return Score(
        value=strict / total if total else 0.0,
        passed=total > 0 and strict == total,
        subscores=family_fractions(results),
        reason=reason(results),
        details=details(results),
    )


def unjudged_details(instructions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Details for a reply that could not be judged: every instruction counts as not followed.

    Keeping the instruction count lets instruction-level accuracy include such replies, as a
    reader would expect, while the Score's status still says why they were not judged.
    """
    results = [
        InstructionResult(
            family=checks.KINDS[instruction["kind"]].family,
            kind=instruction["kind"],
            args=dict(instruction.get("args", {})),
            label=checks.label(instruction["kind"], instruction.get("args", {})),
            strict=False,
            loose=False,
            observed="not judged",
        )
        for instruction in instructions
    ]
    return details(results)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def aggregate(records: Sequence[ItemRecord]) -> dict[str, Any]:
    """Prompt-level and instruction-level accuracy, strict and loose, over stored item records.

    Instruction-level figures count instructions, not items, so they are pack figures rather
    than a breakdown of the item score. A record with no score or no instruction details (an
    error before scoring) counts as a prompt not followed and is reported under ``unscored``;
    its instructions cannot be counted.
    """
    prompts = prompts_strict = prompts_loose = unscored = 0
    instructions = instructions_strict = instructions_loose = 0
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # total, strict, loose
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for record in records:
        prompts += 1
        found = record.score.details if record.score is not None else {}
        if "instructions" not in found:
            unscored += 1
            continue
        prompts_strict += bool(found.get("prompt_strict"))
        prompts_loose += bool(found.get("prompt_loose"))
        for result in found["instructions"]:
            instructions += 1
            instructions_strict += bool(result["strict"])
            instructions_loose += bool(result["loose"])
            for table, key in ((per_family, result["family"]), (per_kind, result["kind"])):
                table[key][0] += 1
                table[key][1] += bool(result["strict"])
                table[key][2] += bool(result["loose"])

    def breakdown(table: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
        return {
            key: {"n": total, "strict": _ratio(strict, total), "loose": _ratio(loose, total)}
            for key, (total, strict, loose) in sorted(table.items())
        }

    return {
        "prompt_strict": _ratio(prompts_strict, prompts),
        "prompt_loose": _ratio(prompts_loose, prompts),
        "instruction_strict": _ratio(instructions_strict, instructions),
        "instruction_loose": _ratio(instructions_loose, instructions),
        "prompts": prompts,
        "instructions": instructions,
        "unscored": unscored,
        "by_family": breakdown(per_family),
        "by_kind": breakdown(per_kind),
    }
