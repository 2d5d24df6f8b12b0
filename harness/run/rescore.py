"""Re-score a finished run's stored transcripts with the current scorers: no server needed.

Useful after a scorer fix: the model's answers are facts on disk, the judgement is code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import registry
from bench.errors import UserError
from bench.run.aggregate import build_results
from bench.run.evaluation import RunOutcome, build_plan, options_from_run
from bench.run.runner import score_safely
from bench.run.store import RunStore
from bench.serve.preflight import first_failure


@dataclass
class RescoreOutcome:
    rescored: int
    changed: int
    outcome: RunOutcome


def rescore(run_dir: Path) -> RescoreOutcome:
    """Re-score and re-aggregate under the run's writer lock; files of an unknown schema are refused untouched."""
    store = RunStore.open(run_dir, lock="bench rescore")
    try:
        return _rescore(store, run_dir)
    finally:
        store.release()


def _rescore(store: RunStore, run_dir: Path) -> RescoreOutcome:
    store.check_versions()
    manifest = store.read_manifest()
    options = options_from_run(run_dir)
    plan = build_plan(options.evaluate)
    items = {(name, item.id): item for name, p in plan.packs.items() for item in p.items}
    records = store.read_items()
    rescored = changed = 0
    for record in records:
        if record.error is not None:
            continue
        item = items.get((record.pack, record.item_id))
        if item is None:
            pack = registry.load(record.pack)
            item = pack.item_by_id(record.item_id)
        if item is None:
            raise UserError(f"item {record.pack}/{record.item_id} of {run_dir} no longer exists in the pack")
        pack = plan.packs[record.pack].pack
        new = score_safely(pack, item, record.transcript)
        changed += int(record.score is None or new.value != record.score.value or new.passed != record.score.passed)
        record.score = new
        record.pack_version = pack.version
        rescored += 1
    store.rewrite_items(records)
    preflight_ok = bool(manifest.preflight) and first_failure(manifest.preflight) is None
    results = build_results(manifest.run_id, {n: p.pack for n, p in plan.packs.items()}, records, plan.expected(),
                            preflight_ok=preflight_ok, seed=plan.seed)
    store.write_results(results)
    return RescoreOutcome(rescored, changed, RunOutcome(run_dir=str(run_dir), results=results, asked=0, preflight=manifest.preflight))
