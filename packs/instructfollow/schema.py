"""The JSON Schema of an instructfollow item's ``data``, built from the table of kinds.

The schema is generated from ``checks.KINDS`` so kinds and their args are declared once; the
checked-in ``item.schema.json`` is that output (regenerate with ``python -c "from
bench.packs.instructfollow.schema import write_item_schema; write_item_schema()"``; a test keeps the
two equal). An unknown kind, a kind
filed under the wrong family, or args that do not fit the kind are rejected when items load.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from bench.packs.instructfollow.checks import FAMILIES, KINDS

SCHEMA_FILE = "item.schema.json"
MAX_INSTRUCTIONS = 3


def build_item_schema() -> dict[str, Any]:
    """The schema for one item's ``data``: a prompt and one to three declared instructions."""
    per_kind = [
        {
            "if": {"properties": {"kind": {"const": name}}, "required": ["kind"]},
            "then": {"properties": {"family": {"const": kind.family}, "args": kind.args_schema}},
        }
        for name, kind in KINDS.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "instructfollow item data",
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt", "instructions"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "instructions": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_INSTRUCTIONS,
                "items": {"$ref": "#/$defs/instruction"},
            },
        },
        "$defs": {
            "instruction": {
                "type": "object",
                "additionalProperties": False,
                "required": ["family", "kind", "args"],
                "properties": {
                    "family": {"enum": list(FAMILIES)},
                    "kind": {"enum": list(KINDS)},
                    "args": {"type": "object"},
                },
                "allOf": per_kind,
            }
        },
    }


def load_item_schema() -> dict[str, Any]:
    """The checked-in schema file."""
    schema: dict[str, Any] = json.loads(resources.files("bench.packs.instructfollow").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
    return schema


def write_item_schema() -> Path:
    """Regenerate ``item.schema.json`` (in the source tree) from the table of kinds."""
    path = Path(__file__).with_name(SCHEMA_FILE)
    path.write_text(json.dumps(build_item_schema(), indent=2) + "\n", encoding="utf-8")
    return path
