"""What was asked and what came back, kept apart: content, reasoning and tool calls.

These records are what ``items.jsonl`` stores and what scorers read; they hold only data,
so a stored run can be re-scored without a server.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ToolCall(BaseModel):
    """A parsed tool call as the server returned it. ``arguments`` is the raw JSON string."""

    model_config = ConfigDict(extra="forbid")
    id: str = ""
    name: str
    arguments: str = ""

    def parsed_arguments(self) -> dict[str, Any] | None:
        """The arguments as a dict, or None when the string is not a JSON object."""
        try:
            value = json.loads(self.arguments) if self.arguments else {}
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


class Response(BaseModel):
    """One assistant reply."""

    model_config = ConfigDict(extra="forbid")
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    endpoint: str = ""


class Request(BaseModel):
    """One chat request as sent (messages, tools and the sampling in effect)."""

    model_config = ConfigDict(extra="forbid")
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # OpenAI-style structured output (``{"type": "json_schema", ...}``): the decoder must follow it.
    response_format: dict[str, Any] | None = None
    sampling: dict[str, Any] = Field(default_factory=dict)


class Exchange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: Request
    response: Response


class Transcript(BaseModel):
    """Every exchange of one item, in order."""

    model_config = ConfigDict(extra="forbid")
    exchanges: list[Exchange] = Field(default_factory=list)

    @property
    def last(self) -> Response | None:
        return self.exchanges[-1].response if self.exchanges else None

    @property
    def final_content(self) -> str:
        """Content of the last reply ('' when none): what most single-turn scorers read."""
        last = self.last
        return (last.content or "") if last else ""

    @property
    def truncated(self) -> bool:
        return any(ex.response.finish_reason == "length" for ex in self.exchanges)

    @property
    def all_tool_calls(self) -> list[ToolCall]:
        return [call for ex in self.exchanges for call in ex.response.tool_calls]
