"""Calibration schema adapters: one dataset row -> one conversation (or plain text).

Each adapter names the fields it reads (its *canonical* fields) and turns a row into messages in
the OpenAI chat shape, with ``tools`` where the data has them, so the model's own chat template
renders calibration text exactly as it renders served requests. A mix entry can map canonical
fields to differently named columns (``fields: {text: body}``); a row that lacks a field or has
the wrong type raises :class:`SchemaError` naming the field, which the preflight turns into a
one-line error naming the dataset too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = Mapping[str, Any]


class SchemaError(Exception):
    """A row does not match the adapter: ``field`` is the column the adapter looked for."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}")
        self.field = field_name
        self.problem = problem


@dataclass
class Conversation:
    """What a row becomes: chat messages (+ tools), or plain text for pretraining-style data."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    text: str | None = None


@dataclass(frozen=True)
class HubSource:
    """Where the adapter's dataset lives on the hub by default."""

    path: str
    config: str | None = None
    split: str = "train"


@dataclass(frozen=True)
class Adapter:
    """A dataset schema: the fields it needs and how a row becomes a conversation."""

    name: str
    description: str
    fields: tuple[str, ...]
    convert: Callable[[Callable[[str, type | tuple[type, ...]], Any], Row], Conversation]
    hub: HubSource | None = None
    optional: tuple[str, ...] = ()


def make_getter(row: Row, mapping: Mapping[str, str]) -> Callable[[str, type | tuple[type, ...]], Any]:
    """A field reader for ``row`` that applies the column mapping and checks types."""

    def get(canonical: str, kind: type | tuple[type, ...]) -> Any:
        column = mapping.get(canonical, canonical)
        if column not in row:
            columns = ", ".join(sorted(map(str, row.keys())))
            raise SchemaError(column, f"is missing (row has: {columns})")
        value = row[column]
        if kind is list and isinstance(value, str):
            # Hub exports often store lists (messages, tools, answers) as JSON strings.
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise SchemaError(column, f"holds a string that is not JSON: {exc.msg}") from exc
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SchemaError(column, f"should be {expected}, found {type(value).__name__}")
        return value

    return get


def _optional(get: Callable[[str, Any], Any], name: str, kind: Any) -> Any:
    try:
        return get(name, kind)
    except SchemaError as exc:
        if "is missing" in exc.problem:
            return None
        raise


def _check_messages(messages: list[Any], column: str = "messages") -> list[dict[str, Any]]:
    if not messages:
        raise SchemaError(column, "is an empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise SchemaError(column, f"item {i} is not a {{role, content}} message")
        clean = {k: v for k, v in message.items() if v is not None}
        if isinstance(clean.get("tool_calls"), str):
            clean["tool_calls"] = json.loads(clean["tool_calls"])
        clean.setdefault("content", "")
        out.append(clean)
    return out


def _prompt_response(prompt_field: str, response_field: str) -> Callable[..., Conversation]:
    def convert(get: Callable[..., Any], row: Row) -> Conversation:
        prompt = get(prompt_field, str)
        response = get(response_field, str)
        if not prompt.strip():
            raise SchemaError(prompt_field, "is empty")
        return Conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])

    return convert


def _messages(get: Callable[..., Any], row: Row) -> Conversation:
    messages = _check_messages(get("messages", list))
    tools = _optional(get, "tools", list)
    return Conversation(messages, tools=_openai_tools(tools) if tools else None)


def _text(get: Callable[..., Any], row: Row) -> Conversation:
    text = get("text", str)
    if not text.strip():
        raise SchemaError("text", "is empty")
    return Conversation(text=text)


XLAM_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
              "dict": "object", "tuple": "array", "set": "array", "any": "string"}


def _json_type(declared: Any) -> str:
    """xLAM writes Python-ish types ("List[int]", "str, optional"); JSON schema wants one word."""
    text = str(declared or "string").split(",")[0].strip().lower()
    head = text.split("[")[0]
    return XLAM_TYPES.get(head, head if head in {"string", "integer", "number", "boolean", "array", "object"}
                          else "string")


