"""The gate: candidate versus baseline under a spec, to one verdict a CI job can act on.

``Pass`` (exit 0) only when every rule was checked and held; ``Inconclusive`` (exit 3, or 0
under ``on_underpowered: pass``) when no rule failed but some could not be checked, with the
items each pack would need; the first failing rule's ``Fail*`` verdict with every failing rule
listed (exit 1); or ``Invalid`` (exit 2) when either run cannot be trusted: marked invalid
(leaked markers, preflight failed), items missing, or the spec names what the runs do not hold.
A rule whose allowance is smaller than the paired sample can detect is ``underpowered``:
reading it as a pass would claim what the numbers cannot support.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from scipy import stats as scipy_stats

from bench import knowledge, stats
from bench.compare.rundata import PASS_HAT_K, RunData
from bench.compare.spec import Decision, DivergenceLimits, DivergenceRules, GateSpec, PackRules, Thresholds
from bench.divergence.summary import ALL, DivergenceSummary, find_summary
from bench.errors import UserError
from bench.records import Interval, Manifest, PackResult

EXIT_PASS, EXIT_FAIL, EXIT_INVALID, EXIT_INCONCLUSIVE = 0, 1, 2, 3
INCONCLUSIVE = "Inconclusive"
# Float noise must not turn "dropped exactly the allowance" into a failure.
_EPS = 1e-12

RuleStatus = Literal["pass", "fail", "underpowered", "invalid"]


class StackDifference(BaseModel):
    """One serving-stack setting that differs between baseline and candidate."""

    model_config = ConfigDict(extra="forbid")
    setting: str
    baseline: str
    candidate: str


class RuleOutcome(BaseModel):
    """One rule of the spec applied to one measure."""

    model_config = ConfigDict(extra="forbid")
    id: str  # e.g. "toolcall.score.drop", "toolcall.restraint.floor"
    pack: str
    subdimension: str | None
    measure: str  # "score", "pass_rate", "pass_hat_k" or the subdimension's name
    kind: Literal["floor", "drop", "collapse", "ceiling"]
    threshold: float  # collapse: the pack's chance level
    decision: Decision
    verdict: str  # the Fail* name a failure of this rule maps to
    status: RuleStatus
    counts_as_failure: bool
    value: float | None  # floor: the candidate's mean; drop: baseline minus candidate
    low: float | None  # floor: candidate interval; drop: interval of candidate minus baseline
    high: float | None
    comparison: stats.PairedComparison | None = None
    baseline_repeat_spread: float | None = None
    candidate_repeat_spread: float | None = None
    items_needed: int | None = None  # underpowered: paired items (collapse: items per category) to check it
    message: str


class RunRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_id: str
    path: str
    model: str | None


class GateResult(BaseModel):
    """Everything the gate decided; ``bench gate --json`` writes it and ``bench report --gate`` reads it."""

    model_config = ConfigDict(extra="forbid")
    verdict: str
    exit_code: int
    line: str
    candidate: RunRef
    baseline: RunRef
    spec_source: str
    decision: Decision
    confidence: float
    power: float
    rules: list[RuleOutcome]
    failing_verdicts: list[str]
    invalid_reasons: list[str]
    warnings: list[str]
    stack_differences: list[StackDifference]
    needed: list[str] = []  # per pack: what it would take to check the rules that could not be
    ungated: list[str] = []  # packs in the candidate run that no rule of the spec judged

    @property
    def failures(self) -> list[RuleOutcome]:
        return [rule for rule in self.rules if rule.counts_as_failure]

    @property
    def underpowered(self) -> list[RuleOutcome]:
        return [rule for rule in self.rules if rule.status == "underpowered"]


# ---------------------------------------------------------------------------------------------
# Serving stack


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True) if value else "-"
    return str(value)


def stack_settings(manifest: Manifest) -> dict[str, str]:
    """The serving-stack settings of a run that can move scores, as display strings, in order."""
    server = manifest.server
    settings = {
        "model": _text(manifest.model),
        "vLLM version": _text(server.vllm_version),
        "reasoning parser": _text(server.reasoning_parser),
        "tool-call parser": _text(server.tool_call_parser),
        "chat template sha256": _text(server.chat_template_sha256),
        "max model len": _text(server.max_model_len),
        "generation config": _text(server.generation_config),
        "sampling overrides": _text(manifest.sampling_overrides),
        "repeats": _text(manifest.repeats),
    }
    for pack in manifest.packs:
        settings[f"{pack.name} version"] = pack.version
        settings[f"{pack.name} data sha256"] = pack.data_hash
        settings[f"{pack.name} sampling"] = _text(pack.sampling)
    return settings


# Settings expected to differ between a baseline and its compressed candidate.
_EXPECTED_TO_DIFFER = frozenset({"model"})


def stack_differences(baseline: Manifest, candidate: Manifest) -> list[StackDifference]:
    """Settings (other than the model) that differ; packs present in only one run are skipped."""
    base, cand = stack_settings(baseline), stack_settings(candidate)
    return [
        StackDifference(setting=key, baseline=base[key], candidate=cand[key])
        for key in cand
        if key in base and key not in _EXPECTED_TO_DIFFER and base[key] != cand[key]
    ]


def _difference_warning(diff: StackDifference) -> str:
    why = ""
    if diff.setting == "chat template sha256":
        why = " (a template change alone moves tool-call scores by points)"
    elif "parser" in diff.setting:
        why = " (parsers decide what counts as content, reasoning and tool calls)"
    elif "sampling" in diff.setting or diff.setting == "generation config":
        why = " (different sampling is a different measurement)"
    elif diff.setting.endswith(" version") or diff.setting.endswith(" data sha256"):
        why = " (different items or scoring)"
    return f"{diff.setting} differs: baseline {diff.baseline} vs candidate {diff.candidate}{why}"


TRUNCATION_DIFFERENCE = 0.05


def truncation_differences(baseline: RunData, candidate: RunData) -> list[str]:
    """Packs whose share of replies cut off at max_tokens differs by 5 points or more between the runs.

    A candidate that rambles past the budget where the base did not loses those items to the budget;
    the gate says so as a difference in what was measured, next to (not instead of) the score change.
    """
    lines = []
    for pack, cand in candidate.results.packs.items():
        base = baseline.results.packs.get(pack)
        if base is None or not base.health.responses or not cand.health.responses:
            continue
        base_rate = base.health.truncated / base.health.responses
        cand_rate = cand.health.truncated / cand.health.responses
        if abs(cand_rate - base_rate) >= TRUNCATION_DIFFERENCE:
            lines.append(f"{pack}: replies cut off at max_tokens: baseline {base_rate:.0%} vs candidate {cand_rate:.0%}: "
                         "a difference in what was measured (items lost to the token budget), not only in skill; "
                         "rerun both with a larger --thinking-budget/--max-tokens to tell them apart")
    return lines


# ---------------------------------------------------------------------------------------------
# Validity


def _validity(run: RunData, label: str) -> list[str]:
    reasons = [f"{label} run {run.run_id} is invalid: {reason}" for reason in run.results.invalid_reasons]
    if not run.results.valid and not run.results.invalid_reasons:
        reasons.append(f"{label} run {run.run_id} is marked invalid")
    if not run.results.complete and not any("missing" in reason for reason in run.results.invalid_reasons):
        reasons.append(f"{label} run {run.run_id} is incomplete: {run.results.missing_items} items missing")
    failed = [check.name for check in run.manifest.preflight if not check.ok]
    if failed and not any("preflight" in reason for reason in run.results.invalid_reasons):
        reasons.append(f"{label} run {run.run_id} failed preflight: {', '.join(failed)}")
    if run.manifest.status in ("failed", "interrupted"):
        reasons.append(f"{label} run {run.run_id} has status {run.manifest.status}")
    return reasons


# ---------------------------------------------------------------------------------------------
# Rules


class _PlannedRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pack: str
    subdimension: str | None
    measure: str
    kind: Literal["floor", "drop", "collapse"]
    threshold: float
    decision: Decision
    verdict: str


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else (f"; it reports: {', '.join(options)}" if options else "")


def _plan(
    spec: GateSpec, candidate: RunData, baseline: RunData, invalid: list[str], warnings: list[str]
) -> list[_PlannedRule]:
    """Expand the spec into concrete rules, in spec order; unresolvable names become invalid reasons.

    A subdimension the baseline scored but the candidate did not (every such reply truncated or
    errored, so no subscores) cannot be compared: it is warned about, not silently skipped.
    """
    listed: list[tuple[str, PackRules]] = list(spec.packs.items())
    if spec.defaults is not None:
        in_runs = list(candidate.results.packs) + [p for p in baseline.results.packs if p not in candidate.results.packs]
        listed += [(name, spec.defaults) for name in in_runs if name not in spec.packs]
    planned: list[_PlannedRule] = []
    not_run: list[str] = []
    for pack, rules in listed:
        result = candidate.results.packs.get(pack)
        if result is None:
            # Absent from both runs: the spec covers more packs than were run, unless it insists.
            if pack in baseline.results.packs or rules.required or spec.strict:
                options = list(candidate.results.packs)
                invalid.append(f"pack {pack!r} is not in the candidate run{_did_you_mean(pack, options)}")
            else:
                not_run.append(pack)
            continue
        base_result = baseline.results.packs.get(pack)
        base_subs = list(base_result.subdimensions) if base_result else []
        targets: list[tuple[str | None, Thresholds]] = [(None, rules)]
        lost: list[str] = []
        for named, sub_rules in rules.subdimensions.items():
            if named in result.subdimensions:
                targets.append((named, sub_rules))
            elif named in base_subs:
                lost.append(named)
            else:
                options = list(dict.fromkeys([*result.subdimensions, *base_subs]))
                invalid.append(f"spec names subdimension {named!r} of {pack}, which neither run reports{_did_you_mean(named, options)}")
        if rules.each_subdimension is not None:
            targets += [(name, rules.each_subdimension) for name in result.subdimensions if name not in rules.subdimensions]
            lost += [name for name in base_subs if name not in result.subdimensions and name not in rules.subdimensions]
        unjudged = result.health.truncated + result.health.empty + result.health.errors
        why = ("its replies were truncated or failed, and carry no subscores" if unjudged
               else "it asked no item that measures it: other items, tier or limit")
        for name in lost:
            items = base_result.subdimensions[name].n if base_result else 0
            warnings.append(
                f"{pack}/{name}: the baseline scored {items} items, the candidate none "
                f"({why}); rules for it not applied"
            )
        for sub, limits in targets:
            verdict = spec.verdict_for(pack, rules, limits if sub is not None else None)
            decision = limits.decision or (rules.decision if sub is not None else None) or spec.decision
            measure = sub if sub is not None else rules.metric
            for kind, threshold in (("floor", limits.floor), ("drop", limits.allowed_drop)):
                if threshold is not None:
                    planned.append(
                        _PlannedRule(
                            pack=pack, subdimension=sub, measure=measure, kind=kind,  # type: ignore[arg-type]
                            threshold=threshold, decision=decision, verdict=verdict,
                        )  # fmt: skip
                    )
        if rules.dead_categories == "fail":
            chance = result.extra.get(knowledge.CHANCE_KEY)
            if chance is None:
                if pack in spec.packs:  # under defaults:, the rule applies only where a pack declares chance
                    warnings.append(f"{pack}: its results declare no chance level (written by an older bench?): "
                                    "dead_categories not checked")
                continue
            planned.append(_PlannedRule(
                pack=pack, subdimension=None, measure="dead_categories", kind="collapse", threshold=float(chance),
                decision=rules.decision or spec.decision, verdict=spec.verdict_for(pack, rules),
            ))  # fmt: skip
    if not_run:
        warnings.append(f"the spec has rules for packs not in either run, not checked: {', '.join(not_run)}")
    return planned


def ungated_packs(spec: GateSpec, candidate: RunData) -> list[str]:
    """Packs in the candidate run that neither a rule under ``packs:`` nor ``defaults:`` judges."""
    if spec.defaults is not None:
        return []
    return [pack for pack in candidate.results.packs if pack not in spec.packs]


def _rule_id(rule: _PlannedRule) -> str:
    return f"{rule.pack}.{rule.measure}.{rule.kind}"


def _measure_label(rule: _PlannedRule) -> str:
    return f"{rule.pack} {rule.measure}" if rule.subdimension is None else f"{rule.pack}/{rule.subdimension}"


def _candidate_interval(result: PackResult, rule: _PlannedRule) -> Interval | None:
    if rule.subdimension is not None:
        return result.subdimensions.get(rule.subdimension)
    if rule.measure == PASS_HAT_K:
        return result.passk.pass_hat_k if result.passk is not None else None
    return result.score if rule.measure == "score" else result.pass_rate


def _trials(run: RunData, pack: str) -> int | None:
    """The k a run asked each item of ``pack`` (from its records, else from results.json)."""
    if run.has_items:
        return run.trials_per_item(pack)
    found = run.results.packs[pack].passk
    return found.k if found is not None else None


def _pass_hat_k_problem(rule: _PlannedRule, candidate: RunData, baseline: RunData) -> str | None:
    """Why a pass^k rule cannot be judged: no pass^k in the results, or runs asked a different k.

    pass^k of 3 trials and of 5 are different measures; pairing them would read a change of
    --repeats as a change of the model.
    """
    label = f"{rule.pack} {PASS_HAT_K}"
    if rule.kind == "floor":
        if candidate.results.packs[rule.pack].passk is None:
            return (f"{label}: candidate {candidate.run_id}'s results.json carries no pass^k (written by an older "
                    f"bench): run bench rescore {candidate.path}")
        return None
    if rule.pack not in baseline.results.packs:
        return None  # warned about with the other drop rules
    base_k, cand_k = _trials(baseline, rule.pack), _trials(candidate, rule.pack)
    if base_k != cand_k:
        return (f"{label}: the baseline asked each item {base_k if base_k is not None else '?'} times, the candidate "
                f"{cand_k if cand_k is not None else '?'}: pass^k pairs only runs with the same --repeats")
    return None


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _outcome(rule: _PlannedRule, **measured: Any) -> RuleOutcome:
    """A RuleOutcome carrying the planned rule's identity plus what was measured."""
    return RuleOutcome(
        id=_rule_id(rule), pack=rule.pack, subdimension=rule.subdimension, measure=rule.measure, kind=rule.kind,
        threshold=rule.threshold, decision=rule.decision, verdict=rule.verdict, **measured,
    )  # fmt: skip


