"""`bench report`: one self-contained HTML page comparing runs, and showing why they differ.

The first run is the reference: deltas are the other runs minus it, paired item by item where
both runs kept item scores. Tables are shaped with pandas and rendered through its Styler with
HTML escaping; charts are inline SVG from :mod:`bench.report.charts`; the page is a Jinja2 template
with autoescape and a Content-Security-Policy that forbids scripts and any network fetch, so
model output (untrusted) can only ever appear as text.

Two sections appear only when there is something to show: the candidates of a ``bench candidate``
loop (size versus score, handed over as :class:`~bench.report.candidates.CandidateTable`), and
the expert heatmaps of every run served from a pruned checkpoint (``bench run`` copies the
checkpoint's ``pruning.json`` into the run directory, so the report reads nothing outside the runs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup
from pandas.io.formats.style import Styler

from bench import __version__ as bench_version
from bench import knowledge, passk, stats
from bench.compare.discrimination import discrimination
from bench.compare.flips import Flips, flips, shown_ids
from bench.compare.gate import GateResult, load_gate_result, stack_settings
from bench.compare.rundata import PASS_HAT_K, RunData, load_run
from bench.divergence.report_view import divergence_section
from bench.errors import UserError
from bench.records import Interval, ItemRecord, PackResult, PassK
from bench.report import charts
from bench.report.candidates import (
    CandidateTable,
    ExpertMaps,
    candidate_frame,
    candidate_scatter,
    expert_maps,
    pruning_sources,
    verdict_text,
)
from bench.report.templates import template_environment
from bench.run.checkpoint_facts import run_pruning

TEXT_LIMIT = 3000  # characters of one content/reasoning/request cell before it is cut
OPEN_ITEMS = 3  # drill-down entries shown expanded
_RANK = {"regressed": 0, "improved": 1, "changed": 2, "unpaired": 3, "failed": 4, "same": 5, "passed": 5}
_HEALTH_FIELDS = ("responses", "truncated", "leaked_markers", "unclosed_think", "null_content", "empty", "errors")
_BAD_HEALTH = frozenset({"leaked_markers", "unclosed_think", "errors"})


# ---------------------------------------------------------------------------------------------
# Tables


def _styled(frame: pd.DataFrame, name: str, classes: pd.DataFrame | None = None, precision: int = 3) -> Markup:
    """Render a DataFrame as an HTML table with every value and label HTML-escaped."""
    styler = (
        Styler(frame, uuid=name, cell_ids=False)  # table id "T_<name>"
        .format(escape="html", na_rep="-", precision=precision)
        .format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1)
        .set_table_attributes('class="data"')
    )
    if classes is not None:
        styler = styler.set_td_classes(classes.reindex(index=frame.index, columns=frame.columns).astype(object).fillna(""))
    return Markup(styler.to_html(doctype_html=False))  # noqa: S704 - Styler escaped every cell above


def _labels(runs: Sequence[RunData]) -> list[str]:
    """Column labels: run ids, made unique when two runs share one (a run and its stored baseline)."""
    labels: list[str] = []
    for run in runs:
        label, suffix = run.run_id, 2
        while label in labels:
            label, suffix = f"{run.run_id} #{suffix}", suffix + 1
        labels.append(label)
    return labels


def _fmt_interval(interval: Interval | None) -> str:
    if interval is None or interval.mean is None:
        return "-"
    span = f" [{interval.low:.3f}, {interval.high:.3f}]" if interval.low is not None and interval.high is not None else ""
    return f"{interval.mean:.3f}{span} n={interval.n}"


def _fmt_delta(comparison: stats.PairedComparison | None, fallback: float | None) -> tuple[str, str]:
    """A delta cell and its CSS class: paired difference with interval, or a plain difference."""
    if comparison is None or comparison.difference is None:
        if fallback is None:
            return "-", ""
        return f"{fallback:+.3f} (unpaired)", ""
    text = f"{comparison.difference:+.3f}"
    if comparison.low is not None and comparison.high is not None:
        text += f" [{comparison.low:+.3f}, {comparison.high:+.3f}]"
    if comparison.p_value is not None:
        text += f" p={comparison.p_value:.2g}"
    css = ""
    if comparison.high is not None and comparison.high < 0:
        css = "worse"
    elif comparison.low is not None and comparison.low > 0:
        css = "better"
    return text, css


def _pack_names(runs: Sequence[RunData]) -> list[str]:
    names: list[str] = []
    for run in runs:
        names += [name for name in run.results.packs if name not in names]
    return names


def _compare(reference: RunData, other: RunData, pack: str, measure: str, confidence: float) -> stats.PairedComparison | None:
    if not (reference.has_items and other.has_items) or pack not in reference.results.packs or pack not in other.results.packs:
        return None
    return stats.compare_paired(reference.folded(pack, measure).values, other.folded(pack, measure).values, confidence)


def pack_table(runs: Sequence[RunData], labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pack x run: score and pass rate with intervals, and paired deltas versus the first run."""
    reference = runs[0]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    classes: dict[tuple[str, str], dict[str, str]] = {}
    for pack in _pack_names(runs):
        for measure, label in (("score", "score"), ("pass_rate", "pass rate")):
            row: dict[str, str] = {}
            css: dict[str, str] = {}
            ref_result = reference.results.packs.get(pack)
            ref_interval = getattr(ref_result, measure) if ref_result else None
            for run, run_label in zip(runs, labels, strict=True):
                result = run.results.packs.get(pack)
                interval = getattr(result, measure) if result else None
                row[run_label] = _fmt_interval(interval)
                if run is reference:
                    continue
                fallback = None
                if interval is not None and ref_interval is not None and interval.mean is not None and ref_interval.mean is not None:
                    fallback = interval.mean - ref_interval.mean
                comparison = _compare(reference, run, pack, measure, run.results.confidence)
                column = f"Δ {run_label}"
                row[column], css[column] = _fmt_delta(comparison, fallback)
            rows[(pack, label)] = row
            classes[(pack, label)] = css
        found = _pass_hat_k_row(runs, labels, pack)
        if found is not None:
            rows[(pack, "pass^k")], classes[(pack, "pass^k")] = found
        moved = {label: movement(reference, run, pack) for run, label in zip(runs[1:], labels[1:], strict=True)}
        if any(moved.values()):
            rows[(pack, "answers")] = {label: "" for label in labels} | {f"Δ {label}": text for label, text in moved.items()}
            classes[(pack, "answers")] = {f"Δ {label}": "unmoved" for label, text in moved.items() if text.startswith(NOTHING_MOVED)}
        spreads = [run.results.packs[pack].repeat_spread if pack in run.results.packs else None for run in runs]
        if any(spread is not None for spread in spreads):
            # How much repeats of one item disagreed: the noise a single run would have carried.
            rows[(pack, "repeat spread")] = {
                label: f"{spread:.3f}" if spread is not None else "-" for label, spread in zip(labels, spreads, strict=True)
            }
            classes[(pack, "repeat spread")] = {}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(rows), names=["pack", "measure"])
    class_frame = pd.DataFrame.from_dict(classes, orient="index").reindex(index=list(rows))
    class_frame.index = frame.index
    return frame, class_frame


