"""A streamed chat request, assembled into the same Response a non-streamed one gives.

Servers parse streamed replies on a separate code path (reasoning and tool-call parsers work on
deltas), and bugs there leave content, reasoning or tool calls different from the non-streamed
answer. Preflight sends its probes both ways and compares the parsed fields.
"""

from __future__ import annotations

import time
from typing import Any, cast

from openai import AsyncOpenAI, OpenAIError

from bench.client import RequestFailed, request_fields
from bench.pack import Sampling
from bench.transcript import Request, Response, ToolCall


def _reasoning_delta(delta: Any) -> str:
    extra = getattr(delta, "model_extra", None) or {}
    return str(getattr(delta, "reasoning", None) or extra.get("reasoning") or extra.get("reasoning_content") or "")


async def stream_chat(endpoint: str, model: str, request: Request, timeout_s: float) -> Response:
    """Send ``request`` with ``stream=True`` and join the deltas; RequestFailed on any error."""
    kwargs, extra = request_fields(Sampling.model_validate(request.sampling))
    if request.tools:
        kwargs["tools"] = request.tools
        if request.tool_choice is not None:
            kwargs["tool_choice"] = request.tool_choice
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish: str | None = None
    started = time.perf_counter()
    client = AsyncOpenAI(base_url=endpoint, api_key="EMPTY", max_retries=0, timeout=timeout_s)
    try:
        stream = await client.chat.completions.create(
            model=model, messages=cast(Any, request.messages), extra_body=extra or None, stream=True, **kwargs
        )
        async for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            delta = choice.delta
            finish = choice.finish_reason or finish
            content.append(delta.content or "")
            reasoning.append(_reasoning_delta(delta))
            for call in delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
    except OpenAIError as exc:
        raise RequestFailed(f"{endpoint}: streamed request failed: {exc}") from exc
    finally:
        await client.close()
    joined = "".join(content)
    thought = "".join(reasoning)
    return Response(
        content=joined or None,
        reasoning=thought or None,
        tool_calls=[ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for _, c in sorted(calls.items())],
        finish_reason=finish,
        latency_s=time.perf_counter() - started,
        endpoint=endpoint,
    )
