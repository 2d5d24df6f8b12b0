"""Find the final answer in a reply's content, or refuse when the reply gives two.

Only the answer content is read: a thinking model's reasoning arrives in its own field and is
never searched, and a ``<think>`` block left in the content is cut out first. Explicit answers
(``\\boxed{}``, "Final answer: ...", "the answer is ...") are gathered together; when they
disagree the reply is refused as ambiguous instead of guessing which one was meant. Without an
explicit answer, the last line is read when it holds one value (``x = 7``, ``$12.50``). The rule
that decided is recorded with the score, so a drift in answer style shows in the run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bench.packs.reasonmath.numbers import Number, agreement, leading_number, numbers_in, plain

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_EMPHASIS = re.compile(r"\*\*|__|`")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "Final answer: 42", "The final answer is 42", "Answer: x = 7", "the answer is therefore 3/4".
# "answer" alone needs a separator ("answer each part" is not a statement); "final answer" does not.
_STATEMENT = re.compile(
    r"(?i)\b(?:(?P<final>final)\s+answer\b\s*(?:is\b|would\s+be\b|[:=])?"
    r"|answer\s*(?:is\b|would\s+be\b|should\s+be\b|must\s+be\b|[:=]))"
    r"(?:\s*(?:therefore|thus|then|now|exactly|approximately|about|simply|just|indeed|equal\s+to|given\s+by|[:=]))*"
)
_NEGATED = re.compile(r"(?i)\s*(?:not\b|n't\b)")
_ASSIGNMENT = re.compile(r"^\s*\$?\s*[A-Za-z][\w']*\s*(?:\([^()]*\))?\s*(?:=|is\b)\s*")


@dataclass(frozen=True)
class Extraction:
    """What was found and by which rule.

    ``rule`` is ``boxed``, ``final_answer``, ``answer_is`` or ``final_line`` for a found answer,
    ``ambiguous`` for a refused reply (``candidates`` then holds the answers that disagree), and
    ``none`` when nothing answer-like was found.
    """

    rule: str
    number: Number | None = None
    candidates: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ambiguous(self) -> bool:
        return self.rule == "ambiguous"


def answer_part(content: str) -> str:
    """The content without reasoning left in it, and without bold/code markup."""
    text = _THINK_BLOCK.sub(" ", content)
    if "</think>" in text:  # the opening tag was in the prompt: what precedes the close is reasoning
        text = text.rsplit("</think>", 1)[1]
    if "<think>" in text:  # an unclosed block: what follows it is reasoning, never the answer
        text = text.split("<think>", 1)[0]
    return _EMPHASIS.sub("", text)


def _boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``, braces balanced."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0:
                contents.append(text[start:index])
                break
    return contents


def _stated_value(segment: str) -> Number | None:
    """The value an answer segment starts with: ``x = 7`` -> 7, ``$1,250.00 in all`` -> 1250.

    Only a leading number counts: in "the answer is the sum of 3 and 4" the 3 is not the answer.
    """
    segment = _ASSIGNMENT.sub("", plain(segment).lstrip(" \t$([{"), count=1)
    return leading_number(segment)


def _statements(text: str) -> list[tuple[bool, Number]]:
    """(says "final", value) for every answer statement that states a number."""
    out = []
    for match in _STATEMENT.finditer(text):
        rest = text[match.end() :]
        if _NEGATED.match(rest):  # "the answer is not 5"
            continue
        line, _, after = rest.partition("\n")
        if not line.strip():  # "Final answer:\n\n42": the value is on the next non-empty line
            line = next((candidate for candidate in after.splitlines() if candidate.strip()), "")
        number = _stated_value(line)
        if number is not None:
            out.append((bool(match.group("final")), number))
    return out


def _agreeing(numbers: list[Number]) -> Number | None:
    """The one value all ``numbers`` state (an exact form preferred), or None when they differ."""
    exact = [number for number in numbers if not number.places]
    chosen = exact[0] if exact else max(numbers, key=lambda number: number.places or 0)
    if all(agreement(number, chosen.value) is not None for number in numbers):
        return chosen
    return None


def _distinct(numbers: list[Number]) -> tuple[str, ...]:
    seen: dict[object, str] = {}
    for number in numbers:
        seen.setdefault(number.value, number.text)
    return tuple(seen.values())


def _final_line(text: str) -> Number | None:
    """The value of the last non-empty line, when it states exactly one."""
    lines = [line for line in plain(text).splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    if "=" in last:
        last = last.rsplit("=", 1)[1]
    found = numbers_in(last)
    return _agreeing(found) if found else None


def extract_answer(content: str) -> Extraction:
    """The final answer of ``content`` (the reply's content field, never its reasoning)."""
    text = answer_part(content)
    boxed = [number for number in (_stated_value(inner) for inner in _boxed_contents(text)) if number is not None]
    stated = _statements(text)
    explicit = boxed + [number for _, number in stated]
    if explicit:
        agreed = _agreeing(explicit)
        if agreed is None:
            return Extraction("ambiguous", candidates=_distinct(explicit))
        rule = "boxed" if boxed else "final_answer" if any(final for final, _ in stated) else "answer_is"
        return Extraction(rule, agreed)
    if (last := _final_line(text)) is not None:
        return Extraction("final_line", last)
    return Extraction("none")