def _pass_hat_k_row(runs: Sequence[RunData], labels: Sequence[str], pack: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """pass^k per run and its paired change, for a pack some run asked more than once per item.

    Runs with a different k are not compared: pass^3 and pass^5 are different measures.
    """
    found = [run.results.packs[pack].passk if pack in run.results.packs else None for run in runs]
    if not any(entry is not None and entry.k > 1 for entry in found):
        return None
    reference, ref = runs[0], found[0]
    row: dict[str, str] = {}
    css: dict[str, str] = {}
    for run, label, entry in zip(runs, labels, found, strict=True):
        row[label] = f"{_fmt_interval(entry.pass_hat_k)} k={entry.k}" if entry is not None else "-"
        if run is reference:
            continue
        column = f"Δ {label}"
        if entry is None or ref is None:
            row[column] = "-"
        elif entry.k != ref.k:
            row[column] = f"not compared: k={ref.k} vs k={entry.k}"
        else:
            means = (entry.pass_hat_k.mean, ref.pass_hat_k.mean)
            fallback = means[0] - means[1] if means[0] is not None and means[1] is not None else None
            comparison = _compare(reference, run, pack, PASS_HAT_K, run.results.confidence)
            row[column], css[column] = _fmt_delta(comparison, fallback)
    return row, css


NOTHING_MOVED = "nothing moved"


def _answers(run: RunData) -> dict[tuple[str, str, int], str]:
    """Every record's answers (content and tool calls of each turn), keyed by pack, item and repeat.

    Read as plain JSON: a report over 10,000 items cannot afford to validate every transcript.
    """
    items = run.path / "items.jsonl"
    if not (run.has_items and items.is_file()):
        return {}
    stat = items.stat()
    key = (items, stat.st_mtime_ns, stat.st_size)
    if key in _ANSWERS:
        return _ANSWERS[key]
    found: dict[tuple[str, str, int], str] = {}
    for line in items.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line: the store skips it too
        turns = [
            (exchange["response"].get("content"), exchange["response"].get("tool_calls"))
            for exchange in record.get("transcript", {}).get("exchanges", [])
        ]
        found[(record["pack"], record["item_id"], record.get("repeat", 0))] = json.dumps(turns, sort_keys=True)
    if len(_ANSWERS) >= 16:
        _ANSWERS.clear()
    _ANSWERS[key] = found
    return found


_ANSWERS: dict[tuple[Path, int, int], dict[tuple[str, str, int], str]] = {}


def movement(reference: RunData, other: RunData, pack: str) -> str:
    """Whether anything moved between two runs of a pack: identical answers and scores on every
    paired item means the pack's rules could not have told the models apart, which is not the
    same as scores that merely agree (answers moved both ways and cancelled out)."""
    ref_answers, answers = _answers(reference), _answers(other)
    keys = sorted(key for key in ref_answers if key[0] == pack and key in answers)
    if not keys:
        return ""
    differ = sum(ref_answers[key] != answers[key] for key in keys)
    ref_scores, scores = reference.folded(pack, "score").values, other.folded(pack, "score").values
    shared = set(ref_scores) & set(scores)
    changed_scores = sum(ref_scores[item] != scores[item] for item in shared)
    if not differ and not changed_scores:
        return f"{NOTHING_MOVED}: identical answers and scores on all {len(keys)} records (the rules cannot discriminate)"
    ref_mean = sum(ref_scores[i] for i in shared) / len(shared) if shared else None
    mean = sum(scores[i] for i in shared) / len(shared) if shared else None
    agree = ref_mean is not None and mean is not None and abs(ref_mean - mean) < 1e-12
    lead = "scores agree, but " if agree else ""
    return f"{lead}{differ} of {len(keys)} answers differ, {changed_scores} item scores changed"


def collapse_notes(runs: Sequence[RunData], labels: Sequence[str]) -> list[str]:
    """Dead categories and below-chance scores of every run, one line each."""
    notes: list[str] = []
    for run, label in zip(runs, labels, strict=True):
        for result in run.results.packs.values():
            found = knowledge.collapse(result, run.results.confidence)
            if found is not None:
                notes += [f"{label}: {line}" for line in found.lines()]
    return notes


def subdimension_frame(runs: Sequence[RunData], labels: Sequence[str]) -> pd.DataFrame:
    """Long frame: one row per (pack, subdimension, run) with mean, interval and n."""
    records = []
    for run, label in zip(runs, labels, strict=True):
        for pack, result in run.results.packs.items():
            for sub, interval in result.subdimensions.items():
                records.append({"pack": pack, "subdimension": sub, "run": label, "mean": interval.mean,
                                "low": interval.low, "high": interval.high, "n": interval.n})
    return pd.DataFrame.from_records(records, columns=["pack", "subdimension", "run", "mean", "low", "high", "n"])


def _pivot_means(long: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    if long.empty:
        return pd.DataFrame()
    long = long.assign(row=long["pack"] + " / " + long["subdimension"])
    order = list(dict.fromkeys(long["row"]))
    wide = long.pivot_table(index="row", columns="run", values="mean", aggfunc="first", dropna=False)
    return wide.reindex(index=order, columns=[label for label in labels if label in wide.columns]).astype(float)


def _subdimension_table(long: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    if long.empty:
        return pd.DataFrame()
    long = long.assign(
        cell=[
            _fmt_interval(Interval(mean=m, low=lo, high=hi, n=int(n))) if m is not None and not _nan(m) else "-"
            for m, lo, hi, n in zip(long["mean"], long["low"], long["high"], long["n"], strict=True)
        ]
    )
    wide = long.pivot_table(index=["pack", "subdimension"], columns="run", values="cell", aggfunc="first")
    order = list(dict.fromkeys(zip(long["pack"], long["subdimension"], strict=True)))
    index = pd.MultiIndex.from_tuples(order, names=["pack", "subdimension"])
    return wide.reindex(index=index, columns=[label for label in labels if label in wide.columns])


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _breakdown_names(runs: Sequence[RunData], pack: str) -> list[str]:
    """The breakdowns a pack declared, in its order, over every run that has the pack."""
    names: list[str] = []
    for run in runs:
        result = run.results.packs.get(pack)
        names += [name for name in (result.breakdowns if result else {}) if name not in names]
    return names


def _group_interval(result: PackResult | None, breakdown: str, group: str) -> Interval | None:
    found = result.breakdowns.get(breakdown, {}).get(group) if result is not None else None
    return found.score if found is not None else None


def breakdown_groups(runs: Sequence[RunData], pack: str, breakdown: str) -> list[str]:
    """Every group of one breakdown seen in any run, sorted."""
    results = [run.results.packs.get(pack) for run in runs]
    return sorted({group for result in results if result for group in result.breakdowns.get(breakdown, {})})


def breakdown_table(runs: Sequence[RunData], labels: Sequence[str], pack: str, breakdown: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group x run: each group's score with its interval and n, and its mean minus the first run's.

    A delta is marked worse or better only when the two runs' intervals do not overlap.
    """
    results = [run.results.packs.get(pack) for run in runs]
    columns = [labels[0]] + [column for label in labels[1:] for column in (label, f"Δ {label}")]
    rows: dict[str, dict[str, str]] = {}
    classes: dict[str, dict[str, str]] = {}
    for group in breakdown_groups(runs, pack, breakdown):
        reference = _group_interval(results[0], breakdown, group)
        row: dict[str, str] = {labels[0]: _fmt_interval(reference)}
        css: dict[str, str] = {}
        for result, label in zip(results[1:], labels[1:], strict=True):
            interval = _group_interval(result, breakdown, group)
            row[label] = _fmt_interval(interval)
            column = f"Δ {label}"
            row[column], css[column] = _group_delta(reference, interval)
        rows[group] = row
        classes[group] = css
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    frame.index.name = breakdown.replace("_", " ")
    class_frame = pd.DataFrame.from_dict(classes, orient="index").reindex(index=list(rows), columns=columns)
    class_frame.index = frame.index
    return frame, class_frame


def _group_delta(reference: Interval | None, other: Interval | None) -> tuple[str, str]:
    if reference is None or other is None or reference.mean is None or other.mean is None:
        return "-", ""
    css = ""
    if reference.low is not None and reference.high is not None and other.low is not None and other.high is not None:
        if other.high < reference.low:
            css = "worse"
        elif other.low > reference.high:
            css = "better"
    return f"{other.mean - reference.mean:+.3f}", css


def timing_table(runs: Sequence[RunData], labels: Sequence[str]) -> pd.DataFrame:
    rows = []
    for run, label in zip(runs, labels, strict=True):
        for pack, result in run.results.packs.items():
            timing = result.timing
            rows.append(
                {
                    "run": label, "pack": pack, "items": result.n,
                    "latency p50 (s)": timing.latency_p50_s, "latency p95 (s)": timing.latency_p95_s,
                    "prompt tokens": timing.prompt_tokens, "completion tokens": timing.completion_tokens,
                    "reasoning tokens": timing.reasoning_tokens,
                    "completion tokens / item": timing.completion_tokens / result.n if result.n else None,
                }  # fmt: skip
            )
    return pd.DataFrame(rows).set_index(["run", "pack"]) if rows else pd.DataFrame()


def health_table(runs: Sequence[RunData], labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for run, label in zip(runs, labels, strict=True):
        for pack, result in run.results.packs.items():
            rows[(label, pack)] = {name: getattr(result.health, name) for name in _HEALTH_FIELDS}
        rows[(label, "(all)")] = {name: getattr(run.results.health, name) for name in _HEALTH_FIELDS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(rows), names=["run", "pack"])
    classes = frame.apply(
        lambda column: column.map(lambda v: ("bad" if column.name in _BAD_HEALTH else "warn") if v else "")
    )
    classes.loc[:, "responses"] = ""
    return frame, classes


def stack_table(runs: Sequence[RunData], labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Serving settings per run; rows whose values differ are marked and listed."""
    per_run = [stack_settings(run.manifest) for run in runs]
    keys = list(dict.fromkeys(key for settings in per_run for key in settings))
    frame = pd.DataFrame({label: [s.get(key, "-") for key in keys] for label, s in zip(labels, per_run, strict=True)}, index=keys)
    frame.index.name = "setting"
    differing = [key for key in keys if key != "model" and frame.loc[key].nunique() > 1]
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    classes.loc[differing, :] = "diff"
    return frame, classes, differing


# ---------------------------------------------------------------------------------------------
# Drill-down


@dataclass
class ExchangeView:
    request: str
    content: str
    reasoning: str
    tool_calls: str
    finish: str


@dataclass
class CellView:
    present: bool
    value: float | None = None
    passed: bool | None = None
    status: str = ""
    reason: str = ""
    repeats: list[float] = field(default_factory=list)
    marks: str = ""  # each trial passed or failed, in repeat order, when the item was asked more than once
    exchanges: list[ExchangeView] = field(default_factory=list)


@dataclass
class DrillItem:
    pack: str
    item_id: str
    category: str
    values: list[float | None]
    cells: list[CellView] = field(default_factory=list)
    shared_requests: list[str | None] = field(default_factory=list)  # per turn: one request for all runs, or None


def _cut(text: str | None) -> str:
    if not text:
        return ""
    if len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}\n… ({len(text) - TEXT_LIMIT} more characters in items.jsonl)"


def _request_text(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> str:
    lines = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", part)) if isinstance(part, Mapping) else str(part) for part in content)
        role = message.get("role", "?")
        if message.get("tool_calls"):
            calls = ", ".join(str(call.get("function", {}).get("name", "?")) for call in message["tool_calls"])
            content = f"{content or ''} [tool calls: {calls}]".strip()
        lines.append(f"{role}: {content if content is not None else ''}")
    if tools:
        names = [str(tool.get("function", {}).get("name", "?")) for tool in tools]
        lines.append(f"[tools offered: {', '.join(names)}]")
    return _cut("\n".join(lines))


def _cell(records: list[ItemRecord]) -> CellView:
    if not records:
        return CellView(present=False)
    first = records[0]
    score = first.score
    exchanges = [
        ExchangeView(
            request=_request_text(ex.request.messages, ex.request.tools),
            content=_cut(ex.response.content) if ex.response.content is not None else "(null)",
            reasoning=_cut(ex.response.reasoning),
            tool_calls=_cut("\n".join(f"{call.name}({call.arguments})" for call in ex.response.tool_calls)),
            finish=f"{ex.response.finish_reason or '-'}, {ex.response.latency_s:.2f} s, {ex.response.usage.completion_tokens} tokens",
        )
        for ex in first.transcript.exchanges
    ]
    return CellView(
        present=True,
        value=score.value if score else None,
        passed=score.passed if score else None,
        status=score.status if score else "error",
        reason=_cut((score.reason if score else "") or (first.error or "")),
        repeats=[r.score.value if r.score else 0.0 for r in records] if len(records) > 1 else [],
        marks=passk.marks([r.score.passed if r.score and r.error is None else None for r in records])
        if len(records) > 1 else "",
        exchanges=exchanges,
    )


def _statuses(run: RunData, pack: str) -> dict[str, tuple[str, ...]]:
    """Each item's score statuses over its repeats ("error" for an unscored item)."""
    found: dict[str, list[str]] = {}
    for item in run.pack_items(pack):
        found.setdefault(item.item_id, []).append(item.score.status if item.score else "error")
    return {item_id: tuple(sorted(values)) for item_id, values in found.items()}


def _categorise(runs: Sequence[RunData]) -> list[tuple[tuple[int, float, str, str], str, str, str, list[float | None]]]:
    """Every (pack, item) with its category versus the first run and its score per run."""
    entries = []
    for pack in _pack_names(runs):
        passes = [run.folded(pack, "pass_rate").values for run in runs]
        scores = [run.folded(pack, "score").values for run in runs]
        # A status change (scored -> truncated, say) is a change worth reading even at equal scores.
        statuses = [_statuses(run, pack) for run in runs]
        item_ids = sorted(set().union(*[set(p) for p in passes]))
        for item_id in item_ids:
            run_passes = [p.get(item_id) for p in passes]
            run_scores = [s.get(item_id) for s in scores]
            ref = run_passes[0]
            others = [v for v in run_passes[1:] if v is not None]
            if len(runs) == 1:
                category = "passed" if ref == 1.0 else "failed"
            elif ref is None or len(others) < len(runs) - 1:
                category = "unpaired"
            elif any(v < ref for v in others):
                category = "regressed"
            elif any(v > ref for v in others):
                category = "improved"
            elif len(set(run_scores)) > 1 or len({st.get(item_id) for st in statuses}) > 1:
                category = "changed"
            else:
                category = "same"
            present = [s for s in run_scores if s is not None]
            swing = max(present) - min(present) if present else 0.0
            entries.append(((_RANK[category], -swing, pack, item_id), category, pack, item_id, run_scores))
    entries.sort(key=lambda entry: entry[0])
    return entries


def drilldown(runs: Sequence[RunData], max_items: int) -> tuple[list[DrillItem], pd.DataFrame]:
    """Items to show, flipped first, with their full transcripts; and the count per category."""
    entries = _categorise(runs)
    counts = pd.DataFrame([(pack, category) for _, category, pack, _, _ in entries], columns=["pack", "category"])
    summary = counts.groupby(["pack", "category"]).size().unstack(fill_value=0) if not counts.empty else pd.DataFrame()
    if not summary.empty:
        summary = summary[[c for c in sorted(summary.columns, key=lambda c: _RANK[c])]]
    chosen = entries[:max_items]
    keys = [(pack, item_id) for _, _, pack, item_id, _ in chosen]
    per_run = [run.full_records(keys) for run in runs]
    items: list[DrillItem] = []
    for _, category, pack, item_id, values in chosen:
        cells = [_cell(records.get((pack, item_id), [])) for records in per_run]
        turns = max((len(cell.exchanges) for cell in cells), default=0)
        shared: list[str | None] = []
        for turn in range(turns):
            texts = {cell.exchanges[turn].request for cell in cells if cell.present and turn < len(cell.exchanges)}
            shared.append(texts.pop() if len(texts) == 1 else None)
        items.append(DrillItem(pack=pack, item_id=item_id, category=category, values=values, cells=cells, shared_requests=shared))
    return items, summary


# ---------------------------------------------------------------------------------------------
# Trials (--repeats) and discrimination


def _trial_rank(trials: Sequence[list[bool | None]]) -> int:
    """Mixed outcomes first (the flaky and the changed), then items that always failed, then the rest."""
    flat = {outcome for run_trials in trials for outcome in run_trials if outcome is not None}
    return 0 if len(flat) > 1 else 1 if flat == {False} else 2


def _trial_cell(trials: list[bool | None] | None) -> tuple[str, str]:
    if not trials:
        return "-", ""
    passed = sum(outcome is True for outcome in trials)
    css = "better" if passed == len(trials) else "worse" if passed == 0 else "warn"
    return f"{passk.marks(trials)} {passed}/{len(trials)}", css


def _passk_line(label: str, found: PassK | None) -> str:
    if found is None:
        return f"{label}: -"
    curve = ", ".join(f"{value:.3f}" if value is not None else "-" for value in found.curve)
    short = f"; {found.short} items with fewer than {found.k} scored trials left out" if found.short else ""
    return (f"{label}: pass@1 {_fmt_interval(found.pass_at_1)}; pass^{found.k} {_fmt_interval(found.pass_hat_k)}; "
            f"pass^1..{found.k} {curve}{short}")


def trial_sections(runs: Sequence[RunData], labels: Sequence[str], max_items: int) -> list[dict[str, Any]]:
    """Per pack some run asked more than once per item: every item's trials as marks, one column per run.

    ✓ a trial passed, ✗ failed, · not scored. Mixed rows first: they are what pass^k counts against.
    """
    sections = []
    for pack in _pack_names(runs):
        if not any(run.trials_per_item(pack) > 1 for run in runs):
            continue
        per_run = [run.trials(pack) for run in runs]
        item_ids = sorted(set().union(*per_run), key=lambda i: (_trial_rank([per.get(i, []) for per in per_run]), i))
        rows: dict[str, dict[str, str]] = {}
        classes: dict[str, dict[str, str]] = {}
        for item_id in item_ids[:max_items]:
            cells = [_trial_cell(per.get(item_id)) for per in per_run]
            rows[item_id] = {label: text for label, (text, _) in zip(labels, cells, strict=True)}
            classes[item_id] = {label: css for label, (_, css) in zip(labels, cells, strict=True)}
        table = None
        if rows:
            frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(labels))
            frame.index.name = "item"
            class_frame = pd.DataFrame.from_dict(classes, orient="index").reindex(index=frame.index, columns=frame.columns)
            table = _styled(frame, f"{pack}-trials", class_frame)
        summary = [_passk_line(label, run.results.packs[pack].passk if pack in run.results.packs else None)
                   for run, label in zip(runs, labels, strict=True)]
        sections.append({"pack": pack, "summary": summary, "table": table, "shown": len(rows), "total": len(item_ids)})
    return sections


DISCRIMINATION_IDS = 20  # frozen item ids listed per pack in the report (bench packs --discrimination lists all)


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:DISCRIMINATION_IDS])
    return shown + (f" … ({len(ids) - DISCRIMINATION_IDS} more)" if len(ids) > DISCRIMINATION_IDS else "")


def discrimination_view(runs: Sequence[RunData]) -> tuple[pd.DataFrame | None, str]:
    """Per pack over the report's runs: how many items changed outcome, and which never did.

    Shown only when an item could have changed (two runs, or a run with repeats); runs that asked
    different items of a pack get the one line that says so instead of a table.
    """
    if len(runs) < 2 and not any(run.trials_per_item(pack) > 1 for run in runs for pack in run.results.packs):
        return None, ""
    try:
        found = discrimination(runs)
    except UserError as exc:
        return None, str(exc)
    rows = {
        pack.pack: {
            "items": pack.items, "trials/item": pack.observations,
            "changed": f"{pack.changed} ({pack.changed_share:.0%})" if pack.changed_share is not None else "-",
            "always passed": len(pack.always_passed), "always failed": len(pack.always_failed),
            "not in every run": len(pack.not_in_every_run), "always failed (ids)": _ids(pack.always_failed),
        }
        for pack in found.packs
    }  # fmt: skip
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "pack"
    return frame, ""


FLIP_ALPHA = 0.05  # a right->wrong or wrong->right count is marked when McNemar's p is below this


def _flip_frame(found: Flips) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (pack, measure): the four cells, McNemar's p, the floors, the right->wrong ids."""
    rows: dict[tuple[str, str], dict[str, object]] = {}
    classes: dict[tuple[str, str], dict[str, str]] = {}
    for pack in found.packs:
        for measure in pack.measures:
            cells = measure.table
            rows[(pack.pack, measure.measure)] = {
                "paired": cells.paired, "right→wrong": cells.right_to_wrong, "wrong→right": cells.wrong_to_right,
                "both right": cells.both_right, "both wrong": cells.both_wrong,
                "McNemar p": f"{cells.p_value:.2g}" if cells.p_value is not None else "-",
                "base-vs-base": measure.floor_text("rerun"), "between base trials": measure.floor_text("repeats"),
                "right→wrong (ids)": shown_ids(cells.regressed),
            }  # fmt: skip
            significant = cells.p_value is not None and cells.p_value < FLIP_ALPHA
            worse = significant and cells.right_to_wrong > cells.wrong_to_right
            better = significant and cells.wrong_to_right > cells.right_to_wrong
            classes[(pack.pack, measure.measure)] = {"right→wrong": "worse" if worse else "",
                                                     "wrong→right": "better" if better else ""}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(list(rows), names=["pack", "measure"])
    class_frame = pd.DataFrame.from_dict(classes, orient="index")
    class_frame.index = frame.index
    return frame, class_frame


def flip_sections(runs: Sequence[RunData], labels: Sequence[str], noise: RunData | None) -> list[dict[str, Any]]:
    """Per run after the first: its flips against the first run, with the noise floors (bench.compare.flips).

    A pack asked as different items, or runs without item scores, get their one line instead of rows.
    """
    sections = []
    for index, (run, label) in enumerate(zip(runs[1:], labels[1:], strict=True), start=1):
        notes: list[str] = []
        table = None
        lines: list[str] = []
        try:
            found = flips(runs[0], run, noise)
        except UserError as exc:
            notes.append(str(exc))
        else:
            notes += found.notes + [pack.refused for pack in found.packs if pack.refused]
            grouped: dict[str, list[str]] = {}
            for pack in found.packs:
                for note in pack.notes:
                    grouped.setdefault(note, []).append(pack.pack)
            notes += [f"{', '.join(packs)}: {note}" for note, packs in grouped.items()]
            lines = [f"{pack.pack} {measure.line()}" for pack in found.packs for measure in pack.measures[:1]]
            if any(pack.measures for pack in found.packs):
                frame, classes = _flip_frame(found)
                table = _styled(frame, f"flip-table-{index}", classes)
        sections.append({"label": label, "table": table, "lines": lines, "notes": notes})
    return sections


# ---------------------------------------------------------------------------------------------
# Charts


def _subdimension_charts(long: pd.DataFrame, labels: Sequence[str]) -> list[Markup]:
    means = _pivot_means(long, labels)
    if means.empty:
        return []
    out = [charts.heatmap(means, title="Subdimension means", salt="subdimension-means")]
    if means.shape[1] > 1:
        deltas = means.iloc[:, 1:].sub(means.iloc[:, 0], axis=0)
        deltas.columns = [f"{column} − {means.columns[0]}" for column in deltas.columns]
        out.append(charts.heatmap(deltas, title="Change vs the first run", salt="subdimension-deltas", diverging=True,
                                  value_format="{:+.2f}"))
    return out


MAX_CHART_GROUPS = 12  # a breakdown with more groups (MMLU's 57 subjects) is shown as a table only


def _breakdown_chart(runs: Sequence[RunData], labels: Sequence[str], pack: str, breakdown: str) -> Markup | None:
    groups = breakdown_groups(runs, pack, breakdown)
    if not groups or len(groups) > MAX_CHART_GROUPS:
        return None
    series = {}
    for run, label in zip(runs, labels, strict=True):
        result = run.results.packs.get(pack)
        if result is None or breakdown not in result.breakdowns:
            continue
        intervals = [_group_interval(result, breakdown, group) for group in groups]
        series[label] = (
            [i.mean if i and i.mean is not None else math.nan for i in intervals],
            [i.low if i and i.low is not None else math.nan for i in intervals],
            [i.high if i and i.high is not None else math.nan for i in intervals],
        )
    title = f"{pack} by {breakdown.replace('_', ' ')}"
    return charts.grouped_bars(groups, series, title=title, salt=f"{pack}-{breakdown}", ylabel="score")


def breakdown_sections(runs: Sequence[RunData], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One section per pack with breakdowns: a chart (few groups) and a table per breakdown."""
    sections = []
    for pack in _pack_names(runs):
        parts = []
        for breakdown in _breakdown_names(runs, pack):
            frame, classes = breakdown_table(runs, labels, pack, breakdown)
            parts.append({
                "name": breakdown.replace("_", " "),
                "chart": _breakdown_chart(runs, labels, pack, breakdown),
                "table": _styled(frame, f"{pack}-{breakdown}", classes) if not frame.empty else None,
            })  # fmt: skip
        if parts:
            sections.append({"pack": pack, "breakdowns": parts})
    return sections


def _latency_chart(runs: Sequence[RunData], labels: Sequence[str]) -> Markup | None:
    groups: dict[str, dict[str, list[float]]] = {}
    for pack in _pack_names(runs):
        for run, label in zip(runs, labels, strict=True):
            elapsed = [item.elapsed_s for item in run.pack_items(pack)]
            if elapsed:
                groups.setdefault(pack, {})[label] = elapsed
    if not groups:
        return None
    return charts.box_plots(groups, title="Item wall time", salt="latency", ylabel="seconds per item")


# ---------------------------------------------------------------------------------------------
# Candidates and pruned experts


def run_pruning_sources(runs: Sequence[RunData], labels: Sequence[str]) -> list[tuple[str, Path]]:
    """``(label, pruning.json)`` for each run whose directory holds the pruned checkpoint's record."""
    return [(label, path) for run, label in zip(runs, labels, strict=True) if (path := run_pruning(run.path))]


def _file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:  # the candidates section notes a missing or unreadable record itself
        return None


@dataclass
class PruningView:
    """Expert heatmaps of the pruned checkpoints, and why any could not be drawn."""

    maps: list[ExpertMaps]
    notes: list[str]


def candidates_context(table: CandidateTable) -> dict[str, Any]:
    """The candidates section: styled table, scatter, verdict lines and expert heatmaps."""
    frame, classes = candidate_frame(table)
    maps, notes = expert_maps(pruning_sources(table))
    return {
        "name": table.name,
        "base": table.base,
        "score": table.score,
        "table": _styled(frame, "candidates", classes),
        "scatter": candidate_scatter(table),
        "front": table.pareto,
        "lines": [(row.label, row.origin, row.verdict_line or (f"stopped: {row.error}" if row.error else verdict_text(row)))
                  for row in table.rows if row.role == "candidate"],
        "pruning": PruningView(maps, notes),
    }


def _run_pruning(runs: Sequence[RunData], labels: Sequence[str], candidates: CandidateTable | None) -> PruningView | None:
    """Heatmaps for runs holding a pruning.json, less those the candidates section draws already.

    A run's copy is byte for byte the record the loop noted for its candidate, so it is matched by content.
    """
    covered = {_file_bytes(path) for _, path in pruning_sources(candidates)} - {None} if candidates else set()
    sources = [(label, path) for label, path in run_pruning_sources(runs, labels) if _file_bytes(path) not in covered]
    if not sources:
        return None
    maps, notes = expert_maps(sources)
    return PruningView(maps, notes)


# ---------------------------------------------------------------------------------------------
# Page


def render_report(
    runs: Sequence[RunData], *, gate: GateResult | None = None, max_items: int = 200,
    candidates: CandidateTable | None = None, noise: RunData | None = None,
) -> str:
    """The whole report as one HTML string; ``candidates`` (from ``bench candidate``) adds its section.

    ``noise`` is a second run of the first run's model: the flips section's base-vs-base floor.
    """
    if not runs:
        raise UserError("bench report needs at least one run directory")
    if noise is not None and len(runs) < 2:
        raise UserError("--noise sets the floor for flips between the first run and another: give two runs or more")
    if noise is not None and noise.path.resolve() == runs[0].path.resolve():
        raise UserError(f"--noise {noise.path} is the first run itself: give a second run of the base (another --seed)")
    labels = _labels(runs)
    candidate_section = candidates_context(candidates) if candidates is not None else None
    pruning = _run_pruning(runs, labels, candidates)
    stack, stack_classes, differing = stack_table(runs, labels)
    packs, pack_classes = pack_table(runs, labels)
    long = subdimension_frame(runs, labels)
    subdims = _subdimension_table(long, labels)
    health, health_classes = health_table(runs, labels)
    timing = timing_table(runs, labels)
    items, flip_summary = drilldown(runs, max_items)
    discriminating, discrimination_note = discrimination_view(runs)
    template = template_environment().get_template("report.html.j2")
    return template.render(
        title=f"bench report: {' vs '.join(labels)}",
        bench_version=bench_version,
        labels=labels,
        runs=runs,
        gate=gate,
        candidates=candidate_section,
        pruning=pruning,
        stack_table=_styled(stack, "stack", stack_classes),
        differing=differing,
        pack_table=_styled(packs, "packs", pack_classes),
        collapse_notes=collapse_notes(runs, labels),
        subdimension_charts=_subdimension_charts(long, labels),
        subdimension_table=_styled(subdims, "subdimensions") if not subdims.empty else None,
        breakdown_sections=breakdown_sections(runs, labels),
        trial_sections=trial_sections(runs, labels, max_items),
        discrimination_table=_styled(discriminating, "discrimination") if discriminating is not None else None,
        discrimination_note=discrimination_note,
        divergence=divergence_section(runs, labels, _styled),
        timing_table=_styled(timing, "timing", precision=2) if not timing.empty else None,
        latency_chart=_latency_chart(runs, labels),
        health_table=_styled(health, "health", health_classes),
        flip_summary=_styled(flip_summary, "flips") if not flip_summary.empty else None,
        flip_sections=flip_sections(runs, labels, noise),
        items=items,
        total_items=int(flip_summary.to_numpy().sum()) if not flip_summary.empty else 0,
        open_items=OPEN_ITEMS,
    )


def write_report(
    run_paths: Sequence[Path], out: Path, *, gate_path: Path | None = None, max_items: int = 200,
    candidates: CandidateTable | None = None, noise_path: Path | None = None,
) -> Path:
    """Load the runs (and a gate result, and a rerun of the base), render, and write the HTML file."""
    runs = [load_run(path) for path in run_paths]
    gate = load_gate_result(gate_path) if gate_path else None
    noise = load_run(noise_path) if noise_path else None
    html = render_report(runs, gate=gate, max_items=max_items, candidates=candidates, noise=noise)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write report {out}: {exc.strerror}") from exc
    return out
