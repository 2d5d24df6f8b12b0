"""The instruction checkers: one pure function per instruction kind, and the table of kinds.

An instruction is data, ``{"family": ..., "kind": ..., "args": {...}}``. ``KINDS`` maps each
kind to its family, its checker, the JSON Schema of its args (from which the item schema is
built) and a short label for reasons. A checker takes the response text and the args as
keywords and returns a :class:`Verdict`: whether the instruction was followed and what was
observed, so that a failure can say why ("2 commas", "143 words").

Matching rules, stated once: keywords and phrases match case-insensitively and as whole words
(a keyword is not found inside a longer word); counts of words and sentences follow
``bench.packs.instructfollow.text``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bench.packs.instructfollow import text as txt

Relation = Literal["at_least", "at_most", "exactly"]
RELATIONS: tuple[Relation, ...] = ("at_least", "at_most", "exactly")
FAMILIES: tuple[str, ...] = (
    "length",
    "keywords",
    "format",
    "case",
    "startend",
    "punctuation",
    "placeholders",
    "postscript",
)


@dataclass(frozen=True)
class Verdict:
    """A checker's answer: ``followed`` and a short account of what the response held."""

    followed: bool
    observed: str


def compare(count: int, relation: Relation, n: int) -> bool:
    """Whether ``count`` stands in ``relation`` to ``n``."""
    if relation == "at_least":
        return count >= n
    if relation == "at_most":
        return count <= n
    return count == n


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def relation_words(relation: Relation, n: int, noun: str) -> str:
    """'at least 3 words', 'at most 1 word', 'exactly 2 times'."""
    return f"{relation.replace('_', ' ')} {_plural(n, noun)}"


def _counted(count: int, noun: str, relation: Relation, n: int) -> Verdict:
    return Verdict(compare(count, relation, n), _plural(count, noun))


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A case-insensitive whole-word pattern for ``phrase`` (inner whitespace may vary)."""
    body = r"\s+".join(re.escape(part) for part in phrase.split())
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])", re.IGNORECASE)


def _quote_list(values: list[str]) -> str:
    return ", ".join(repr(value) for value in values)


# --- length -----------------------------------------------------------------------------------


def word_count(text: str, *, relation: Relation, n: int) -> Verdict:
    return _counted(len(txt.words(text)), "word", relation, n)


def sentence_count(text: str, *, relation: Relation, n: int) -> Verdict:
    return _counted(len(txt.sentences(text)), "sentence", relation, n)


def paragraph_count(text: str, *, relation: Relation, n: int) -> Verdict:
    return _counted(len(txt.paragraphs(text)), "paragraph", relation, n)


# --- keywords ---------------------------------------------------------------------------------


def include_keywords(text: str, *, keywords: list[str]) -> Verdict:
    missing = [word for word in keywords if not _phrase_pattern(word).search(text)]
    if missing:
        return Verdict(False, f"missing {_quote_list(missing)}")
    return Verdict(True, "all present")


def forbid_keywords(text: str, *, keywords: list[str]) -> Verdict:
    found = {word: len(_phrase_pattern(word).findall(text)) for word in keywords}
    present = [f"{word!r} x{count}" for word, count in found.items() if count]
    if present:
        return Verdict(False, f"found {', '.join(present)}")
    return Verdict(True, "none present")


def keyword_frequency(text: str, *, keyword: str, relation: Relation, n: int) -> Verdict:
    count = len(_phrase_pattern(keyword).findall(text))
    return Verdict(compare(count, relation, n), f"{keyword!r} {_plural(count, 'time')}")


def letter_frequency(text: str, *, letter: str, relation: Relation, n: int) -> Verdict:
    count = text.lower().count(letter.lower())
    return Verdict(compare(count, relation, n), f"letter {letter!r} {_plural(count, 'time')}")


# --- format -----------------------------------------------------------------------------------

_JSON_FENCE = re.compile(r"^```[ \t]*(?:json)?[ \t]*\n(?P<body>.*)\n```$", re.DOTALL | re.IGNORECASE)
_BULLET = re.compile(r"^[ \t]*[*\-+][ \t]+\S", re.MULTILINE)
_TITLE = re.compile(r"<<[^\n<>]*[^\W_][^\n<>]*>>")
# A highlight is *text* or **text** with no space just inside the asterisks, so a bullet's
# leading "* " never opens one.
_HIGHLIGHT = re.compile(r"(\*\*|\*)(?=[^\s*])([^*\n]*?[^\s*])\1")


def json_output(text: str) -> Verdict:
    """The whole response parses as JSON; one surrounding ``` or ```json fence is allowed."""
    body = text.strip()
    fenced = _JSON_FENCE.match(body)
    if fenced:
        body = fenced.group("body").strip()
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return Verdict(False, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")
    return Verdict(True, "parses as JSON")


def bullet_count(text: str, *, relation: Relation, n: int) -> Verdict:
    """Every line starting with ``*``, ``-`` or ``+`` then a space is a bullet, nested or not."""
    return _counted(len(_BULLET.findall(text)), "bullet point", relation, n)


def section_count(text: str, *, marker: str, relation: Relation, n: int) -> Verdict:
    """Sections start at lines beginning with ``marker`` then a number, e.g. ``SECTION 2``."""
    header = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]+\d+\b", re.MULTILINE)
    return _counted(len(header.findall(text)), f"{marker!r} section", relation, n)


def title(text: str) -> Verdict:
    found = _TITLE.search(text)
    return Verdict(bool(found), f"title {found.group(0)}" if found else "no <<title>>")


def highlight_count(text: str, *, relation: Relation, n: int) -> Verdict:
    return _counted(len(_HIGHLIGHT.findall(text)), "highlighted section", relation, n)


# --- case -------------------------------------------------------------------------------------


def _offending_words(text: str, bad: Callable[[str], bool]) -> list[str]:
    """Distinct words holding a character for which ``bad`` is true, in order of first use."""
    return list(dict.fromkeys(word for word in txt.words(text) if any(bad(char) for char in word)))


def all_lowercase(text: str) -> Verdict:
    offending = _offending_words(text, str.isupper)
    if offending or any(char.isupper() for char in text):
        shown = _quote_list(offending[:3]) or "a capital letter"
        return Verdict(False, f"{_plural(len(offending), 'distinct word')} with capitals, e.g. {shown}")
    return Verdict(True, "no capital letters")


def all_uppercase(text: str) -> Verdict:
    offending = _offending_words(text, str.islower)
    if offending or any(char.islower() for char in text):
        shown = _quote_list(offending[:3]) or "a lowercase letter"
        return Verdict(False, f"{_plural(len(offending), 'distinct word')} with lowercase letters, e.g. {shown}")
    return Verdict(True, "no lowercase letters")


def capital_word_count(text: str, *, relation: Relation, n: int) -> Verdict:
    """Words of two or more letters written entirely in capitals ("NASA", "IMPORTANT"; not "I")."""
    count = sum(
        1
        for word in txt.words(text)
        if sum(char.isalpha() for char in word) >= 2 and not any(char.islower() for char in word)
    )
    return _counted(count, "all-capital word", relation, n)


# --- start and end ----------------------------------------------------------------------------

_QUOTE_PAIRS = (('"', '"'), ("“", "”"))


def _word_edge(phrase_char: str, neighbour: str) -> bool:
    """False when a phrase's edge letter runs straight into another letter ("No" in "Nobody")."""
    return not (phrase_char.isalnum() and neighbour.isalnum())


