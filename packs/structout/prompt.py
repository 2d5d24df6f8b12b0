"""What each item sends: one user message with the task and its schema, and for the guided half
the same schema as ``response_format``.

Both halves carry the schema in the prompt, word for word the same, so the only difference
between them is the decoder's constraint.
"""

from __future__ import annotations

import json
from typing import Any

INSTRUCTIONS = """{prompt}

Answer with one JSON object that follows this JSON Schema:
{schema}

Reply with the JSON object only."""


def render_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of one item (guided and prompted alike)."""
    schema = json.dumps(data["schema"], ensure_ascii=False)
    return [{"role": "user", "content": INSTRUCTIONS.format(prompt=data["prompt"], schema=schema)}]


def response_format(data: dict[str, Any]) -> dict[str, Any]:
    """The structured-output request field (OpenAI's ``json_schema`` form, which vLLM accepts)."""
    return {"type": "json_schema", "json_schema": {"name": data["name"], "schema": data["schema"], "strict": True}}
