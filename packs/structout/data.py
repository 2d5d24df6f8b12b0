"""Checks on the task file that its JSON Schema cannot express, each a one-line error naming the task.

Every task's answer schema must itself be a valid JSON Schema with an object at the top, every
gold path must lead somewhere that schema declares (a typo would otherwise be a field no answer
can ever get right), and each stored wrong answer must name the subdimension it attacks.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from bench.errors import UserError
from bench.pack import Item
from bench.packs.structout.gold import steps

MODE_SEPARATOR = "@"
SUBDIMENSIONS = ("parses", "schema_valid", "field_accuracy", "no_extra_fields")


def check_task(where: Path | Traversable, task: Item) -> None:
    """Raise UserError for the first problem in ``task`` (a line of items.jsonl)."""
    name = f"{where}: task {task.id!r}"
    if MODE_SEPARATOR in task.id:
        raise UserError(f"{name}: a task id may not contain {MODE_SEPARATOR!r} (it separates the task from its mode)")
    schema = task.data["schema"]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise UserError(f"{name}: its schema is not a valid JSON Schema: {exc.message}") from None
    for path in task.data["gold"]:
        if not declares(schema, steps(path)):
            raise UserError(f"{name}: gold path {path!r} is not declared by its schema")
    for wrong in task.wrong:
        if wrong.get("attacks") not in SUBDIMENSIONS:
            raise UserError(f"{name}: a wrong answer attacks {wrong.get('attacks')!r}; one of {', '.join(SUBDIMENSIONS)}")


def declares(schema: dict[str, Any], rest: list[str | int | None]) -> bool:
    """Whether the schema declares the field these path steps lead to (through properties and items)."""
    if not rest:
        return True
    step, tail = rest[0], rest[1:]
    branches = [schema] + [b for key in ("anyOf", "oneOf") for b in schema.get(key, []) if isinstance(b, dict)]
    for branch in branches:
        if isinstance(step, str):
            # A key of a map-typed object (additionalProperties is a schema) is declared by that schema.
            sub = branch.get("properties", {}).get(step, branch.get("additionalProperties"))
        else:
            sub = branch.get("items")
        if isinstance(sub, dict) and declares(sub, tail):
            return True
    return False
