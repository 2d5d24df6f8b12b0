"""Load and check the pack's items: the file must be right before any model is asked.

Beyond the item schema (``item.schema.json``), each item's own answer schema must be a valid
JSON Schema, its expected answer must follow that schema, and every compare rule must name a
field the schema has. A mistake in any of these would otherwise surface as a model "failing"
an item that cannot be passed.
"""

from __future__ import annotations

from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from bench.errors import UserError
from bench.pack import Item


def check_item(path: object, item: Item) -> None:
    """One schema-valid item checked for consistency; a bad item raises UserError naming it."""
    where = f"{path}: item {item.id!r}"
    schema = item.data["schema"]
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise UserError(f"{where}: data.schema is not a valid JSON Schema ({exc.message}); fix the schema") from exc
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    error = jsonschema.exceptions.best_match(validator.iter_errors(item.data["expected"]))
    if error is not None:
        field = "/".join(str(p) for p in error.absolute_path) or "expected"
        raise UserError(f"{where}: data.expected does not follow data.schema at {field}: {error.message}")
    for rule_path in item.data.get("compare", {}):
        if _schema_at(schema, rule_path) is None:
            raise UserError(f"{where}: data.compare names {rule_path!r}, which data.schema does not have")


def _schema_at(schema: dict[str, Any], rule_path: str) -> dict[str, Any] | None:
    """The sub-schema a compare path ("items[].sku") points at, or None when there is none."""
    node: dict[str, Any] | None = schema
    for part in rule_path.split("."):
        name = part.removesuffix("[]")
        node = (node or {}).get("properties", {}).get(name)
        if node is None:
            return None
        if part.endswith("[]"):
            node = node.get("items")
    return node
