"""`bench run`, `bench serve`, `bench packs`, `bench rescore`, `bench toy`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from bench.errors import UserError
from bench.run.options import EvalOptions, RunOptions
from bench.serve.options import ServeOptions

M = TypeVar("M", bound=BaseModel)

# Flag defaults and help come from the option models: a default is declared once, in the model.
_SERVE, _EVAL, _RUN = ServeOptions(), EvalOptions(), RunOptions()

# flag -> field of ServeOptions, EvalOptions or RunOptions: the one map between command-line flags
# and option fields (it also names the flag when a value is rejected).
SERVE_FLAGS = {
    "--vllm-python": "python", "--port": "port", "--max-model-len": "max_model_len", "--chat-template": "chat_template",
    "--reasoning-parser": "reasoning_parser", "--tool-call-parser": "tool_call_parser", "--vllm-arg": "args",
    "--startup-timeout": "startup_timeout_s",
}
EVAL_FLAGS = {
    "--packs": "packs", "--pack-option": "pack_options", "--tier": "tier", "--limit": "limit", "--repeats": "repeats",
    "--seed": "seed", "--concurrency": "concurrency", "--temperature": "temperature", "--max-tokens": "max_tokens",
    "--no-thinking": "no_thinking", "--request-timeout": "request_timeout_s", "--thinking-budget": "thinking_budget",
    "--sampling": "pack_sampling",
}
RUN_FLAGS = {"--model": "model", "--endpoint": "endpoints", "--served-model-name": "served_model_name",
             "--runs-dir": "runs_dir", "--run-id": "run_id"}


def _help(model: type[BaseModel], flags: dict[str, str], flag: str) -> str:
    description = model.model_fields[flags[flag]].description or ""
    return description[:1].upper() + description[1:] + "."


def _serve(flag: str, **extra: Any) -> Any:
    return typer.Option(flag, **{"help": _help(ServeOptions, SERVE_FLAGS, flag), **extra})


def _eval(flag: str, **extra: Any) -> Any:
    return typer.Option(flag, **{"help": _help(EvalOptions, EVAL_FLAGS, flag), **extra})


def _run(flag: str, **extra: Any) -> Any:
    return typer.Option(flag, **{"help": _help(RunOptions, RUN_FLAGS, flag), **extra})


# The serving flags, shared by `bench run` and `bench serve`.
VllmPythonOpt = Annotated[str | None, _serve("--vllm-python", envvar="BENCH_VLLM_PYTHON")]
PortOpt = Annotated[int | None, _serve("--port")]
MaxLenOpt = Annotated[str, _serve("--max-model-len")]
TemplateOpt = Annotated[Path | None, _serve("--chat-template")]
ReasoningOpt = Annotated[str, _serve("--reasoning-parser")]
ToolParserOpt = Annotated[str, _serve("--tool-call-parser")]
VllmArgOpt = Annotated[list[str] | None, _serve(
    "--vllm-arg", help="Extra vLLM argument, passed through (repeatable), e.g. --vllm-arg=--tensor-parallel-size=2.")]
StartupOpt = Annotated[float, _serve("--startup-timeout")]
ServedNameOpt = Annotated[str | None, _run("--served-model-name")]


def checked(model: type[M], values: dict[str, Any], flags: dict[str, str]) -> M:
    """Build an option model from flag values; a rejected value is one line naming its flag."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        flag = next((f for f, name in flags.items() if name == field), field)
        value = values.get(field)
        raise UserError(f"{flag} {value!r}: {error['msg'].lower()}" if value is not None else f"{flag}: {error['msg'].lower()}") from exc


