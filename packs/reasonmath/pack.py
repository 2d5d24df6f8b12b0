"""reasonmath: multi-step math word problems generated from seeded templates, answers exact.

Items are made, not stored: seven families of templates (arithmetic word problems, rates and
units, percentages and money, algebra, number theory, counting and probability, chains of 3-8
operations) draw their numbers from a seed and compute the answer with ``Fraction``. No model
can have seen them, any number can be made, and difficulty is declared per item (operations
needed, size of the numbers) so that a compressed model losing long chains or large numbers
shows as such. The default seed and count are fixed; ``--pack-option reasonmath.seed=N`` (and
``count``) make fresh items, and the manifest records both with a hash of what was generated.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bench.errors import UserError
from bench.pack import Item, Pack, Sampling, Score, Tier
from bench.packs.reasonmath.generate import FAMILY_NAMES, INSTRUCTION, generate
from bench.packs.reasonmath.problem import steps_band
from bench.packs.reasonmath.scoring import aggregate, judge
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

DEFAULT_SEED = 20250
FULL_COUNT = 210  # 30 per family
QUICK_COUNT = 15
MAX_COUNT = 100_000


class ReasonMathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(DEFAULT_SEED, ge=0)  # another seed: fresh items of the same families and difficulty
    count: int = Field(FULL_COUNT, ge=QUICK_COUNT, le=MAX_COUNT)  # items in the full tier


class ReasonMathPack(Pack):
    name = "reasonmath"
    version = "1"
    description = (
        "Generated multi-step math word problems (7 families, seeded, exact answers), "
        "with difficulty by operations and by size of numbers."
    )
    subdimensions = FAMILY_NAMES
    breakdowns = ("steps", "magnitude")
    Options = ReasonMathOptions
    # The budget the final answer needs; with thinking on, the harness adds the thinking budget.
    default_sampling = Sampling(temperature=0.0, max_tokens=512, thinking=True)

    def __init__(self, seed: int = DEFAULT_SEED, count: int = FULL_COUNT) -> None:
        """
        Args:
            seed: which items to make; the default is the pack's fixed set.
            count: how many items the full tier holds (the quick tier is its first 15).
        """
        if seed < 0 or not QUICK_COUNT <= count <= MAX_COUNT:
            raise UserError(f"reasonmath needs seed >= 0 and count from {QUICK_COUNT} to {MAX_COUNT}; got seed={seed}, count={count}")
        self.seed, self.count = seed, count
        if seed != DEFAULT_SEED:
            # Other items are another test: its results must not read as comparable with the default's.
            self.version = f"{type(self).version}-seed{seed}"

    @cached_property
    def _items(self) -> list[Item]:
        return generate(self.seed, self.count, QUICK_COUNT)

    @cached_property
    def _by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self._items}

    def items(self, tier: Tier = "full") -> list[Item]:
        if tier == "quick":
            return [item for item in self._items if "quick" in item.tiers]
        return list(self._items)

    def item_by_id(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    def groups(self, item: Item) -> dict[str, str]:
        return {"steps": steps_band(int(item.data["steps"])), "magnitude": str(item.data["magnitude"])}

    def data_hash(self) -> str:
        """sha256 of the generated items: two runs with one hash asked exactly the same problems."""
        digest = hashlib.sha256()
        for item in self._items:
            line = json.dumps({"id": item.id, "data": item.data, "tiers": item.tiers}, sort_keys=True)
            digest.update(line.encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"{item.data['question']}\n\n{INSTRUCTION}"}]

    def score(self, item: Item, transcript: Transcript) -> Score:
        return judge(item.data, transcript)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """The seed and count asked, and how the replies were read (extraction rules, refusals)."""
        return {"seed": self.seed, "count": self.count, **aggregate(records)}
