"""``bench candidate``: base run -> prune -> (FP8) -> run -> gate per candidate -> one report.

The library behind the command; the CLI only parses flags and prints. A plan (YAML, see
:mod:`bench.candidate.plan`) says what to try; :func:`prepare` resolves it against the base
checkpoint and keys every step; :func:`candidate_loop` runs what is not cached yet and writes
``candidates.json``, ``candidates.md`` and ``report.html`` into the output folder.
"""

from __future__ import annotations

from pathlib import Path

from bench.candidate.cache import Step, StepStore, exclusive
from bench.candidate.keys import FileDigests, step_key
from bench.candidate.loop import Echo, StepLog, digest_memo, run_loop, step_status
from bench.candidate.plan import Plan, load_plan, parse_plan, plan_schema
from bench.candidate.prepare import Candidate, Prepared, prepare
from bench.candidate.summary import (
    Summary,
    build_summary,
    exit_code,
    load_summary,
    pareto_front,
    table_cells,
    write_loop_report,
    write_summary,
)

__all__ = [
    "Candidate", "FileDigests", "Plan", "Prepared", "Step", "StepLog", "StepStore", "Summary", "build_summary",
    "candidate_loop", "default_out", "exclusive", "exit_code", "load_plan", "load_summary", "pareto_front",
    "parse_plan", "plan_schema", "prepare", "run_loop", "step_key", "step_status", "table_cells",
]

DEFAULT_ROOT = Path("candidates")


def default_out(plan: Plan, plan_path: Path) -> Path:
    """``candidates/<plan name>``: where a plan's steps and summary go unless --out says otherwise."""
    return DEFAULT_ROOT / (plan.name or plan_path.stem)


def candidate_loop(
    model: Path,
    plan_path: Path,
    out: Path | None = None,
    *,
    data_dir: Path | None = None,
    vllm_python: str | None = None,
    echo: Echo = print,
    show_progress: bool | None = None,
) -> Summary:
    """Run (or resume) a plan on a base checkpoint and write its summary and report.

    Args:
        model: the base checkpoint directory (bf16 MoE safetensors).
        plan_path: the plan YAML.
        out: output folder; ``candidates/<plan name>`` by default. Reusing it reuses its steps.
        data_dir: root for ``{data_dir}`` in calibration mixes (else the plan's, else BENCH_DATA_DIR).
        vllm_python: interpreter with vLLM (else the plan's, else BENCH_VLLM_PYTHON).
        echo: receives one progress line at a time.
        show_progress: per-item progress bars of pack runs (None: when attached to a terminal).
    """
    plan = load_plan(plan_path)
    out = out or default_out(plan, plan_path)
    with exclusive(out):
        prepared = prepare(plan, plan_path, model, data_dir=data_dir, vllm_python=vllm_python,
                           digests=digest_memo(out))
        base, outcomes, log = run_loop(prepared, out, echo=echo, show_progress=show_progress)
        summary = build_summary(prepared, out, base, outcomes, log)
        write_loop_report(summary, out)
        write_summary(summary, out)
    return summary
