"""A candidate's divergence from its base, per domain: what ``summary.json`` holds and how it is built.

Per domain (and over ``all`` texts): the mean per-token KL with a seeded bootstrap interval over
texts (each text's mean KL is one observation, so a long text does not count as many), the
per-token KL percentiles p50/p95/p99 over every position, top-1 agreement (also averaged per text,
with its interval), the candidate's logprob of the base's top token where the candidate reported
it, the base's tail mass (how much the top-k left unresolved), and a histogram of per-token KL.
Generation drift is summarized per domain beside it, with loops and missing EOS counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bench import stats
from bench.divergence.drift import Drift
from bench.divergence.measure import TokenMetrics
from bench.divergence.reference import DIVERGENCE_DIR, TextLogprobs
from bench.errors import UserError
from bench.records import Interval

SUMMARY_JSON = "summary.json"
PER_TEXT_FILE = "per_text.jsonl"
ALL = "all"
# Per-token KL histogram bin edges (nats); the last bin is open.
HISTOGRAM_EDGES = (0.0, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
WORST_TEXTS = 8
WINDOW_BEFORE, WINDOW_AFTER = 40, 12  # tokens shown around a departing token


def histogram_labels() -> list[str]:
    edges = HISTOGRAM_EDGES
    labels = [f"<{edges[1]:g}"] + [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(1, len(edges) - 1)]
    return labels + [f">={edges[-1]:g}"]


class TextResult(BaseModel):
    """One text's figures (a line of per_text.jsonl)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    domain: str
    positions: int
    mean_kl: float
    max_kl: float
    top1_agreement: float
    tail_mean: float
    delta_nll: float
    departure: int | None  # token index of the first position whose top-1 changed
    peak: int  # token index of the largest KL


