"""The context a launched server gets, and the tokens and sampling each pack's requests get, worked
out from the model and recorded with where each value came from.

A pack declares the tokens its *answer* needs; a thinking model reasons for thousands of tokens
before that answer, so when thinking is on the harness adds a thinking budget on top. A model that
recommends sampling in its ``generation_config.json`` (Qwen3's thinking mode loops under greedy
decoding) is asked the way it recommends unless the user says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bench.pack import Sampling
from bench.serve.model_info import CheckpointInfo, choose_parsers

AUTO: Final = "auto"
CPU_CONTEXT_CAP = 32768
# Thinking tokens a family's model spends before its answer, by the makers' guidance; others get
# GENERIC_THINKING. Qwen3-family models reason for 1-8K tokens on hard items.
FAMILY_THINKING: dict[str, int] = {
    **{family: 8192 for family in ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_6_moe")},
    **{family: 8192 for family in ("deepseek_v3", "deepseek_v32", "kimi_k2")},
}
GENERIC_THINKING = 4096
RECOMMENDED_KEYS = ("temperature", "top_p", "top_k")
SAMPLING_OVERRIDE_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "thinking", "thinking_budget")


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint says that budgets and sampling depend on; all unknown for an endpoint."""

    family: str | None = None
    thinks: bool | None = None  # the template renders a think block; None: not known
    context: int | None = None  # max_position_embeddings
    recommended: dict[str, Any] = field(default_factory=dict)  # sampling from generation_config.json

    @classmethod
    def of(cls, info: CheckpointInfo) -> ModelFacts:
        generation = info.generation_config
        samples = generation.get("do_sample", True) is not False
        recommended = {key: generation[key] for key in RECOMMENDED_KEYS if key in generation} if samples else {}
        if not samples and "temperature" in generation:
            recommended = {"temperature": 0.0}
        return cls(family=info.model_type or None, thinks=choose_parsers(info).reasoning_parser is not None,
                   context=info.max_position_embeddings, recommended=recommended)


@dataclass(frozen=True)
class Context:
    """The launched server's context length and why it is that."""

    value: int | Literal["auto"]  # "auto": vLLM picks what fits the GPU (known once the server is up)
    source: str


def kv_bytes_per_token(info: CheckpointInfo) -> int | None:
    """Bytes of bf16 KV cache one token takes, from config.json (None when the config cannot say)."""
    import json

    from bench.engine.planning.fit import kv_cache_bytes_per_token

    try:
        config = json.loads((info.path / "config.json").read_text(encoding="utf-8"))
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        per_token, _ = kv_cache_bytes_per_token(text)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return per_token or None


