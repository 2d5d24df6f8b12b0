"""A candidate plan: what to prune, quantize, run and gate, as data (YAML), validated before use.

The pydantic models below are the single source of the plan's JSON Schema; ``evaluate:`` and
``vllm:`` are the run's own option models (:class:`EvalOptions`, :class:`ServeOptions`). A file is checked
against that schema with jsonschema first, so a typo such as ``ratio:`` for ``ratios:`` is one
line naming the key, where it is and the closest valid key, not a silently ignored setting that
costs an hour of pruning and serving.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, ValidationError
from pydantic import BaseModel, ConfigDict, Field

from bench.datafile import load_data_file
from bench.divergence.options import DivergenceOptions
from bench.engine.compute.coverage import DEFAULT_COVERAGE_WARN
from bench.errors import UserError
from bench.pack import Tier
from bench.run.options import EvalOptions
from bench.serve.options import ServeOptions

CRITERIA = ("reap", "frequency", "mean-gate", "ean", "random")
Criterion = Literal["reap", "frequency", "mean-gate", "ean", "random"]


class FitTarget(BaseModel):
    """A serving target: add the candidate that prunes just enough to fit it (see ``bench fit``)."""

    model_config = ConfigDict(extra="forbid")
    gpu_gib: float = Field(gt=0, description="GPU memory in GiB, e.g. 31.84 for a 32 GB card")
    context: int = Field(default=32768, gt=0, description="tokens of context per sequence")
    concurrency: int = Field(default=4, gt=0, description="sequences served at once")
    utilization: float = Field(default=0.9, gt=0, le=1, description="share of the GPU vLLM may use")
    overhead_gib: float = Field(default=1.5, ge=0, description="runtime overhead: activations, graphs, allocator")


class PruneSpec(BaseModel):
    """How many experts to keep (ratios, counts, or a fit target) and how to choose them."""

    model_config = ConfigDict(extra="forbid")
    ratios: list[float] = Field(default_factory=list, description="shares of experts removed per layer, each in [0, 1)")
    keep: list[int] = Field(default_factory=list, description="experts kept per layer")
    fit: FitTarget | None = Field(default=None, description="add the candidate that fits this GPU")
    mixes: list[str] = Field(
        min_length=1, description="calibration mixes: shipped recipe names or YAML paths (relative to the plan)"
    )
    criterion: Criterion | Annotated[list[Criterion], Field(min_length=1)] = Field(
        default="reap", description="how experts are chosen: one criterion, or a list (each mix and count is pruned "
        "once per criterion, e.g. [reap, frequency] to set a weaker criterion beside REAP)",
    )
    selection: Literal["per-layer", "global"] = "per-layer"
    renormalize: bool | None = Field(default=None, description="router renormalization after pruning; null keeps the model's")
    propagate: Literal["pruned", "unpruned"] = Field(
        default="pruned", description="hidden states handed to the next layer while scoring"
    )
    samples: int | None = Field(default=None, gt=0, description="override every mix's sample count")
    seq_len: int | None = Field(default=None, gt=0, description="override every mix's sequence length")
    seed: int | None = Field(default=None, description="seed for sampling and random pruning; null keeps each mix's")
    general_share: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=list, description="sweep the share of general-text samples (C4, MMLU, datasets marked "
        "general): each mix once per share, e.g. [0.3, 0.5]; empty keeps each mix's own",
    )
    device: str = Field(default="cpu", description="torch device for scoring (cpu, cuda); not part of the cache key")
    coverage_warn: float = Field(
        default=DEFAULT_COVERAGE_WARN, ge=0, le=1, description="warn when a calibration dataset loses more than this share of its "
        "router gate mass to dropped experts (a dead category); not part of the cache key",
    )
    allow_stacked: bool = Field(
        default=False, description="prune a base that was pruned before (stacking can lose most of the first "
        "calibration's gains); not part of the cache key",
    )


    @property
    def criteria(self) -> list[str]:
        """Every criterion asked for, in the plan's order, each once."""
        named = [self.criterion] if isinstance(self.criterion, str) else self.criterion
        return list(dict.fromkeys(named))


class QuantizeSpec(BaseModel):
    """FP8 (compressed-tensors FP8_DYNAMIC, or FP8_BLOCK with ``block``) after pruning."""

    model_config = ConfigDict(extra="forbid")
    experts: Literal["auto", "fp8", "bf16"] = Field(
        default="auto",
        description="fp8: every linear incl. experts; bf16: experts stay bf16 (what vLLM on CPU can serve); "
        "auto: fp8 when a CUDA device is visible, else bf16",
    )
    block: int | None = Field(default=None, gt=0, description="block scales of BLOCKxBLOCK (e.g. 128) instead of per-channel")


class EvaluateSpec(EvalOptions):
    """``evaluate:``: the run options of ``bench run`` (same fields, same defaults), but for one.

    The one difference: a plan runs the quick tier unless it says otherwise, because it runs every
    pack once per candidate. ``concurrency`` and ``request_timeout_s`` are not part of the cache key.
    """

    tier: Tier = Field(default="quick", description="'quick' (15 items per pack; a plan's default) or 'full'")