class DomainDivergence(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: int
    positions: int
    mean_kl: Interval
    p50_kl: float
    p95_kl: float
    p99_kl: float
    max_kl: float
    top1_agreement: Interval
    base_top_logprob: float | None  # mean over positions where the candidate reported the base's top token
    base_top_reported: float  # share of positions where it did
    tail_mean: float
    tail_max: float
    delta_nll: float  # mean over positions: candidate minus base NLL of the actual next token
    histogram: list[int]


class DriftSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: int
    identical: int
    first_divergence_median: float | None  # over the prompts whose continuations differ
    length_ratio_mean: float | None
    base_eos_rate: float
    candidate_eos_rate: float
    base_distinct2: float | None
    candidate_distinct2: float | None
    base_repetition4: float | None
    candidate_repetition4: float | None
    base_loops: int
    candidate_loops: int
    base_no_eos: int
    candidate_no_eos: int


class WorstText(BaseModel):
    """A text that moved most, with the tokens around the first one that departed."""

    model_config = ConfigDict(extra="forbid")
    id: str
    domain: str
    mean_kl: float
    top1_agreement: float
    position: int
    departed: bool  # True: the top-1 changed here; False: no top-1 changed, this is the largest KL
    kl_at: float
    before: list[str]
    token: str
    after: list[str]
    base_top: str
    candidate_top: str


class SideRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    endpoint: str
    checkpoint: str | None = None
    vllm_version: str | None = None


class DivergenceSummary(BaseModel):
    """``summary.json``: one candidate measured against one reference."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = 1
    kind: Literal["divergence"] = "divergence"
    created_at: str
    reference_sha256: str
    reference_path: str
    base: SideRef
    candidate: SideRef
    k: int
    text_set_sha256: str
    confidence: float = 0.95
    domains: dict[str, DomainDivergence]
    drift: dict[str, DriftSummary] = Field(default_factory=dict)
    worst: list[WorstText] = Field(default_factory=list)
    histogram_edges: list[float] = Field(default_factory=lambda: list(HISTOGRAM_EDGES))
    truncated_texts: int = 0
    positions: int = 0
    seconds: float = 0.0
    tokens_per_s: float | None = None
    notes: list[str] = Field(default_factory=list)


@dataclass
class Measured:
    """One text's comparison, with what is needed to show it."""

    base: TextLogprobs
    metrics: TokenMetrics


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else 0.0


def text_result(measured: Measured) -> TextResult:
    m = measured.metrics
    changed = np.flatnonzero(~m.agree)
    return TextResult(
        id=measured.base.text.id, domain=measured.base.text.domain, positions=int(m.kl.size),
        mean_kl=float(m.kl.mean()), max_kl=float(m.kl.max()), top1_agreement=float(m.agree.mean()),
        tail_mean=float(m.tail.mean()), delta_nll=float(m.delta_nll.mean()),
        departure=int(changed[0]) + 1 if changed.size else None, peak=int(np.argmax(m.kl)) + 1,
    )


def domain_figures(group: Sequence[Measured], confidence: float, seed: int) -> DomainDivergence:
    kl = np.concatenate([m.metrics.kl for m in group])
    top_lp = np.concatenate([m.metrics.base_top_lp for m in group])
    tail = np.concatenate([m.metrics.tail for m in group])
    delta = np.concatenate([m.metrics.delta_nll for m in group])
    reported = np.isfinite(top_lp)
    edges = np.asarray([*HISTOGRAM_EDGES, math.inf])
    counts, _ = np.histogram(kl, bins=edges)
    return DomainDivergence(
        texts=len(group), positions=int(kl.size),
        mean_kl=stats.mean_interval([float(m.metrics.kl.mean()) for m in group], confidence, seed),
        p50_kl=_percentile(kl, 50), p95_kl=_percentile(kl, 95), p99_kl=_percentile(kl, 99), max_kl=float(kl.max()),
        top1_agreement=stats.mean_interval([float(m.metrics.agree.mean()) for m in group], confidence, seed),
        base_top_logprob=float(top_lp[reported].mean()) if reported.any() else None,
        base_top_reported=float(reported.mean()), tail_mean=float(tail.mean()), tail_max=float(tail.max()),
        delta_nll=float(delta.mean()), histogram=[int(c) for c in counts],
    )


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def drift_figures(group: Sequence[Drift]) -> DriftSummary:
    differing = sorted(d.first_divergence for d in group if d.first_divergence is not None)
    n = len(group)
    return DriftSummary(
        prompts=n, identical=n - len(differing),
        first_divergence_median=float(np.median(differing)) if differing else None,
        length_ratio_mean=_mean([d.length_ratio for d in group]),
        base_eos_rate=sum(d.base_eos for d in group) / n, candidate_eos_rate=sum(d.candidate_eos for d in group) / n,
        base_distinct2=_mean([d.base_distinct2 for d in group]),
        candidate_distinct2=_mean([d.candidate_distinct2 for d in group]),
        base_repetition4=_mean([d.base_repetition4 for d in group]),
        candidate_repetition4=_mean([d.candidate_repetition4 for d in group]),
        base_loops=sum(d.base_loop for d in group), candidate_loops=sum(d.candidate_loop for d in group),
        base_no_eos=sum(not d.base_eos for d in group), candidate_no_eos=sum(not d.candidate_eos for d in group),
    )


def worst_texts(measured: Sequence[Measured], results: Sequence[TextResult], decode: dict[int, str],
                count: int = WORST_TEXTS) -> list[WorstText]:
    """The ``count`` texts with the largest mean KL, each with its first departing token in context.

    ``decode`` maps the candidate's top token ids (which may not occur in the text) to strings.
    """
    order = sorted(range(len(results)), key=lambda i: -results[i].mean_kl)[:count]
    out = []
    for index in order:
        result, m = results[index], measured[index]
        if result.mean_kl <= 0.0:
            break
        position = result.departure if result.departure is not None else result.peak
        tokens = m.base.decoded
        row = position - 1
        base_top = int(m.metrics.base_top[row])
        candidate_top = int(m.metrics.candidate_top[row])
        out.append(WorstText(
            id=result.id, domain=result.domain, mean_kl=result.mean_kl, top1_agreement=result.top1_agreement,
            position=position, departed=result.departure is not None, kl_at=float(m.metrics.kl[row]),
            before=tokens[max(0, position - WINDOW_BEFORE) : position], token=tokens[position],
            after=tokens[position + 1 : position + 1 + WINDOW_AFTER],
            base_top=decode.get(base_top, f"<{base_top}>"), candidate_top=decode.get(candidate_top, f"<{candidate_top}>"),
        ))
    return out


def by_domain(measured: Sequence[Measured], confidence: float, seed: int) -> dict[str, DomainDivergence]:
    domains: dict[str, list[Measured]] = {}
    for m in measured:
        domains.setdefault(m.base.text.domain, []).append(m)
    out = {name: domain_figures(group, confidence, seed) for name, group in domains.items()}
    out[ALL] = domain_figures(measured, confidence, seed)
    return out


def drift_by_domain(drifts: Sequence[Drift]) -> dict[str, DriftSummary]:
    if not drifts:
        return {}
    domains: dict[str, list[Drift]] = {}
    for d in drifts:
        domains.setdefault(d.domain, []).append(d)
    out = {name: drift_figures(group) for name, group in domains.items()}
    out[ALL] = drift_figures(drifts)
    return out


def summary_path(path: Path) -> Path | None:
    """Where a run directory (or a divergence folder) keeps its summary.json, if it has one."""
    for candidate in (path / DIVERGENCE_DIR / SUMMARY_JSON, path / SUMMARY_JSON):
        if candidate.is_file():
            return candidate
    return None


def load_summary(path: Path) -> DivergenceSummary:
    """Read a summary.json (or the one in ``path/divergence/``); errors are one line."""
    found = path if path.is_file() else summary_path(path)
    if found is None:
        raise UserError(f"{path} holds no divergence measurement ({DIVERGENCE_DIR}/{SUMMARY_JSON}): "
                        "make one with bench diverge --baseline BASE ... --out " + str(path))
    try:
        return DivergenceSummary.model_validate_json(found.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {found}: {exc.strerror}") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "top level"
        raise UserError(f"{found}: field {where}: {error['msg']}") from exc


def find_summary(path: Path) -> DivergenceSummary | None:
    """The run's divergence summary, or None when it has none."""
    found = summary_path(path)
    return load_summary(found) if found is not None else None