def resolve_context(asked: int | str, info: CheckpointInfo, *, cpu: bool, kv_cache_gib: float) -> Context:
    """``--max-model-len``: a number as given, or ``auto``: the checkpoint's context, capped on CPU
    at 32768 and at what the CPU KV cache holds; on GPU vLLM's own ``auto`` finds what fits."""
    if asked != AUTO:
        return Context(int(asked), "--max-model-len")
    native = info.max_position_embeddings
    if not cpu:
        return Context(AUTO, "vLLM's auto: the checkpoint's context if it fits the GPU, else the most that does")
    limits = [(CPU_CONTEXT_CAP, "the CPU cap")]
    if native:
        limits.append((native, "the checkpoint's max_position_embeddings"))
    per_token = kv_bytes_per_token(info)
    if per_token:
        limits.append((int(kv_cache_gib * 2**30) // per_token, f"what {kv_cache_gib:g} GiB of CPU KV cache holds"))
    value, why = min(limits)
    return Context(value, f"auto: {why}")


@dataclass
class PackBudget:
    """One pack's sampling as sent, its token split, and the source of every value."""

    sampling: Sampling
    answer_tokens: int
    thinking_tokens: int
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"answer_tokens": self.answer_tokens, "thinking_tokens": self.thinking_tokens,
                "max_tokens": self.sampling.max_tokens, "sources": dict(self.sources)}


def thinking_budget(facts: ModelFacts, asked: int | None) -> tuple[int, str]:
    if asked is not None:
        return asked, "--thinking-budget"
    if facts.family in FAMILY_THINKING:
        return FAMILY_THINKING[facts.family], f"default for {facts.family}"
    if facts.thinks is None:
        return GENERIC_THINKING, "default (the endpoint's model family is not known)"
    return GENERIC_THINKING, "default"


def pack_budget(pack: str, default: Sampling, facts: ModelFacts, *, flags: dict[str, Any],
                per_pack: dict[str, Any], flag_thinking_budget: int | None, context: int | None) -> PackBudget:
    """Layer the pack's sampling, the checkpoint's recommendation, per-pack overrides and flags.

    ``flags`` hold the run-wide overrides (``--temperature``, ``--max-tokens`` as the answer budget,
    thinking off); ``per_pack`` the plan's ``sampling:`` for this pack, which wins over the flags.
    """
    values: dict[str, Any] = default.model_dump()
    sources = {key: "pack" for key in ("temperature", "top_p", "top_k", "max_tokens", "thinking")}
    for key, value in facts.recommended.items():
        values[key], sources[key] = value, "generation_config.json"
    for key, value in flags.items():
        values[key], sources[key] = value, f"--{key.replace('_', '-')}" if key != "thinking" else "--no-thinking"
    budget_asked = flag_thinking_budget
    for key, value in per_pack.items():
        if key == "thinking_budget":
            budget_asked = int(value)
            continue
        values[key], sources[key] = value, f"sampling.{pack}.{key}"
    answer = int(values["max_tokens"])
    sources["answer_tokens"] = sources.pop("max_tokens")
    thinking = 0
    if values["thinking"] and facts.thinks is not False:
        thinking, sources["thinking_tokens"] = thinking_budget(facts, budget_asked)
        if budget_asked is not None and "thinking_budget" in per_pack:
            sources["thinking_tokens"] = f"sampling.{pack}.thinking_budget"
    else:
        sources["thinking_tokens"] = "thinking off" if not values["thinking"] else "the model does not think"
    total = answer + thinking
    sources["max_tokens"] = "answer + thinking"
    if context is not None and total >= context:
        total = max(1, context - 1)
        sources["max_tokens"] = f"capped below the context ({context})"
    values["max_tokens"] = total
    warnings = []
    recommended_t = facts.recommended.get("temperature")
    if values["thinking"] and facts.thinks and values["temperature"] == 0 and recommended_t:
        warnings.append(f"pack {pack}: greedy decoding in thinking mode, against the checkpoint's recommended "
                        f"temperature {recommended_t} (thinking models can loop under greedy decoding)")
    return PackBudget(sampling=Sampling.model_validate(values), answer_tokens=answer, thinking_tokens=thinking,
                      sources=sources, warnings=warnings)


TRUNCATION_WARN = 0.05


def truncation_warnings(truncated: dict[str, tuple[int, int]], budgets: dict[str, PackBudget | None],
                        context: int | None) -> list[str]:
    """One line per pack whose replies hit max_tokens more often than 5%, with the fix.

    ``truncated`` maps a pack to (replies cut off, replies).
    """
    lines = []
    for pack, (cut, replies) in truncated.items():
        if not replies or cut / replies <= TRUNCATION_WARN:
            continue
        budget = budgets.get(pack)
        split = (f"answer {budget.answer_tokens} + thinking {budget.thinking_tokens} tokens" if budget else "max_tokens")
        fix = ("raise --thinking-budget (or --max-tokens for the answer)" if budget and budget.thinking_tokens
               else "raise --max-tokens")
        room = f"; the server's context is {context}, raise --max-model-len if the sum does not fit" if context else ""
        lines.append(f"warning: pack {pack}: {cut}/{replies} replies ({cut / replies:.0%}) were cut off at "
                     f"{split}: unless the replies loop (read a few), the score measures the budget, not the model; "
                     f"{fix}{room}")
    return lines
