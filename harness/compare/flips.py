"""Which items flipped between a baseline and a candidate, read against the flips chance alone gives.

A pack score over 15-70 items moves only when many items move; the paired view is sharper: per
pack and per subdimension, the items that went right -> wrong, wrong -> right, stayed right and
stayed wrong, with the exact McNemar p-value of the two discordant counts. Flips alone say little
at temperature > 0, where a rerun of the very same model flips items too; so the candidate's flips
are set against a noise floor measured on the base itself:

* a rerun of the base (``--noise BASE2``: same items, another ``--seed``): the same table between
  the two base runs is what chance alone produces; and, since both tables share the base run, the
  candidate's right -> wrong items can be tested against the rerun's on the same base-right items
  (exact binomial test on the items one of the two lost and the other kept);
* the base's own trials, when it ran ``--repeats k`` with k >= 2: flips between two of its trials,
  averaged over every pair of repeats.

An item's verdict in a run is the majority of its scored trials: right when more trials passed
than failed, wrong when fewer, none on an even split. Pairing by item, not by trial, keeps the
McNemar test exact (items are independent; the trials of one item are not). The repeats floor
counts flips between single trials, and a majority of several trials flips less often than one
trial does, so that floor errs high: flips above it are above chance. A trial whose request failed
is no outcome; an item without a verdict in one of the runs (not asked, never scored, an even
split) is counted as unpaired, never as right or wrong. A subdimension's trial is right with full
marks on it (as pass^k reads it); items it does not apply to are left out of its table.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Literal

from pydantic import BaseModel, ConfigDict
from scipy import stats as scipy_stats

from bench.compare.rundata import RunData, different_items
from bench.errors import UserError
from bench.passk import FULL_MARKS

PASS = "pass"  # the measure name of the pack's own pass flag (the others are subdimensions)
SHOWN_IDS = 20  # right -> wrong ids listed per measure in plain lines (the JSON has all)

Verdict = bool | None  # right, wrong, or no verdict


class FlipTable(BaseModel):
    """Two runs' verdicts on the same items, paired: the four cells and the exact McNemar test."""

    model_config = ConfigDict(extra="forbid")
    right_to_wrong: int
    wrong_to_right: int
    both_right: int
    both_wrong: int
    paired: int  # the four cells' sum: items with a verdict in both runs
    unpaired: int  # items with a verdict in only one run (not asked, never scored, an even split)
    p_value: float | None  # exact McNemar, two-sided; None with nothing paired
    regressed: list[str]  # the right -> wrong item ids
    improved: list[str]  # the wrong -> right item ids


class NoiseFloor(BaseModel):
    """The flips chance alone produced on the base: between two runs of it, or between its trials."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["rerun", "repeats"]
    label: str
    paired: float  # items paired (for repeats: the mean over pairs of trials)
    right_to_wrong: float
    wrong_to_right: float
    per_direction: float  # (right_to_wrong + wrong_to_right) / 2: chance flips one way
    # rerun only: the base-right items the candidate lost but the rerun kept, and the reverse, with
    # the exact two-sided binomial p of the one count against the other (None: nothing to test)
    lost_only_by_candidate: int | None = None
    lost_only_by_rerun: int | None = None
    excess_p: float | None = None


class MeasureFlips(BaseModel):
    """One measure of one pack (``pass`` or a subdimension): the flip table and its noise floors."""

    model_config = ConfigDict(extra="forbid")
    measure: str
    table: FlipTable
    floors: list[NoiseFloor]

    def floor_text(self, source: str) -> str:
        """The candidate's right -> wrong count set against one floor, or "-" without that floor."""
        floor = next((f for f in self.floors if f.source == source), None)
        if floor is None:
            return "-"
        if floor.source == "rerun":
            excess = f" (excess p={floor.excess_p:.2g})" if floor.excess_p is not None else ""
            return f"{floor.right_to_wrong:g} right→wrong, {floor.wrong_to_right:g} wrong→right{excess}"
        return f"{floor.per_direction:.1f} per direction"

    def line(self) -> str:
        """``12 right→wrong vs 3 in base-vs-base``: the table and each floor, in one line."""
        table = self.table
        if not table.paired:
            return f"{self.measure}: no item has a verdict in both runs ({table.unpaired} unpaired)"
        text = (f"{self.measure}: {table.right_to_wrong} right→wrong, {table.wrong_to_right} wrong→right of "
                f"{table.paired} paired (McNemar p={table.p_value:.2g})")
        for floor in self.floors:
            if floor.source == "rerun":
                excess = f", excess p={floor.excess_p:.2g}" if floor.excess_p is not None else ""
                text += f"; vs {floor.right_to_wrong:g} right→wrong in base-vs-base{excess}"
            else:
                text += f"; vs {floor.per_direction:.1f} per direction {floor.label}"
        return text


