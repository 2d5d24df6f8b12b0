"""Prove the serving stack before trusting any score.

``/health`` 200 is not proof: an engine can start and die at the first request, a missing
reasoning parser leaves ``<think>`` in every answer, a missing tool parser leaves
``<tool_call>`` text in content. Each probe here turns one such failure into one line with the fix.

Probes go both streamed and not, since servers parse the two on different code paths. A model
that answers a tool request in prose is asked again with the tool forced, which tells a model's
choice from a server that drops ``tools``. What a server cannot show (no ``/version``, no
``/tokenize``) is named, so a gate over its runs knows what it could not compare.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import httpx

from bench.client import ChatClient, RequestFailed, server_root
from bench.records import PreflightCheck, ServerInfo
from bench.serve.health import LEAK_PATTERN
from bench.serve.streaming import stream_chat
from bench.transcript import Request, Response

PLAIN_PROMPT = "What is the capital of France? Answer in one short sentence."
TOOL_PROMPT = "What is the weather in Paris right now? Use the tool."
PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
# A model may think for a while before answering; a short budget would read as a broken parser.
PROBE_MAX_TOKENS = 1024


# Tool-call text a parser should have lifted out of content (hermes, qwen3-coder, plain JSON calls).
TOOL_MARKUP = re.compile(r'<tool_call>|<function=|"arguments"')
FORCED_TOOL_CHOICE: dict[str, object] = {"type": "function", "function": {"name": "get_weather"}}
NOT_VERIFIABLE = "not verifiable on this server"


@dataclass(frozen=True)
class PreflightOptions:
    reasoning_parser: str | None
    tool_call_parser: str | None
    check_tools: bool = True
    # False when no pack of the run sends tools: a tool-probe failure is then recorded, not fatal.
    tools_required: bool = True
    suggested_reasoning_parser: str = "qwen3"
    suggested_tool_parser: str = "hermes"
    launched: bool = False  # bench started the server: its failures can be blamed on the checkpoint
    check_streaming: bool = True
    max_tokens: int = PROBE_MAX_TOKENS


def _request(prompt: str, *, thinking: bool = True, tools: bool = False, max_tokens: int = PROBE_MAX_TOKENS) -> Request:
    return Request(
        messages=[{"role": "user", "content": prompt}],
        tools=[PROBE_TOOL] if tools else None,
        sampling={"temperature": 0.0, "max_tokens": max_tokens, "thinking": thinking},
    )


def one_line(text: str, limit: int = 200) -> str:
    """The first non-blank line of an error, cut: servers other than vLLM answer with HTML or tracebacks."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:limit] + ("..." if len(line) > limit else "")


def _shown(text: str | None, limit: int = 80) -> str:
    if text is None:
        return "null"
    text = text.replace("\n", "\\n")
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def check_plain(reply: Response, options: PreflightOptions) -> PreflightCheck:
    """Non-empty content, no reasoning markup in it, any reasoning kept in its own field."""
    content = reply.content
    fix_reasoning = f"launch with --reasoning-parser {options.suggested_reasoning_parser}"
    if content is not None and ("</think>" in content or "<think>" in content):
        marker = "</think>" if "</think>" in content else "<think>"
        return PreflightCheck(name="plain_answer", ok=False, detail=f"responses contain {marker}", evidence=f"content={_shown(content)}",
                              fix=fix_reasoning if not options.reasoning_parser
                              else "the reasoning parser does not match this model's markup: pick the right --reasoning-parser")
    if not (content or "").strip():
        if reply.finish_reason == "length":
            return PreflightCheck(name="plain_answer", ok=False,
                                  detail=f"no answer within {PROBE_MAX_TOKENS} tokens "
                                         f"(finish_reason=length, reasoning={_shown(reply.reasoning)})",
                                  fix="the model thinks past the probe budget: check the chat template, or run with --no-thinking")
        return PreflightCheck(name="plain_answer", ok=False, detail=f"empty content (reasoning={_shown(reply.reasoning)})",
                              fix="check the chat template and reasoning parser; the answer never reached content")
    if LEAK_PATTERN.search(content or ""):
        return PreflightCheck(name="plain_answer", ok=False, detail=f"content holds template markup: {_shown(content)}",
                              fix="the chat template or tokenizer leaks special tokens: pass the right --chat-template")
    where = "reasoning" if reply.reasoning else "none"
    return PreflightCheck(name="plain_answer", ok=True, detail=f"content={_shown(content)}; reasoning in: {where}")