def _floor_outcome(rule: _PlannedRule, candidate: RunData, spec: GateSpec) -> RuleOutcome:
    interval = _candidate_interval(candidate.results.packs[rule.pack], rule)
    label = _measure_label(rule)
    if interval is None or interval.mean is None:
        return _outcome(
            rule, status="invalid", counts_as_failure=False, value=None, low=None, high=None,
            message=f"{label}: no scored items to hold to the floor {rule.threshold:.3f}",
        )  # fmt: skip
    upper = interval.high if interval.high is not None else interval.mean
    failed = (interval.mean < rule.threshold - _EPS) if rule.decision == "point" else (upper < rule.threshold - _EPS)
    has_bounds = interval.low is not None and interval.high is not None
    span = f" ({_pct(spec.confidence)} CI {interval.low:.3f}-{interval.high:.3f})" if has_bounds else ""
    relation = "below" if interval.mean < rule.threshold else "at or above"
    message = f"{label} {interval.mean:.3f}{span} is {relation} the floor {rule.threshold:.3f} (n={interval.n})"
    lower = interval.low if interval.low is not None else interval.mean
    if not failed and rule.decision == "confident" and lower < rule.threshold - _EPS:
        # Not below the floor, but not shown above it either: the interval straddles it.
        needed = _floor_items(interval.mean, rule.threshold, spec.confidence)
        return _outcome(
            rule, status="underpowered", counts_as_failure=spec.on_underpowered == "fail", value=interval.mean,
            low=interval.low, high=interval.high, items_needed=needed,
            message=message + "; underpowered: its interval reaches below the floor",
        )  # fmt: skip
    return _outcome(
        rule, status="fail" if failed else "pass", counts_as_failure=failed, value=interval.mean,
        low=interval.low, high=interval.high, message=message,
    )  # fmt: skip