def start_with(text: str, *, phrase: str) -> Verdict:
    """The response, leading whitespace aside, starts with ``phrase`` (case-insensitive, whole word)."""
    body = text.strip()
    following = body[len(phrase) : len(phrase) + 1]
    ok = body.lower().startswith(phrase.lower()) and _word_edge(phrase[-1], following)
    return Verdict(ok, f"starts {body[: len(phrase) + 10]!r}")


def end_with(text: str, *, phrase: str) -> Verdict:
    """The response, trailing whitespace aside, ends with ``phrase`` (case-insensitive, whole word)."""
    body = text.strip()
    preceding = body[-len(phrase) - 1 : -len(phrase)] if len(body) > len(phrase) else ""
    ok = body.lower().endswith(phrase.lower()) and _word_edge(phrase[0], preceding)
    return Verdict(ok, f"ends {body[-(len(phrase) + 10) :]!r}")


def quoted(text: str) -> Verdict:
    """The whole response is wrapped in one pair of double quotes (straight or curly)."""
    body = text.strip()
    ok = len(body) >= 2 and any(body.startswith(a) and body.endswith(b) for a, b in _QUOTE_PAIRS)
    return Verdict(ok, "wrapped in quotes" if ok else f"starts {body[:1]!r}, ends {body[-1:]!r}")


# --- punctuation ------------------------------------------------------------------------------


def no_commas(text: str) -> Verdict:
    """No comma at all, the full-width and ideographic commas included."""
    count = sum(text.count(mark) for mark in (",", "，", "、"))
    return Verdict(count == 0, _plural(count, "comma"))


# --- placeholders -----------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\[[^\[\]\n]*[^\W_][^\[\]\n]*\]")


def placeholder_count(text: str, *, relation: Relation, n: int) -> Verdict:
    """Square-bracketed placeholders such as ``[name]`` or ``[street address]``."""
    return _counted(len(_PLACEHOLDER.findall(text)), "placeholder", relation, n)


# --- postscript -------------------------------------------------------------------------------


