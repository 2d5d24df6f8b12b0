"""The gold of a task, written out per item: expected output lines and assertions on files.

Output is compared line by line after a fixed normalization (runs of blanks become one space,
blank lines are dropped; optionally a leading ``./`` on paths, numbers compared by value, and
order ignored where the task says it does not matter). File assertions read the snapshot the
scorer took after the run, never the work directory itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from bench.packs.cli.snapshot import Snapshot, allowed

_REL_TOL = 1e-6


@dataclass(frozen=True)
class Check:
    """One assertion's outcome; ``why`` says what differed."""

    name: str
    ok: bool
    why: str = ""


def normalize(text: str, spec: dict[str, Any]) -> list[str]:
    """The comparable lines of ``text`` under ``spec``'s rules (``paths``, ``numbers``, ``order``)."""
    lines = []
    for raw in text.splitlines():
        tokens = raw.split()
        if not tokens:
            continue
        if spec.get("paths"):
            tokens = [token.removeprefix("./") for token in tokens]
        if spec.get("numbers"):
            tokens = [_canonical_number(token) for token in tokens]
        lines.append(" ".join(tokens))
    if spec.get("order") == "any":
        lines.sort()
    return lines


def _canonical_number(token: str) -> str:
    try:
        value = float(token)
    except ValueError:
        return token
    if not math.isfinite(value):
        return token
    return repr(round(value, 9) + 0.0)


def _same_lines(got: list[str], want: list[str], spec: dict[str, Any]) -> bool:
    if len(got) != len(want):
        return False
    if not spec.get("numbers"):
        return got == want
    for got_line, want_line in zip(got, want):
        got_tokens, want_tokens = got_line.split(" "), want_line.split(" ")
        if len(got_tokens) != len(want_tokens):
            return False
        for a, b in zip(got_tokens, want_tokens):
            if a != b and not _close(a, b):
                return False
    return True


def _close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=_REL_TOL, abs_tol=_REL_TOL)


def compare_lines(name: str, text: str, spec: dict[str, Any]) -> Check:
    """``text`` against ``spec["lines"]`` under the spec's normalization."""
    want = normalize("\n".join(spec["lines"]), spec)
    got = normalize(text, spec)
    if _same_lines(got, want, spec):
        return Check(name, True)
    return Check(name, False, _difference(got, want))


def _difference(got: list[str], want: list[str]) -> str:
    if not got:
        return f"printed nothing; expected {len(want)} line(s) starting {want[0]!r}" if want else "printed nothing"
    for index, (a, b) in enumerate(zip(got, want), start=1):
        if a != b:
            return f"line {index}: got {_cut(a)!r}, expected {_cut(b)!r}"
    return f"got {len(got)} line(s), expected {len(want)}"


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_files(assertions: list[dict[str, Any]], before: Snapshot, after: Snapshot) -> list[Check]:
    """Every file assertion of an item against the snapshot taken after the run."""
    return [_check_file(assertion, before, after) for assertion in assertions]


def _check_file(spec: dict[str, Any], before: Snapshot, after: Snapshot) -> Check:
    if "glob" in spec:
        matches = [p for p in after.files() if allowed(p, [spec["glob"]])]
        name = f"files matching {spec['glob']}"
        if len(matches) == spec["count"]:
            return Check(name, True)
        return Check(name, False, f"{len(matches)} match (expected {spec['count']}): {', '.join(matches[:5])}")
    path = spec["path"]
    entry = after.entries.get(path)
    name = f"file {path}"
    if spec.get("exists") is False:
        return Check(name, entry is None, "" if entry is None else "still exists")
    if spec.get("kind") == "dir":
        ok = entry is not None and entry.kind == "dir"
        return Check(name, ok, "" if ok else "is not a folder")
    if entry is None or entry.kind != "file":
        return Check(name, False, "missing" if entry is None else f"is a {entry.kind}, not a file")
    if "executable" in spec and entry.executable != spec["executable"]:
        return Check(name, False, "executable bit is " + ("set" if entry.executable else "not set"))
    if "same_as" in spec:
        source = before.entries.get(spec["same_as"])
        ok = source is not None and source.digest == entry.digest
        return Check(name, ok, "" if ok else f"content differs from the original {spec['same_as']}")
    if not ({"text", "lines", "json", "contains", "lacks"} & set(spec)):
        return Check(name, True)
    content = after.contents.get(path)
    if content is None:
        return Check(name, False, "too large to read")
    text = content.decode("utf-8", errors="replace")
    if "text" in spec:
        ok = _text_lines(text) == _text_lines(spec["text"])
        return Check(name, ok, "" if ok else _difference(_text_lines(text), _text_lines(spec["text"])))
    if "lines" in spec:
        return compare_lines(name, text, spec)
    if "json" in spec:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return Check(name, False, f"not valid JSON ({exc.msg})")
        return Check(name, value == spec["json"], "" if value == spec["json"] else "JSON differs from the expected value")
    for needle in spec.get("contains", []):
        if needle not in text:
            return Check(name, False, f"does not contain {_cut(needle)!r}")
    for needle in spec.get("lacks", []):
        if needle in text:
            return Check(name, False, f"still contains {_cut(needle)!r}")
    return Check(name, True)


def _text_lines(text: str) -> list[str]:
    """Exact text up to trailing blanks on lines and trailing empty lines."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines
