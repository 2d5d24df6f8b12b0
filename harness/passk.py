"""pass@1 and pass^k: how often an item is solved, and how often it is solved every time it is asked.

A pack run with ``--repeats k`` asks each item k times. pass@1 is the mean over items of the share
of their trials that passed; pass^k is the share of items whose k trials all pass, the number that
matters when a deployed model must get a task right every time, not on average. Per item, with
``c`` passes out of ``n >= j`` trials, ``C(c, j) / C(n, j)`` is the unbiased estimate of the chance
that ``j`` fresh trials all pass (the chance that j trials drawn without replacement from the n all
passed); pass^j is its mean over items. With ``n == k`` trials pass^k is the all-pass indicator,
and the same trials give pass^j for every smaller j: the curve shows how fast reliability falls.

Trials that were never scored (a failed request) are not outcomes: an item with fewer than k
scored trials is left out of pass^k and counted as ``short``, never read as a failure or a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from bench import stats
from bench.records import Interval, PassK

# A subdimension has no pass flag of its own: a trial passes it with full marks on it.
FULL_MARKS = 1.0 - 1e-9


def pass_hat(passes: int, trials: int, k: int) -> float:
    """Unbiased estimate of the chance that ``k`` trials of one item all pass: C(c, k) / C(n, k)."""
    if not 1 <= k <= trials:
        raise ValueError(f"k={k} outside 1..{trials} trials")
    if not 0 <= passes <= trials:
        raise ValueError(f"passes={passes} outside 0..{trials}")
    return math.comb(passes, k) / math.comb(trials, k)


def trials_asked(repeats: Iterable[int]) -> int:
    """The k of a pack's run: one more than the highest repeat index any of its records holds."""
    return max(repeats, default=-1) + 1


def per_item(outcomes: Mapping[str, Sequence[bool]], k: int) -> dict[str, float]:
    """item id -> its pass^k estimate, for the items with at least ``k`` scored trials."""
    return {item_id: pass_hat(sum(trials), len(trials), k) for item_id, trials in outcomes.items()
            if k >= 1 and len(trials) >= k}


def summarize(outcomes: Mapping[str, Sequence[bool]], k: int, confidence: float, seed: int) -> PassK | None:
    """pass@1, pass^k (with intervals over items) and the pass^j curve of items asked ``k`` times.

    Intervals resample items, never trials: Wilson when every item's value is 0 or 1 (pass^k with
    exactly k trials each), a seeded bootstrap of the item means otherwise. An item listed with
    fewer than k trials (none, when every request for it failed) counts as ``short``. None without items.
    """
    if k < 1 or not outcomes:
        return None
    scored = {item_id: trials for item_id, trials in outcomes.items() if trials}
    full = {item_id: trials for item_id, trials in scored.items() if len(trials) >= k}
    curve: list[float | None] = []
    for j in range(1, k + 1):
        values = per_item(full, j)
        curve.append(sum(values.values()) / len(values) if values else None)
    pass_at_1 = stats.summarize([sum(trials) / len(trials) for trials in scored.values()], confidence, seed)
    hat = list(per_item(full, k).values())
    pass_hat_k = stats.summarize(hat, confidence, seed) if hat else Interval(mean=None, n=0, method="none")
    return PassK(k=k, pass_at_1=pass_at_1, pass_hat_k=pass_hat_k, curve=curve, short=len(outcomes) - len(full))


def marks(trials: Sequence[bool | None]) -> str:
    """One mark per trial, in repeat order: ✓ passed, ✗ failed, · not scored (the request failed)."""
    return "".join("·" if outcome is None else "✓" if outcome else "✗" for outcome in trials)
