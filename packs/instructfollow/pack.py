"""The instructfollow pack: prompts carrying one to three verifiable instructions.

Each item is a prompt plus its instructions declared as data; the score is the fraction of
instructions the reply follows, checked by pure functions (``checks``), strictly and loosely
(``scoring``). Items live in ``items.jsonl`` beside this module, validated against
``item.schema.json`` on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.pack import Item, JsonlPack, Sampling, Score, unscorable
from bench.packs.instructfollow import scoring
from bench.packs.instructfollow.checks import FAMILIES
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord


def load_items(path: Path | None = None) -> list[Item]:
    """Items from ``path`` (default: the shipped file); a bad line (unknown kind, wrong args)
    raises UserError naming the item."""
    return InstructFollowPack(path).items("full")


class InstructFollowPack(JsonlPack):
    """Verifiable instruction following: length, keywords, format, case, start/end and more."""

    name = "instructfollow"
    version = "1"
    description = (
        "Prompts with one to three verifiable instructions (length, keywords, format, case, "
        "start/end, punctuation, placeholders, postscript), checked strictly and loosely."
    )
    subdimensions = FAMILIES
    # Per family is the subdimensions; an item's own grouping is how many instructions it stacks.
    breakdowns = ("instructions",)
    default_sampling = Sampling(temperature=0.0, max_tokens=768)

    def groups(self, item: Item) -> dict[str, str]:
        return {"instructions": str(len(item.data["instructions"]))}

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": item.data["prompt"]}]

    def score(self, item: Item, transcript: Transcript) -> Score:
        instructions = item.data["instructions"]
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": scoring.unjudged_details(instructions)})
        results = scoring.judge(instructions, transcript.final_content)
        return scoring.score_results(results)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        return scoring.aggregate(records)
