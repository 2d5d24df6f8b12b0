"""Find the JSON answer in a reply, and say which rule found it.

A guided reply is bare JSON by construction. A prompted one is often wrapped: a ```json fence,
a sentence before the object, a remark after it. A person would still take the object, so the
scorer does too; the rule that matched is recorded, so a run shows how often the model needed
digging out (and a guided reply that was not bare shows a server that ignored the schema).

Rules, in order:

- ``bare``: the trimmed reply is one JSON value.
- ``fenced``: the body of the first Markdown code fence (untagged or tagged json) that parses.
- ``embedded``: the first outermost ``{`` in the prose from which a whole JSON object decodes
  (never an object nested inside a broken one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

FENCE = re.compile(r"```[ \t]*(?P<tag>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)```", re.DOTALL)
JSON_TAGS = frozenset({"", "json", "jsonc", "json5"})
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Found:
    """A JSON value from the reply and the rule that found it."""

    value: Any
    rule: str


@dataclass(frozen=True)
class Unparsed:
    """No rule found JSON; ``why`` is one line about the nearest miss."""

    why: str


def find_json(content: str) -> Found | Unparsed:
    """The JSON answer in ``content`` by the rules above, or why there is none."""
    text = content.strip().lstrip("\ufeff")
    if not text:
        return Unparsed("the reply is empty")
    try:
        return Found(json.loads(text), "bare")
    except json.JSONDecodeError as exc:
        first_error = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    for match in FENCE.finditer(text):
        if match.group("tag").lower() not in JSON_TAGS:
            continue
        try:
            return Found(json.loads(match.group("body")), "fenced")
        except json.JSONDecodeError as exc:
            first_error = f"the fenced block does not parse: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    for start in _outer_braces(text):
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return Found(value, "embedded")
    return Unparsed(f"no JSON object in the reply: {first_error}")


def _outer_braces(text: str) -> list[int]:
    """Positions of every ``{`` outside any other brace pair (braces inside strings not counted).

    Only these may start an embedded answer: an object nested in a broken one (a reply cut off
    halfway) is a fragment, not the answer, and must not make the reply count as parsed.
    """
    starts: list[int] = []
    depth, in_string, escaped = 0, False, False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "{":
            if depth == 0:
                starts.append(index)
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
    return starts
