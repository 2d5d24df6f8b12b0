"""Helpers for checking a pack's scorer against stored answers, without a server.

Every item carries a ``reference`` reply (must score 1.0) and ``wrong`` replies (must score
less). These helpers turn such a stored reply into the transcript a real run would have recorded,
so pack tests and ``bench`` self-checks score exactly what a model's answer would go through.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.pack import Item, Pack, Score
from bench.records import ItemRecord
from bench.transcript import Exchange, Request, Response, ToolCall, Transcript


def transcript_for_text(
    content: str | None,
    tool_calls: Sequence[ToolCall | dict[str, Any]] | None = None,
    *,
    reasoning: str | None = None,
    finish_reason: str | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> Transcript:
    """A one-exchange transcript whose reply is ``content`` (and optional tool calls).

    ``tool_calls`` may be :class:`ToolCall` objects or dicts with ``name`` and ``arguments``
    (a JSON string, or a dict that is serialised). ``finish_reason`` defaults to ``tool_calls``
    when there are calls and ``stop`` otherwise.
    """
    calls = [_tool_call(call, index) for index, call in enumerate(tool_calls or [])]
    response = Response(
        content=content,
        reasoning=reasoning,
        tool_calls=calls,
        finish_reason=finish_reason or ("tool_calls" if calls else "stop"),
    )
    request = Request(messages=messages or [{"role": "user", "content": "(stored answer)"}])
    return Transcript(exchanges=[Exchange(request=request, response=response)])


def transcript_for_answer(answer: dict[str, Any]) -> Transcript:
    """The transcript for one stored ``reference``/``wrong`` entry (``{"content": ..., ...}``)."""
    return transcript_for_text(
        answer.get("content"),
        answer.get("tool_calls"),
        reasoning=answer.get("reasoning"),
        finish_reason=answer.get("finish_reason"),
    )


def _tool_call(call: ToolCall | dict[str, Any], index: int) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    arguments = call.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return ToolCall(id=call.get("id") or f"call_{index}", name=call["name"], arguments=arguments)


def record_for(pack: Pack, item: Item, transcript: Transcript, *, repeat: int = 0, score: Score | None = None) -> ItemRecord:
    """The items.jsonl record a run would hold for ``transcript``, scored by the pack's own scorer
    (or given ``score``), so aggregation and reports can be tested on real scores without a server."""
    return ItemRecord(
        pack=pack.name,
        pack_version=pack.version,
        item_id=item.id,
        repeat=repeat,
        transcript=transcript,
        score=score if score is not None else pack.score(item, transcript),
        started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:00:01Z",
        elapsed_s=transcript.exchanges[-1].response.latency_s if transcript.exchanges else 0.0,
    )