def _openai_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """Tools in the OpenAI function shape chat templates expect (xLAM's flat shape converted)."""
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise SchemaError("tools", "items must be objects")
        if tool.get("type") == "function" and "function" in tool:
            out.append(tool)
            continue
        params = tool.get("parameters") or {}
        if isinstance(params, dict) and params.get("type") != "object":
            properties = {
                name: {"type": _json_type(spec.get("type")), "description": str(spec.get("description", ""))}
                for name, spec in params.items() if isinstance(spec, dict)
            }
            required = [n for n, spec in params.items() if isinstance(spec, dict) and "default" not in spec
                        and "optional" not in str(spec.get("type", ""))]
            params = {"type": "object", "properties": properties, "required": required}
        out.append({"type": "function", "function": {"name": tool.get("name", ""),
                                                     "description": tool.get("description", ""),
                                                     "parameters": params}})
    return out


def _xlam(get: Callable[..., Any], row: Row) -> Conversation:
    query = get("query", str)
    tools = _openai_tools(get("tools", list))
    answers = get("answers", list)
    calls = []
    for answer in answers:
        if not isinstance(answer, dict) or "name" not in answer:
            raise SchemaError("answers", "items must be {name, arguments} objects")
        calls.append({"type": "function", "function": {"name": answer["name"],
                                                       "arguments": answer.get("arguments", {})}})
    return Conversation(
        [{"role": "user", "content": query}, {"role": "assistant", "content": "", "tool_calls": calls}],
        tools=tools,
    )


def _mmlu(get: Callable[..., Any], row: Row) -> Conversation:
    question = get("question", str)
    choices = get("choices", (list, tuple))
    answer = get("answer", (int, str))
    if len(choices) < 2:
        raise SchemaError("choices", "needs at least two options")
    letters = "ABCDEFGHIJ"
    index = answer if isinstance(answer, int) else letters.index(answer.strip().upper()[:1])
    options = "\n".join(f"{letters[i]}. {choice}" for i, choice in enumerate(choices))
    prompt = f"{question}\n\n{options}\n\nAnswer with the letter of the correct option."
    return Conversation([{"role": "user", "content": prompt},
                         {"role": "assistant", "content": f"The answer is {letters[index]}."}])


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("evol-codealpaca", "code instructions and answers", ("instruction", "output"),
                _prompt_response("instruction", "output"), HubSource("theblackcat102/evol-codealpaca-v1")),
        Adapter("xlam-function-calling", "single-turn function calling with tool schemas",
                ("query", "tools", "answers"), _xlam, HubSource("Salesforce/xlam-function-calling-60k")),
        Adapter("swe-smith", "agent trajectories on real repositories (tool-call split)", ("messages",),
                _messages, HubSource("SWE-bench/SWE-smith-trajectories", split="tool"), optional=("tools",)),
        Adapter("mixture-of-thoughts-code", "reasoning traces, code", ("messages",), _messages,
                HubSource("open-r1/Mixture-of-Thoughts", "code")),
        Adapter("mixture-of-thoughts-math", "reasoning traces, math", ("messages",), _messages,
                HubSource("open-r1/Mixture-of-Thoughts", "math")),
        Adapter("mixture-of-thoughts-science", "reasoning traces, science", ("messages",), _messages,
                HubSource("open-r1/Mixture-of-Thoughts", "science")),
        Adapter("c4", "web text (plain, no chat template)", ("text",), _text, HubSource("allenai/c4", "en")),
        Adapter("mmlu", "multiple-choice questions answered with a letter", ("question", "choices", "answer"),
                _mmlu, HubSource("cais/mmlu", "all", split="auxiliary_train")),
        Adapter("code-feedback", "multi-turn code conversations (messages)", ("messages",), _messages,
                HubSource("m-a-p/Code-Feedback")),
        Adapter("messages", "any chat data with a messages list (local files)", ("messages",), _messages,
                optional=("tools",)),
        Adapter("prompt-response", "any prompt/response pairs (local files)", ("prompt", "response"),
                _prompt_response("prompt", "response")),
        Adapter("text", "any plain text (local files)", ("text",), _text),
    )
}
