"""A conversation with the server for one item: keeps the messages and records every exchange.

Multi-turn packs drive it directly: ask, read the tool calls, answer them with their own mock
tools through :meth:`Session.add_tool_result`, ask again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.pack import Sampling
from bench.transcript import Exchange, Request, Response, ToolCall, Transcript

ChatFn = Callable[[Request], Awaitable[Response]]


def assistant_message(response: Response) -> dict[str, Any]:
    """The reply as a chat message to send back (reasoning is not resent, as chat templates expect)."""
    message: dict[str, Any] = {"role": "assistant", "content": response.content or ""}
    if response.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for index, call in enumerate(response.tool_calls)
        ]
    return message


class Session:
    """One item's conversation. ``sampling`` is fixed for the item and recorded on every request."""

    def __init__(self, chat: ChatFn, sampling: Sampling, transcript: Transcript | None = None) -> None:
        self._chat = chat
        self.sampling = sampling
        self.transcript = transcript if transcript is not None else Transcript()
        self.conversation: list[dict[str, Any]] = []

    async def ask(
        self,
        messages: list[dict[str, Any]] | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Response:
        """Append ``messages`` to the conversation, send it whole, record and return the reply."""
        if messages:
            self.conversation.extend(messages)
        request = Request(
            messages=[dict(m) for m in self.conversation],
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
            sampling=self.sampling.model_dump(exclude_none=True),
        )
        response = await self._chat(request)
        self.transcript.exchanges.append(Exchange(request=request, response=response))
        self.conversation.append(assistant_message(response))
        return response

    def add_user(self, text: str) -> None:
        self.conversation.append({"role": "user", "content": text})

    def add_tool_result(self, call: ToolCall, content: str, index: int = 0) -> None:
        """Answer one tool call with the pack's mock result."""
        self.conversation.append(
            {"role": "tool", "tool_call_id": call.id or f"call_{index}", "name": call.name, "content": content}
        )
