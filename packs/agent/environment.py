"""The base of the pack's environments: tools declared with JSON Schemas, state as plain data.

An environment is a Python object around one dict of state (loaded from its seed world, with the
task's overrides merged in). Tools are its methods marked with :func:`tool`; each gets arguments
already checked against its schema and either returns a JSON-able result or raises
:class:`ToolError`, the errors a real API answers with. Nothing here does I/O beyond reading the
shipped seed world, so a replay from a transcript always reaches the same state.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, ClassVar, Literal, TypeVar

ErrorKind = Literal[
    "unknown_tool", "validation_error", "not_found", "conflict", "forbidden", "rate_limited", "server_error"
]
Handler = TypeVar("Handler", bound=Callable[..., Any])


class ToolError(Exception):
    """What a tool answers instead of a result: a typed error the model can act on."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class ToolSpec:
    """One tool as offered to the model: an OpenAI function definition."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def tool(description: str, properties: Mapping[str, Any] | None = None, required: Sequence[str] = ()) -> Callable[[Handler], Handler]:
    """Mark a method as a tool; its name is the method's, its parameters a closed JSON Schema object."""

    def mark(handler: Handler) -> Handler:
        parameters: dict[str, Any] = {"type": "object", "properties": dict(properties or {}), "additionalProperties": False}
        if required:
            parameters["required"] = list(required)
        handler.__dict__["tool_spec"] = ToolSpec(handler.__name__, description, parameters)
        return handler

    return mark


class Environment:
    """A world the model acts on through tools. Subclasses set ``name`` and ``summary`` and mark tools."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # what the world is, for the system prompt
    tools: ClassVar[dict[str, ToolSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tools = {spec.name: spec for value in vars(cls).values() if (spec := getattr(value, "tool_spec", None)) is not None}

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run tool ``name`` with arguments its schema already accepted."""
        return getattr(self, name)(**arguments)

    def next_id(self, kind: str, prefix: str) -> str:
        """A fresh identifier from the world's counters, so replays number things identically."""
        counters: dict[str, int] = self.state.setdefault("next_ids", {})
        number = counters.get(kind, 1)
        counters[kind] = number + 1
        return f"{prefix}{number}"


def merge(base: Any, overrides: Any) -> Any:
    """``base`` with ``overrides`` merged in: objects merge key by key, a null deletes, anything else replaces."""
    if not isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge(merged.get(key), value)
    return merged


@cache
def _world_text(env_name: str) -> str:
    return resources.files(__package__).joinpath(world_file(env_name)).read_text(encoding="utf-8")


def world_file(env_name: str) -> str:
    """The shipped seed world of an environment."""
    return f"world_{env_name}.json"


def seed_world(env_name: str) -> dict[str, Any]:
    """A fresh copy of the environment's seed world."""
    world: dict[str, Any] = json.loads(_world_text(env_name))
    return world