def check_no_thinking(reply: Response) -> PreflightCheck:
    if reply.content is None or not reply.content.strip():
        return PreflightCheck(name="thinking_off", ok=False,
                              detail=f"with enable_thinking=false content is {_shown(reply.content)} (reasoning={_shown(reply.reasoning)})",
                              fix="the reasoning parser treats the whole reply as reasoning when thinking is off: "
                                  "update vLLM or the chat template")
    if "<think>" in reply.content or "</think>" in reply.content:
        return PreflightCheck(name="thinking_off", ok=False, detail=f"content={_shown(reply.content)}",
                              fix="the template's enable_thinking switch leaks markup: pass a fixed --chat-template")
    return PreflightCheck(name="thinking_off", ok=True, detail=f"content={_shown(reply.content)}")


def check_tools(reply: Response, options: PreflightOptions) -> PreflightCheck:
    """Parsed tool_calls pass; tool-call text in content is a parser failure; no call is a model choice."""
    if reply.tool_calls:
        call = reply.tool_calls[0]
        try:
            json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            return PreflightCheck(name="tool_call", ok=False, detail=f"arguments are not JSON: {_shown(call.arguments)}",
                                  fix="the tool-call parser does not match this model's format: pick the right --tool-call-parser")
        return PreflightCheck(name="tool_call", ok=True, detail=f"parsed tool_calls: {call.name}({call.arguments})")
    content = reply.content or ""
    if TOOL_MARKUP.search(content):
        return PreflightCheck(name="tool_call", ok=False,
                              detail="tool call left as text in content (parser failure)", evidence=f"content={_shown(content)}",
                              fix=f"launch with --enable-auto-tool-choice --tool-call-parser {options.suggested_tool_parser}")
    if not content.strip():
        return PreflightCheck(name="tool_call", ok=False, detail="reply to a tool request has neither a tool call nor content",
                              evidence=f"finish_reason={reply.finish_reason}",
                              fix="the tool-call parser swallowed the reply: pick the --tool-call-parser that matches this model's format")
    return PreflightCheck(name="tool_call", ok=True,
                          detail=f"model answered without calling the tool (a model choice, not a parser failure): {_shown(content)}")


async def run_preflight(client: ChatClient, options: PreflightOptions) -> list[PreflightCheck]:
    """Run every probe; the first request doubles as the warm-up that proves the engine computes."""
    checks: list[PreflightCheck] = []
    plain_request = _request(PLAIN_PROMPT, max_tokens=options.max_tokens)
    try:
        plain = await client.chat(plain_request)
    except RequestFailed as exc:
        fix = ("the server is up but failed its first request: read the server log "
               "(unsupported head_dim or dtype on this device is a common cause)") if options.launched else (
               "the server failed its first request: read its log, and check --served-model-name")
        checks.append(PreflightCheck(name="first_request", ok=False, detail=one_line(str(exc)), fix=fix))
        return checks
    checks.append(PreflightCheck(name="first_request", ok=True, detail=f"{plain.latency_s:.2f} s"))
    checks.append(check_plain(plain, options))
    pairs: list[tuple[str, Request, Response]] = [("plain", plain_request, plain)]
    off_request = _request(PLAIN_PROMPT, thinking=False, max_tokens=options.max_tokens)
    try:
        off = await client.chat(off_request)
        checks.append(check_no_thinking(off))
        pairs.append(("thinking-off", off_request, off))
    except RequestFailed as exc:
        checks.append(PreflightCheck(name="thinking_off", ok=False, detail=one_line(str(exc)), fix="read the server log"))
    if options.check_tools:
        tool_check, tool_pair = await _probe_tools(client, options)
        if not tool_check.ok and not options.tools_required:
            tool_check = tool_check.model_copy(update={
                "ok": True, "detail": f"{tool_check.detail} (no pack of this run sends tools: recorded, not a failure)"})
        checks.append(tool_check)
        if tool_pair is not None:
            pairs.append(tool_pair)
    if options.check_streaming:
        checks.append(await _streaming_parity(client, pairs))
    return checks


