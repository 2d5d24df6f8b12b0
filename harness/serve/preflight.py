"""Prove the serving stack before trusting any score.

``/health`` 200 is not proof: an engine can start and die at the first request, a missing
reasoning parser leaves ``<think>`` in every answer, a missing tool parser leaves
``<tool_call>`` text in content. Each probe here turns one such failure into one line with the fix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import httpx

from bench.client import ChatClient, RequestFailed, server_root
from bench.records import PreflightCheck
from bench.serve.health import LEAK_PATTERN
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


@dataclass(frozen=True)
class PreflightOptions:
    reasoning_parser: str | None
    tool_call_parser: str | None
    check_tools: bool = True
    suggested_reasoning_parser: str = "qwen3"
    suggested_tool_parser: str = "hermes"


def _request(prompt: str, *, thinking: bool = True, tools: bool = False) -> Request:
    return Request(
        messages=[{"role": "user", "content": prompt}],
        tools=[PROBE_TOOL] if tools else None,
        sampling={"temperature": 0.0, "max_tokens": PROBE_MAX_TOKENS, "thinking": thinking},
    )


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
    if "<tool_call>" in content or "<function=" in content or '"arguments"' in content:
        return PreflightCheck(name="tool_call", ok=False,
                              detail="tool call left as text in content (parser failure)", evidence=f"content={_shown(content)}",
                              fix=f"launch with --enable-auto-tool-choice --tool-call-parser {options.suggested_tool_parser}")
    return PreflightCheck(name="tool_call", ok=True,
                          detail=f"model answered without calling the tool (a model choice, not a parser failure): {_shown(content)}")


async def run_preflight(client: ChatClient, options: PreflightOptions) -> list[PreflightCheck]:
    """Run every probe; the first request doubles as the warm-up that proves the engine computes."""
    checks: list[PreflightCheck] = []
    try:
        plain = await client.chat(_request(PLAIN_PROMPT))
    except RequestFailed as exc:
        checks.append(PreflightCheck(name="first_request", ok=False, detail=str(exc),
                                     fix="the server is up but failed its first request: read the server log "
                                         "(unsupported head_dim or dtype on this device is a common cause)"))
        return checks
    checks.append(PreflightCheck(name="first_request", ok=True, detail=f"{plain.latency_s:.2f} s"))
    checks.append(check_plain(plain, options))
    try:
        checks.append(check_no_thinking(await client.chat(_request(PLAIN_PROMPT, thinking=False))))
    except RequestFailed as exc:
        checks.append(PreflightCheck(name="thinking_off", ok=False, detail=str(exc), fix="read the server log"))
    if options.check_tools:
        checks.append(await _probe_tools(client, options))
    return checks


async def _probe_tools(client: ChatClient, options: PreflightOptions) -> PreflightCheck:
    """Ask with tools. A server without a tool parser refuses ``tool_choice=auto``; then ask again
    with ``tool_choice=none`` to show what the model emits, so the report names the parser failure."""
    try:
        return check_tools(await client.chat(_request(TOOL_PROMPT, tools=True)), options)
    except RequestFailed as exc:
        refused = str(exc)
    if "tool choice requires" not in refused and "enable-auto-tool-choice" not in refused:
        return PreflightCheck(name="tool_call", ok=False, detail="request with tools failed", evidence=refused,
                              fix="read the server log")
    fix = f"launch with --enable-auto-tool-choice --tool-call-parser {options.suggested_tool_parser}"
    request = _request(TOOL_PROMPT, tools=True)
    request.tool_choice = "none"
    try:
        reply = await client.chat(request)
    except RequestFailed:
        return PreflightCheck(name="tool_call", ok=False, detail="server refuses requests with tools (no tool-call parser)",
                              evidence=refused, fix=fix)
    check = check_tools(reply, options)
    if check.ok:  # the model answered in prose: the server still cannot take tool requests
        return PreflightCheck(name="tool_call", ok=False, detail="server refuses requests with tools (no tool-call parser)",
                              evidence=refused, fix=fix)
    return check


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
