"""Item records -> results.json: per pack, subdimension and breakdown group means with intervals,
pass@1 and pass^k, health counts.

Reads only stored records, each pack's ``groups`` of the recorded items and its own ``aggregate``
hook over the records; never the server. Repeats of one item are folded to their mean first, so an
interval counts items, not samples; pass^k keeps each item's trials apart (``bench.passk``), with
k the pack's trials per item (``--repeats``) as its records show it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from bench import passk, stats
from bench.pack import Item, Pack
from bench.records import GroupResult, HealthCounts, ItemRecord, PackResult, Results, TimingStats

UNKNOWN_GROUP = "unknown"  # the group of an item the pack no longer has, or did not place


def _fold(per_item: Mapping[str, list[float]]) -> list[float]:
    folded = stats.fold_repeats((item_id, v) for item_id, values in per_item.items() for v in values)
    return list(folded.values.values())


def _full_marks(per_item: Mapping[str, list[float]]) -> dict[str, list[bool]]:
    """A subdimension's trials as outcomes: passed with full marks on it (see ``bench.passk``)."""
    return {item_id: [value >= passk.FULL_MARKS for value in values] for item_id, values in per_item.items()}


def _health(records: Sequence[ItemRecord]) -> HealthCounts:
    counts = HealthCounts()
    for record in records:
        counts.responses += len(record.transcript.exchanges)
        counts.leaked_markers += record.flags.leaked_markers
        counts.unclosed_think += record.flags.unclosed_think
        counts.null_content += record.flags.null_content
        counts.truncated += record.flags.truncated
        counts.errors += int(record.error is not None)
        counts.empty += int(record.score is not None and record.score.status == "empty")
    return counts


def _timing(records: Sequence[ItemRecord]) -> TimingStats:
    latencies = [ex.response.latency_s for r in records for ex in r.transcript.exchanges]
    usage = [ex.response.usage for r in records for ex in r.transcript.exchanges]
    return TimingStats(
        latency_p50_s=float(np.percentile(latencies, 50)) if latencies else None,
        latency_p95_s=float(np.percentile(latencies, 95)) if latencies else None,
        prompt_tokens=sum(u.prompt_tokens for u in usage),
        completion_tokens=sum(u.completion_tokens for u in usage),
        reasoning_tokens=sum(u.reasoning_tokens for u in usage),
    )


def item_groups(pack: Pack, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """item id -> breakdown -> group, for every declared breakdown (``unknown`` where unplaced)."""
    if not pack.breakdowns:
        return {}
    index: dict[str, Item] = {item.id: item for item in pack.items("full")}
    out: dict[str, dict[str, str]] = {}
    for item_id in dict.fromkeys(item_ids):
        item = index.get(item_id) or pack.item_by_id(item_id)
        placed = pack.groups(item) if item is not None else {}
        out[item_id] = {name: str(placed.get(name, UNKNOWN_GROUP)) for name in pack.breakdowns}
    return out


def _breakdowns(
    pack: Pack,
    records: Sequence[ItemRecord],
    values: Mapping[str, list[float]],
    passes: Mapping[str, list[float]],
    outcomes: Mapping[str, list[bool]],
    k: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, GroupResult]]:
    """Each declared breakdown's groups, summarised like the overall score over their own items.

    Groups come from every record, failed ones included, so a group whose items all failed is
    still listed (n=0) rather than silently missing.
    """
    groups = item_groups(pack, [record.item_id for record in records])
    out: dict[str, dict[str, GroupResult]] = {}
    for name in pack.breakdowns:
        members: dict[str, list[str]] = defaultdict(list)
        for item_id, placed in groups.items():
            members[placed[name]].append(item_id)
        out[name] = {
            group: GroupResult(
                score=stats.summarize(_fold({i: values[i] for i in ids if i in values}), confidence, seed),
                pass_rate=stats.summarize(_fold({i: passes[i] for i in ids if i in passes}), confidence, seed),
                passk=passk.summarize({i: outcomes[i] for i in ids if i in outcomes}, k, confidence, seed),
            )
            for group, ids in sorted(members.items())
        }
    return out


