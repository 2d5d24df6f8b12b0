"""`bench gate`, `bench report`, `bench flips` and `bench baseline save`: parse arguments, call the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bench.errors import UserError
from bench.shipped import USER_BASELINES_DIR

if TYPE_CHECKING:
    from bench.compare.flips import Flips


def register(app: typer.Typer) -> None:
    @app.command("gate")
    def gate_cmd(
        run: Path = typer.Argument(..., help="candidate run directory"),
        baseline: str = typer.Option(
            ..., "--baseline", "-b", help="baseline run directory, stored baseline name, or the URL of an endpoint "
            "serving the base (its answers to RUN's items are asked there first)"),
        baseline_model: str | None = typer.Option(
            None, "--baseline-model", help="with an endpoint baseline: the name it serves the base under (default: its only one)"),
        baseline_runs: Path | None = typer.Option(
            None, "--baseline-runs", help="with an endpoint baseline: folder for the base's run (default: RUN's folder)"),
        spec: str | None = typer.Option(
            None, "--spec", "-s", help="gate spec: a YAML or JSON file, or a shipped spec name (default, strict); default: default"),
        markdown: Path | None = typer.Option(None, "--markdown", help="write a Markdown summary here"),
        junit: Path | None = typer.Option(None, "--junit", help="write JUnit XML (one test case per rule) here"),
        json_path: Path | None = typer.Option(None, "--json", help="write the full gate result as JSON here"),
        baselines_dir: Path = typer.Option(USER_BASELINES_DIR, "--baselines-dir", help="your folder of named baselines"),
    ) -> None:
        """Compare RUN with a baseline under a spec: exit 0 Pass, 1 Fail*, 2 Invalid or bad input, 3 Inconclusive.

        Inconclusive: no rule failed but some could not be checked (too few items); the line says how many items each pack would need. A spec's on_underpowered: pass makes it exit 0, fail makes those rules fail.
        """  # noqa: E501 - one paragraph, so the help text reflows
        from bench.compare import gate
        from bench.compare.baselines import resolve_run
        from bench.compare.rundata import load_run
        from bench.compare.spec import load_spec
        from bench.report import gate_files
        from bench.shipped import resolve_spec

        spec_file = resolve_spec(spec)
        gate_spec = load_spec(spec_file)
        endpoint = baseline.startswith(("http://", "https://"))
        if not endpoint and (baseline_model or baseline_runs):
            raise UserError("--baseline-model and --baseline-runs go with an endpoint baseline (--baseline http://...)")
        candidate = load_run(run)
        if endpoint:
            base_dir = _base_at_endpoint(run, baseline, baseline_model, baseline_runs)
        else:
            base_dir = resolve_run(baseline, baselines_dir=baselines_dir)
        reference = load_run(base_dir)
        result = gate.judge(candidate, reference, gate_spec, str(spec_file))
        gate_files.write_outputs(result, markdown=markdown, junit=junit, json_path=json_path)
        for warning in result.warnings:
            print(f"WARNING: {warning}", file=sys.stderr)
        print(result.line)
        raise typer.Exit(result.exit_code)

    @app.command("report")
    def report_cmd(
        runs: list[Path] = typer.Argument(..., help="run directories; the first is the reference for deltas"),
        out: Path = typer.Option(..., "--out", "-o", help="HTML file to write"),
        gate_json: Path | None = typer.Option(None, "--gate", help="a bench gate --json result for the verdict banner"),
        max_items: int = typer.Option(200, "--max-items", min=0, help="items shown in the drill-down, flipped first"),
        candidates: Path | None = typer.Option(
            None, "--candidates", help="a bench candidate candidates.json: adds the size-vs-score section"),
        noise: Path | None = typer.Option(
            None, "--noise", help="a second run of the first (base) run, another --seed: the flips' noise floor"),
    ) -> None:
        """Render one self-contained HTML report comparing the runs."""
        from bench.report import html as report
        from bench.report.candidates import load_candidate_table

        table = load_candidate_table(candidates) if candidates else None
        path = report.write_report(runs, out, gate_path=gate_json, max_items=max_items, candidates=table, noise_path=noise)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    @app.command("flips")
    def flips_cmd(
        run: Path = typer.Argument(..., help="candidate run directory"),
        baseline: str = typer.Option(..., "--baseline", "-b", help="baseline run directory or stored baseline name"),
        noise: str | None = typer.Option(
            None, "--noise", help="a second run of the baseline (another --seed): flips chance alone gives"),
        packs: str | None = typer.Option(None, "--packs", help="comma-separated packs to pair (default: all both hold)"),
        as_json: bool = typer.Option(False, "--json", help="print the tables as JSON"),
        baselines_dir: Path = typer.Option(USER_BASELINES_DIR, "--baselines-dir", help="your folder of named baselines"),
    ) -> None:
        """Per pack and subdimension: items right->wrong, wrong->right, both right, both wrong, with the exact McNemar p, set against the flips a rerun of the baseline (--noise) or its own --repeats give."""  # noqa: E501
        from bench.compare.baselines import resolve_run
        from bench.compare.flips import flips
        from bench.compare.rundata import load_run

        chosen = [name.strip() for name in packs.split(",") if name.strip()] if packs else None
        found = flips(
            load_run(resolve_run(baseline, baselines_dir=baselines_dir)), load_run(run),
            load_run(resolve_run(noise, baselines_dir=baselines_dir)) if noise else None, chosen,
        )  # fmt: skip
        refused = [pack.refused for pack in found.packs if pack.refused]
        if refused:
            raise UserError("; ".join(refused))
        if as_json:
            print(found.model_dump_json(indent=2))
            return
        _print_flips(found)

    baseline_app = typer.Typer(help="Store runs as named baselines.", no_args_is_help=True)

    @baseline_app.command("save")
    def baseline_save_cmd(
        run: Path = typer.Argument(..., help="finished run directory"),
        name: str = typer.Argument(..., help="baseline name (a folder under --dir)"),
        directory: Path = typer.Option(
            USER_BASELINES_DIR, "--baselines-dir", "--dir", help="your baselines folder (not the shipped specs)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing baseline of that name"),
    ) -> None:
        """Store RUN's manifest, results and item scores under BASELINES_DIR/NAME/."""
        from bench.compare.baselines import save_baseline

        target = save_baseline(run, name, baselines_dir=directory, overwrite=overwrite)
        print(f"saved baseline {name} -> {target}")

    app.add_typer(baseline_app, name="baseline")


