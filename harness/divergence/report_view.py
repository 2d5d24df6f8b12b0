"""The report's divergence section, from the ``divergence/`` folders of the runs it compares.

A run holding a measurement (``summary.json``) is a candidate measured against a base; a run holding
a reference is the base. Tables are handed back as DataFrames for the report to escape and style;
the KL histogram is drawn with the report's own bar chart (shares of positions per KL bin), and the
texts that moved most keep their tokens as plain strings, which the page's autoescaping makes text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from markupsafe import Markup

from bench.compare.rundata import RunData
from bench.divergence.reference import read_meta, reference_dir
from bench.divergence.summary import ALL, DivergenceSummary, WorstText, find_summary, histogram_labels
from bench.report import charts

WORST_SHOWN = 5
Styled = Callable[[pd.DataFrame, str], Markup]


@dataclass
class WorstView:
    label: str
    text: WorstText


def _domains(measured: Sequence[tuple[str, DivergenceSummary]]) -> list[str]:
    names: list[str] = []
    for _, summary in measured:
        names += [d for d in summary.domains if d not in names and d != ALL]
    return [*names, ALL]


def _by_domain(measured: Sequence[tuple[str, DivergenceSummary]], value: Callable[[Any], str]) -> pd.DataFrame:
    domains = _domains(measured)
    return pd.DataFrame({label: [value(s.domains[d]) if d in s.domains else "-" for d in domains]
                         for label, s in measured}, index=pd.Index(domains, name="domain"))


def _detail(measured: Sequence[tuple[str, DivergenceSummary]]) -> pd.DataFrame:
    rows = []
    for label, summary in measured:
        for domain, d in summary.domains.items():
            rows.append({
                "candidate": label, "domain": domain, "texts": d.texts, "positions": d.positions,
                "p50 KL": f"{d.p50_kl:.3g}", "p95 KL": f"{d.p95_kl:.3g}", "p99 KL": f"{d.p99_kl:.3g}",
                "max KL": f"{d.max_kl:.3g}",
                "logprob of base top-1": "-" if d.base_top_logprob is None else
                f"{d.base_top_logprob:.3f} ({d.base_top_reported:.0%} reported)",
                "base tail mass mean/max": f"{d.tail_mean:.2g} / {d.tail_max:.2g}",
                "delta NLL": f"{d.delta_nll:+.4f}",
            })
    return pd.DataFrame(rows).set_index(["candidate", "domain"])


def _drift(measured: Sequence[tuple[str, DivergenceSummary]]) -> pd.DataFrame | None:
    rows = []
    for label, summary in measured:
        for domain, g in summary.drift.items():
            rows.append({
                "candidate": label, "domain": domain, "prompts": g.prompts, "identical": g.identical,
                "first divergence (median)": "-" if g.first_divergence_median is None else f"{g.first_divergence_median:g}",
                "length ratio": "-" if g.length_ratio_mean is None else f"{g.length_ratio_mean:.2f}",
                "EOS base -> cand": f"{g.base_eos_rate:.0%} -> {g.candidate_eos_rate:.0%}",
                "distinct-2 base -> cand": _pair(g.base_distinct2, g.candidate_distinct2),
                "4-gram repetition base -> cand": _pair(g.base_repetition4, g.candidate_repetition4),
                "loops base -> cand": f"{g.base_loops} -> {g.candidate_loops}",
                "no EOS base -> cand": f"{g.base_no_eos} -> {g.candidate_no_eos}",
            })
    return pd.DataFrame(rows).set_index(["candidate", "domain"]) if rows else None


def _pair(base: float | None, candidate: float | None) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return f"{fmt(base)} -> {fmt(candidate)}"


def _histogram(measured: Sequence[tuple[str, DivergenceSummary]]) -> Markup:
    labels = histogram_labels()
    series: dict[str, tuple[list[float], list[float], list[float]]] = {}
    nan = [float("nan")] * len(labels)
    for label, summary in measured:
        counts = summary.domains[ALL].histogram
        total = sum(counts) or 1
        series[label] = ([c / total for c in counts], nan, nan)
    return charts.grouped_bars(labels, series, title="Per-token KL(base||candidate), all texts", salt="divergence-kl",
                               ylabel="share of positions")


def divergence_section(runs: Sequence[RunData], labels: Sequence[str], styled: Styled) -> dict[str, Any] | None:
    """The section's context, or None when no run holds a divergence folder."""
    measured = [(label, s) for run, label in zip(runs, labels, strict=True) if (s := find_summary(run.path)) is not None]
    references = []
    for run, label in zip(runs, labels, strict=True):
        if (folder := reference_dir(run.path)) is not None:
            meta = read_meta(folder)
            references.append(f"{label} holds the base's reference: {meta.model}, {len(meta.texts)} texts, {meta.tokens} "
                              f"tokens, top-{meta.k} logprobs, {len(meta.generations)} greedy continuations "
                              f"(text set sha256 {meta.text_set_sha256[:12]})")
    if not measured and not references:
        return None
    section: dict[str, Any] = {"references": references, "measured": bool(measured), "worst": [], "notes": []}
    if not measured:
        return section
    section.update(
        kl=styled(_by_domain(measured, lambda d: d.mean_kl.text()), "divergence-kl"),
        agreement=styled(_by_domain(measured, lambda d: d.top1_agreement.text(3)), "divergence-top1"),
        detail=styled(_detail(measured), "divergence-detail"),
        histogram=_histogram(measured),
    )
    drift = _drift(measured)
    section["drift"] = styled(drift, "divergence-drift") if drift is not None else None
    section["worst"] = [WorstView(label, text) for label, summary in measured for text in summary.worst[:WORST_SHOWN]]
    section["notes"] = [f"{label}: {note}" for label, summary in measured for note in summary.notes]
    section["pairs"] = [f"{label}: {summary.candidate.model} against base {summary.base.model}" for label, summary in measured]
    return section
