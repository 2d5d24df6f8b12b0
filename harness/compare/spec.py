"""The gate spec: what a candidate must keep, as data (YAML or JSON), validated before use.

The pydantic model below is the single source of the spec's JSON Schema; a file is checked
against that schema with jsonschema first, so a typo such as ``alowed_drop`` is reported as one
line naming the key, where it is and the closest valid key, instead of being silently ignored.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator, ValidationError
from pydantic import BaseModel, ConfigDict, Field

from bench.datafile import load_data_file
from bench.errors import UserError

Decision = Literal["point", "confident"]
# pass_hat_k: the share of items whose k trials (--repeats k) all pass, paired item by item;
# both runs must have asked every item the same k times.
Metric = Literal["score", "pass_rate", "pass_hat_k"]
VERDICT_PATTERN = r"^Fail[A-Z][A-Za-z0-9]*$"

# Which capability a failing pack stands for, unless the spec says otherwise.
DEFAULT_VERDICTS: dict[str, str] = {
    "toolcall": "FailToolcall",
    "bugfind": "FailAgentic",
    "dataextract": "FailAgentic",
    "instructfollow": "FailAgentic",
    "code": "FailCode",
    "mmlu": "FailKnowledge",
    "agent": "FailAgentic",
    "cli": "FailAgentic",
    "reasonmath": "FailReasoning",
    "structout": "FailStructured",
}
FALLBACK_VERDICT = "Fail"
DIVERGENCE_VERDICT = "FailDivergence"


class Thresholds(BaseModel):
    """Limits on one measure: an absolute floor and an allowed drop versus the baseline."""

    model_config = ConfigDict(extra="forbid")
    floor: float | None = Field(None, ge=0.0, le=1.0, description="fail below this absolute value")
    allowed_drop: float | None = Field(
        None, ge=0.0, le=1.0, description="fail when the drop versus the baseline exceeds this"
    )
    verdict: str | None = Field(None, pattern=VERDICT_PATTERN, description="verdict name for a failure here")
    decision: Decision | None = Field(None, description="overrides the spec-wide decision rule")


class PackRules(Thresholds):
    """Rules for one pack: its overall measure, and its subdimensions."""

    metric: Metric = Field(
        "score",
        description="overall measure: mean score, pass rate, or pass_hat_k (share of items whose k trials "
        "all pass; both runs need the same --repeats k)",
    )
    required: bool = Field(
        False, description="the candidate must contain this pack even when the baseline lacks it too"
    )
    subdimensions: dict[str, Thresholds] = Field(default_factory=dict)
    each_subdimension: Thresholds | None = Field(
        None, description="rules for every subdimension not listed under subdimensions"
    )
    dead_categories: Literal["fail", "warn"] = Field(
        "warn",
        description="a category with no right answer, or a pack or category whose interval lies below "
        "chance (packs that declare chance, e.g. mmlu): fail the gate with this pack's verdict, or warn",
    )


class DivergenceLimits(BaseModel):
    """Limits on how far a candidate's next-token distributions may move from the base's (bench diverge)."""

    model_config = ConfigDict(extra="forbid")
    mean_kl_max: float | None = Field(None, ge=0.0, description="fail when the mean per-token KL(base||candidate) exceeds this (nats)")
    p99_kl_max: float | None = Field(None, ge=0.0, description="fail when the 99th percentile of per-token KL exceeds this")
    top1_agreement_min: float | None = Field(
        None, ge=0.0, le=1.0, description="fail when the share of positions whose top-1 token agrees falls below this"
    )


class DivergenceRules(DivergenceLimits):
    """Divergence rules: the limits above apply to all texts together; ``domains`` adds limits per domain."""

    domains: dict[str, DivergenceLimits] = Field(default_factory=dict, description="limits per text domain (code, math, ...)")
    each_domain: DivergenceLimits | None = Field(None, description="limits for every measured domain not listed under domains")
    verdict: str = Field(DIVERGENCE_VERDICT, pattern=VERDICT_PATTERN, description="verdict name for a failure here")
    decision: Decision | None = Field(None, description="overrides the spec-wide decision rule (p99 is always a point value)")
    required: bool = Field(
        False, description="a candidate run without a divergence measurement is Invalid (else the rules are warned as unchecked)"
    )


class GateSpec(BaseModel):
    """A whole gate: rules per pack, how to decide, and at what confidence."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    description: str = ""
    decision: Decision = Field(
        "confident",
        description="point: fail when the measured drop exceeds the allowance; "
        "confident: fail only when the interval of the change lies wholly beyond it",
    )
    confidence: float = Field(0.95, ge=0.5, lt=1.0)
    power: float = Field(0.8, gt=0.0, lt=1.0, description="for the smallest detectable drop")
    on_underpowered: Literal["inconclusive", "pass", "fail", "warn"] = Field(
        "inconclusive",
        description="a rule the sample is too small to check: verdict Inconclusive with exit 3 "
        "(inconclusive; warn is the same), Inconclusive with exit 0 (pass), or the rule fails (fail)",
    )
    strict: bool = Field(
        False,
        description="a rule for a pack not in the run, or a pack in the run with no rule, makes the "
        "verdict Invalid instead of a warning",
    )
    seed: int = Field(0, description="seed for bootstrap and permutation resampling")
    verdicts: dict[str, str] = Field(
        default_factory=dict, description="pack -> verdict name, over the default mapping"
    )
    defaults: PackRules | None = Field(None, description="rules for packs in the run not listed under packs")
    packs: dict[str, PackRules] = Field(default_factory=dict)
    divergence: DivergenceRules | None = Field(
        None, description="limits on the candidate's divergence from the base (bench diverge), verdict FailDivergence"
    )

    def verdict_for(self, pack: str, rules: Thresholds, sub: Thresholds | None = None) -> str:
        """The verdict a failure maps to: subdimension, then pack, then spec mapping, then default."""
        for candidate in (sub.verdict if sub else None, rules.verdict, self.verdicts.get(pack)):
            if candidate:
                return candidate
        return DEFAULT_VERDICTS.get(pack, FALLBACK_VERDICT)


