"""Find the option letter a free-text chat reply chose.

Chat models answer multiple choice in many shapes ("Answer: C", "(C)", "C.", "The answer is
C", a bare "C", "\\boxed{C}", or the option's text). The rules run from the least to the most
ambiguous and the first that yields exactly one letter wins; a letter only named to be ruled out
("not B") is never taken, and two different boxed letters are refused rather than guessed
between. The rule's name is recorded with the score so that a drift in answer format is visible
in the run, not hidden in the accuracy. A reply no rule understands is reported as unparseable
rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.knowledge import BREAKDOWN_KEY, CHANCE_KEY, min_items_dead
from bench.pack import Score, unscorable
from bench.packs.mmlu.subjects import CATEGORIES, CATEGORY_OF
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

LETTERS = "ABCD"
CHANCE = 1 / len(LETTERS)  # the pass rate of guessing
DEAD_CONFIDENCE = 0.95  # for the pack's own dead_categories; the gate recomputes at its spec's confidence

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_MARKDOWN = re.compile(r"[*_`]+")

# The whole reply is one letter, perhaps wrapped: "C", "(C)", "C.", "**C**", "[C]"; a lower-case
# letter only in brackets, "(a)", where it cannot be the article "a".
_BARE = re.compile(r"^\s*(?:[\(\[]?\s*([A-D])\s*[\)\]]?|[\(\[]\s*([a-d])\s*[\)\]])\s*[.:]?\s*$")
# LaTeX's box around the final answer: "\boxed{C}", "\boxed{\text{(b)}}".
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf|rm)?\s*\{\s*)?[\(\[]?\s*([A-Da-d])\s*[\)\]]?\s*\}")
# "not B", "isn't (B)": a letter named only to be ruled out.
_NEGATED_BEFORE = re.compile(r"(?i)(?:\bnot|n['\u2019]t|\bnever)\s+(?:(?:option|choice)\s+)?[\(\[]?\s*$")

# An explicit statement. Words are case-insensitive; the letter must be a capital so that
# "the answer is a prime" is not read as option A.
_NOT_AFTER = r"(?![A-Za-z0-9'])"
_STATEMENTS = [
    # "Answer: C", "The answer is (C)", "final answer: C", "answer would be C"
    re.compile(
        r"(?i:\banswer\b)\s*(?i:is|would\s+be|should\s+be|must\s+be|=)?\s*:?\s*[\(\[]?\s*([A-D])"
        + _NOT_AFTER
    ),
    # "The correct option is C", "best choice: (B)"
    re.compile(
        r"(?i:\b(?:correct|right|best)\s+(?:option|choice)\b)\s*(?i:is)?\s*:?\s*[\(\[]?\s*([A-D])"
        + _NOT_AFTER
    ),
    # "Option C is correct", "choice (B) is the right one"
    re.compile(
        r"(?i:\b(?:option|choice)\s+)[\(\[]?([A-D])[\)\]]?"
        r"(?i:\s+is\s+(?:the\s+)?(?:correct|right|best|true))"
    ),
    # "answer: c" at the end of a line: a lower-case letter only where nothing follows it.
    re.compile(r"(?im)\banswer\b\s*(?:is)?\s*:?\s*[\(\[]?([a-d])[\)\]]?\s*\.?\s*$"),
    # "The answer is (b) London": a lower-case letter in brackets, whatever follows.
    re.compile(r"(?i:\banswer\b)\s*(?i:is|would\s+be|should\s+be|must\s+be|=)?\s*:?\s*[\(\[]([a-d])[\)\]]"),
    # "It is A.", "so it's (B)!": a short sentence that ends on the letter, as after "The answer
    # is not B." ("It is A good..." goes on, and is not read).
    re.compile(
        r"(?i:\b(?:it|this|that)(?:['\u2019]s|\s+is|\s+must\s+be|\s+should\s+be)\s+(?:(?:option|choice)\s+)?)"
        r"[\(\[]?([A-D])[\)\]]?(?=[ \t]*(?:[.!;]|\n|$))"
    ),
]
_PARENTHESIZED = re.compile(r"\(([A-D])\)")
_LINE_START = re.compile(r"(?m)^\s*([A-D])\s*[.):]")


@dataclass(frozen=True)
class Extraction:
    """The chosen letter and the name of the rule that found it."""

    letter: str
    rule: str


def _clean(text: str) -> str:
    """Drop a leaked think block and markdown emphasis, which never change the answer."""
    text = _THINK_BLOCK.sub(" ", text)
    return _MARKDOWN.sub("", text)


def _normalize(text: str) -> str:
    return " ".join(text.casefold().replace("\u2019", "'").split()).strip(" .!")


def _single(letters: list[str]) -> str | None:
    distinct = set(letters)
    return letters[0] if len(distinct) == 1 else None


def _affirmed(pattern: re.Pattern[str], text: str) -> list[tuple[int, str]]:
    """(position, upper-case letter) of each match whose letter is not ruled out ("not B")."""
    return [
        (match.start(), match.group(1).upper())
        for match in pattern.finditer(text)
        if not _NEGATED_BEFORE.search(text[max(0, match.start(1) - 24) : match.start(1)])
    ]


def _by_option_text(text: str, choices: list[str]) -> str | None:
    """The letter whose option text the reply is, or uniquely contains as a whole phrase."""
    reply = _normalize(text)
    if not reply:
        return None
    normalized = [_normalize(choice) for choice in choices]
    exact = [LETTERS[i] for i, option in enumerate(normalized) if option and option == reply]
    if len(exact) == 1:
        return exact[0]
    contained = [
        i
        for i, option in enumerate(normalized)
        if option and re.search(r"(?<![\w])" + re.escape(option) + r"(?![\w])", reply)
    ]
    # An option that is part of a longer matched option ("True" inside "True, True") does not
    # count as a second candidate.
    maximal = [
        i for i in contained if not any(j != i and normalized[i] in normalized[j] for j in contained)
    ]
    return LETTERS[maximal[0]] if len(maximal) == 1 else None


def extract_letter(reply: str, choices: list[str]) -> Extraction | None:
    """The letter a reply chose, or None when no rule finds exactly one.

    Args:
        reply: the assistant's content (reasoning excluded).
        choices: the four option texts, in letter order, for the option-text rule.
    """
    text = _clean(reply)
    if not text.strip():
        return None
    if bare := _BARE.match(text):
        return Extraction((bare.group(1) or bare.group(2)).upper(), "bare_letter")
    if boxed := [letter for _, letter in _affirmed(_BOXED, text)]:
        # Two different boxed letters are two final answers: refuse rather than pick one.
        letter = _single(boxed)
        return Extraction(letter, "boxed") if letter else None
    stated: list[tuple[int, str]] = []
    for pattern in _STATEMENTS:
        stated.extend(_affirmed(pattern, text))
    if stated:
        # The last statement wins: replies often discard options before settling.
        return Extraction(max(stated)[1], "answer_statement")
    if letter := _single([letter for _, letter in _affirmed(_PARENTHESIZED, text)]):
        return Extraction(letter, "parenthesized")
    if letter := _single(_LINE_START.findall(text)):
        return Extraction(letter, "letter_dot")
    if letter := _by_option_text(text, choices):
        return Extraction(letter, "option_text")
    return None


def judge(data: Mapping[str, Any], transcript: Transcript) -> Score:
    """Right when the extracted letter is the answer; no letter found is wrong and ``unparseable``."""
    category = data["category"]
    where = {"subject": data["subject"], "category": category, "expected": data["answer"]}
    if (bad := unscorable(transcript)) is not None:
        return bad.model_copy(update={"subscores": {category: 0.0}, "details": {**bad.details, **where}})
    found = extract_letter(transcript.final_content, data["choices"])
    if found is None:
        return Score(
            value=0.0,
            passed=False,
            subscores={category: 0.0},
            reason="no option letter found in the reply",
            details={**where, "unparseable": True},
        )
    correct = found.letter == data["answer"]
    return Score(
        value=float(correct),
        passed=correct,
        subscores={category: float(correct)},
        reason=f"chose {found.letter}, expected {data['answer']}",
        extraction=found.rule,
        details={**where, "predicted": found.letter},
    )


def aggregate(records: Sequence[ItemRecord]) -> dict[str, Any]:
    """Macro accuracy over subjects, unparseable and unjudged counts, and dead categories.

    A category is dead when not one of its judged items was right and there were enough of them
    (``min_items_dead``) for 0/n to exclude guessing: the signature of a pruned model that lost a
    whole field. With fewer items it is listed under ``cannot_tell_categories`` instead. ``chance``
    and ``collapse_breakdown`` let the gate and report judge collapse at their own confidence.
    Records of failed requests are left out, as in the score; replies that could not be judged
    (truncated, empty) count as wrong and are also reported as ``not_scored``.
    """
    by_subject: dict[str, list[float]] = {}
    unparseable = not_scored = 0
    for record in records:
        score = record.score
        if score is None or record.error is not None:
            continue
        subject = str(score.details.get("subject") or record.item_id.split("/")[0])
        if subject not in CATEGORY_OF:
            continue
        by_subject.setdefault(subject, []).append(score.value)
        if score.status != "scored":
            not_scored += 1
        elif score.details.get("unparseable"):
            unparseable += 1
    accuracies = [sum(values) / len(values) for values in by_subject.values()]
    need = min_items_dead(CHANCE, DEAD_CONFIDENCE)
    correct = {category: 0.0 for category in CATEGORIES}
    judged = {category: 0 for category in CATEGORIES}
    for subject, values in by_subject.items():
        correct[CATEGORY_OF[subject]] += sum(values)
        judged[CATEGORY_OF[subject]] += len(values)
    return {
        "macro_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
        "unparseable": unparseable,
        "not_scored": not_scored,
        "dead_categories": [c for c in CATEGORIES if judged[c] >= need and correct[c] == 0],
        "cannot_tell_categories": [c for c in CATEGORIES if 0 < judged[c] < need and correct[c] == 0],
        "min_items_dead": need,
        CHANCE_KEY: CHANCE,
        BREAKDOWN_KEY: "category",
    }
