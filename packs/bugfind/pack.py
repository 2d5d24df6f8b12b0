"""The bugfind pack: short programs with one planted bug or none.

The model names the buggy line and returns the whole fixed program, or says there is no bug.
The fix is run against hidden tests in :mod:`bench.sandbox` (Python) or checked statically
(other languages). Items live in ``items.jsonl`` beside this module and are validated against
``item.schema.json`` when they load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.pack import Item, Pack, Sampling, Score, Tier, load_jsonl_items, select_tier, unscorable
from bench.transcript import Transcript
from bench.packs.bugfind import scoring

ITEMS_PATH = Path(__file__).with_name("items.jsonl")
SCHEMA_PATH = Path(__file__).with_name("item.schema.json")
DEFAULT_TIMEOUT_S = 10.0

LANGUAGE_NAMES = {"python": "Python", "javascript": "JavaScript", "sql": "SQL", "bash": "Bash", "c": "C"}
FENCE_TAGS = {"python": "python", "javascript": "javascript", "sql": "sql", "bash": "bash", "c": "c"}

PROMPT = """\
Find the bug in this {language} program, if it has one.

What the program is meant to do: {task}

The program has either exactly one buggy line or no bug at all. Line numbers are shown only for \
reference; they are not part of the code.

```{fence}
{numbered}
```

Answer in this format:
- If there is a bug: a line `LINE: <n>` with the number of the buggy line, then the complete \
corrected program, without line numbers, in one fenced code block. Change only what the fix needs \
and keep every name as it is.
- If there is no bug: the single line `NO BUG`."""


def load_item_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def load_items(path: Path = ITEMS_PATH) -> list[Item]:
    """Items from ``path``, schema-checked, with bug lines checked against the program."""
    items = load_jsonl_items(path, load_item_schema())
    for item in items:
        lines = item.data["program"].split("\n")
        for line in (item.data["bug"] or {}).get("lines", []):
            if line > len(lines):
                raise UserError(f"{path}: item {item.id!r}: bug line {line} is past the end of the "
                                f"program ({len(lines)} lines); fix bug.lines")
            if not lines[line - 1].strip():
                raise UserError(f"{path}: item {item.id!r}: bug line {line} is blank; fix bug.lines")
    return items


def number_lines(program: str) -> str:
    """The program as shown: ``  7 | code`` (the width fits the longest number)."""
    lines = program.rstrip("\n").split("\n")
    width = len(str(len(lines)))
    return "\n".join(f"{index:>{width}} | {line}".rstrip() for index, line in enumerate(lines, start=1))


class BugFindPack(Pack):
    """Find the one buggy line (or say there is none) and fix it; fixes run against hidden tests."""

    name = "bugfind"
    version = "1"
    description = (
        "Short programs (mostly Python) with one planted bug or none: name the line, return a fixed "
        "program that passes hidden tests run in the sandbox, and raise no false alarm on correct code."
    )
    subdimensions = ("localization", "fix_correctness", "no_false_alarm", "answer_format")
    default_sampling = Sampling(temperature=0.0, max_tokens=1024)

    def __init__(self, data_path: Path | None = None, *, hidden_test_timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._data_path = data_path or ITEMS_PATH
        self._timeout_s = hidden_test_timeout_s

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BugFindPack:
        """``--pack-option bugfind.timeout_s=N``: the wall clock for each fix's hidden tests."""
        unknown = set(options) - {"timeout_s"}
        if unknown:
            raise UserError(f"bugfind has no option(s) {sorted(unknown)}; available: timeout_s")
        try:
            timeout_s = float(options.get("timeout_s", DEFAULT_TIMEOUT_S))
        except (TypeError, ValueError):
            given = options["timeout_s"]
            raise UserError(f"bugfind option timeout_s must be a number of seconds, got {given!r}") from None
        if not 0 < timeout_s <= 600:
            raise UserError(f"bugfind option timeout_s must be between 0 and 600 seconds, got {timeout_s}")
        return cls(hidden_test_timeout_s=timeout_s)

    @cached_property
    def _items(self) -> list[Item]:
        return load_items(self._data_path)

    def items(self, tier: Tier = "full") -> list[Item]:
        return select_tier(self._items, tier)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        data = item.data
        prompt = PROMPT.format(
            language=LANGUAGE_NAMES[data["language"]],
            task=data["task"],
            fence=FENCE_TAGS[data["language"]],
            numbered=number_lines(data["program"]),
        )
        return [{"role": "user", "content": prompt}]

    def score(self, item: Item, transcript: Transcript) -> Score:
        details = {"language": item.data["language"], "bug_kind": (item.data["bug"] or {}).get("kind")}
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": details})
        return scoring.judge(item.data, transcript.final_content, timeout_s=self._timeout_s)

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return scoring.aggregate(records)

    def data_files(self) -> list[Path]:
        return [self._data_path]
