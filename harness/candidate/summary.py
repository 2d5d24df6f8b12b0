"""The loop's answer: size versus scores for the base and every candidate, and the Pareto front.

Written as ``candidates.json`` (validated by the model below) and ``candidates.md``. The score
that ranks candidates is the mean of the pack scores, a plain average that weighs every pack
alike; the per-pack scores stay in the table beside it, and the verdict comes from the gate.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from bench import __version__
from bench.candidate.cache import StepStore
from bench.candidate.loop import MODEL_DIR, CandidateOutcome, StepLog, weight_bytes
from bench.candidate.prepare import Prepared
from bench.compare.gate import INCONCLUSIVE
from bench.errors import UserError
from bench.pruning_record import PRUNING_FILE
from bench.report.candidates import CandidateRow as Row
from bench.report.candidates import CandidateTable, Divergence
from bench.report.candidates import table_cells as _table_cells
from bench.run.store import RunStore

SUMMARY_JSON = "candidates.json"
SUMMARY_MD = "candidates.md"
REPORT_HTML = "report.html"
SCORE_NAME = "mean of pack scores"


class Steps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ran: int
    cached: int
    resumed: int
    failed: list[str]
    launches: int = 0  # vLLM servers started (a stored or endpoint baseline starts none for the base)


class Summary(BaseModel):
    """``candidates.json``."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str
    plan: str
    base: str
    out: str
    created_at: str
    bench_version: str
    packs: list[str]
    gate_spec: str
    score: str = SCORE_NAME
    rows: list[Row]
    pareto: list[str]
    report: str | None = None
    report_gate: str | None = None  # the candidate whose verdict the report's banner shows
    steps: Steps

    def candidates(self) -> list[Row]:
        return [row for row in self.rows if row.role == "candidate"]


def pareto_front(points: dict[str, tuple[int, float]]) -> list[str]:
    """Labels not dominated in (size: smaller is better, score: higher is better), smallest first."""
    front = []
    for label, (size, score) in points.items():
        dominated = any(
            other != label and o_size <= size and o_score >= score and (o_size < size or o_score > score)
            for other, (o_size, o_score) in points.items()
        )
        if not dominated:
            front.append(label)
    return sorted(front, key=lambda label: points[label])


def _scores(run_dir: Path | None, packs: list[str]) -> tuple[dict[str, float | None], bool | None]:
    if run_dir is None or not (run_dir / "results.json").is_file():
        return {}, None
    results = RunStore.open(run_dir).read_results()
    return {name: results.packs[name].score.mean if name in results.packs else None for name in packs}, results.valid


def _mean(scores: dict[str, float | None]) -> float | None:
    values = [v for v in scores.values() if v is not None]
    return sum(values) / len(values) if values and len(values) == len(scores) else None


def _divergence(folder: Path) -> Divergence | None:
    """The headline of a divergence step's summary (over all texts); None when it has none."""
    from bench.divergence.summary import ALL, find_summary

    try:
        summary = find_summary(folder)
    except UserError:  # a broken file: the row shows no figure rather than a wrong one
        return None
    if summary is None or ALL not in summary.domains:
        return None
    figures = summary.domains[ALL]
    if figures.mean_kl.mean is None or figures.top1_agreement.mean is None:
        return None
    return Divergence(mean_kl=figures.mean_kl, top1_agreement=figures.top1_agreement)


