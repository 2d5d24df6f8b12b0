"""Measure through a server: the base's reference once, then each candidate against it.

The base's token ids are the ones every candidate is sent, so both models are teacher-forced on
exactly the same tokens; a candidate whose own tokenizer (or chat template) splits the texts
differently is refused in one line, because its logprobs would be about other tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from bench.divergence.drift import Drift, compare_continuations
from bench.divergence.endpoint import Continuation, Endpoint, PromptLogprobs
from bench.divergence.measure import compare
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import Reference, ReferenceMeta, RefGeneration, RefText, TextLogprobs
from bench.divergence.summary import (
    WORST_TEXTS,
    DivergenceSummary,
    Measured,
    SideRef,
    TextResult,
    by_domain,
    drift_by_domain,
    text_result,
    worst_texts,
)
from bench.divergence.texts import Text, load_text_set, select
from bench.errors import UserError

Echo = Callable[[str], object]
T = TypeVar("T")
PROBE_TOKENS = 8
GENERATION_PROMPT_MAX = 256  # plain texts: the prompt is their first half, at most this many tokens


class TokenizerMismatch(UserError):
    """The candidate splits the texts into other tokens than the base: no token-by-token comparison."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _all(tasks: Sequence[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*tasks))


async def token_ids(endpoint: Endpoint, text: Text) -> list[int] | None:
    """The text's tokens as this server makes them (chat texts through its chat template)."""
    if text.messages is not None:
        return await endpoint.tokenize(messages=text.messages, tools=text.tools)
    return await endpoint.tokenize(text=text.text)


