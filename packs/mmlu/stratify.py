"""Seeded, stratified subsets: a small sample that still touches every stratum.

MMLU's test split is sorted by subject, so its first 200 rows are three subjects; a limited run
must instead spread its budget evenly over all of them. The choice depends only on the items,
``n`` and ``seed`` (string-seeded generators, not ``hash()``), so it is the same on every
machine and every run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from bench.pack import Item


def subject_of(item: Item) -> str:
    return str(item.data["subject"])


def stratified(
    items: Sequence[Item], n: int, seed: int, key: Callable[[Item], str] = subject_of
) -> list[Item]:
    """``n`` items spread as evenly as possible over the strata ``key`` names, in input order.

    Every stratum gets ``n // strata`` items (fewer only if it has fewer), the rest go one each
    to strata drawn by the seed. With ``n`` smaller than the number of strata, ``n`` strata are
    drawn and give one item each.
    """
    if n <= 0:
        return []
    if n >= len(items):
        return list(items)
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item), []).append(index)
    names = sorted(groups)
    quota = {name: min(n // len(names), len(groups[name])) for name in names}
    left = n - sum(quota.values())
    draw_order = random.Random(f"{seed}:strata").sample(names, len(names))
    while left > 0:
        for name in draw_order:
            if left == 0:
                break
            if quota[name] < len(groups[name]):
                quota[name] += 1
                left -= 1
    chosen: list[int] = []
    for name in names:
        order = random.Random(f"{seed}:{name}").sample(groups[name], len(groups[name]))
        chosen.extend(order[: quota[name]])
    return [items[index] for index in sorted(chosen)]