def _floor_items(mean: float, floor: float, confidence: float) -> int | None:
    """About how many items put the lower end of a Wilson interval at ``mean`` above ``floor``; None
    when the mean itself is not above it (no number of items would then show the floor held)."""
    if mean <= floor:
        return None
    n = 1
    while (stats.proportion_interval(round(mean * n), n, confidence).low or 0.0) < floor:
        n *= 2
        if n > 10_000_000:
            return None
    low, high = n // 2, n
    while low + 1 < high:
        middle = (low + high) // 2
        if (stats.proportion_interval(round(mean * middle), middle, confidence).low or 0.0) >= floor:
            high = middle
        else:
            low = middle
    return high


def items_needed(differences: list[float], threshold: float, confidence: float, power: float) -> int | None:
    """Fewest paired items at which the smallest detectable drop reaches ``threshold``.

    The inverse of :func:`bench.stats.min_detectable_drop` at the observed spread of differences:
    the exact test's resolution needs ``k_min / threshold`` items, the spread ``(z * sd / threshold)^2``.
    More repeats narrow the spread only; the resolution needs more distinct items.
    """
    if threshold <= 0:
        return None
    alpha = 1.0 - confidence
    z_sum = float(scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power))
    sd = 0.0
    if len(differences) > 1:
        mean = sum(differences) / len(differences)
        sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    by_resolution = math.ceil(stats.min_changed_items(confidence) / threshold - 1e-9)
    by_spread = math.ceil((z_sum * sd / threshold) ** 2 - 1e-9)
    return max(by_resolution, by_spread, 1)