def pack_result(pack: Pack, records: Sequence[ItemRecord], confidence: float, seed: int) -> PackResult:
    values: dict[str, list[float]] = defaultdict(list)
    passes: dict[str, list[float]] = defaultdict(list)
    subs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    # Every asked item, in record order, with the trials that were scored (none when all failed);
    # an item the pack could not measure on this server is no item of pass^k, as of every mean.
    outcomes: dict[str, list[bool]] = {
        record.item_id: [] for record in records if record.score is None or record.score.status != "unmeasured"
    }
    # A request that failed is not a wrong answer: it is left out of the score and counted as
    # missing (the run is then incomplete and invalid until resumed), never scored as a silent zero.
    for record in records:
        score = record.score
        if score is None or record.error is not None or score.status == "unmeasured":
            continue
        values[record.item_id].append(score.value)
        passes[record.item_id].append(float(score.passed))
        outcomes[record.item_id].append(score.passed)
        for name, value in score.subscores.items():
            subs[name][record.item_id].append(value)
    k = passk.trials_asked(record.repeat for record in records)
    spread = stats.fold_repeats((item_id, v) for item_id, vals in values.items() for v in vals).spread
    ordered_subs = [s for s in pack.subdimensions if s in subs] + sorted(s for s in subs if s not in pack.subdimensions)
    return PackResult(
        name=pack.name,
        version=pack.version,
        n=len(values),
        score=stats.summarize(_fold(values), confidence, seed),
        pass_rate=stats.summarize(_fold(passes), confidence, seed),
        subdimensions={name: stats.summarize(_fold(subs[name]), confidence, seed) for name in ordered_subs},
        breakdowns=_breakdowns(pack, records, values, passes, outcomes, k, confidence, seed),
        health=_health(records),
        timing=_timing(records),
        extra=pack.aggregate(records),
        repeat_spread=spread,
        passk=passk.summarize(outcomes, k, confidence, seed),
        subdimension_passk={
            name: found for name in ordered_subs
            if (found := passk.summarize(_full_marks(subs[name]), k, confidence, seed)) is not None
        },
    )


def build_results(
    run_id: str,
    packs: Mapping[str, Pack],
    records: Sequence[ItemRecord],
    expected: Mapping[str, int],
    *,
    preflight_ok: bool = True,
    confidence: float = 0.95,
    seed: int = 0,
) -> Results:
    """Aggregate every pack; mark the run invalid when the serving stack leaked or items are missing.

    ``expected`` maps pack name -> number of (item, repeat) records the run should hold.
    """
    by_pack: dict[str, list[ItemRecord]] = defaultdict(list)
    for record in records:
        by_pack[record.pack].append(record)
    results = {name: pack_result(pack, by_pack.get(name, []), confidence, seed) for name, pack in packs.items()}
    health = _health(records)
    # Unique (item, repeat) pairs, not lines: a record written twice must never stand in for a missing one.
    scored = {name: len({(r.item_id, r.repeat) for r in by_pack.get(name, []) if r.error is None and r.score is not None})
              for name in packs}
    not_asked = {name: len({(r.item_id, r.repeat) for r in by_pack.get(name, []) if r.not_asked is not None})
                 for name in packs}
    missing = sum(max(0, expected.get(name, 0) - scored[name] - not_asked[name]) for name in packs)
    unfit = sum(not_asked.values())
    reasons: list[str] = []
    if not preflight_ok:
        reasons.append("preflight failed")
    if health.leaked_markers:
        reasons.append(f"{health.leaked_markers} responses leaked reasoning or tool-call markup into content")
    if health.unclosed_think:
        reasons.append(f"{health.unclosed_think} responses have an unclosed <think> block")
    if missing:
        reasons.append(f"{missing} items missing or failed (resume the run to ask them again)")
    if unfit:
        why = next(r.not_asked for r in records if r.not_asked is not None)
        reasons.append(f"{unfit} items not asked: {why} (a new run with a larger --max-model-len asks them)")
    return Results(
        run_id=run_id,
        valid=not reasons,
        invalid_reasons=reasons,
        complete=missing == 0,
        missing_items=missing,
        packs=results,
        health=health,
        confidence=confidence,
    )
