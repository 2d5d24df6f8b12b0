"""Fields an answer adds that its schema never declared.

A schema with ``additionalProperties: false`` already rejects them, but many schemas allow extra
keys, and a reply that pads the object with invented ones ("notes", "confidence") is still worse
than one that gives what was asked. So every object in the answer is compared with the properties
its schema declares; an object the schema types as a map (``additionalProperties`` is a schema,
or ``patternProperties`` matches the key) holds no extras by design.
"""

from __future__ import annotations

import re
from typing import Any


def undeclared(schema: dict[str, Any], value: Any, where: str = "") -> list[str]:
    """Paths (``a.b[0].c``) of every key in ``value`` that ``schema`` does not declare."""
    found: list[str] = []
    branches = [schema] + [b for key in ("anyOf", "oneOf", "allOf") for b in schema.get(key, []) if isinstance(b, dict)]
    if isinstance(value, dict):
        declared: dict[str, Any] = {}
        patterns: list[str] = []
        open_map: dict[str, Any] | None = None
        for branch in branches:
            declared.update(branch.get("properties", {}))
            patterns.extend(branch.get("patternProperties", {}))
            if isinstance(branch.get("additionalProperties"), dict):
                open_map = branch["additionalProperties"]
        for key, sub in value.items():
            path = f"{where}.{key}" if where else key
            if key in declared:
                found.extend(undeclared(declared[key], sub, path))
            elif open_map is not None:
                found.extend(undeclared(open_map, sub, path))
            elif not any(re.search(p, key) for p in patterns):
                found.append(path)
    elif isinstance(value, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), None)
        if items is not None:
            for index, entry in enumerate(value):
                found.extend(undeclared(items, entry, f"{where}[{index}]"))
    return found