def _calls(reply: Response) -> list[tuple[str, object]]:
    """Tool calls as (name, parsed arguments): ids and JSON spacing may differ between the paths."""
    parsed: list[tuple[str, object]] = []
    for call in reply.tool_calls:
        try:
            arguments: object = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = call.arguments
        parsed.append((call.name, arguments))
    return parsed


def parity_difference(plain: Response, streamed: Response) -> str | None:
    """The first parsed field (content, reasoning, tool_calls) that differs, with both values."""
    for field, left, right in (
        ("content", (plain.content or "").strip(), (streamed.content or "").strip()),
        ("reasoning", (plain.reasoning or "").strip(), (streamed.reasoning or "").strip()),
        ("tool_calls", _calls(plain), _calls(streamed)),
    ):
        if left != right:
            return f"{field}: non-streamed {_shown(str(left) if left else None)} vs streamed {_shown(str(right) if right else None)}"
    return None


def _text(reply: Response) -> str:
    """Reasoning and content joined, whitespace dropped: the same generation however it was split."""
    return "".join(((reply.reasoning or "") + (reply.content or "")).split())


async def _streaming_parity(client: ChatClient, pairs: list[tuple[str, Request, Response]]) -> PreflightCheck:
    """Send each probe again streamed; fail naming the probe and the field that differs."""
    endpoint, model, timeout = client.config.endpoints[0], client.config.model, client.config.timeout_s
    for probe, request, reply in pairs:
        try:
            streamed = await stream_chat(endpoint, model, request, timeout)
        except RequestFailed as exc:
            return PreflightCheck(name="streaming_parity", ok=False, detail=f"streamed {probe} probe failed: {one_line(str(exc))}",
                                  fix="the server fails streamed requests that it answers unstreamed: read its log")
        difference = parity_difference(reply, streamed)
        if difference is not None and not reply.tool_calls and not streamed.tool_calls and _text(reply) != _text(streamed):
            # Different words, not the same words parsed differently: decoding was not reproducible.
            return PreflightCheck(name="streaming_parity", ok=True,
                                  detail=f"{NOT_VERIFIABLE}: streaming parity (the {probe} probe generated different "
                                         f"text streamed and not, so parsing cannot be compared: {difference})")
        if difference is not None:
            return PreflightCheck(
                name="streaming_parity", ok=False, detail=f"streamed and non-streamed replies differ on the {probe} probe in {difference}",
                fix="the server parses streamed replies differently (reasoning or tool-call parser): clients that stream "
                    "will see other answers than bench scores; check the parsers or pin a vLLM version without the bug",
            )  # fmt: skip
    probes = ", ".join(probe for probe, _, _ in pairs)
    return PreflightCheck(name="streaming_parity", ok=True, detail=f"streamed = non-streamed content, reasoning and tool calls ({probes})")


async def _probe_tools(client: ChatClient, options: PreflightOptions) -> tuple[PreflightCheck, tuple[str, Request, Response] | None]:
    """Ask with tools. A server without a tool parser refuses ``tool_choice=auto``; then ask again
    with ``tool_choice=none`` to show what the model emits, so the report names the parser failure.
    A reply in prose is followed by a request that forces the tool: a call then proves the model
    chose not to call; none proves the server ignores tools."""
    request = _request(TOOL_PROMPT, tools=True, max_tokens=options.max_tokens)
    try:
        reply = await client.chat(request)
    except RequestFailed as exc:
        refused = one_line(str(exc))
    else:
        check = check_tools(reply, options)
        if check.ok and not reply.tool_calls:
            check = await _forced_tool_call(client, options, reply)
        return check, ("tool", request, reply)
    if "tool choice requires" not in refused and "enable-auto-tool-choice" not in refused:
        return PreflightCheck(name="tool_call", ok=False, detail="request with tools failed", evidence=refused,
                              fix="read the server log"), None
    fix = f"launch with --enable-auto-tool-choice --tool-call-parser {options.suggested_tool_parser}"
    request.tool_choice = "none"
    try:
        reply = await client.chat(request)
    except RequestFailed:
        return PreflightCheck(name="tool_call", ok=False, detail="server refuses requests with tools (no tool-call parser)",
                              evidence=refused, fix=fix), None
    check = check_tools(reply, options)
    if check.ok:  # the model answered in prose: the server still cannot take tool requests
        return PreflightCheck(name="tool_call", ok=False, detail="server refuses requests with tools (no tool-call parser)",
                              evidence=refused, fix=fix), None
    return check, None


