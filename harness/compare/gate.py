"""The gate: candidate versus baseline under a spec, to one verdict a CI job can act on.

``Pass`` (exit 0), the first failing rule's ``Fail*`` verdict with every failing rule listed
(exit 1), or ``Invalid`` (exit 2) when either run cannot be trusted: marked invalid (leaked
markers, preflight failed), items missing, or the spec names what the runs do not hold.
A rule whose allowance is smaller than the paired sample can detect is reported as
``underpowered`` rather than as a pass the numbers cannot support.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from bench import stats
from bench.compare.rundata import RunData
from bench.compare.spec import Decision, GateSpec, PackRules, Thresholds
from bench.errors import UserError
from bench.records import Interval, Manifest, PackResult

EXIT_PASS, EXIT_FAIL, EXIT_INVALID = 0, 1, 2
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
    measure: str  # "score", "pass_rate" or the subdimension's name
    kind: Literal["floor", "drop"]
    threshold: float
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
    kind: Literal["floor", "drop"]
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
    for pack, rules in listed:
        result = candidate.results.packs.get(pack)
        if result is None:
            # Absent from both runs: the spec covers more packs than were run, unless it insists.
            if pack in baseline.results.packs or rules.required:
                options = list(candidate.results.packs)
                invalid.append(f"pack {pack!r} is not in the candidate run{_did_you_mean(pack, options)}")
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
        for name in lost:
            items = base_result.subdimensions[name].n if base_result else 0
            warnings.append(
                f"{pack}/{name}: the baseline scored {items} items, the candidate none "
                "(its replies were truncated or failed, and carry no subscores); rules for it not applied"
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
    return planned


def _rule_id(rule: _PlannedRule) -> str:
    return f"{rule.pack}.{rule.measure}.{rule.kind}"


def _measure_label(rule: _PlannedRule) -> str:
    return f"{rule.pack} {rule.measure}" if rule.subdimension is None else f"{rule.pack}/{rule.subdimension}"


def _candidate_interval(result: PackResult, rule: _PlannedRule) -> Interval | None:
    if rule.subdimension is not None:
        return result.subdimensions.get(rule.subdimension)
    return result.score if rule.measure == "score" else result.pass_rate


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
    return _outcome(
        rule, status="fail" if failed else "pass", counts_as_failure=failed, value=interval.mean,
        low=interval.low, high=interval.high, message=message,
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
            low=None, high=None, comparison=comparison, message=message, **spreads,
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
    return _outcome(
        rule, status=status, counts_as_failure=counts, value=drop, low=comparison.low, high=comparison.high,
        comparison=comparison, message=message, **spreads,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Verdict


def evaluate(candidate: RunData, baseline: RunData, spec: GateSpec, spec_source: str = "") -> GateResult:
    """Apply every rule of ``spec`` and decide the verdict."""
    invalid = _validity(candidate, "candidate") + _validity(baseline, "baseline")
    plan_warnings: list[str] = []
    planned = _plan(spec, candidate, baseline, invalid, plan_warnings)
    if not planned and not invalid:
        where = f"gate spec {spec_source}" if spec_source else "the gate spec"
        raise UserError(
            f"{where} defines no rule for the packs in this run ({', '.join(candidate.results.packs)}): "
            "add them under packs:, or add defaults:"
        )
    outcomes: list[RuleOutcome] = []
    skipped: list[str] = []
    for rule in planned:
        if rule.kind == "floor":
            outcomes.append(_floor_outcome(rule, candidate, spec))
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
    invalid += [f"{o.id}: {o.message}" for o in outcomes if o.status == "invalid"]

    differences = stack_differences(baseline.manifest, candidate.manifest)
    warnings = [_difference_warning(diff) for diff in differences]
    warnings += plan_warnings + skipped + _unpaired_warnings(outcomes)

    failures = [o for o in outcomes if o.counts_as_failure]
    failing_verdicts = list(dict.fromkeys(o.verdict for o in failures))
    pair = f"candidate {candidate.run_id} vs baseline {baseline.run_id}"
    if invalid:
        verdict, exit_code = "Invalid", EXIT_INVALID
        line = f"Invalid: {'; '.join(invalid)}"
    elif failures:
        verdict, exit_code = failures[0].verdict, EXIT_FAIL
        line = f"{verdict}: {failures[0].id}: {failures[0].message}"
        if len(failures) > 1:
            line += "; also failing: " + ", ".join(_failure_tag(o) for o in failures[1:])
    else:
        verdict, exit_code = "Pass", EXIT_PASS
        weak = [o for o in outcomes if o.status == "underpowered"]
        held = len(outcomes) - len(weak)
        line = f"Pass: {held} of {len(outcomes)} rules shown to hold, {pair}"
        if weak:
            line += f"; {len(weak)} underpowered (too few items to see the allowed drop): {', '.join(o.id for o in weak)}"
    return GateResult(
        verdict=verdict,
        exit_code=exit_code,
        line=line,
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
    )


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