async def _generation_prompt(endpoint: Endpoint, text: Text, ids: list[int], room: int) -> list[int]:
    """Chat texts: the conversation before its last reply, with the generation prompt; plain texts:
    their first half. Cut so that the prompt plus the continuation fits the context."""
    prompt: list[int] | None = None
    if text.messages is not None and len(text.messages) > 1 and text.messages[-1].get("role") == "assistant":
        prompt = await endpoint.tokenize(messages=text.messages[:-1], tools=text.tools, add_generation_prompt=True)
    if prompt is None:
        prompt = ids[: max(1, min(len(ids) // 2, GENERATION_PROMPT_MAX))]
    return prompt[-room:] if len(prompt) > room else prompt


def _generation_subset(texts: Sequence[Text], per_domain: int) -> list[int]:
    counts: dict[str, int] = {}
    chosen = []
    for index, text in enumerate(texts):
        if counts.get(text.domain, 0) < per_domain:
            counts[text.domain] = counts.get(text.domain, 0) + 1
            chosen.append(index)
    return chosen


async def collect_reference(endpoint: Endpoint, options: DivergenceOptions, *, checkpoint: str | None = None,
                            vllm_version: str | None = None, echo: Echo = print) -> tuple[ReferenceMeta, list[TextLogprobs]]:
    """The base's top-k logprobs on every selected text, and its greedy continuations."""
    text_set = load_text_set(Path(options.texts).expanduser() if options.texts else None)
    texts = select(text_set.texts, options.tier, options.limit, options.domains or None)
    if not texts:
        raise UserError("no divergence texts selected: check --tier, --limit and --domain")
    started = time.monotonic()
    max_len = await endpoint.max_model_len()
    cap = options.max_text_tokens if max_len is None else min(options.max_text_tokens, max_len - 1)
    first = await token_ids(endpoint, texts[0])
    if first is None:
        raise UserError(f"{endpoint.root} has no /tokenize: the base's reference needs the server to tokenize the "
                        "texts (vLLM serves /tokenize); measure the base on a vLLM server")
    all_ids = [first, *await _all([token_ids(endpoint, text) for text in texts[1:]])]
    k = await endpoint.usable_k(options.top_k, first[:PROBE_TOKENS])
    if k < options.top_k:
        echo(f"the server grants {k} logprobs per position (asked {options.top_k}): its --max-logprobs caps it")
    kept: list[tuple[Text, list[int], int | None]] = []
    for text, ids in zip(texts, all_ids, strict=True):
        assert ids is not None
        if len(ids) < 2:
            echo(f"skipped {text.id}: fewer than 2 tokens")
            continue
        kept.append((text, ids[:cap], len(ids) if len(ids) > cap else None))
    echo(f"base: {len(kept)} texts, {sum(len(ids) for _, ids, _ in kept)} tokens, top-{k} logprobs")
    logprobs = await _all([endpoint.prompt_logprobs(ids, k, text.id) for text, ids, _ in kept])
    heads = await _all([endpoint.detokenize(ids[:1]) for _, ids, _ in kept])
    measured = [TextLogprobs(text, ids, [head, *lp.decoded], lp, cut)
                for (text, ids, cut), lp, head in zip(kept, logprobs, heads, strict=True)]
    generations: list[RefGeneration] = []
    chosen = _generation_subset([m.text for m in measured], options.generate)
    if chosen:
        room = (max_len or options.max_text_tokens + options.max_new_tokens) - options.max_new_tokens
        if room < 1:
            raise UserError(f"--max-new-tokens {options.max_new_tokens} leaves no room for a prompt in the server's "
                            f"context of {max_len} tokens")
        prompts = await _all([_generation_prompt(endpoint, measured[i].text, measured[i].token_ids, room) for i in chosen])
        continuations = await _all([endpoint.greedy(prompt, options.max_new_tokens) for prompt in prompts])
        generations = [RefGeneration(id=measured[i].text.id, domain=measured[i].text.domain, prompt_ids=prompt,
                                     token_ids=c.token_ids, finish_reason=c.finish_reason)
                       for i, prompt, c in zip(chosen, prompts, continuations, strict=True)]
        echo(f"base: {len(generations)} greedy continuations of up to {options.max_new_tokens} tokens")
    meta = ReferenceMeta(
        created_at=_now(), model=endpoint.model, checkpoint=checkpoint, endpoint=endpoint.base_url,
        vllm_version=vllm_version, max_model_len=max_len, k=k, text_set=text_set.name, text_set_sha256=text_set.sha256,
        tier=options.tier, limit=options.limit, max_text_tokens=options.max_text_tokens,
        generate_per_domain=options.generate, max_new_tokens=options.max_new_tokens,
        texts=[RefText(id=m.text.id, domain=m.text.domain, tokens=len(m.token_ids), truncated_from=m.truncated_from)
               for m in measured],
        generations=generations, seconds=round(time.monotonic() - started, 2),
    )
    return meta, measured


async def check_tokenizer(endpoint: Endpoint, reference: Reference) -> bool:
    """Re-tokenize every text on the candidate and compare with the base's ids; False when the
    server has no /tokenize (the decoded tokens of the logprobs are then the only check)."""
    ids = await _all([token_ids(endpoint, m.text) for m in reference.measured])
    if ids and ids[0] is None:
        return False
    for measured, own in zip(reference.measured, ids, strict=True):
        assert own is not None
        base = measured.token_ids
        if own[: len(base)] != base or (measured.truncated_from is None and len(own) != len(base)):
            at = next((i for i, (a, b) in enumerate(zip(base, own)) if a != b), min(len(base), len(own)))
            what = "chat template or tokenizer" if measured.text.is_chat else "tokenizer"
            raise TokenizerMismatch(
                f"the candidate's {what} differs from the base's: text {measured.text.id} token {at} is "
                f"{base[at] if at < len(base) else 'the end'} for the base, {own[at] if at < len(own) else 'the end'} for "
                "the candidate; divergence compares the same tokens, so serve the candidate with the base's tokenizer files")
    return True


def _check_decoded(measured: TextLogprobs, logprobs: PromptLogprobs) -> None:
    for position, (base, own) in enumerate(zip(measured.decoded[1:], logprobs.decoded, strict=False), start=1):
        if base != own:
            raise TokenizerMismatch(
                f"the candidate decodes token {measured.token_ids[position]} of text {measured.text.id} as {own!r}, "
                f"the base as {base!r}: not the same tokenizer; serve the candidate with the base's tokenizer files")


def _cut(measured: TextLogprobs, tokens: int) -> TextLogprobs:
    lp = measured.logprobs
    rows = tokens - 1
    return TextLogprobs(measured.text, measured.token_ids[:tokens], measured.decoded[:tokens],
                        PromptLogprobs(lp.top_ids[:rows], lp.top_lp[:rows], lp.actual_lp[:rows], lp.decoded[:rows]),
                        measured.truncated_from or len(measured.token_ids))


async def _continue(endpoint: Endpoint, generation: RefGeneration, max_new_tokens: int) -> Continuation:
    return await endpoint.greedy(generation.prompt_ids, max_new_tokens)


async def measure_candidate(endpoint: Endpoint, reference: Reference, options: DivergenceOptions, *,
                            checkpoint: str | None = None, vllm_version: str | None = None,
                            echo: Echo = print) -> tuple[DivergenceSummary, list[TextResult], list[Drift]]:
    """Compare the candidate behind ``endpoint`` with the stored base, text by text."""
    meta = reference.meta
    notes: list[str] = []
    measured = reference.measured
    k = await endpoint.usable_k(meta.k, measured[0].token_ids[:PROBE_TOKENS])
    if k < meta.k:
        notes.append(f"the candidate's server grants {k} logprobs per position, the reference holds {meta.k}: "
                     f"both compared on their top {k}")
    if not await check_tokenizer(endpoint, reference):
        notes.append(f"{endpoint.root} has no /tokenize: the tokenizer was checked through the decoded tokens only")
    max_len = await endpoint.max_model_len()
    if max_len is not None:
        cut = sum(len(m.token_ids) > max_len - 1 for m in measured)
        if cut:
            notes.append(f"{cut} texts cut to the candidate's context of {max_len} tokens")
            measured = [_cut(m, max_len - 1) if len(m.token_ids) > max_len - 1 else m for m in measured]
    echo(f"candidate: {len(measured)} texts, {sum(len(m.token_ids) for m in measured)} tokens, top-{k} logprobs")
    started = time.monotonic()
    logprobs = await _all([endpoint.prompt_logprobs(m.token_ids, k, m.text.id) for m in measured])
    seconds = time.monotonic() - started
    compared = []
    for base, own in zip(measured, logprobs, strict=True):
        _check_decoded(base, own)
        compared.append(Measured(base, compare(base.logprobs, own, base.token_ids)))
    results = [text_result(m) for m in compared]
    drifts: list[Drift] = []
    if meta.generations:
        continuations = await _all([_continue(endpoint, g, meta.max_new_tokens) for g in meta.generations])
        drifts = [compare_continuations(g.id, g.domain, g.token_ids, g.finish_reason, c.token_ids, c.finish_reason)
                  for g, c in zip(meta.generations, continuations, strict=True)]
    by_text = sorted(range(len(results)), key=lambda i: -results[i].mean_kl)[:WORST_TEXTS]
    wanted = sorted({int(t) for i in by_text for t in (*compared[i].metrics.base_top, *compared[i].metrics.candidate_top)
                     if t >= 0})
    names = await _all([endpoint.detokenize([t]) for t in wanted])
    positions = sum(r.positions for r in results)
    summary = DivergenceSummary(
        created_at=_now(), reference_sha256=reference.sha256, reference_path=str(reference.root),
        base=SideRef(model=meta.model, endpoint=meta.endpoint, checkpoint=meta.checkpoint, vllm_version=meta.vllm_version),
        candidate=SideRef(model=endpoint.model, endpoint=endpoint.base_url, checkpoint=checkpoint, vllm_version=vllm_version),
        k=k, text_set_sha256=meta.text_set_sha256, domains=by_domain(compared, 0.95, options.seed),
        drift=drift_by_domain(drifts), worst=worst_texts(compared, results, dict(zip(wanted, names, strict=True))),
        truncated_texts=sum(m.truncated_from is not None for m in measured), positions=positions,
        seconds=round(seconds, 3), tokens_per_s=round(sum(len(m.token_ids) for m in measured) / seconds, 1) if seconds > 0 else None,
        notes=notes,
    )
    return summary, results, drifts
