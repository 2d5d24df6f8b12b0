"""The pack's mock tools: answer a model's call with the result the item scripts for it.

Results are chosen by tool name and, where the item says so, by argument values, so that a
model asking for the wrong record gets an error back instead of the right data by accident.
"""

from __future__ import annotations

import json
from typing import Any

from bench.packs.toolcall.matchers import MISSING, check
from bench.transcript import ToolCall


def mock_result(turn: dict[str, Any], call: ToolCall) -> str:
    """The JSON text returned to the model for ``call`` during ``turn``."""
    arguments = call.parsed_arguments()
    if arguments is None:
        return json.dumps({"error": "arguments are not a valid JSON object"})
    scripted = [result for result in turn.get("results", []) if result["name"] == call.name]
    if not scripted:
        return json.dumps({"error": f"{call.name} is not available for this request"})
    for result in scripted:
        conditions = result.get("when", {})
        if all(check(matcher, arguments.get(key, MISSING)) is None for key, matcher in conditions.items()):
            return json.dumps(result["result"], ensure_ascii=False)
    return json.dumps({"error": "no matching record found for the given arguments"})
