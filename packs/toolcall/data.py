"""Loading the pack's data: the tool catalog and the items, each checked before any request.

The JSON Schemas catch shape errors; the checks here catch what a schema cannot see across
files: an item offering a tool the catalog lacks, expecting a call to a tool it does not offer,
or matching a parameter the tool does not have. Every problem is a UserError naming the item.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from bench.errors import UserError
from bench.pack import Item, load_jsonl_items
from bench.packs.toolcall.matchers import KINDS, Matcher, parse_iso

PACK_FILES = resources.files("bench.packs.toolcall")
ITEMS_PATH = PACK_FILES / "items.jsonl"
TOOLS_PATH = PACK_FILES / "tools.json"
ITEM_SCHEMA_PATH = PACK_FILES / "item.schema.json"
TOOLS_SCHEMA_PATH = PACK_FILES / "tools.schema.json"

Catalog = dict[str, dict[str, Any]]  # tool name -> OpenAI function object


def _read_json(path: Path | Traversable) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def load_catalog(path: Path | Traversable = TOOLS_PATH) -> Catalog:
    """Tool definitions by name, each ``parameters`` checked to be a usable JSON Schema."""
    catalog: Catalog = _read_json(path)
    try:
        jsonschema.validate(catalog, _read_json(TOOLS_SCHEMA_PATH))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "top level"
        raise UserError(f"{path}: {where}: {exc.message}") from exc
    for name, definition in catalog.items():
        if definition["name"] != name:
            raise UserError(f"{path}: tool {name!r} is defined with name {definition['name']!r}; make them equal")
        try:
            Draft202012Validator.check_schema(definition["parameters"])
        except jsonschema.SchemaError as exc:
            raise UserError(f"{path}: tool {name!r} parameters are not a valid JSON Schema: {exc.message}") from exc
    return catalog


def _check_matcher(where: str, matcher: Matcher) -> None:
    kind = next(key for key in KINDS if key in matcher)
    if kind == "date" and parse_iso(matcher["date"]) is None:
        raise UserError(f"{where}: date {matcher['date']!r} is not ISO 8601 (write e.g. 2025-03-14 or 2025-03-14T09:30)")
    for index, element in enumerate(matcher.get("items", [])):
        _check_matcher(f"{where}[{index}]", element)
    for key, field_matcher in matcher.get("fields", {}).items():
        _check_matcher(f"{where}.{key}", field_matcher)


def _check_args(where: str, args: dict[str, Matcher], tool: dict[str, Any]) -> None:
    properties = tool["parameters"].get("properties", {})
    for key, matcher in args.items():
        if key not in properties:
            raise UserError(f"{where}: {tool['name']} has no parameter {key!r} (it has: {', '.join(properties)})")
        _check_matcher(f"{where}: {key}", matcher)


def check_item(item: Item, catalog: Catalog) -> None:
    """Cross-file consistency of one (schema-valid) item."""
    where = f"toolcall item {item.id!r}"
    offered = item.data["tools"]
    for name in offered:
        if name not in catalog:
            raise UserError(f"{where}: offers unknown tool {name!r}; define it in {TOOLS_PATH.name}")
    turns = item.data["turns"]
    for step, turn in enumerate(turns, start=1):
        if "calls" in turn and all(call.get("optional", False) for call in turn["calls"]):
            raise UserError(f"{where}: step {step} has only optional calls; mark at least one as required")
        for call in turn.get("calls", []):
            if call["name"] not in offered:
                raise UserError(f"{where}: step {step} expects {call['name']!r}, which the item does not offer")
            _check_args(f"{where} step {step}", call.get("args", {}), catalog[call["name"]])
        for result in turn.get("results", []):
            if result["name"] not in offered:
                raise UserError(f"{where}: step {step} has a result for {result['name']!r}, which is not offered")
            _check_args(f"{where} step {step} result", result.get("when", {}), catalog[result["name"]])
        goes_on = step < len(turns)
        if "calls" in turn and goes_on and not turn.get("results"):
            raise UserError(f"{where}: step {step} is followed by another step, so it needs mock 'results'")
        if "results" in turn and not goes_on:
            raise UserError(f"{where}: step {step} is the last step; its 'results' would never be sent")


def load_items(path: Path | Traversable = ITEMS_PATH, catalog: Catalog | None = None) -> list[Item]:
    """Every item of the pack, schema-validated and cross-checked against the catalog."""
    items = load_jsonl_items(path, _read_json(ITEM_SCHEMA_PATH))
    catalog = load_catalog() if catalog is None else catalog
    for item in items:
        check_item(item, catalog)
    return items
