"""The bugfind pack: short programs with one planted bug or none.

The model names the buggy line and returns the whole fixed program, or says there is no bug.
The fix is run against hidden tests in :mod:`bench.sandbox` (Python) or checked statically
(other languages). Items live in ``items.jsonl`` beside this module and are validated against
``item.schema.json`` when they load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bench.errors import UserError
from bench.pack import Item, JsonlPack, Sampling, Score, unscorable
from bench.packs.bugfind import scoring
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

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


def check_bug_lines(item: Item, where: object) -> None:
    """Each bug line must be a non-blank line of the program, or the item cannot be passed."""
    lines = item.data["program"].split("\n")
    for line in (item.data["bug"] or {}).get("lines", []):
        if line > len(lines):
            raise UserError(f"{where}: item {item.id!r}: bug line {line} is past the end of the "
                            f"program ({len(lines)} lines); fix bug.lines")
        if not lines[line - 1].strip():
            raise UserError(f"{where}: item {item.id!r}: bug line {line} is blank; fix bug.lines")


def load_items(path: Path | None = None) -> list[Item]:
    """Items from ``path`` (default: the shipped file), schema-checked, bug lines checked."""
    return BugFindPack(path).items("full")


def number_lines(program: str) -> str:
    """The program as shown: ``  7 | code`` (the width fits the longest number)."""
    lines = program.rstrip("\n").split("\n")
    width = len(str(len(lines)))
    return "\n".join(f"{index:>{width}} | {line}".rstrip() for index, line in enumerate(lines, start=1))


class BugFindOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=600)  # wall clock for each fix's hidden tests


class BugFindPack(JsonlPack):
    """Find the one buggy line (or say there is none) and fix it; fixes run against hidden tests."""

    name = "bugfind"
    version = "1"
    description = (
        "Short programs (mostly Python) with one planted bug or none: name the line, return a fixed "
        "program that passes hidden tests run in the sandbox, and raise no false alarm on correct code."
    )
    subdimensions = ("localization", "fix_correctness", "no_false_alarm", "answer_format")
    breakdowns = ("language", "kind")
    default_sampling = Sampling(temperature=0.0, max_tokens=1024)
    Options = BugFindOptions

    def __init__(self, data_path: Path | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(data_path)
        self.timeout_s = timeout_s

    def check_items(self, items: list[Item]) -> None:
        for item in items:
            check_bug_lines(item, self.items_path)

    def groups(self, item: Item) -> dict[str, str]:
        """Language, and the planted bug's kind (``no_bug`` for a correct program)."""
        return {"language": item.data["language"], "kind": (item.data["bug"] or {}).get("kind") or "no_bug"}

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
        return scoring.judge(item.data, transcript.final_content, timeout_s=self.timeout_s)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        return scoring.aggregate(records)