def serve_options(*, vllm_python: str | None, port: int | None, max_model_len: str | int, chat_template: Path | None,
                  reasoning_parser: str, tool_call_parser: str, vllm_arg: list[str] | None,
                  startup_timeout: float) -> ServeOptions:
    """The serving flags of `bench run` and `bench serve` as :class:`ServeOptions`."""
    return checked(ServeOptions, {
        "python": vllm_python, "port": port,
        "max_model_len": int(max_model_len) if str(max_model_len).lstrip("-").isdigit() else max_model_len,
        "chat_template": str(chat_template) if chat_template else None, "reasoning_parser": reasoning_parser,
        "tool_call_parser": tool_call_parser, "args": list(vllm_arg or []), "startup_timeout_s": startup_timeout,
    }, SERVE_FLAGS)


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
    from rich.markup import escape

    from bench.knowledge import collapse

    for pack in results.packs.values():  # dead categories and below-chance scores, loud
        found = collapse(pack, results.confidence)
        for line in found.lines() if found else []:
            style = "yellow" if "cannot tell" in line else "bold red"
            console.print(f"[{style}]knowledge collapse:[/] {escape(line)}")
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


def parse_pack_sampling(raw: list[str]) -> dict[str, dict[str, float | int | bool]]:
    """``mmlu.temperature=0`` strings -> {"mmlu": {"temperature": 0}}; a malformed one is a one-line error."""
    out: dict[str, dict[str, float | int | bool]] = {}
    for entry in raw:
        target, sep, text = entry.partition("=")
        pack, dot, key = target.partition(".")
        if not (sep and dot and pack and key):
            raise UserError(f"--sampling {entry!r} must look like PACK.KEY=VALUE, e.g. mmlu.temperature=0")
        value: float | int | bool
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    raise UserError(f"--sampling {entry!r}: {text!r} is not a number or true/false") from None
        out.setdefault(pack, {})[key] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Annotated[Path | None, _run("--model")] = None,
        endpoint: Annotated[list[str] | None, _run(
            "--endpoint", help="OpenAI-compatible server URL (repeat for replicas); no launch.")] = None,
        packs: Annotated[str, _eval("--packs")] = _EVAL.packs,
        tier: Annotated[str, _eval("--tier")] = _EVAL.tier,
        limit: Annotated[int | None, _eval("--limit")] = _EVAL.limit,
        repeats: Annotated[int, _eval("--repeats")] = _EVAL.repeats,
        seed: Annotated[int, _eval("--seed")] = _EVAL.seed,
        concurrency: Annotated[str, _eval("--concurrency", metavar="auto|N")] = str(_EVAL.concurrency),
        temperature: Annotated[float | None, _eval("--temperature")] = _EVAL.temperature,
        max_tokens: Annotated[int | None, _eval("--max-tokens")] = _EVAL.max_tokens,
        no_thinking: Annotated[bool, _eval("--no-thinking")] = _EVAL.no_thinking,
        thinking_budget: Annotated[int | None, _eval("--thinking-budget")] = _EVAL.thinking_budget,
        sampling: Annotated[list[str] | None, _eval(
            "--sampling", help="PACK.KEY=VALUE sampling for one pack (repeatable), e.g. mmlu.temperature=0; keys: "
            "temperature, top_p, top_k, max_tokens, thinking, thinking_budget.")] = None,
        pack_option: Annotated[list[str] | None, _eval(
            "--pack-option", help="PACK.KEY=VALUE passed to a pack (repeatable), e.g. mmlu.shots=5.")] = None,
        shots: Annotated[int | None, typer.Option(
            "--shots", help="Few-shot examples for MMLU (same as --pack-option mmlu.shots=K).")] = None,
        request_timeout: Annotated[float, _eval("--request-timeout")] = _EVAL.request_timeout_s,
        served_model_name: ServedNameOpt = _RUN.served_model_name,
        vllm_python: VllmPythonOpt = _SERVE.python,
        port: PortOpt = _SERVE.port,
        max_model_len: MaxLenOpt = str(_SERVE.max_model_len),
        chat_template: TemplateOpt = None,
        reasoning_parser: ReasoningOpt = _SERVE.reasoning_parser,
        tool_call_parser: ToolParserOpt = _SERVE.tool_call_parser,
        vllm_arg: VllmArgOpt = None,
        startup_timeout: StartupOpt = _SERVE.startup_timeout_s,
        runs_dir: Annotated[Path, _run("--runs-dir")] = Path(_RUN.runs_dir),
        run_id: Annotated[str | None, _run("--run-id")] = _RUN.run_id,
        resume: Annotated[Path | None, typer.Option("--resume", help="Finish a killed run without re-asking finished items.")] = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html into the run directory.")] = True,
    ) -> None:
        """Serve a checkpoint (or use --endpoint), prove the stack with preflight, run packs, score."""
        from bench.run.evaluation import execute, options_from_run

        if resume is not None:
            options = options_from_run(resume)
            if model is not None or endpoint:
                raise UserError("--resume takes its model and endpoints from the run's manifest: drop --model/--endpoint")
            if vllm_python:
                options.serve.python = vllm_python
        else:
            if model is None and not endpoint:
                raise UserError("give --model DIR to launch a vLLM server, or --endpoint URL to use a running one")
            serve = serve_options(vllm_python=vllm_python, port=port, max_model_len=max_model_len,
                                  chat_template=chat_template, reasoning_parser=reasoning_parser,
                                  tool_call_parser=tool_call_parser, vllm_arg=vllm_arg, startup_timeout=startup_timeout)
            evaluate = checked(EvalOptions, {
                "packs": packs, "pack_options": parse_pack_options(pack_option or [], shots), "tier": tier,
                "limit": limit, "repeats": repeats, "seed": seed, "concurrency": concurrency,
                "temperature": temperature, "max_tokens": max_tokens, "no_thinking": no_thinking,
                "thinking_budget": thinking_budget, "pack_sampling": parse_pack_sampling(sampling or []),
                "request_timeout_s": request_timeout,
            }, EVAL_FLAGS)
            options = checked(RunOptions, {
                "model": str(model) if model else None, "endpoints": list(endpoint or []),
                "served_model_name": served_model_name, "serve": serve, "evaluate": evaluate,
                "runs_dir": str(runs_dir), "run_id": run_id,
            }, RUN_FLAGS)
        from bench.interrupts import exit_code, interrupt_on_signals
        from bench.serve.leftovers import left_servers

        for line in left_servers(resume.parent if resume is not None else Path(options.runs_dir)):
            print(f"note: {line}", file=sys.stderr)
        started = time.monotonic()
        try:
            with interrupt_on_signals():
                outcome = execute(options, resume_dir=resume, echo=lambda line: print(line, file=sys.stderr))
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, at any phase
            raise typer.Exit(code=exit_code(exc)) from None  # finished items are on disk; the resume line was printed
        print(f"asked {outcome.asked} items in {time.monotonic() - started:.0f} s", file=sys.stderr)
        _print_results(outcome)
        if report:
            _write_report(Path(outcome.run_dir))
        if not outcome.results.valid:
            raise typer.Exit(code=3)

    @app.command("serve")
    def serve_cmd(
        model: Annotated[Path, typer.Option("--model", help="Checkpoint directory to serve.")],
        served_model_name: ServedNameOpt = _RUN.served_model_name,
        vllm_python: VllmPythonOpt = _SERVE.python,
        port: PortOpt = _SERVE.port,
        max_model_len: MaxLenOpt = str(_SERVE.max_model_len),
        chat_template: TemplateOpt = None,
        reasoning_parser: ReasoningOpt = _SERVE.reasoning_parser,
        tool_call_parser: ToolParserOpt = _SERVE.tool_call_parser,
        vllm_arg: VllmArgOpt = None,
        startup_timeout: StartupOpt = _SERVE.startup_timeout_s,
        log: Annotated[Path | None, typer.Option(
            "--log", help="Server log file (default: server.log in a new folder under --runs-dir).")] = None,
        runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Folder that receives the server's folder.")] = Path(
            _RUN.runs_dir),
    ) -> None:
        """Launch the checkpoint behind vLLM with the parsers bench would pick, and keep it up until Ctrl-C."""
        from bench.run.evaluation import launch_config
        from bench.run.store import new_run_id
        from bench.serve.launch import serving

        serve = serve_options(vllm_python=vllm_python, port=port, max_model_len=max_model_len,
                              chat_template=chat_template, reasoning_parser=reasoning_parser,
                              tool_call_parser=tool_call_parser, vllm_arg=vllm_arg, startup_timeout=startup_timeout)
        folder = runs_dir / f"serve-{new_run_id(model.name)}"
        config, _ = launch_config(str(model), serve, served_model_name=served_model_name,
                                  cache_root=(folder / "vllm-cache").resolve())
        log = log or folder / "server.log"
        parsers = config.parsers
        print(f"parsers: {parsers.why}", file=sys.stderr)
        print(f"server log: {log}", file=sys.stderr)
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
    def packs_cmd(
        discrimination: Annotated[bool, typer.Option(
            "--discrimination", help="Over the RUN directories given: per pack, the items whose outcome never "
            "changed (always passed, always failed) and the share that did.")] = False,
        runs: Annotated[list[Path] | None, typer.Argument(
            help="Run directories (with --discrimination).", metavar="RUN", show_default=False)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="With --discrimination: print JSON.")] = False,
    ) -> None:
        """List the registered packs: name, version, items per tier, subdimensions; or, with
        --discrimination RUN [RUN ...], which items can still tell models apart."""
        from rich.console import Console
        from rich.table import Table

        from bench import registry

        if runs and not discrimination:
            raise UserError("run directories are read only with --discrimination: bench packs --discrimination RUN [RUN ...]")
        if as_json and not discrimination:
            raise UserError("--json goes with --discrimination: bench packs --discrimination --json RUN [RUN ...]")
        if discrimination:
            _print_discrimination(runs or [], as_json)
            return

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
        if not outcome.outcome.results.valid:
            raise typer.Exit(code=3)  # as bench run: an invalid run is never a success

    @app.command("toy")
    def toy_cmd(
        kind: Annotated[str, typer.Option("--kind", help="scripted | smollm | smollm-moe")],
        out: Annotated[Path, typer.Option("--out", help="Directory to write the checkpoint into.")],
    ) -> None:
        """Build a small checkpoint offline: the scripted tiny Qwen3-MoE, the real SmolLM2-135M, or SmolLM2 as an 8-expert MoE."""
        from bench.engine.toys import builders as toy

        builders = {"scripted": toy.build_scripted, "smollm": toy.build_smollm, "smollm-moe": toy.build_smollm_moe}
        if kind not in builders:
            raise UserError(f"--kind must be one of {', '.join(builders)}, not {kind!r}")
        started = time.monotonic()
        path = builders[kind](out)
        print(f"{kind} checkpoint at {path} ({time.monotonic() - started:.1f} s)")