async def _forced_tool_call(client: ChatClient, options: PreflightOptions, auto: Response) -> PreflightCheck:
    """Force the probe tool (by name, else ``required``) to tell a model's choice from a server that drops tools."""
    forced: Response | None = None
    errors: list[str] = []
    for choice in (FORCED_TOOL_CHOICE, "required"):
        request = _request(TOOL_PROMPT, tools=True, max_tokens=options.max_tokens)
        request.tool_choice = choice
        try:
            forced = await client.chat(request)
            break
        except RequestFailed as exc:
            errors.append(one_line(str(exc)))
    if forced is None:
        return PreflightCheck(name="tool_call", ok=True,
                              detail=f"model answered without calling the tool: {_shown(auto.content)}; "
                                     f"{NOT_VERIFIABLE}: whether it honours tools (a forced tool_choice was refused)",
                              evidence="; ".join(errors))
    return forced_tool_verdict(auto, forced, options)


def forced_tool_verdict(auto: Response, forced: Response, options: PreflightOptions) -> PreflightCheck:
    """What a reply under a forced tool_choice says about a model that did not call under ``auto``."""
    if forced.tool_calls:
        call = forced.tool_calls[0]
        return PreflightCheck(name="tool_call", ok=True,
                              detail=f"model answered without calling the tool under tool_choice=auto (a model choice: "
                                     f"forcing the tool gave {call.name}({call.arguments}))")
    content = forced.content or ""
    if TOOL_MARKUP.search(content) or content.lstrip().startswith("{"):
        # The tools reached the model (it wrote a call, maybe cut off): the server does not drop them, but this
        # model's forced call cannot be parsed, so the probe cannot tell more. Prose means tool_choice was ignored:
        # a server that honours it constrains the reply to the call from its first token.
        return PreflightCheck(name="tool_call", ok=True,
                              detail=f"model answered without calling the tool: {_shown(auto.content)}; {NOT_VERIFIABLE}: "
                                     f"whether it honours tools (the forced call did not parse, "
                                     f"finish_reason={forced.finish_reason})",
                              evidence=f"content={_shown(content)}")
    return PreflightCheck(
        name="tool_call", ok=False,
        detail="the server ignores tools: a request forcing get_weather (tool_choice) came back without a tool call",
        evidence=f"content={_shown(forced.content)}",
        fix="serve the model with tool calling enabled (vLLM: --enable-auto-tool-choice --tool-call-parser "
            f"{options.suggested_tool_parser}); tool-calling scores from this server would measure nothing",
    )  # fmt: skip


def unverifiable(server: ServerInfo) -> list[str]:
    """The fingerprints a gate compares that this server could not provide, each with why."""
    missing: list[str] = []
    if server.vllm_version is None:
        missing.append("server version (no /version)")
    if server.rendered_prompt_sha256 is None:
        missing.append("rendered-prompt hash (no /tokenize)")
        if server.chat_template_sha256 is None:
            missing.append("chat template hash (the server does not expose its template)")
    if not server.launched and not (server.reasoning_parser and server.tool_call_parser):
        missing.append("parsers (an endpoint does not report them: pass --reasoning-parser and --tool-call-parser)")
    return missing


def fingerprint_check(missing: list[str]) -> PreflightCheck:
    """A preflight line naming what could not be verified; it does not fail the run."""
    if not missing:
        return PreflightCheck(name="fingerprints", ok=True, detail="server version, chat template and parsers recorded")
    return PreflightCheck(name="fingerprints", ok=True, detail=f"{NOT_VERIFIABLE}: {'; '.join(missing)}")


def first_failure(checks: list[PreflightCheck]) -> PreflightCheck | None:
    return next((check for check in checks if not check.ok), None)


def rendered_prompt_sha256(endpoint: str, model: str) -> str | None:
    """Hash of the token ids the server's template renders for a fixed conversation.

    Works for servers we did not launch (where the template file is unknown): a template change
    changes this hash, which is what a verdict needs to warn about.
    """
    payload = {
        "model": model,
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": PLAIN_PROMPT}],
        "add_generation_prompt": True,
    }
    try:
        response = httpx.post(f"{server_root(endpoint)}/tokenize", json=payload, timeout=10.0)
        tokens = response.json().get("tokens") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(tokens, list):
        return None
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()
