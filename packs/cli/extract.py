"""The shell text of a reply, and whether it is one command line.

Rules, first match wins (the name goes into ``Score.extraction``):
``fence:shell``: the first fenced block tagged bash, sh, shell, zsh or console;
``fence``: else the first untagged fenced block;
``whole``: else the whole reply.
Only the answer content is read, never the reasoning. A block whose every line starts with a
``$ `` prompt has the prompts taken off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHELL_TAGS = frozenset({"bash", "sh", "shell", "zsh", "console", "shell-session", "shellsession"})
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Extracted:
    script: str
    rule: str  # fence:shell | fence | whole
    fences: int  # fenced blocks in the reply


def extract_script(content: str) -> Extracted:
    """The shell text to run from a reply's content."""
    content = content.replace("\r\n", "\n")
    blocks = [(match.group(2).lower(), match.group(3)) for match in _FENCE.finditer(content)]
    for tag, body in blocks:
        if tag in SHELL_TAGS:
            return Extracted(_drop_prompts(body).strip("\n"), "fence:shell", len(blocks))
    for tag, body in blocks:
        if not tag:
            return Extracted(_drop_prompts(body).strip("\n"), "fence", len(blocks))
    return Extracted(_drop_prompts(content.strip()), "whole", len(blocks))


def _drop_prompts(text: str) -> str:
    lines = [line for line in text.split("\n") if line.strip()]
    if lines and all(line.lstrip().startswith("$ ") for line in lines):
        return "\n".join(line.lstrip()[2:] for line in text.split("\n") if line.strip())
    return text


def command_lines(script: str) -> int:
    """Logical command lines: backslash continuations joined; blank, comment and shebang lines not counted."""
    joined = re.sub(r"\\\n", " ", script)
    return sum(1 for line in joined.split("\n") if line.strip() and not line.lstrip().startswith("#"))
