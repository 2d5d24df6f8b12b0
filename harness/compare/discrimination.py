"""Does a pack discriminate? The items whose outcome never changed across runs and their trials.

A pack that reads 16/20 on every model may be measuring nothing: sixteen items every model
passes (saturated) and four none can (impossible, or broken: a wrong reference, a scorer that
cannot be satisfied). Over several runs (and each run's ``--repeats`` trials) every item is one of:
always passed, always failed, or changed. Only the changed items can ever move a pack's score, so
their share is what the pack can still tell apart; the two frozen lists say which items to
replace, harden or repair. An item's outcome is its trials' pass/fail; a trial whose request
failed is no outcome, and an item some run scored no trial of is listed apart, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from bench.compare.rundata import RunData, different_items
from bench.errors import UserError


class PackDiscrimination(BaseModel):
    """One pack over the runs that hold it: which items changed outcome and which never did."""

    model_config = ConfigDict(extra="forbid")
    pack: str
    version: str
    data_sha256: str
    runs: list[str]  # run ids holding the pack
    observations: int  # trials per item over those runs: the sum of each run's --repeats
    items: int  # items with a scored trial in every run holding the pack
    changed: int  # passed in some trial and failed in another
    changed_share: float | None  # changed / items: the part of the pack that can still move its score
    always_passed: list[str]  # saturated: every trial of every run passed
    always_failed: list[str]  # impossible or broken: no trial of any run passed
    not_in_every_run: list[str]  # asked by only some runs (tier, --limit) or every trial failed to score
    note: str = ""  # why the counts say little, when they do

    def lines(self) -> list[str]:
        """Plain lines: the counts, then each frozen list (ids in full: they are the point)."""
        share = f"{self.changed_share:.0%}" if self.changed_share is not None else "-"
        head = (f"{self.pack}: {self.changed} of {self.items} items changed outcome ({share}) over "
                f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}, {self.observations} trials per item; "
                f"{len(self.always_passed)} always passed, {len(self.always_failed)} always failed")
        out = [head + (f"; {len(self.not_in_every_run)} not in every run" if self.not_in_every_run else "")]
        if self.note:
            out.append(f"  note: {self.note}")
        for label, ids in (("always passed", self.always_passed), ("always failed", self.always_failed),
                           ("not in every run", self.not_in_every_run)):
            if ids:
                out.append(f"  {label} ({len(ids)}): {', '.join(ids)}")
        return out


class Discrimination(BaseModel):
    """Every pack of the given runs; ``bench packs --discrimination --json`` prints this."""

    model_config = ConfigDict(extra="forbid")
    runs: list[str]  # run directories, as given
    packs: list[PackDiscrimination]


def _check_same_items(runs: Sequence[RunData], pack: str) -> tuple[str, str]:
    """The pack's (version, data sha256), the same in every run, or one line saying where not."""
    mismatch = different_items({run.run_id: run for run in runs}, pack)
    if mismatch:
        raise UserError(f"{pack}: {mismatch}: compare runs of one pack version and data file, or leave the odd run out")
    return runs[0].pack_identity(pack)


def pack_discrimination(runs: Sequence[RunData], pack: str) -> PackDiscrimination:
    """Classify each item of ``pack`` over ``runs`` (all of which hold it and asked the same items)."""
    version, digest = _check_same_items(runs, pack)
    per_run = [{item_id: [t for t in trials if t is not None] for item_id, trials in run.trials(pack).items()}
               for run in runs]
    every = sorted(set().union(*per_run))
    passed: list[str] = []
    failed: list[str] = []
    partial: list[str] = []
    changed = 0
    for item_id in every:
        outcomes = [per.get(item_id, []) for per in per_run]
        if not all(outcomes):
            partial.append(item_id)
            continue
        flat = {outcome for trials in outcomes for outcome in trials}
        if flat == {True}:
            passed.append(item_id)
        elif flat == {False}:
            failed.append(item_id)
        else:
            changed += 1
    items = len(every) - len(partial)
    observations = sum(run.trials_per_item(pack) for run in runs)
    note = ""
    if observations < 2:
        note = "one run with one trial per item: no item can change; give more runs or a run with --repeats"
    elif items == 0:
        note = "no item was scored in every run"
    return PackDiscrimination(
        pack=pack, version=version, data_sha256=digest, runs=[run.run_id for run in runs], observations=observations,
        items=items, changed=changed, changed_share=changed / items if items else None, always_passed=passed,
        always_failed=failed, not_in_every_run=partial, note=note,
    )  # fmt: skip


def discrimination(runs: Sequence[RunData]) -> Discrimination:
    """Every pack any run holds, over the runs holding it; a pack asked as different items is refused."""
    if not runs:
        raise UserError("give at least one run directory: bench packs --discrimination RUN [RUN ...]")
    missing = [str(run.path) for run in runs if not run.has_items]
    if missing:
        raise UserError(f"{', '.join(missing)}: no items.jsonl; discrimination reads each item's trials "
                        "(bench baseline save keeps it)")
    names: list[str] = []
    for run in runs:
        names += [name for name in run.results.packs if name not in names]
    packs = [pack_discrimination([run for run in runs if name in run.results.packs], name) for name in names]
    return Discrimination(runs=[str(run.path) for run in runs], packs=packs)
