"""`bench candidate`: the whole compression loop from a plan (parse, call the library, print)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.errors import UserError


def _require_engine() -> None:
    try:
        import safetensors  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise UserError(f"bench candidate needs the engine extra ({exc.name} is missing): pip install 'bench[engine]'") from exc


def _print_table(summary: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.candidate import Summary, table_cells

    assert isinstance(summary, Summary)
    header, rows = table_cells(summary)
    table = Table(title=f"candidates: {summary.name} (score = {summary.score})")
    for column in header:
        table.add_column(column, justify="right" if column not in ("candidate", "precision", "verdict") else "left")
    for cells, row in zip(rows, summary.rows, strict=True):
        table.add_row(*cells, style="bold" if row.pareto else None)
    Console(highlight=False, width=max(120, 24 * 4 + 12 * len(header))).print(table)


def register(app: typer.Typer) -> None:
    @app.command("candidate")
    def candidate_cmd(
        model: Annotated[Path, typer.Option("--model", help="Base checkpoint directory (bf16 MoE safetensors).")],
        plan: Annotated[Path, typer.Option(
            "--plan", help="Plan YAML (prune settings, quantization, packs, gate, vLLM), or a shipped plan name: demo, sweep, ...")],
        out: Annotated[Path | None, typer.Option(
            "--out", help="Output folder (default candidates/<plan name>); reusing it reuses finished steps.")] = None,
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Root for {data_dir} in calibration mixes (else the plan's, else BENCH_DATA_DIR).")] = None,
        vllm_python: Annotated[str | None, typer.Option(
            "--vllm-python", envvar="BENCH_VLLM_PYTHON", help="Interpreter that has vLLM (else the plan's).")] = None,
        dry_run: Annotated[bool, typer.Option(
            "--dry-run", help="Check the plan and list each step as cached, resume or run; run nothing.")] = False,
    ) -> None:
        """Prune (ratios x mixes) -> FP8 -> run packs -> gate against the base -> one report, every step cached.

        Exit code: 0 when some candidate passes the gate, 1 when none does, 2 when a step failed.
        """
        _require_engine()
        from bench.candidate import (
            candidate_loop,
            default_out,
            digest_memo,
            exclusive,
            exit_code,
            load_plan,
            prepare,
            step_status,
        )
        from bench.shipped import resolve_plan

        plan = resolve_plan(plan)

        def echo(line: str) -> None:
            print(line, file=sys.stderr, flush=True)

        if dry_run:
            parsed = load_plan(plan)
            folder = out or default_out(parsed, plan)
            with exclusive(folder):
                prepared = prepare(parsed, plan, model, data_dir=data_dir, vllm_python=vllm_python,
                                   digests=digest_memo(folder))
            print(f"plan {prepared.name}: {len(prepared.candidates)} candidate(s) of {prepared.family} "
                  f"({prepared.n_experts} experts, top-{prepared.top_k}); packs {','.join(prepared.packs)}; "
                  f"vLLM {prepared.vllm_version or 'version unknown'}; out {folder}")
            for step, status in step_status(prepared, folder):
                print(f"  {status:>6}  {step.kind:<8} {step.label:<32} {step.key}")
            return
        summary = candidate_loop(model, plan, out, data_dir=data_dir, vllm_python=vllm_python, echo=echo)
        _print_table(summary)
        steps = summary.steps
        print(f"steps: {steps.ran} ran ({steps.resumed} resumed), {steps.cached} cached"
              + (f"; failed: {', '.join(steps.failed)}" if steps.failed else ""))
        for row in summary.candidates():
            if row.error:
                print(f"{row.label}: {row.error}")
        for row in summary.rows:
            if row.run_dir and (Path(row.run_dir) / "results.json").is_file():
                print(f"results ({row.label}): {Path(row.run_dir) / 'results.json'}")
        print(f"summary: {Path(summary.out) / 'candidates.md'}")
        if summary.report:
            print(f"report: {summary.report}" + (f" (verdict banner: {summary.report_gate})" if summary.report_gate else ""))
        raise typer.Exit(exit_code(summary))