class DivergenceSpec(DivergenceOptions):
    """``divergence:``: measure each candidate's divergence from the base before its packs (``bench diverge``).

    The base's reference is measured once; a candidate that fails the gate spec's ``divergence:``
    rules skips its packs unless ``skip_packs_on_fail`` is false. As in ``evaluate:``, the quick tier
    is the plan's default. ``concurrency`` and ``request_timeout_s`` are not part of the cache key.
    """

    tier: Literal["quick", "full"] = Field(default="quick", description="'quick' (12 texts per domain; a plan's default) or 'full'")
    generate: int = Field(default=4, ge=0, description="prompts per domain continued greedily for generation drift (0: none)")
    skip_packs_on_fail: bool = Field(
        default=True, description="a candidate that fails the divergence rules runs no packs (its row says so)"
    )


class Plan(BaseModel):
    """One ``bench candidate`` plan."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str | None = Field(default=None, description="names the output folder; defaults to the file's stem")
    description: str = ""
    data_dir: str | None = Field(default=None, description="local data root for {data_dir} in mixes (relative to the plan)")
    prune: PruneSpec
    quantize: bool | QuantizeSpec | None = Field(default=None, description="true (defaults), a mapping, or false/null: none")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    baseline: str | None = Field(
        default=None,
        description="what candidates are gated against, so the base need not be served here: a stored baseline's "
        "name (bench baseline save), a run directory (relative to the plan), or the URL of an endpoint serving the "
        "base; null: serve the base checkpoint here",
    )
    baseline_model: str | None = Field(
        default=None, description="with an endpoint baseline: the name it serves the base under (default: its first)"
    )
    gate: str | dict[str, Any] = Field(
        default="default",
        description="gate spec: a YAML/JSON path (relative to the plan), a name in baselines/, or inline",
    )
    divergence: DivergenceSpec | None = Field(
        default=None,
        description="measure divergence from the base first, for every candidate (also on when the gate spec has "
        "divergence: rules); null: only then",
    )
    vllm: ServeOptions = Field(
        default_factory=ServeOptions,
        description="how each checkpoint is served (the serving flags of bench run); chat_template is relative to "
        "the plan; port and startup_timeout_s are not part of the cache key",
    )

    @property
    def quantize_spec(self) -> QuantizeSpec | None:
        if self.quantize is True:
            return QuantizeSpec()
        if isinstance(self.quantize, QuantizeSpec):
            return self.quantize
        return None


@cache
def plan_schema() -> dict[str, Any]:
    """JSON Schema of a plan file."""
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


_TYPE_WORDS = {"boolean": "true/false", "object": "a mapping", "array": "a list", "string": "a string",
               "integer": "an integer", "number": "a number"}


def _where(path: list[str | int]) -> str:
    return ".".join(str(part) for part in path) or "top level"


def _explain(error: ValidationError, source: str) -> str:
    """One line for a schema violation, with a did-you-mean for unknown keys and enum values."""
    where = _where(list(error.absolute_path))
    if error.validator in ("anyOf", "oneOf") and error.context:
        branches = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        wrong_type = [e for e in branches if e.validator == "type" and e.absolute_path == error.absolute_path]
        if branches and len(wrong_type) == len(branches):  # no branch accepts this kind of value
            kinds = list(dict.fromkeys(_TYPE_WORDS.get(str(e.validator_value), str(e.validator_value)) for e in wrong_type))
            return f"{source}: {where}: {error.instance!r} must be {' or '.join(kinds)}"
        mistyped = {e.relative_schema_path[0] for e in wrong_type}  # branches for another kind of value
        fitting = [e for e in branches if e.relative_schema_path[0] not in mistyped] or branches
        if mistyped and fitting and all(e.validator == "const" for e in fitting):  # e.g. an integer or 'auto'
            kinds = list(dict.fromkeys(_TYPE_WORDS.get(str(e.validator_value), str(e.validator_value)) for e in wrong_type))
            values = [repr(e.validator_value) for e in fitting]
            return f"{source}: {where}: {error.instance!r} must be {' or '.join(kinds + values)}"
        if fitting:  # the value is of the right kind: explain what is wrong inside it
            return _explain(sorted(fitting, key=lambda e: -len(e.absolute_path))[0], source)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in allowed]
        key = str(unknown[0]) if unknown else "?"
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
        return f"{source}: unknown key {key!r} at {where}{hint}"
    if error.validator == "enum" and isinstance(error.instance, str):
        options = [str(v) for v in error.validator_value]
        close = difflib.get_close_matches(error.instance, options, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{source}: {where}: {error.instance!r} is not one of {', '.join(options)}{hint}"
    return f"{source}: {where}: {error.message}"


def parse_plan(data: Any, source: str = "plan") -> Plan:
    """Validate already-parsed plan data and build the model; every error is one line."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a mapping with at least prune: (see baselines/plans/)")
    validator = Draft202012Validator(plan_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise UserError(_explain(errors[0], source))
    plan = Plan.model_validate(data)
    prune = plan.prune
    if not (prune.ratios or prune.keep or prune.fit):
        raise UserError(f"{source}: prune: give ratios, keep or fit (how many experts to remove)")
    bad = [r for r in prune.ratios if not 0 <= r < 1]
    if bad:
        raise UserError(f"{source}: prune.ratios: {bad[0]} is not in [0, 1) (the share of experts removed)")
    if any(k < 1 for k in prune.keep):
        raise UserError(f"{source}: prune.keep: every count must be at least 1")
    return plan


def load_plan(path: Path) -> Plan:
    """Read and validate a plan file (YAML; JSON is YAML too)."""
    data = load_data_file(path, "plan", "pass --plan with a YAML file (examples in baselines/plans/)")
    return parse_plan(data, str(path))