def _print_discrimination(paths: list[Path], as_json: bool) -> None:
    """`bench packs --discrimination`: one row per pack, then each pack's frozen items by id."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bench.compare.discrimination import discrimination
    from bench.compare.rundata import load_run

    if not paths:
        raise UserError("--discrimination needs run directories: bench packs --discrimination RUN [RUN ...]")
    found = discrimination([load_run(path) for path in paths])
    if as_json:
        print(found.model_dump_json(indent=2))
        return
    console = Console(highlight=False, width=max(Console().width, 110))
    table = Table(title=f"discrimination over {len(paths)} run{'s' if len(paths) != 1 else ''}")
    for column in ("pack", "items", "trials/item", "changed", "always passed", "always failed", "not in every run"):
        table.add_column(column, no_wrap=True)
    for pack in found.packs:
        share = f" ({pack.changed_share:.0%})" if pack.changed_share is not None else ""
        table.add_row(escape(pack.pack), str(pack.items), str(pack.observations), f"{pack.changed}{share}",
                      str(len(pack.always_passed)), str(len(pack.always_failed)), str(len(pack.not_in_every_run)))
    console.print(table)
    for pack in found.packs:
        for line in pack.lines()[1:]:
            console.print(escape(f"{pack.pack} {line.strip()}"), soft_wrap=True)


def _write_report(run_dir: Path) -> None:
    """Render the run's HTML report beside its results."""
    from bench.report.html import write_report

    out = write_report([run_dir], run_dir / "report.html")
    print(f"report: {out}")
