"""Knowledge collapse: whole categories with no right answer, or scores below guessing.

A pruned model can lose a field outright (0% on a whole MMLU category) while the pack's mean
moves little, and a damaged one can fall below the score of guessing. Both are read from
results.json alone, for packs that declare their ``chance`` level in ``extra``. A category is
called dead only when enough items were asked for 0/n to exclude chance; a smaller sample says
"cannot tell", since 0/4 happens by chance one time in three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from bench import stats
from bench.records import Interval, PackResult

CHANCE_KEY = "chance"  # extra: the pass rate of guessing (mmlu: 0.25)
BREAKDOWN_KEY = "collapse_breakdown"  # extra: the breakdown whose groups can die (mmlu: category)


@cache
def min_items_dead(chance: float, confidence: float) -> int:
    """Smallest n at which 0 right out of n has an interval wholly below ``chance``."""
    n = 1
    while (stats.proportion_interval(0, n, confidence).high or 0.0) >= chance:
        n += 1
    return n


def _interval(interval: Interval, confidence: float) -> Interval:
    """The pass-rate interval recomputed at ``confidence`` from its mean and n."""
    if interval.mean is None or interval.n <= 0:
        return interval
    return stats.proportion_interval(round(interval.mean * interval.n), interval.n, confidence)


@dataclass(frozen=True)
class Collapse:
    """What one pack's results show about collapse, at one confidence."""

    pack: str
    chance: float
    min_items: int
    dead: list[str] = field(default_factory=list)  # no right answer, n large enough to exclude chance
    cannot_tell: list[str] = field(default_factory=list)  # no right answer, too few items to say
    below_chance: list[str] = field(default_factory=list)  # some right, interval wholly below chance
    pack_below_chance: str | None = None  # the pack's pass rate and interval, when wholly below chance

    @property
    def collapsed(self) -> bool:
        return bool(self.dead or self.below_chance or self.pack_below_chance)

    def lines(self) -> list[str]:
        """One line per finding, for the run table, the report and the gate."""
        found: list[str] = []
        if self.pack_below_chance:
            found.append(f"{self.pack} below chance: {self.pack_below_chance} (chance {self.chance:g})")
        if self.dead:
            found.append(f"{self.pack} dead categories (no right answer, n >= {self.min_items}): {', '.join(self.dead)}")
        if self.below_chance:
            found.append(f"{self.pack} categories below chance {self.chance:g}: {', '.join(self.below_chance)}")
        if self.cannot_tell:
            found.append(
                f"{self.pack} cannot tell whether dead (no right answer, but fewer than {self.min_items} items "
                f"each): {', '.join(self.cannot_tell)}"
            )
        return found


def collapse(result: PackResult, confidence: float) -> Collapse | None:
    """Collapse findings for a pack that declares its chance level; None for other packs."""
    chance = result.extra.get(CHANCE_KEY)
    if not isinstance(chance, (int, float)) or not 0 < chance < 1:
        return None
    need = min_items_dead(float(chance), confidence)
    dead: list[str] = []
    unsure: list[str] = []
    below: list[str] = []
    groups = result.breakdowns.get(str(result.extra.get(BREAKDOWN_KEY, "category")), {})
    for name, group in groups.items():
        rate = group.pass_rate
        if rate.mean is None or rate.n == 0:
            continue
        if rate.mean == 0.0:
            (dead if rate.n >= need else unsure).append(name)
        elif (_interval(rate, confidence).high or 1.0) < chance:
            below.append(name)
    overall = _interval(result.pass_rate, confidence)
    pack_below = None
    if overall.mean is not None and overall.high is not None and overall.high < chance:
        pack_below = f"{overall.mean:.3f} [{overall.low:.3f}, {overall.high:.3f}] n={overall.n}"
    return Collapse(result.name, float(chance), need, dead, unsure, below, pack_below)
