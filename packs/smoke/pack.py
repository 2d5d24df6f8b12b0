"""The core's own tiny pack: exercises single-turn, tool and multi-turn paths of the runner.

It asks things any served model answers in some way, and scores only what the serving stack
guarantees (non-empty content, a parsed tool call), so the core can be tested on a scripted model.
"""

from __future__ import annotations

import json
from typing import Any

from bench.pack import Item, Pack, Sampling, Score, Tier
from bench.packs.smoke.scoring import judge
from bench.session import Session
from bench.transcript import Transcript

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

_ITEMS = [
    Item(id=f"say-{n}", data={"kind": "say", "prompt": f"Say hello to visitor number {n}."}, tiers=["quick", "full"])
    for n in range(1, 7)
] + [
    Item(id=f"tool-{n}", data={"kind": "tool", "prompt": f"What is the weather in city {n}?"}, tiers=["quick", "full"])
    for n in range(1, 3)
] + [
    Item(id="two-step", data={"kind": "two_step", "prompt": "Check the weather in Paris, then tell me."}, tiers=["full"]),
]


class SmokePack(Pack):
    name = "smoke"
    version = "1"
    description = "Core self-test: plain answers, one tool call, one tool round trip."
    subdimensions = ("answers", "tool_use")
    breakdowns = ("kind",)
    default_sampling = Sampling(temperature=0.0, max_tokens=64)

    def items(self, tier: Tier = "full") -> list[Item]:
        return [item for item in _ITEMS if tier == "full" or "quick" in item.tiers]

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": item.data["prompt"]}]

    def tools(self, item: Item) -> list[dict[str, Any]] | None:
        return [WEATHER_TOOL] if item.data["kind"] != "say" else None

    async def run_item(self, item: Item, session: Session) -> None:
        reply = await session.ask(self.messages(item), tools=self.tools(item))
        if item.data["kind"] == "two_step" and reply.tool_calls:
            for index, call in enumerate(reply.tool_calls):
                session.add_tool_result(call, json.dumps({"temperature_c": 21}), index)
            await session.ask(tools=self.tools(item))

    def score(self, item: Item, transcript: Transcript) -> Score:
        return judge(item.data, transcript)
