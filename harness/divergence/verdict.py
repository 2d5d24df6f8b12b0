"""A verdict from divergence alone: the early stop of ``bench diverge --spec`` and the candidate loop.

Only the spec's ``divergence:`` rules apply (packs have not run yet). The exit codes are the gate's:
0 Pass, 1 the rules' Fail verdict (``FailDivergence`` unless the spec renames it), 2 Invalid (a domain
the spec names was not measured), 3 Inconclusive (an interval straddles a limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.compare.gate import EXIT_FAIL, EXIT_INCONCLUSIVE, EXIT_INVALID, EXIT_PASS, INCONCLUSIVE, RuleOutcome, divergence_outcomes
from bench.compare.spec import GateSpec
from bench.divergence.summary import DivergenceSummary


@dataclass
class DivergenceVerdict:
    verdict: str
    exit_code: int
    line: str
    outcomes: list[RuleOutcome]
    invalid: list[str]

    @property
    def failed(self) -> bool:
        return any(o.counts_as_failure for o in self.outcomes)


def decide(summary: DivergenceSummary, spec: GateSpec) -> DivergenceVerdict:
    """Apply the spec's divergence rules to one measurement."""
    invalid: list[str] = []
    outcomes = divergence_outcomes(summary, spec, invalid)
    failures = [o for o in outcomes if o.counts_as_failure]
    weak = [o for o in outcomes if o.status == "underpowered" and not o.counts_as_failure]
    pair = f"{summary.candidate.model} vs {summary.base.model}"
    if invalid:
        return DivergenceVerdict("Invalid", EXIT_INVALID, f"Invalid: {'; '.join(invalid)}", outcomes, invalid)
    if failures:
        line = f"{failures[0].verdict}: {failures[0].id}: {failures[0].message}"
        if len(failures) > 1:
            line += "; also failing: " + ", ".join(o.id for o in failures[1:])
        return DivergenceVerdict(failures[0].verdict, EXIT_FAIL, line, outcomes, invalid)
    if weak:
        code = EXIT_PASS if spec.on_underpowered == "pass" else EXIT_INCONCLUSIVE
        line = (f"{INCONCLUSIVE}: no divergence rule failed, but {len(weak)} of {len(outcomes)} could not be told "
                f"from their limits ({', '.join(o.id for o in weak)}), {pair}")
        return DivergenceVerdict(INCONCLUSIVE, code, line, outcomes, invalid)
    return DivergenceVerdict("Pass", EXIT_PASS, f"Pass: all {len(outcomes)} divergence rules held, {pair}", outcomes, invalid)
