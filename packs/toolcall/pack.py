"""The toolcall pack: offers real tool schemas, reads the server's parsed ``tool_calls``.

Single-step items are one request. Two-step items answer the model's calls with scripted mock
results (from the item) and ask again, so the second call or the final answer can be checked
for using what the tool returned.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from typing import Any

from bench.pack import Item, JsonlPack, Sampling, Score, round_robin
from bench.packs.toolcall.data import Catalog, check_item, load_catalog
from bench.packs.toolcall.mock import mock_result
from bench.packs.toolcall.scoring import score_transcript
from bench.session import Session
from bench.transcript import Transcript

# Items with relative dates ("next Friday") are written against this day.
DEFAULT_SYSTEM = "You are a helpful assistant. Today is Wednesday, 12 March 2025."


class ToolCallPack(JsonlPack):
    name = "toolcall"
    version = "1"
    description = (
        "OpenAI tools API: single calls, choosing among tools, parallel calls, restraint, "
        "argument types and formats, and two-step tasks that must use a mock tool's result."
    )
    subdimensions = ("tool_selection", "parameter_precision", "call_structure", "restraint", "multi_step")
    breakdowns = ("category",)
    default_sampling = Sampling(temperature=0.0, max_tokens=512)
    hashed_files = ("items.jsonl", "tools.json", "item.schema.json", "tools.schema.json")

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog()

    def check_items(self, items: list[Item]) -> None:
        for item in items:
            check_item(item, self.catalog)

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """Take items round-robin over categories (seeded order within each) so a small
        ``--limit`` still asks every kind of task."""
        by_category: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            by_category[item.data["category"]].append(item)
        return round_robin(by_category.values(), n, seed)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": item.data.get("system", DEFAULT_SYSTEM)},
            {"role": "user", "content": item.data["prompt"]},
        ]

    def tools(self, item: Item) -> list[dict[str, Any]]:
        return [{"type": "function", "function": self.catalog[name]} for name in item.data["tools"]]

    async def run_item(self, item: Item, session: Session) -> None:
        """Ask; while the item has further steps and the reply made calls, answer them and ask again."""
        tools = self.tools(item)
        turns: list[dict[str, Any]] = item.data["turns"]
        reply = await session.ask(self.messages(item), tools=tools, tool_choice="auto")
        for turn in turns[:-1]:
            if not reply.tool_calls:
                return
            for index, call in enumerate(reply.tool_calls):
                session.add_tool_result(call, mock_result(turn, call), index)
            reply = await session.ask(tools=tools, tool_choice="auto")

    def score(self, item: Item, transcript: Transcript) -> Score:
        offered = {name: self.catalog[name] for name in item.data["tools"]}
        return score_transcript(item.data, offered, transcript)
