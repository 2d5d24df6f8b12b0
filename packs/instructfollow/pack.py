"""The instructfollow pack: prompts carrying one to three verifiable instructions.

Each item is a prompt plus its instructions declared as data; the score is the fraction of
instructions the reply follows, checked by pure functions (``checks``), strictly and loosely
(``scoring``). Items live in ``items.jsonl`` beside this module, validated against
``item.schema.json`` on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.pack import Item, Pack, Sampling, Score, Tier, load_jsonl_items, select_tier, unscorable
from bench.transcript import Transcript
from bench.packs.instructfollow import scoring
from bench.packs.instructfollow.checks import FAMILIES
from bench.packs.instructfollow.schema import load_item_schema

ITEMS_PATH = Path(__file__).with_name("items.jsonl")


def load_items(path: Path = ITEMS_PATH) -> list[Item]:
    """Items from ``path``; a bad line (unknown kind, wrong args) raises UserError naming the item."""
    return load_jsonl_items(path, load_item_schema())


class InstructFollowPack(Pack):
    """Verifiable instruction following: length, keywords, format, case, start/end and more."""

    name = "instructfollow"
    version = "1"
    description = (
        "Prompts with one to three verifiable instructions (length, keywords, format, case, "
        "start/end, punctuation, placeholders, postscript), checked strictly and loosely."
    )
    subdimensions = FAMILIES
    default_sampling = Sampling(temperature=0.0, max_tokens=768)

    def __init__(self, data_path: Path | None = None) -> None:
        self._data_path = data_path or ITEMS_PATH

    @cached_property
    def _items(self) -> list[Item]:
        return load_items(self._data_path)

    def items(self, tier: Tier = "full") -> list[Item]:
        return select_tier(self._items, tier)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": item.data["prompt"]}]

    def score(self, item: Item, transcript: Transcript) -> Score:
        instructions = item.data["instructions"]
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": scoring.unjudged_details(instructions)})
        results = scoring.judge(instructions, transcript.final_content)
        return scoring.score_results(results)

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return scoring.aggregate(records)

    def data_files(self) -> list[Path]:
        return [self._data_path]