class PackFlips(BaseModel):
    """Every measure of one pack both runs hold; ``refused`` says why a pack could not be paired."""

    model_config = ConfigDict(extra="forbid")
    pack: str
    version: str
    data_sha256: str
    trials: dict[str, int]  # role (baseline, candidate, noise) -> trials per item (--repeats)
    measures: list[MeasureFlips]
    notes: list[str]
    refused: str = ""


class Flips(BaseModel):
    """``bench flips --json`` prints this: every pack the baseline and the candidate share."""

    model_config = ConfigDict(extra="forbid")
    baseline: str
    candidate: str
    noise: str | None
    packs: list[PackFlips]
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Verdicts


def _trials(run: RunData, pack: str, measure: str) -> dict[str, dict[int, bool | None]]:
    """item id -> repeat -> that trial's outcome on ``measure`` (None: the request was not scored)."""
    found: dict[str, dict[int, bool | None]] = defaultdict(dict)
    for item in run.pack_items(pack):
        score = item.score
        if score is None or item.error is not None or score.status == "unmeasured":
            found[item.item_id][item.repeat] = None
        elif measure == PASS:
            found[item.item_id][item.repeat] = score.passed
        elif measure in score.subscores:
            found[item.item_id][item.repeat] = score.subscores[measure] >= FULL_MARKS
    if measure != PASS:  # an item whose scored trials never carried the subdimension is outside it
        return {item_id: trials for item_id, trials in found.items() if any(t is not None for t in trials.values())}
    return dict(found)


def majority(trials: Sequence[bool | None]) -> Verdict:
    """Right when more scored trials passed than failed, wrong when fewer, None on a tie or none."""
    passed = sum(t is True for t in trials)
    failed = sum(t is False for t in trials)
    return True if passed > failed else False if failed > passed else None


def verdicts(run: RunData, pack: str, measure: str) -> dict[str, Verdict]:
    """item id -> its majority verdict on ``measure`` over its trials."""
    return {item_id: majority(list(trials.values())) for item_id, trials in _trials(run, pack, measure).items()}


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """Two-sided exact McNemar p: a binomial test of one discordant count out of both (as the gate's)."""
    discordant = right_to_wrong + wrong_to_right
    return float(scipy_stats.binomtest(wrong_to_right, discordant).pvalue) if discordant else 1.0