def postscript(text: str, *, marker: str) -> Verdict:
    """A line that starts with ``marker`` (case-insensitive) and has text after it."""
    line = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*\S", re.MULTILINE | re.IGNORECASE)
    ok = bool(line.search(text))
    return Verdict(ok, f"postscript {marker!r} found" if ok else f"no line starting {marker!r}")


# --- the table of kinds -----------------------------------------------------------------------

_COUNT_ARGS: dict[str, Any] = {
    "relation": {"enum": list(RELATIONS)},
    "n": {"type": "integer", "minimum": 0},
}
_NONEMPTY = {"type": "string", "minLength": 1}
_KEYWORD_LIST = {"type": "array", "minItems": 1, "items": _NONEMPTY}


def _args(**properties: Any) -> dict[str, Any]:
    """JSON Schema of an args object with exactly these properties, all required."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(properties),
        "properties": properties,
    }


@dataclass(frozen=True)
class Kind:
    """One instruction kind: where it belongs, how it is checked, what its args look like."""

    family: str
    check: Callable[..., Verdict]
    args_schema: dict[str, Any]
    label: Callable[[Mapping[str, Any]], str]


KINDS: dict[str, Kind] = {
    "words": Kind("length", word_count, _args(**_COUNT_ARGS),
                  lambda a: relation_words(a['relation'], a['n'], 'word')),
    "sentences": Kind("length", sentence_count, _args(**_COUNT_ARGS),
                      lambda a: relation_words(a['relation'], a['n'], 'sentence')),
    "paragraphs": Kind("length", paragraph_count, _args(**_COUNT_ARGS),
                       lambda a: relation_words(a['relation'], a['n'], 'paragraph')),
    "include": Kind("keywords", include_keywords, _args(keywords=_KEYWORD_LIST),
                    lambda a: f"include {_quote_list(a['keywords'])}"),
    "forbid": Kind("keywords", forbid_keywords, _args(keywords=_KEYWORD_LIST),
                   lambda a: f"never use {_quote_list(a['keywords'])}"),
    "frequency": Kind("keywords", keyword_frequency, _args(keyword=_NONEMPTY, **_COUNT_ARGS),
                      lambda a: f"{a['keyword']!r} {relation_words(a['relation'], a['n'], 'time')}"),
    "letter_frequency": Kind(
        "keywords", letter_frequency,
        _args(letter={"type": "string", "pattern": "^[A-Za-z]$"}, **_COUNT_ARGS),
        lambda a: f"letter {a['letter']!r} {relation_words(a['relation'], a['n'], 'time')}"),
    "json": Kind("format", json_output, _args(), lambda a: "valid JSON"),
    "bullets": Kind("format", bullet_count, _args(**_COUNT_ARGS),
                    lambda a: relation_words(a['relation'], a['n'], 'bullet point')),
    "sections": Kind("format", section_count, _args(marker=_NONEMPTY, **_COUNT_ARGS),
                     lambda a: relation_words(a['relation'], a['n'], f"{a['marker']!r} section")),
    "title": Kind("format", title, _args(), lambda a: "a <<title>>"),
    "highlights": Kind("format", highlight_count, _args(**_COUNT_ARGS),
                       lambda a: relation_words(a['relation'], a['n'], 'highlighted section')),
    "lowercase": Kind("case", all_lowercase, _args(), lambda a: "all lowercase"),
    "uppercase": Kind("case", all_uppercase, _args(), lambda a: "all uppercase"),
    "capital_words": Kind("case", capital_word_count, _args(**_COUNT_ARGS),
                          lambda a: relation_words(a['relation'], a['n'], 'all-capital word')),
    "start_with": Kind("startend", start_with, _args(phrase=_NONEMPTY), lambda a: f"start with {a['phrase']!r}"),
    "end_with": Kind("startend", end_with, _args(phrase=_NONEMPTY), lambda a: f"end with {a['phrase']!r}"),
    "quoted": Kind("startend", quoted, _args(), lambda a: "wrapped in double quotes"),
    "no_commas": Kind("punctuation", no_commas, _args(), lambda a: "no commas"),
    "placeholders": Kind("placeholders", placeholder_count, _args(**_COUNT_ARGS),
                         lambda a: relation_words(a['relation'], a['n'], '[placeholder]')),
    "postscript": Kind("postscript", postscript, _args(marker=_NONEMPTY),
                       lambda a: f"a postscript starting {a['marker']!r}"),
}


def check(kind: str, text: str, args: Mapping[str, Any]) -> Verdict:
    """Run the checker of ``kind`` on ``text``. ``args`` must already match the kind's schema."""
    return KINDS[kind].check(text, **args)


def label(kind: str, args: Mapping[str, Any]) -> str:
    """A short human label for an instruction, e.g. "at least 120 words" or "no commas"."""
    return KINDS[kind].label(args)
