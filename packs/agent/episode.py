"""One task's episode: a fresh environment, the injected failures, the scripted user, the call log.

The live loop (``AgentPack.run_item``) and the scorer's replay both feed model replies through
:meth:`Episode.respond`, so the state the scorer judges is the state the model saw: the scorer
rebuilds it from the transcript alone, never from anything run_item kept in memory.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema

from bench.packs.agent.calendar_mail import CalendarMail
from bench.packs.agent.environment import Environment, ErrorKind, ToolError, merge, seed_world
from bench.packs.agent.shop import Shop
from bench.packs.agent.spec import Failure, TaskSpec
from bench.packs.agent.tracker import Tracker
from bench.packs.agent.user import ScriptedUser
from bench.packs.agent.website import Website
from bench.packs.agent.workspace import Workspace
from bench.transcript import Response, ToolCall

ENVIRONMENTS: dict[str, type[Environment]] = {env.name: env for env in (Workspace, Shop, CalendarMail, Website, Tracker)}

INJECTED_MESSAGES: dict[str, str] = {
    "rate_limited": "429 Too Many Requests: rate limit reached for this tool; retry the same request",
    "server_error": "500 Internal Server Error: the service failed to answer; try again",
    "not_found": "404 Not Found: the service could not find what was asked for right now",
    "validation_error": "422 Unprocessable Entity: the service rejected the request",
}


@dataclass(frozen=True)
class CallRecord:
    """One tool call as the environment saw it."""

    name: str
    arguments: dict[str, Any] | None  # None when the arguments were not a JSON object
    ok: bool
    error: ErrorKind | None = None
    injected: bool = False  # the error was an injected failure, not the environment's own answer


@dataclass
class Reply:
    """What the pack answers to one model reply: tool results, or the user's words, or nothing (the end)."""

    tool_results: list[tuple[ToolCall, str]] = field(default_factory=list)
    user: str | None = None

    @property
    def ends(self) -> bool:
        return not self.tool_results and self.user is None


def error_result(kind: ErrorKind, message: str) -> dict[str, Any]:
    """The JSON a tool answers with when it fails."""
    error: dict[str, Any] = {"type": kind, "message": message}
    if kind == "rate_limited":
        error["retry_after_s"] = 1
    return {"error": error}


@cache
def _validator(env_name: str, tool_name: str) -> jsonschema.protocols.Validator:
    schema = ENVIRONMENTS[env_name].tools[tool_name].parameters
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def schema_problem(env_name: str, tool_name: str, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` break the tool's JSON Schema, in one line, or None."""
    error = jsonschema.exceptions.best_match(_validator(env_name, tool_name).iter_errors(arguments))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def build_environment(spec: TaskSpec) -> Environment:
    """The task's environment in its initial state: the seed world with the task's overrides."""
    return ENVIRONMENTS[spec.env](merge(seed_world(spec.env), spec.state))


class Episode:
    """Executes the model's tool calls for one task and keeps the log the scorer reads."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.env = build_environment(spec)
        self.user = ScriptedUser(spec.user)
        self.log: list[CallRecord] = []
        self.replies = 0
        self._attempts: Counter[str] = Counter()

    def respond(self, response: Response) -> Reply:
        """Answer one model reply. A reply cut off by the token budget is not acted on."""
        self.replies += 1
        if response.finish_reason == "length":
            return Reply()
        if response.tool_calls:
            return Reply(tool_results=[(call, self.execute(call)) for call in response.tool_calls])
        return Reply(user=self.user.answer(response.content))

    def execute(self, call: ToolCall) -> str:
        """Run one call against the environment; the result (or error) as the JSON text sent back."""
        result, record = self._run(call)
        self.log.append(record)
        return json.dumps(result, ensure_ascii=False)

    def _injected(self, name: str) -> Failure | None:
        count = self._attempts[name]
        return next((f for f in self.spec.failures if f.tool == name and f.call == count), None)

    def _run(self, call: ToolCall) -> tuple[Any, CallRecord]:
        tools = self.env.tools
        if call.name not in tools:
            message = f"there is no tool named {call.name!r}; the tools are: {', '.join(sorted(tools))}"
            return error_result("unknown_tool", message), CallRecord(call.name, call.parsed_arguments(), False, "unknown_tool")
        arguments = call.parsed_arguments()
        self._attempts[call.name] += 1
        failure = self._injected(call.name)
        if arguments is None:
            record = CallRecord(call.name, None, False, "validation_error")
            return error_result("validation_error", "arguments must be a JSON object"), record
        if failure is not None and not failure.applied:
            message = failure.message or INJECTED_MESSAGES[failure.kind]
            return error_result(failure.kind, message), CallRecord(call.name, arguments, False, failure.kind, injected=True)
        problem = schema_problem(self.env.name, call.name, arguments)
        if problem is not None:
            return error_result("validation_error", problem), CallRecord(call.name, arguments, False, "validation_error")
        try:
            result = self.env.call(call.name, arguments)
        except ToolError as exc:
            return error_result(exc.kind, exc.message), CallRecord(call.name, arguments, False, exc.kind)
        if failure is not None:  # applied: the write happened, the caller hears an error anyway
            message = failure.message or INJECTED_MESSAGES[failure.kind]
            return error_result(failure.kind, message), CallRecord(call.name, arguments, False, failure.kind, injected=True)
        return result, CallRecord(call.name, arguments, True)