def _base_at_endpoint(run: Path, url: str, model: str | None, runs_dir: Path | None) -> Path:
    """Ask RUN's items at the endpoint serving the base (reused when done, resumed when cut off)."""
    from bench.interrupts import exit_code, interrupt_on_signals
    from bench.run.replay import replay_at_endpoint

    try:
        with interrupt_on_signals():
            return replay_at_endpoint(run, url, model, runs_dir=runs_dir, echo=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt as exc:  # finished items are on disk: the same command resumes
        raise typer.Exit(code=exit_code(exc)) from None


def _print_flips(found: Flips) -> None:
    """`bench flips`: one row per pack and measure, then each pack's right->wrong ids and notes."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bench.compare.flips import shown_ids

    console = Console(highlight=False, width=max(Console().width, 200))
    table = Table(title=f"flips: {found.candidate} vs {found.baseline}")
    for column in ("pack", "measure", "paired", "right→wrong", "wrong→right", "both right", "both wrong", "McNemar p",
                   "base-vs-base", "between base trials"):
        table.add_column(column, no_wrap=True)
    for pack in found.packs:
        for measure in pack.measures:
            cells = measure.table
            p_value = f"{cells.p_value:.2g}" if cells.p_value is not None else "-"
            table.add_row(escape(pack.pack), escape(measure.measure), str(cells.paired), str(cells.right_to_wrong),
                          str(cells.wrong_to_right), str(cells.both_right), str(cells.both_wrong), p_value,
                          measure.floor_text("rerun"), measure.floor_text("repeats"))
    console.print(table)
    for note in found.notes:
        console.print(escape(f"note: {note}"), soft_wrap=True)
    for pack in found.packs:
        for measure in pack.measures:
            if measure.table.regressed:
                ids = shown_ids(measure.table.regressed, len(measure.table.regressed))
                console.print(escape(f"{pack.pack} {measure.measure} right→wrong ({len(measure.table.regressed)}): {ids}"),
                              soft_wrap=True)
        for note in pack.notes:
            console.print(escape(f"{pack.pack} note: {note}"), soft_wrap=True)
