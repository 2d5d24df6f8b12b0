"""Score a reply against the item's exact answer, and count how replies were read.

Right is the exact value, or a decimal that is the exact value correctly rounded (see
:func:`~bench.packs.reasonmath.numbers.agreement`). A reply with no answer, or with two that
disagree, scores 0 and says which it was: an ambiguous reply is refused, never guessed. Each item
scores only its own family's subdimension.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from bench.pack import Score, unscorable
from bench.packs.reasonmath.extract import extract_answer
from bench.packs.reasonmath.numbers import agreement
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord


def judge(data: Mapping[str, Any], transcript: Transcript) -> Score:
    family = data["family"]
    expected = Fraction(data["answer"])
    where = {"family": family, "template": data["template"], "expected": data["answer"]}
    if (bad := unscorable(transcript)) is not None:
        return bad.model_copy(update={"subscores": {family: 0.0}, "details": {**bad.details, **where}})
    found = extract_answer(transcript.final_content)
    if found.ambiguous:
        shown = ", ".join(found.candidates)
        return Score(
            value=0.0,
            passed=False,
            subscores={family: 0.0},
            reason=f"ambiguous: the reply gives different final answers ({shown}); refused rather than guessed",
            extraction="ambiguous",
            details={**where, "ambiguous": True, "candidates": list(found.candidates)},
        )
    if found.number is None:
        return Score(
            value=0.0,
            passed=False,
            subscores={family: 0.0},
            reason="no final answer found in the reply",
            details={**where, "unparseable": True},
        )
    match = agreement(found.number, expected)
    right = match is not None
    predicted = str(found.number.value)
    verdict = f"answered {found.number.text} ({predicted}), expected {data['answer']}"
    return Score(
        value=float(right),
        passed=right,
        subscores={family: float(right)},
        reason=verdict + (" (a correct rounding)" if match == "rounded" else ""),
        extraction=found.rule,
        details={**where, "predicted": predicted, "match": match},
    )


def aggregate(records: Sequence[ItemRecord]) -> dict[str, Any]:
    """How replies were read: per extraction rule, refused as ambiguous, no answer, not judged."""
    rules: Counter[str] = Counter()
    ambiguous = unparseable = not_scored = rounded = 0
    for record in records:
        score = record.score
        if score is None or record.error is not None:
            continue
        if score.status != "scored":
            not_scored += 1
            continue
        if score.extraction:
            rules[score.extraction] += 1
        ambiguous += int(bool(score.details.get("ambiguous")))
        unparseable += int(bool(score.details.get("unparseable")))
        rounded += int(score.details.get("match") == "rounded")
    return {
        "extraction": dict(sorted(rules.items())),
        "ambiguous": ambiguous,
        "unparseable": unparseable,
        "rounded": rounded,
        "not_scored": not_scored,
    }
