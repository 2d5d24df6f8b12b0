"""What one agent task declares, as typed models: the shape of ``items.jsonl``'s ``data``.

``item.schema.json`` is generated from :class:`TaskSpec` (see :func:`task_schema`), so the file the
loader validates against and the models the scorer reads are written once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EnvName = Literal["workspace", "shop", "calendar_mail", "website", "tracker"]
Band = Literal["1-3", "4-8", "9+"]
FailureKind = Literal["rate_limited", "server_error", "not_found", "validation_error"]
Subdimension = Literal["task_success", "state_correctness", "efficiency", "recovery", "safety", "communication"]

BANDS: tuple[tuple[Band, int], ...] = (("1-3", 3), ("4-8", 8), ("9+", 10**9))


def band_for(calls: int) -> Band:
    """The difficulty band of a task whose reference makes ``calls`` tool calls."""
    return next(band for band, most in BANDS if calls <= most)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Cond(_Strict):
    """A test on one value; every key given must hold.

    ``eq``/``ne``: equal (strings compare case- and space-insensitively); ``has``/``lacks``: a
    substring of a string (case-insensitive), a member of a list, a key of an object;
    ``absent``: the value is missing (or, with false, present); ``gte``/``lte``: numeric bounds;
    ``one_of``: equal to one of the values.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    eq: Any = None
    ne: Any = None
    has: Any = None
    lacks: Any = None
    absent: bool | None = None
    gte: float | None = None
    lte: float | None = None
    one_of: list[Any] | None = None


class ValueCheck(_Strict):
    """The value at ``path`` in the environment's state passes ``is``."""

    label: str
    path: list[str | int] = Field(min_length=1)
    is_: Cond = Field(alias="is")


class CountCheck(_Strict):
    """The entries of the collection at ``path`` whose fields pass ``where``: their number passes ``count``."""

    label: str
    path: list[str | int] = Field(min_length=1)
    where: dict[str, Cond] = Field(default_factory=dict)
    count: Cond


class CallCheck(_Strict):
    """Successful calls of ``tool`` (a name, or a list of names any of which counts) whose arguments pass ``args``:
    their number passes ``count`` (default: at least one)."""

    label: str
    tool: str | list[str]
    args: dict[str, Cond] = Field(default_factory=dict)
    count: Cond = Field(default_factory=lambda: Cond(gte=1))

    @property
    def tools(self) -> list[str]:
        return [self.tool] if isinstance(self.tool, str) else list(self.tool)


StateCheck = ValueCheck | CountCheck
Minefield = ValueCheck | CountCheck | CallCheck


class TextFact(_Strict):
    """The final answer contains one of ``any`` (case-insensitive, dashes and spaces normalized)."""

    label: str
    any: list[str] = Field(min_length=1)


class NumberFact(_Strict):
    """The final answer states ``number`` (within ``tol``)."""

    label: str
    number: float
    tol: float = Field(0.005, ge=0)


Fact = TextFact | NumberFact


class Failure(_Strict):
    """An injected failure: the ``call``-th call of ``tool`` (counting every call of it) fails with ``kind``.

    ``applied``: the call takes effect before the error comes back (a 500 after the write), so a blind
    retry repeats it. Recovery means a later successful call of ``recovered_by`` (default: ``tool``).
    """

    tool: str
    call: int = Field(1, ge=1)
    kind: FailureKind
    applied: bool = False
    recovered_by: str | None = None
    message: str | None = None


class UserRule(_Strict):
    """The scripted user's answer to a question (a reply with '?') naming one of ``keywords``; used once."""

    keywords: list[str] = Field(min_length=1)
    reply: str


class TaskSpec(_Strict):
    """One task: where it runs, what is asked, and what a right end looks like."""

    env: EnvName
    difficulty: Band
    instruction: str = Field(min_length=1)
    state: dict[str, Any] = Field(default_factory=dict)  # overrides merged into the environment's seed world
    failures: list[Failure] = Field(default_factory=list)
    user: list[UserRule] = Field(default_factory=list)
    gold: list[StateCheck] = Field(default_factory=list)
    required_calls: list[CallCheck] = Field(default_factory=list)
    facts: list[Fact] = Field(min_length=1)
    minefields: list[Minefield] = Field(min_length=1)


class CallShape(_Strict):
    """A stored tool call: arguments as an object (serialised when replayed)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Turn(_Strict):
    """One stored model reply."""

    content: str | None = None
    tool_calls: list[CallShape] = Field(default_factory=list)


class Trajectory(_Strict):
    """A stored run of model replies: the reference that solves the task."""

    turns: list[Turn] = Field(min_length=1)

    def call_count(self) -> int:
        return sum(len(turn.tool_calls) for turn in self.turns)


class WrongTrajectory(Trajectory):
    """A stored run that must score less than the reference; ``attacks`` names the subdimension it hurts."""

    note: str
    attacks: Subdimension


def task_schema() -> dict[str, Any]:
    """The JSON Schema of an item's ``data`` (the content of ``item.schema.json``)."""
    schema = TaskSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "agent pack item data"
    return schema