def _base_precision(prepared: Prepared) -> str:
    from bench.engine.planning.moe import text_config

    config = json.loads((prepared.base / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("torch_dtype") or config.get("dtype") or text_config(config).get("torch_dtype")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(str(dtype), str(dtype or "source"))


def build_summary(prepared: Prepared, out: Path, base: CandidateOutcome, outcomes: list[CandidateOutcome],
                  log: StepLog) -> Summary:
    """The table rows, the Pareto front, and which runs the report gets."""
    base_size = weight_bytes(prepared.base)
    scores, valid = _scores(base.run_dir, prepared.packs)
    rows = [Row(label="base", role="base", experts_kept=prepared.n_experts, experts_total=prepared.n_experts,
                precision=_base_precision(prepared), size_bytes=base_size, size_ratio=1.0, scores=scores,
                mean_score=_mean(scores), valid=valid, checkpoint=str(prepared.base),
                run_dir=str(base.run_dir) if base.run_dir else None)]
    precision = {None: _base_precision(prepared), "fp8": "fp8", "bf16": "fp8 (experts bf16)"}[prepared.experts_precision]
    steps = StepStore(out / "steps")
    for candidate, outcome in zip(prepared.candidates, outcomes, strict=True):
        scores, valid = _scores(outcome.run_dir, prepared.packs)
        # The record sits beside the pruned weights; an FP8 step after it does not copy it.
        pruning = steps.path(candidate.prune.key) / MODEL_DIR / PRUNING_FILE
        noted = outcome.checkpoint is not None or pruning.is_file()
        size = weight_bytes(outcome.checkpoint) if outcome.checkpoint and outcome.checkpoint.is_dir() else None
        gate = json.loads(outcome.gate_json.read_text(encoding="utf-8")) if outcome.gate_json else {}
        rows.append(Row(
            label=candidate.label, role="candidate", mix=candidate.mix_name, origin=candidate.origin,
            criterion=candidate.criterion, experts_kept=candidate.keep, experts_total=prepared.n_experts,
            precision=precision, size_bytes=size,
            size_ratio=size / base_size if size and base_size else None, scores=scores, mean_score=_mean(scores),
            valid=valid, verdict=gate.get("verdict"), verdict_line=gate.get("line"),
            checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None, pruning=str(pruning) if noted else None,
            run_dir=str(outcome.run_dir) if outcome.run_dir else None,
            gate_json=str(outcome.gate_json) if outcome.gate_json else None, error=outcome.error,
            divergence=_divergence(steps.path(candidate.diverge.key)) if candidate.diverge is not None else None,
        ))
    points = {r.label: (r.size_bytes, r.mean_score) for r in rows
              if r.size_bytes is not None and r.mean_score is not None and r.valid}
    front = pareto_front(points)
    for row in rows:
        row.pareto = row.label in front
    return Summary(
        name=prepared.name, plan=str(prepared.plan_path), base=str(prepared.base), out=str(out),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), bench_version=__version__,
        packs=prepared.packs, gate_spec=prepared.gate_source, rows=rows, pareto=front,
        steps=Steps(ran=len(log.ran), cached=len(log.cached), resumed=len(log.resumed), failed=log.failed,
                    launches=log.launches),
    )


def report_gate(summary: Summary) -> Row | None:
    """The candidate whose verdict heads the report: the smallest passing one on the front, else the first gated."""
    gated = [row for row in summary.candidates() if row.gate_json]
    passing = [row for row in gated if row.verdict == "Pass" and row.size_bytes is not None]
    if passing:
        on_front = [row for row in passing if row.pareto] or passing
        return min(on_front, key=lambda row: row.size_bytes or 0)
    return gated[0] if gated else None


def table_cells(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the size-vs-score table (shared by Markdown and the terminal)."""
    return _table_cells(summary.packs, summary.rows)


def report_table(summary: Summary) -> CandidateTable:
    """The part of the summary the report draws, as plain data."""
    return CandidateTable.model_validate(summary.model_dump())


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(summary: Summary) -> str:
    """``candidates.md``: the table, the front, and each verdict line."""
    header, rows = table_cells(summary)
    lines = [f"# Candidates: {summary.name}", "",
             f"Base `{summary.base}`; packs {', '.join(summary.packs)}; gate spec `{summary.gate_spec}`; "
             f"score = {summary.score}.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows]
    lines += ["", "Pareto front (no other checkpoint is both smaller and better): "
              + (", ".join(f"`{label}`" for label in summary.pareto) or "none"), ""]
    for row in summary.candidates():
        asked = f" ({row.origin})" if row.origin else ""
        if row.verdict_line:
            lines.append(f"- `{row.label}`{asked}: {_md_cell(row.verdict_line)}")
        elif row.error:
            lines.append(f"- `{row.label}`{asked}: stopped: {_md_cell(row.error)}")
    if summary.report:
        lines += ["", f"Report: `{summary.report}`" + (f" (verdict banner: `{summary.report_gate}`)" if summary.report_gate else "")]
    return "\n".join(lines) + "\n"


def write_summary(summary: Summary, out: Path) -> tuple[Path, Path]:
    json_path, md_path = out / SUMMARY_JSON, out / SUMMARY_MD
    json_path.write_text(summary.model_dump_json(indent=1) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(summary), encoding="utf-8")
    return json_path, md_path


def load_summary(out: Path) -> Summary:
    return Summary.model_validate_json((out / SUMMARY_JSON).read_text(encoding="utf-8"))


def write_loop_report(summary: Summary, out: Path) -> Path | None:
    """One HTML report over the base and every candidate that finished its run, headed by the
    size-vs-score table, the Pareto front and each pruned checkpoint's expert heatmaps."""
    from bench.report.html import write_report

    runs = [Path(row.run_dir) for row in summary.rows if row.run_dir and (Path(row.run_dir) / "results.json").is_file()]
    if not runs:
        return None
    banner = report_gate(summary)
    path = write_report(runs, out / REPORT_HTML, gate_path=Path(banner.gate_json) if banner and banner.gate_json else None,
                        candidates=report_table(summary))
    summary.report = str(path)
    summary.report_gate = banner.label if banner else None
    return path


def exit_code(summary: Summary) -> int:
    """As the gate's: 0 some candidate passes; 3 none fails a rule but some could not be checked
    (Inconclusive); 1 every candidate fails; 2 a step failed (see the rows' errors)."""
    if summary.steps.failed:
        return 2
    verdicts = {row.verdict for row in summary.candidates()}
    if "Pass" in verdicts:
        return 0
    return 3 if INCONCLUSIVE in verdicts else 1

