"""From a chat reply to the program that gets tested.

The reply is asked to hold one complete function in a python code block. The block that defines
the entry point is taken (the last one, since replies revise), or every python block, or the
whole reply when there are no fences; evalplus's sanitizer then keeps the imports and the
definitions the entry point reaches. The program tested is the task prompt's own context (its
imports and helper functions, without the stub being asked for) followed by that code, so a
reply is not failed for leaving out ``from typing import List`` or a helper the prompt already
gave it; a definition in the reply overrides the prompt's.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
# An opening fence with its language tag, the body, and a closing fence or the end of the text.
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3"}


@dataclass(frozen=True)
class Extracted:
    """The code found in a reply and how it was found (``fenced``, ``fenced_all``, ``unfenced``)."""

    code: str
    rule: str


def find_code(reply: str, entry_point: str) -> Extracted | None:
    """The part of a reply that is code for ``entry_point``, before sanitizing; None if no code."""
    text = _THINK_BLOCK.sub("", reply)
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS and body.strip()]
    defines = re.compile(rf"\bdef\s+{re.escape(entry_point)}\s*\(")
    with_entry = [block for block in blocks if defines.search(block)]
    if with_entry:
        return Extracted(with_entry[-1], "fenced")
    if blocks:
        return Extracted("\n\n".join(blocks), "fenced_all")
    if text.strip():
        return Extracted(text, "unfenced")
    return None


def sanitize(code: str, entry_point: str) -> str:
    """evalplus's sanitizer: the imports plus the definitions ``entry_point`` depends on."""
    from evalplus.sanitize import sanitize as evalplus_sanitize

    return str(evalplus_sanitize(code, entrypoint=entry_point)).strip()


def prompt_context(prompt: str, entry_point: str) -> str:
    """The prompt without the stub being asked for: its imports, helpers and constants."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    lines = prompt.splitlines()
    kept: list[str] = []
    for node in tree.body:
        is_stub = isinstance(node, ast.FunctionDef) and node.name == entry_point
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if is_stub or is_docstring:
            continue
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def build_solution(reply: str, prompt: str, entry_point: str) -> tuple[str, str] | None:
    """(program to test, extraction rule), or None when the reply holds no code."""
    found = find_code(reply, entry_point)
    if found is None:
        return None
    code = sanitize(found.code, entry_point)
    if not code:
        return None
    context = prompt_context(prompt, entry_point)
    return (f"{context}\n\n\n{code}\n" if context else f"{code}\n"), found.rule


def certain_failure(program: str, entry_point: str) -> str | None:
    """Why evalplus would fail ``program`` without running a test, or None when it must run.

    Only two cases, both decided the same way by evalplus (its ``exec`` raises, or the entry
    point is missing from the globals): the program does not parse, or never names the entry
    point. Skipping the sandbox for them changes no verdict and saves its start-up.
    """
    try:
        ast.parse(program)
    except SyntaxError as exc:
        return f"the code does not parse (line {exc.lineno}: {exc.msg})"
    if not re.search(rf"\b{re.escape(entry_point)}\b", program):
        return f"the code defines no {entry_point}"
    return None