@cache
def spec_schema() -> dict[str, Any]:
    """JSON Schema of a gate spec, with the verdict-name pattern on the ``verdicts`` map too."""
    schema = GateSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"]["verdicts"]["additionalProperties"] = {"type": "string", "pattern": VERDICT_PATTERN}
    return schema


def _where(path: list[str | int]) -> str:
    return ".".join(str(part) for part in path) or "top level"


def _explain(error: ValidationError, source: str) -> str:
    """One line for the first schema violation, with a did-you-mean for unknown keys."""
    if error.validator in ("anyOf", "oneOf") and error.context:
        # "number or null" fields: explain the number branch, not the null one.
        specific = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        if specific:
            return _explain(specific[0], source)
    where = _where(list(error.absolute_path))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in allowed]
        key = unknown[0] if unknown else "?"
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
        return f"{source}: unknown key {key!r} at {where}{hint}"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{source}: {where}: {error.instance!r} is not a verdict name (expected Fail<Capability>, e.g. FailToolcall)"
    return f"{source}: {where}: {error.message}"


def parse_spec(data: Any, source: str = "gate spec") -> GateSpec:
    """Validate already-parsed spec data and build the model; errors are one-line UserErrors."""
    validator = Draft202012Validator(spec_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise UserError(_explain(errors[0], source))
    return GateSpec.model_validate(data)


def load_spec(path: Path) -> GateSpec:
    """Read a YAML or JSON gate spec (JSON is YAML, so one parser reads both)."""
    data = load_data_file(path, "gate spec", "pass --spec with a YAML or JSON file (examples in baselines/)")
    if data is None:
        data = {}
    return parse_spec(data, str(path))