def flip_table(baseline: Mapping[str, Verdict], candidate: Mapping[str, Verdict]) -> FlipTable:
    """Pair two runs' verdicts item by item over the items both gave one."""
    cells: dict[tuple[bool, bool], list[str]] = defaultdict(list)
    unpaired = 0
    for item_id in sorted(set(baseline) | set(candidate)):
        before, after = baseline.get(item_id), candidate.get(item_id)
        if before is None or after is None:
            unpaired += 1
            continue
        cells[(before, after)].append(item_id)
    regressed, improved = cells[(True, False)], cells[(False, True)]
    paired = sum(len(ids) for ids in cells.values())
    return FlipTable(
        right_to_wrong=len(regressed), wrong_to_right=len(improved), both_right=len(cells[(True, True)]),
        both_wrong=len(cells[(False, False)]), paired=paired, unpaired=unpaired,
        p_value=mcnemar_exact(len(regressed), len(improved)) if paired else None, regressed=regressed, improved=improved,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Noise floors


def rerun_floor(base: Mapping[str, Verdict], rerun: Mapping[str, Verdict], candidate: Mapping[str, Verdict],
                label: str) -> NoiseFloor:
    """The base-vs-rerun table, and the candidate's losses tested against the rerun's on the same items.

    On the items right in the base and with a verdict in all three runs, under "the candidate is
    as good as the base" the candidate and the rerun are exchangeable draws: an item lost by one
    but kept by the other is equally likely either way, so the two counts are tested as a fair coin.
    """
    table = flip_table(base, rerun)
    shared = [i for i, v in base.items() if v is True and rerun.get(i) is not None and candidate.get(i) is not None]
    only_candidate = sum(candidate[i] is False and rerun[i] is True for i in shared)
    only_rerun = sum(candidate[i] is True and rerun[i] is False for i in shared)
    discordant = only_candidate + only_rerun
    return NoiseFloor(
        source="rerun", label=label, paired=table.paired, right_to_wrong=table.right_to_wrong,
        wrong_to_right=table.wrong_to_right, per_direction=(table.right_to_wrong + table.wrong_to_right) / 2,
        lost_only_by_candidate=only_candidate, lost_only_by_rerun=only_rerun,
        excess_p=float(scipy_stats.binomtest(only_candidate, discordant).pvalue) if discordant else None,
    )  # fmt: skip


def repeats_floor(trials: Mapping[str, Mapping[int, bool | None]], k: int) -> NoiseFloor | None:
    """Flips between two trials of the same run, averaged over every pair of its ``k`` repeats."""
    if k < 2:
        return None
    pairs = list(combinations(range(k), 2))
    paired = right_to_wrong = wrong_to_right = 0
    for first, second in pairs:
        table = flip_table({i: t.get(first) for i, t in trials.items()}, {i: t.get(second) for i, t in trials.items()})
        paired += table.paired
        right_to_wrong += table.right_to_wrong
        wrong_to_right += table.wrong_to_right
    count = len(pairs)
    return NoiseFloor(
        source="repeats", label=f"between base trials ({k} repeats, {count} pair{'s' if count != 1 else ''})",
        paired=paired / count, right_to_wrong=right_to_wrong / count, wrong_to_right=wrong_to_right / count,
        per_direction=(right_to_wrong + wrong_to_right) / (2 * count),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Runs


def _mismatch(pack: str, runs: Mapping[str, RunData]) -> str:
    """Why the runs cannot be paired on ``pack`` (other versions or data files), or "" when they can."""
    return different_items({f"{role} {run.run_id}": run for role, run in runs.items()}, pack)


def _measures(run: RunData, pack: str) -> list[str]:
    """``pass``, then the pack's subdimensions in its declared order, then any others its items carry."""
    entry = run.pack_entry(pack)
    declared = list(entry.subdimensions) if entry else []
    seen = {name for item in run.pack_items(pack) if item.score for name in item.score.subscores}
    return [PASS] + [name for name in declared if name in seen] + sorted(seen - set(declared))


def pack_flips(baseline: RunData, candidate: RunData, pack: str, noise: RunData | None = None) -> PackFlips:
    """The flip tables of one pack both runs hold, with the floors the noise run and the base's repeats give."""
    version, digest = baseline.pack_identity(pack)
    trials = {"baseline": baseline.trials_per_item(pack), "candidate": candidate.trials_per_item(pack)}
    mismatch = _mismatch(pack, {"baseline": baseline, "candidate": candidate})
    if mismatch:
        refused = f"{pack}: {mismatch}: pair runs of one pack version and data file, or leave the pack out with --packs"
        return PackFlips(pack=pack, version=version, data_sha256=digest, trials=trials, measures=[], notes=[],
                         refused=refused)
    notes: list[str] = []
    rerun = noise if noise is not None and pack in noise.results.packs else None
    if noise is not None and rerun is None:
        notes.append(f"the noise run {noise.run_id} did not run {pack}: no base-vs-base floor")
    if rerun is not None:
        mismatch = _mismatch(pack, {"baseline": baseline, "noise": rerun})
        if mismatch:
            notes.append(f"no base-vs-base floor: {mismatch}")
            rerun = None
        else:
            trials["noise"] = rerun.trials_per_item(pack)
    k = trials["baseline"]
    measures = []
    for measure in _measures(baseline, pack):
        base_trials = _trials(baseline, pack, measure)
        base = {item_id: majority(list(t.values())) for item_id, t in base_trials.items()}
        cand = verdicts(candidate, pack, measure)
        floors = []
        if rerun is not None:
            floors.append(rerun_floor(base, verdicts(rerun, pack, measure), cand, f"base vs {rerun.run_id}"))
        own = repeats_floor(base_trials, k)
        if own is not None:
            floors.append(own)
        measures.append(MeasureFlips(measure=measure, table=flip_table(base, cand), floors=floors))
    if k == 1 and rerun is None:
        notes.append("no noise floor: give a rerun of the base (--noise BASE2, another --seed) or run it with --repeats 2+")
    return PackFlips(pack=pack, version=version, data_sha256=digest, trials=trials, measures=measures, notes=notes)


def _run_notes(baseline: RunData, noise: RunData | None) -> list[str]:
    if noise is None:
        return []
    notes = []
    if noise.manifest.model != baseline.manifest.model:
        notes.append(f"the noise run served {noise.manifest.model}, the baseline {baseline.manifest.model}: "
                     "its floor measures chance only if both are the same model")
    if noise.manifest.seed == baseline.manifest.seed:
        notes.append(f"the noise run used the baseline's seed ({noise.manifest.seed}): a rerun at one seed may "
                     "repeat the base's answers and read a floor too low; rerun with another --seed")
    return notes


def flips(baseline: RunData, candidate: RunData, noise: RunData | None = None,
          packs: Sequence[str] | None = None) -> Flips:
    """Every pack both runs hold (or those named), paired item by item; bad input is a UserError."""
    roles = {"baseline": baseline, "candidate": candidate} | ({"noise": noise} if noise is not None else {})
    missing = [f"{role} {run.path}" for role, run in roles.items() if not run.has_items]
    if missing:
        raise UserError(f"{', '.join(missing)}: no items.jsonl; flips pair each item's trials "
                        "(bench baseline save keeps it)")
    if noise is not None and noise.path.resolve() == baseline.path.resolve():
        raise UserError(f"--noise {noise.path} is the baseline itself: give a second run of the base (another --seed)")
    shared = [name for name in baseline.results.packs if name in candidate.results.packs]
    if packs:
        unknown = [name for name in packs if name not in shared]
        if unknown:
            raise UserError(f"--packs {', '.join(unknown)}: not in both runs (both hold: {', '.join(shared) or 'none'})")
        shared = [name for name in shared if name in packs]
    if not shared:
        raise UserError(f"{baseline.path} and {candidate.path} share no pack: nothing to pair")
    return Flips(
        baseline=str(baseline.path), candidate=str(candidate.path), noise=str(noise.path) if noise else None,
        packs=[pack_flips(baseline, candidate, name, noise) for name in shared], notes=_run_notes(baseline, noise),
    )  # fmt: skip


def shown_ids(ids: Sequence[str], limit: int = SHOWN_IDS) -> str:
    """Ids joined with commas, cut after ``limit`` with the count left."""
    text = ", ".join(ids[:limit])
    return text + (f" … ({len(ids) - limit} more)" if len(ids) > limit else "")