def _collapse_outcome(rule: _PlannedRule, candidate: RunData, spec: GateSpec) -> RuleOutcome:
    """Dead categories and below-chance scores fail; a zero on too few items cannot be told."""
    found = knowledge.collapse(candidate.results.packs[rule.pack], spec.confidence)
    if found is None:
        return _outcome(
            rule, status="invalid", counts_as_failure=False, value=None, low=None, high=None,
            message=f"{rule.pack} declares no chance level: dead_categories cannot be judged for it",
        )  # fmt: skip
    if found.collapsed:
        return _outcome(
            rule, status="fail", counts_as_failure=True, value=None, low=None, high=None,
            message="; ".join(line for line in found.lines() if "cannot tell" not in line),
        )  # fmt: skip
    if found.cannot_tell:
        return _outcome(
            rule, status="underpowered", counts_as_failure=spec.on_underpowered == "fail", value=None, low=None,
            high=None, items_needed=found.min_items,
            message=found.lines()[-1] + f"; underpowered: {found.min_items} items per category are needed to call one dead",
        )  # fmt: skip
    return _outcome(
        rule, status="pass", counts_as_failure=False, value=None, low=None, high=None,
        message=f"{rule.pack}: every category has a right answer and none lies below chance {found.chance:g}",
    )  # fmt: skip


