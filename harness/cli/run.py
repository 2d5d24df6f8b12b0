"""`bench run`, `bench serve`, `bench packs`, `bench rescore`, `bench toy`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from bench.errors import UserError

ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Checkpoint directory to serve with vLLM.")]
EndpointOpt = Annotated[Optional[list[str]], typer.Option("--endpoint", help="OpenAI-compatible server URL (repeat for replicas); no launch.")]
VllmPythonOpt = Annotated[Optional[str], typer.Option("--vllm-python", envvar="BENCH_VLLM_PYTHON", help="Interpreter that has vLLM installed.")]
PortOpt = Annotated[Optional[int], typer.Option("--port", help="Port for the launched server (default: a free one).")]
MaxLenOpt = Annotated[int, typer.Option("--max-model-len", help="Context length for the launched server.")]
TemplateOpt = Annotated[Optional[Path], typer.Option("--chat-template", help="Chat template file passed to vLLM.")]
ReasoningOpt = Annotated[str, typer.Option("--reasoning-parser", help="'auto' (from the checkpoint), 'none', or a vLLM parser name.")]
ToolParserOpt = Annotated[str, typer.Option("--tool-call-parser", help="'auto' (from the checkpoint), 'none', or a vLLM parser name.")]
VllmArgOpt = Annotated[Optional[list[str]], typer.Option("--vllm-arg", help="Extra vLLM argument, passed through (repeatable), e.g. --vllm-arg=--tensor-parallel-size=2.")]


def _print_results(outcome: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.run.evaluation import RunOutcome

    assert isinstance(outcome, RunOutcome)
    results = outcome.results
    console = Console(highlight=False, width=max(Console().width, 110))
    table = Table(title=f"run {results.run_id}", show_lines=False)
    for column in ("pack", "n", "score [95% CI]", "pass", "subdimensions", "trunc", "leaks"):
        table.add_column(column, no_wrap=column != "subdimensions")
    for name, pack in results.packs.items():
        score = pack.score
        ci = f"{score.mean:.3f} [{score.low:.3f}, {score.high:.3f}]" if score.mean is not None and score.low is not None else "-"
        subs = "\n".join(f"{k}={v.mean:.2f} (n={v.n})" for k, v in pack.subdimensions.items() if v.mean is not None)
        table.add_row(name, str(pack.n), ci, f"{pack.pass_rate.mean:.2f}" if pack.pass_rate.mean is not None else "-",
                      subs, str(pack.health.truncated), str(pack.health.leaked_markers + pack.health.unclosed_think))
    console.print(table)
    if not results.valid:
        console.print(f"[bold red]run INVALID:[/] {'; '.join(results.invalid_reasons)}")
    print(f"results: {Path(outcome.run_dir) / 'results.json'}")


def parse_pack_options(raw: list[str], shots: int | None) -> dict[str, dict[str, str]]:
    """``mmlu.shots=5`` strings -> {"mmlu": {"shots": "5"}}; a malformed one is a one-line error."""
    out: dict[str, dict[str, str]] = {}
    for entry in raw:
        target, sep, value = entry.partition("=")
        pack, dot, key = target.partition(".")
        if not (sep and dot and pack and key):
            raise UserError(f"--pack-option {entry!r} must look like PACK.KEY=VALUE, e.g. mmlu.shots=5")
        out.setdefault(pack, {})[key] = value
    if shots is not None:
        out.setdefault("mmlu", {})["shots"] = str(shots)
    return out


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: ModelOpt = None,
        endpoint: EndpointOpt = None,
        packs: Annotated[str, typer.Option("--packs", help="'all' or a comma list of pack names.")] = "all",
        tier: Annotated[str, typer.Option("--tier", help="'quick' (15 items per pack) or 'full'.")] = "full",
        limit: Annotated[Optional[int], typer.Option("--limit", help="At most N items per pack (seeded, stratified where the pack supports it).")] = None,
        repeats: Annotated[int, typer.Option("--repeats", help="Ask every item K times with seeds seed..seed+K-1.")] = 1,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight at once.")] = 8,
        temperature: Annotated[Optional[float], typer.Option("--temperature", help="Override every pack's temperature.")] = None,
        max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Override every pack's max_tokens.")] = None,
        no_thinking: Annotated[bool, typer.Option("--no-thinking", help="Send enable_thinking=false to the chat template.")] = False,
        pack_option: Annotated[Optional[list[str]], typer.Option("--pack-option", help="PACK.KEY=VALUE passed to a pack (repeatable), e.g. mmlu.shots=5.")] = None,
        shots: Annotated[Optional[int], typer.Option("--shots", help="Few-shot examples for MMLU (same as --pack-option mmlu.shots=K).")] = None,
        served_model_name: Annotated[Optional[str], typer.Option("--served-model-name")] = None,
        vllm_python: VllmPythonOpt = None,
        port: PortOpt = None,
        max_model_len: MaxLenOpt = 2048,
        chat_template: TemplateOpt = None,
        reasoning_parser: ReasoningOpt = "auto",
        tool_call_parser: ToolParserOpt = "auto",
        vllm_arg: VllmArgOpt = None,
        request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds per request.")] = 300.0,
        startup_timeout: Annotated[float, typer.Option("--startup-timeout", help="Seconds to wait for the server.")] = 900.0,
        runs_dir: Annotated[Path, typer.Option("--runs-dir")] = Path("runs"),
        run_id: Annotated[Optional[str], typer.Option("--run-id")] = None,
        resume: Annotated[Optional[Path], typer.Option("--resume", help="Finish a killed run without re-asking finished items.")] = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html into the run directory.")] = True,
    ) -> None:
        """Serve a checkpoint (or use --endpoint), prove the stack with preflight, run packs, score."""
        from bench.run.evaluation import RunOptions, execute, options_from_run

        if resume is not None:
            options = options_from_run(resume)
            if model is not None or endpoint:
                raise UserError("--resume takes its model and endpoints from the run's manifest: drop --model/--endpoint")
            if vllm_python:
                options.vllm_python = vllm_python
        else:
            if tier not in ("quick", "full"):
                raise UserError(f"--tier must be 'quick' or 'full', not {tier!r}")
            if model is None and not endpoint:
                raise UserError("give --model DIR to launch a vLLM server, or --endpoint URL to use a running one")
            options = RunOptions(
                model=str(model) if model else None, endpoints=list(endpoint or []), served_model_name=served_model_name,
                vllm_python=vllm_python, port=port, max_model_len=max_model_len,
                chat_template=str(chat_template) if chat_template else None, reasoning_parser=reasoning_parser,
                tool_call_parser=tool_call_parser, vllm_args=list(vllm_arg or []), packs=packs, tier=tier,  # type: ignore[arg-type]
                limit=limit, repeats=repeats, seed=seed, concurrency=concurrency, temperature=temperature,
                max_tokens=max_tokens, no_thinking=no_thinking, request_timeout_s=request_timeout,
                pack_options=parse_pack_options(pack_option or [], shots),
                startup_timeout_s=startup_timeout, runs_dir=str(runs_dir), run_id=run_id,
            )
        started = time.monotonic()
        try:
            outcome = execute(options, resume_dir=resume, echo=lambda line: print(line, file=sys.stderr))
        except KeyboardInterrupt:
            raise typer.Exit(code=130) from None  # finished items are on disk; the resume line was printed
        print(f"asked {outcome.asked} items in {time.monotonic() - started:.0f} s", file=sys.stderr)
        _print_results(outcome)
        if report:
            _write_report(Path(outcome.run_dir))
        if not outcome.results.valid:
            raise typer.Exit(code=3)

    @app.command("serve")
    def serve_cmd(
        model: Annotated[Path, typer.Option("--model", help="Checkpoint directory to serve.")],
        served_model_name: Annotated[Optional[str], typer.Option("--served-model-name")] = None,
        vllm_python: VllmPythonOpt = None,
        port: PortOpt = None,
        max_model_len: MaxLenOpt = 2048,
        chat_template: TemplateOpt = None,
        reasoning_parser: ReasoningOpt = "auto",
        tool_call_parser: ToolParserOpt = "auto",
        vllm_arg: VllmArgOpt = None,
        log: Annotated[Path, typer.Option("--log", help="Server log file.")] = Path("vllm-server.log"),
        startup_timeout: Annotated[float, typer.Option("--startup-timeout")] = 900.0,
    ) -> None:
        """Launch the checkpoint behind vLLM with the parsers bench would pick, and keep it up until Ctrl-C."""
        from bench.run.evaluation import RunOptions, launch_config
        from bench.serve.launch import serving

        options = RunOptions(
            model=str(model), served_model_name=served_model_name, vllm_python=vllm_python, port=port,
            max_model_len=max_model_len, chat_template=str(chat_template) if chat_template else None,
            reasoning_parser=reasoning_parser, tool_call_parser=tool_call_parser, vllm_args=list(vllm_arg or []),
            startup_timeout_s=startup_timeout,
        )
        config, _ = launch_config(options)
        parsers = config.parsers
        print(f"parsers: {parsers.why}", file=sys.stderr)
        with serving(config, log.resolve()) as server:
            print(f"serving {config.served_model_name} at {server.base_url}/v1 (ready in {server.start_seconds:.1f} s); Ctrl-C stops it")
            try:
                while server.process.poll() is None:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                print("stopping", file=sys.stderr)
                return
            raise UserError(f"vLLM exited with code {server.process.returncode}; see {log}")

    @app.command("packs")
    def packs_cmd() -> None:
        """List the registered packs: name, version, items per tier, subdimensions."""
        from rich.console import Console
        from rich.table import Table

        from bench import registry

        table = Table()
        for column in ("pack", "version", "full", "quick", "subdimensions", "description"):
            table.add_column(column)
        for name in registry.available():
            try:
                pack = registry.load(name)
                table.add_row(name, pack.version, str(len(pack.items("full"))), str(len(pack.items("quick"))),
                              ", ".join(pack.subdimensions), pack.description)
            except UserError as exc:
                table.add_row(name, "-", "-", "-", "-", f"unavailable: {exc}")
        Console(width=200).print(table)

    @app.command("rescore")
    def rescore_cmd(
        run: Annotated[Path, typer.Argument(help="Run directory to re-score with the current scorers.")],
    ) -> None:
        """Re-score stored responses with the current scorers and rewrite results.json (no server)."""
        from bench.run.rescore import rescore

        outcome = rescore(run)
        print(f"rescored {outcome.rescored} items; {outcome.changed} changed score", file=sys.stderr)
        _print_results(outcome.outcome)

    @app.command("toy")
    def toy_cmd(
        kind: Annotated[str, typer.Option("--kind", help="scripted | smollm | smollm-moe")],
        out: Annotated[Path, typer.Option("--out", help="Directory to write the checkpoint into.")],
    ) -> None:
        """Build a small checkpoint offline: the scripted tiny Qwen3-MoE, the real SmolLM2-135M, or SmolLM2 as an 8-expert MoE."""
        from bench.engine import toy

        builders = {"scripted": toy.build_scripted, "smollm": toy.build_smollm, "smollm-moe": toy.build_smollm_moe}
        if kind not in builders:
            raise UserError(f"--kind must be one of {', '.join(builders)}, not {kind!r}")
        started = time.monotonic()
        path = builders[kind](out)
        print(f"{kind} checkpoint at {path} ({time.monotonic() - started:.1f} s)")


def _write_report(run_dir: Path) -> None:
    """Render the run's HTML report beside its results."""
    from bench.report.html import write_report

    out = write_report([run_dir], run_dir / "report.html")
    print(f"report: {out}")
