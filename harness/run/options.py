"""What a run asks and of whom: the one declaration behind ``bench run`` flags, a plan's
``evaluate:`` section, the runner's plan, the client's limits and the manifest's stored options.

Every default lives in these fields and nowhere else. The manifest stores ``RunOptions`` in its
nested shape (``serve`` and ``evaluate``); :func:`upgrade_options` reads the older flat shape so
runs written before stay resumable.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, field_validator

from bench.errors import UserError
from bench.pack import Sampling, Tier
from bench.run.budgets import SAMPLING_OVERRIDE_KEYS
from bench.run.concurrency import AUTO, Concurrency, concurrency_value
from bench.serve.options import ServeOptions

PackOptionValue = str | int | float | bool


def _pack_selection(value: Any) -> Any:
    """A plan may list packs; the registry takes one comma list."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


def _option_text(value: Any) -> Any:
    """Pack options reach packs as text, as they do from ``--pack-option``; YAML scalars are accepted."""
    if not isinstance(value, dict):
        return value
    def text(v: Any) -> Any:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int | float) else v
    return {pack: {k: text(v) for k, v in opts.items()} if isinstance(opts, dict) else opts
            for pack, opts in value.items()}


ConcurrencyOption = Annotated[Concurrency, PlainValidator(concurrency_value, json_schema_input_type=Concurrency)]
PackSelection = Annotated[str, BeforeValidator(_pack_selection, json_schema_input_type=str | list[str])]
PackOptions = Annotated[
    dict[str, dict[str, str]],
    BeforeValidator(_option_text, json_schema_input_type=dict[str, dict[str, PackOptionValue]]),
]


class EvalOptions(BaseModel):
    """What is asked and how: packs, items, repeats, sampling overrides, request limits."""

    model_config = ConfigDict(extra="forbid")
    packs: PackSelection = Field(default="all", min_length=1, description="'all', a comma list, or a list of pack names")
    pack_options: PackOptions = Field(
        default_factory=dict, description="per-pack options, PACK -> KEY -> VALUE (e.g. mmlu: {shots: 5})"
    )
    tier: Tier = Field(default="full", description="'quick' (15 items per pack) or 'full'")
    limit: int | None = Field(
        default=None, ge=1, description="at most N items per pack (seeded, stratified where the pack supports it)"
    )
    repeats: int = Field(default=1, ge=1, description="ask every item K times with seeds seed..seed+K-1")
    seed: int = Field(default=0, description="seed of the first repeat and of item sampling")
    concurrency: ConcurrencyOption = Field(
        default=AUTO, description="items in flight at once: 'auto' (follow a vLLM server's load) or a number"
    )
    temperature: float | None = Field(default=None, ge=0, description="override every pack's temperature")
    max_tokens: int | None = Field(
        default=None, ge=1, description="override every pack's answer budget (a thinking budget is added on top)"
    )
    no_thinking: bool = Field(default=False, description="send enable_thinking=false to the chat template")
    thinking_budget: int | None = Field(
        default=None, ge=0,
        description="tokens a thinking model may reason before its answer, added to each pack's answer budget "
                    "(default: from the model family)",
    )
    pack_sampling: dict[str, dict[str, float | int | bool]] = Field(
        default_factory=dict,
        description="per-pack sampling, PACK -> KEY -> VALUE (temperature, top_p, top_k, max_tokens, thinking, "
                    "thinking_budget); wins over the run-wide flags",
    )
    request_timeout_s: float = Field(default=300.0, gt=0, description="seconds per request")

    @field_validator("pack_sampling")
    @classmethod
    def _known_sampling_keys(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for pack, keys in value.items():
            unknown = sorted(set(keys) - set(SAMPLING_OVERRIDE_KEYS))
            if unknown:
                raise ValueError(f"sampling for {pack} has unknown key(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(SAMPLING_OVERRIDE_KEYS)}")
        return value

    def sampling_overrides(self) -> dict[str, Any]:
        """The overrides as :class:`Sampling` fields (only those given)."""
        given = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                 "thinking": False if self.no_thinking else None}
        return {k: v for k, v in given.items() if v is not None}

    def sampling_for(self, pack_default: Sampling) -> Sampling:
        """A pack's default sampling with these overrides applied."""
        return pack_default.model_copy(update=self.sampling_overrides())


class RunOptions(BaseModel):
    """Every choice that decides what a run measures (stored in the manifest for --resume)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, description="checkpoint directory to serve with vLLM")
    endpoints: list[str] = Field(default_factory=list, description="OpenAI-compatible server URLs; no launch")
    served_model_name: str | None = Field(
        default=None, description="name the model is served under (default: the checkpoint folder's, or the endpoint's)"
    )
    serve: ServeOptions = Field(default_factory=ServeOptions)
    evaluate: EvalOptions = Field(default_factory=EvalOptions)
    runs_dir: str = Field(default="runs", description="folder that receives the run directory")
    run_id: str | None = Field(default=None, description="run directory name (default: model name and time)")


def check_sampling(pack: str, sampling: Sampling) -> None:
    """A pack's sampling as it will be sent, checked before any server starts (the server would
    reject every request with HTTP 400 after a minute of loading)."""
    problems = []
    if sampling.temperature < 0:
        problems.append(f"temperature {sampling.temperature} must be >= 0")
    if sampling.max_tokens < 1:
        problems.append(f"max_tokens {sampling.max_tokens} must be >= 1")
    if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
        problems.append(f"top_p {sampling.top_p} must be in (0, 1]")
    if sampling.top_k is not None and sampling.top_k == 0:
        problems.append("top_k 0 is not allowed (-1 means no limit)")
    if problems:
        raise UserError(f"pack {pack!r} sampling: {'; '.join(problems)}: fix the pack's sampling or the "
                        "--temperature/--max-tokens override")


def field_default(model: type[BaseModel], name: str) -> Any:
    """A field's declared default, for code that must state a default of its own (dataclasses, flags)."""
    return model.model_fields[name].get_default(call_default_factory=True)


_LEGACY_RENAMES = {"vllm_python": "python", "vllm_args": "args"}


def upgrade_options(stored: dict[str, Any]) -> dict[str, Any]:
    """The manifest's options in today's nested shape; a flat dict (runs written before) is regrouped."""
    if "serve" in stored or "evaluate" in stored:
        return stored
    top, serve, evaluate = {}, {}, {}
    for key, value in stored.items():
        name = _LEGACY_RENAMES.get(key, key)
        if key in RunOptions.model_fields:
            top[key] = value
        elif name in ServeOptions.model_fields:
            if value is not None or field_default(ServeOptions, name) is None:
                serve[name] = value
        elif key in EvalOptions.model_fields:
            evaluate[key] = value
        else:
            top[key] = value  # unknown: let validation name it
    return {**top, "serve": serve, "evaluate": evaluate}