def _drop_outcome(rule: _PlannedRule, candidate: RunData, baseline: RunData, spec: GateSpec) -> RuleOutcome:
    label = _measure_label(rule)
    cand_scores = candidate.folded(rule.pack, rule.measure)
    base_scores = baseline.folded(rule.pack, rule.measure)
    comparison = stats.compare_paired(base_scores.values, cand_scores.values, spec.confidence, spec.power, spec.seed)
    spreads = {"baseline_repeat_spread": base_scores.spread, "candidate_repeat_spread": cand_scores.spread}
    if comparison.difference is None:
        # Measured in each run, but never on the same item (a small --limit, or replies one run
        # could not score): zero paired items detect no drop, and the pack total is still judged.
        message = (f"{label}: no item measured in both runs ({len(comparison.baseline_only)} only in the baseline, "
                   f"{len(comparison.candidate_only)} only in the candidate); underpowered: 0 paired items detect no drop")
        return _outcome(
            rule, status="underpowered", counts_as_failure=spec.on_underpowered == "fail", value=None,
            low=None, high=None, comparison=comparison, message=message,
            items_needed=items_needed([], rule.threshold, spec.confidence, spec.power), **spreads,
        )  # fmt: skip
    drop = 0.0 - comparison.difference  # not -x: a held score must not print as -0.000
    if rule.decision == "point":
        failed = drop > rule.threshold + _EPS
    else:
        failed = comparison.high is not None and comparison.high < -rule.threshold - _EPS
    mdd = comparison.min_detectable_drop
    underpowered = not failed and (mdd is None or mdd > rule.threshold + _EPS)
    status: RuleStatus = "fail" if failed else ("underpowered" if underpowered else "pass")
    change = "fell" if drop > 0 else "rose" if drop < 0 else "held"
    span = ""
    if comparison.low is not None and comparison.high is not None:
        span = f"; {_pct(spec.confidence)} CI of change {comparison.low:+.3f}..{comparison.high:+.3f}"
    message = (
        f"{label} {change} {abs(drop):.3f} ({comparison.baseline_mean:.3f} -> {comparison.candidate_mean:.3f}"
        f"{span}; {comparison.n_paired} paired items), allowed drop {rule.threshold:.3f}"
    )
    if status == "underpowered":
        message += f"; underpowered: {comparison.n_paired} items detect drops of {mdd:.3f} or more"
    counts = failed or (status == "underpowered" and spec.on_underpowered == "fail")
    needed = None
    if status == "underpowered":
        shared = sorted(set(base_scores.values) & set(cand_scores.values))
        diffs = [cand_scores.values[i] - base_scores.values[i] for i in shared]
        needed = items_needed(diffs, rule.threshold, spec.confidence, spec.power)
    return _outcome(
        rule, status=status, counts_as_failure=counts, value=drop, low=comparison.low, high=comparison.high,
        comparison=comparison, message=message, items_needed=needed, **spreads,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Divergence (bench diverge): limits on how far the candidate's distributions moved, per domain

DIVERGENCE = "divergence"
_DIVERGENCE_MEASURES: tuple[tuple[str, str, Literal["floor", "ceiling"]], ...] = (
    ("mean_kl", "mean_kl_max", "ceiling"), ("p99_kl", "p99_kl_max", "ceiling"), ("top1_agreement", "top1_agreement_min", "floor"))


def _texts_needed(interval: Interval, threshold: float) -> int | None:
    """Texts at which the interval, shrinking as 1/sqrt(n), would clear ``threshold`` (a rough guide)."""
    if interval.mean is None or interval.low is None or interval.high is None or interval.mean == threshold:
        return None
    half = (interval.high - interval.low) / 2
    return max(interval.n + 1, math.ceil(interval.n * (half / abs(interval.mean - threshold)) ** 2))


def _divergence_rule(summary: DivergenceSummary, domain: str, measure: str, kind: Literal["floor", "ceiling"],
                     threshold: float, rules: DivergenceRules, decision: Decision, on_underpowered: str) -> RuleOutcome:
    figures = summary.domains[domain]
    found = getattr(figures, measure)
    interval = found if isinstance(found, Interval) else Interval(mean=float(found), n=figures.texts, method="point")
    value = interval.mean
    assert value is not None
    low, high = interval.low, interval.high
    beyond = value > threshold + _EPS if kind == "ceiling" else value < threshold - _EPS
    status: RuleStatus = "fail" if beyond else "pass"
    if decision == "confident" and low is not None and high is not None:
        worst, best = (low, high) if kind == "ceiling" else (high, low)
        shown_beyond = worst > threshold + _EPS if kind == "ceiling" else worst < threshold - _EPS
        shown_within = best <= threshold + _EPS if kind == "ceiling" else best >= threshold - _EPS
        status = "fail" if shown_beyond else "pass" if shown_within else "underpowered"
    label = {"mean_kl": "mean KL", "p99_kl": "p99 KL", "top1_agreement": "top-1 agreement"}[measure]
    span = f" [{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""
    limit = "limit" if kind == "ceiling" else "floor"
    message = f"divergence {domain} {label} {value:.4g}{span} over {figures.texts} texts, {limit} {threshold:g}"
    needed = None
    if status == "underpowered":
        needed = _texts_needed(interval, threshold)
        message += "; underpowered: the interval straddles the " + limit
    counts = status == "fail" or (status == "underpowered" and on_underpowered == "fail")
    return RuleOutcome(
        id=f"{DIVERGENCE}.{domain}.{measure}.{kind}", pack=DIVERGENCE, subdimension=None if domain == ALL else domain,
        measure=measure, kind=kind, threshold=threshold, decision=decision, verdict=rules.verdict, status=status,
        counts_as_failure=counts, value=value, low=low, high=high, items_needed=needed, message=message,
    )  # fmt: skip


def divergence_outcomes(summary: DivergenceSummary, spec: GateSpec, invalid: list[str]) -> list[RuleOutcome]:
    """The spec's divergence limits applied to one measurement; a domain it names that was not
    measured is an invalid reason (added to ``invalid``)."""
    rules = spec.divergence
    if rules is None:
        return []
    decision = rules.decision or spec.decision
    targets: list[tuple[str, DivergenceLimits]] = [(ALL, rules)]
    for domain, limits in rules.domains.items():
        if domain in summary.domains:
            targets.append((domain, limits))
        else:
            measured = [d for d in summary.domains if d != ALL]
            invalid.append(f"spec names divergence domain {domain!r}, which the measurement does not hold"
                           f"{_did_you_mean(domain, measured)}")
    if rules.each_domain is not None:
        targets += [(d, rules.each_domain) for d in summary.domains if d != ALL and d not in rules.domains]
    outcomes = []
    for domain, limits in targets:
        for measure, field, kind in _DIVERGENCE_MEASURES:
            threshold = getattr(limits, field)
            if threshold is not None:
                rule_decision: Decision = "point" if measure == "p99_kl" else decision
                outcomes.append(_divergence_rule(summary, domain, measure, kind, float(threshold), rules, rule_decision,
                                                 spec.on_underpowered))
    return outcomes


def _divergence_for(spec: GateSpec, candidate: RunData, baseline: RunData, given: DivergenceSummary | None,
                    invalid: list[str], warnings: list[str]) -> list[RuleOutcome]:
    """The divergence rules for a gate over runs: the measurement given, else the candidate run's own."""
    if spec.divergence is None:
        return []
    summary = given if given is not None else find_summary(candidate.path)
    if summary is None:
        line = (f"candidate {candidate.run_id} has no divergence measurement ({DIVERGENCE}/summary.json): measure it "
                f"with bench diverge --baseline BASE --model CANDIDATE --out {candidate.path}")
        if spec.divergence.required:
            invalid.append(line)
        else:
            warnings.append(line + "; divergence rules not checked")
        return []
    from bench.divergence.reference import read_meta, reference_dir

    folder = reference_dir(baseline.path)
    if folder is not None and read_meta(folder).arrays_sha256 != summary.reference_sha256:
        warnings.append(f"the candidate's divergence was measured against another reference than the one stored with "
                        f"baseline {baseline.run_id} ({summary.reference_path})")
    return divergence_outcomes(summary, spec, invalid)


# ---------------------------------------------------------------------------------------------
# Verdict


def judge(candidate: RunData, baseline: RunData, spec: GateSpec, spec_source: str = "",
          divergence: DivergenceSummary | None = None) -> GateResult:
    """Apply every rule of ``spec`` and decide the verdict; ``divergence`` is the candidate's divergence
    measurement when it is not (yet) in the candidate run's folder."""
    invalid = _validity(candidate, "candidate") + _validity(baseline, "baseline")
    plan_warnings: list[str] = []
    planned = _plan(spec, candidate, baseline, invalid, plan_warnings)
    if not planned and not invalid and spec.divergence is None:
        where = f"gate spec {spec_source}" if spec_source else "the gate spec"
        raise UserError(
            f"{where} defines no rule for the packs in this run ({', '.join(candidate.results.packs)}): "
            "add them under packs:, or add defaults:"
        )
    outcomes: list[RuleOutcome] = []
    skipped: list[str] = []
    for rule in planned:
        if rule.measure == PASS_HAT_K and rule.subdimension is None:
            problem = _pass_hat_k_problem(rule, candidate, baseline)
            if problem is not None:
                if problem not in invalid:
                    invalid.append(problem)
                continue
        if rule.kind == "floor":
            outcomes.append(_floor_outcome(rule, candidate, spec))
            continue
        if rule.kind == "collapse":
            outcomes.append(_collapse_outcome(rule, candidate, spec))
            continue
        if rule.pack not in baseline.results.packs:
            warning = f"baseline {baseline.run_id} has no {rule.pack} results: drop rules for {rule.pack} not applied"
            if warning not in skipped:
                skipped.append(warning)
            continue
        for run, label in ((baseline, "baseline"), (candidate, "candidate")):
            if not run.has_items:
                reason = f"{label} {run.path} has no items.jsonl: drop rules pair items (bench baseline save keeps it)"
                if reason not in invalid:
                    invalid.append(reason)
        if not (baseline.has_items and candidate.has_items):
            continue
        outcome = _drop_outcome(rule, candidate, baseline, spec)
        outcomes.append(outcome)
    outcomes += _divergence_for(spec, candidate, baseline, divergence, invalid, plan_warnings)
    invalid += [f"{o.id}: {o.message}" for o in outcomes if o.status == "invalid"]

    ungated = ungated_packs(spec, candidate)
    if ungated and spec.strict:
        invalid.append(f"packs in the run with no rule in the strict spec: {', '.join(ungated)} (add rules or defaults:)")

    differences = stack_differences(baseline.manifest, candidate.manifest)
    warnings = [_difference_warning(diff) for diff in differences]
    warnings += _fingerprint_warnings(baseline, "baseline") + _fingerprint_warnings(candidate, "candidate")
    warnings += truncation_differences(baseline, candidate)
    warnings += plan_warnings + skipped + _unpaired_warnings(outcomes)
    if ungated:
        warnings.append(f"ungated: no rule of the spec judges {', '.join(ungated)} (add them under packs:, or add defaults:)")
    collapse_ruled = {o.pack for o in outcomes if o.kind == "collapse"}
    for pack, result in candidate.results.packs.items():
        found = knowledge.collapse(result, spec.confidence)
        if found is not None and pack not in collapse_ruled:
            warnings += found.lines()

    failures = [o for o in outcomes if o.counts_as_failure]
    failing_verdicts = list(dict.fromkeys(o.verdict for o in failures))
    weak = [o for o in outcomes if o.status == "underpowered"]
    if invalid:
        verdict, exit_code = "Invalid", EXIT_INVALID
    elif failures:
        verdict, exit_code = failures[0].verdict, EXIT_FAIL
    elif weak:
        verdict, exit_code = INCONCLUSIVE, EXIT_PASS if spec.on_underpowered == "pass" else EXIT_INCONCLUSIVE
    else:
        verdict, exit_code = "Pass", EXIT_PASS
    gate_result = GateResult(
        verdict=verdict,
        exit_code=exit_code,
        line="",
        candidate=RunRef(run_id=candidate.run_id, path=str(candidate.path), model=candidate.manifest.model),
        baseline=RunRef(run_id=baseline.run_id, path=str(baseline.path), model=baseline.manifest.model),
        spec_source=spec_source,
        decision=spec.decision,
        confidence=spec.confidence,
        power=spec.power,
        rules=outcomes,
        failing_verdicts=failing_verdicts,
        invalid_reasons=invalid,
        warnings=warnings,
        stack_differences=differences,
        needed=_needed(outcomes),
        ungated=ungated,
    )
    gate_result.line = headline(gate_result, spec.on_underpowered)
    return gate_result


def _needed(outcomes: list[RuleOutcome]) -> list[str]:
    """Per pack, what it would take to check every rule that could not be checked."""
    by_pack: dict[str, list[RuleOutcome]] = {}
    for outcome in outcomes:
        if outcome.status == "underpowered" and (outcome.items_needed is not None or outcome.kind == "floor"):
            by_pack.setdefault(outcome.pack, []).append(outcome)
    lines = []
    for pack, weak in by_pack.items():
        if pack == DIVERGENCE:
            most = max(o.items_needed or 0 for o in weak)
            count = f"about {most}" if most else "more"
            lines.append(f"{DIVERGENCE}: {count} texts per domain to tell {', '.join(dict.fromkeys(o.measure for o in weak))} "
                         "from the limits (bench diverge --tier full, or a larger text set)")
            continue
        parts = []
        for whole in (True, False):
            drops = [o for o in weak if o.kind == "drop" and (o.subdimension is None) == whole]
            if not drops:
                continue
            have = min((o.comparison.n_paired for o in drops if o.comparison), default=0)
            most = max(o.items_needed or 0 for o in drops)
            what = "the pack" if whole else f"each of {len(drops)} subdimensions"
            parts.append(f"{most} paired items in {what} (has {have})")
        parts += [f"about {o.items_needed} items to show {o.measure} above its floor {o.threshold:g}" if o.items_needed
                  else f"{o.measure} is not above its floor {o.threshold:g}: more items would not show it held"
                  for o in weak if o.kind == "floor"]
        parts += [f"{o.items_needed} items per category to tell a dead category" for o in weak if o.kind == "collapse"]
        lines.append(f"{pack}: {'; '.join(parts)}")
    return lines


def headline(result: GateResult, on_underpowered: str = "inconclusive") -> str:
    """The one line that states the verdict: printed, and the same words in Markdown, JUnit and HTML."""
    pair = f"candidate {result.candidate.run_id} vs baseline {result.baseline.run_id}"
    rules = result.rules
    failures = result.failures
    if result.verdict == "Invalid":
        line = f"Invalid: {'; '.join(result.invalid_reasons)}"
    elif failures:
        line = f"{result.verdict}: {failures[0].id}: {failures[0].message}"
        if len(failures) > 1:
            line += "; also failing: " + ", ".join(_failure_tag(o) for o in failures[1:])
    elif result.verdict == INCONCLUSIVE:
        weak = result.underpowered
        line = (f"Inconclusive: no rule failed, but {len(weak)} of {len(rules)} rules could not be checked "
                f"(underpowered: too few items to see the allowed drop), {pair}")
        if result.needed:
            line += "; to check them: " + "; ".join(result.needed)
        if on_underpowered == "pass":
            line += " (counted as a pass: on_underpowered: pass)"
    else:
        line = f"Pass: all {len(rules)} rules shown to hold, {pair}"
    if result.ungated and result.verdict != "Invalid":
        line += f"; ungated (no rule, not judged): {', '.join(result.ungated)}"
    return line


def _fingerprint_warnings(run: RunData, label: str) -> list[str]:
    missing = run.manifest.server.unverifiable
    if not missing:
        return []
    return [f"{label} run {run.run_id} could not be fingerprinted ({', '.join(missing)}): "
            "a server or chat template change between the runs would go unseen"]


def _failure_tag(outcome: RuleOutcome) -> str:
    extra = ", underpowered" if outcome.status == "underpowered" else ""
    return f"{outcome.id} [{outcome.verdict}{extra}]"


def _unpaired_warnings(outcomes: list[RuleOutcome]) -> list[str]:
    """One line per compared measure that left items out (e.g. a subdimension a truncated reply lost)."""
    warned: list[str] = []
    seen: set[tuple[str, str]] = set()
    for outcome in outcomes:
        comparison = outcome.comparison
        if comparison is None or (outcome.pack, outcome.measure) in seen:
            continue
        seen.add((outcome.pack, outcome.measure))
        if comparison.baseline_only or comparison.candidate_only:
            label = outcome.pack if outcome.subdimension is None else f"{outcome.pack}/{outcome.subdimension}"
            warned.append(
                f"{label}: {len(comparison.baseline_only)} items only in the baseline and "
                f"{len(comparison.candidate_only)} only in the candidate were left out; "
                f"compared on the {comparison.n_paired} shared items"
            )
    return warned


def load_gate_result(path: Path) -> GateResult:
    """Read a ``bench gate --json`` file (for the report's verdict banner)."""
    try:
        return GateResult.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"gate result {path} not found: write one with bench gate ... --json {path}") from exc
    except ValueError as exc:
        raise UserError(f"{path} is not a bench gate --json file: {str(exc).splitlines()[0]}") from exc
