"""The held-out text set divergence is measured on: a few hundred texts in five domains.

Each text is either plain text (sent as the model's tokenizer splits it) or a conversation (messages,
and tools for tool-call conversations) that the server renders with the model's own chat template, so
the candidate is teacher-forced on the replies as the base would see them. The set ships with bench
(``texts.jsonl``, made by :mod:`bench.divergence.build_texts`); no text in it comes from a calibration
mix, so pruning cannot have been fitted on what divergence is measured on.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import UserError

DOMAINS = ("code", "math", "knowledge", "toolcall", "chat")
TEXTS_FILE = "texts.jsonl"
QUICK_PER_DOMAIN = 12  # the quick tier: the first texts of each domain (the file interleaves sources)
Tier = Literal["quick", "full"]


class Text(BaseModel):
    """One text of the set: plain ``text``, or ``messages`` (with ``tools``) rendered by the server."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    source: str = Field(min_length=1, description="where it came from, e.g. humanevalplus, pack:toolcall")
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Text:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a text holds either text or messages")
        if self.tools is not None and self.messages is None:
            raise ValueError("tools go with messages")
        return self

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class TextSet(BaseModel):
    """The texts a measurement uses, and the identity of the file they came from."""

    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str  # of the whole file, so a reference names exactly what it was measured on
    texts: list[Text]

    def domains(self) -> list[str]:
        return list(dict.fromkeys(text.domain for text in self.texts))


def parse_texts(lines: list[str], source: str) -> list[Text]:
    """Validate JSON lines into texts; a bad line is one error naming its line number."""
    texts: list[Text] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = Text.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            first = str(exc).splitlines()[0] if isinstance(exc, json.JSONDecodeError) else exc.errors()[0]["msg"]
            raise UserError(f"{source}:{number}: not a divergence text: {first}") from exc
        if text.id in seen:
            raise UserError(f"{source}:{number}: text id {text.id!r} appears twice")
        seen.add(text.id)
        texts.append(text)
    if not texts:
        raise UserError(f"{source} holds no texts")
    return texts


@cache
def _shipped() -> tuple[str, str]:
    raw = resources.files("bench.divergence").joinpath(TEXTS_FILE).read_bytes()
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def load_text_set(path: Path | None = None) -> TextSet:
    """The shipped set, or a user's JSON-lines file of the same shape."""
    if path is None:
        body, digest = _shipped()
        name = f"shipped:{TEXTS_FILE}"
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read divergence text set {path}: {exc.strerror}") from exc
        body, digest, name = raw.decode("utf-8", errors="replace"), hashlib.sha256(raw).hexdigest(), str(path)
    return TextSet(name=name, sha256=digest, texts=parse_texts(body.splitlines(), name))


def select(texts: list[Text], tier: Tier = "full", limit: int | None = None, domains: list[str] | None = None) -> list[Text]:
    """The texts a run measures: per domain the first ``limit`` (the quick tier caps it at 12)."""
    per_domain = QUICK_PER_DOMAIN if tier == "quick" else None
    if limit is not None:
        per_domain = limit if per_domain is None else min(per_domain, limit)
    if domains:
        known = list(dict.fromkeys(text.domain for text in texts))
        unknown = [d for d in domains if d not in known]
        if unknown:
            raise UserError(f"no divergence texts in domain(s) {', '.join(unknown)}; the set has {', '.join(known)}")
    counts: dict[str, int] = {}
    chosen = []
    for text in texts:
        if domains and text.domain not in domains:
            continue
        if per_domain is not None and counts.get(text.domain, 0) >= per_domain:
            continue
        counts[text.domain] = counts.get(text.domain, 0) + 1
        chosen.append(text)
    return chosen
