"""`bench diverge`: the base's reference once, then each candidate's divergence from it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.cli.run import (
    MaxLenOpt,
    ServedNameOpt,
    StartupOpt,
    TemplateOpt,
    VllmArgOpt,
    VllmPythonOpt,
    checked,
    serve_options,
)
from bench.divergence.options import DivergenceOptions
from bench.serve.options import ServeOptions
from bench.shipped import USER_BASELINES_DIR

_OPT, _SERVE = DivergenceOptions(), ServeOptions()
FLAGS = {"--tier": "tier", "--limit": "limit", "--domain": "domains", "--texts": "texts", "--top-k": "top_k",
         "--max-text-tokens": "max_text_tokens", "--generate": "generate", "--max-new-tokens": "max_new_tokens",
         "--concurrency": "concurrency", "--request-timeout": "request_timeout_s", "--seed": "seed"}


def _opt(flag: str, **extra: Any) -> Any:
    description = DivergenceOptions.model_fields[FLAGS[flag]].description or ""
    return typer.Option(flag, **{"help": description[:1].upper() + description[1:] + ".", **extra})


def register(app: typer.Typer) -> None:
    @app.command("diverge")
    def diverge_cmd(
        model: Annotated[Path | None, typer.Option("--model", help="Checkpoint to launch behind vLLM.")] = None,
        endpoint: Annotated[str | None, typer.Option("--endpoint", help="A running OpenAI-compatible server instead.")] = None,
        reference: Annotated[bool, typer.Option(
            "--reference", help="Measure the BASE and store its reference in OUT/divergence (a run directory: "
            "bench baseline save keeps it).")] = False,
        baseline: Annotated[str | None, typer.Option(
            "--baseline", "-b", help="Where the base's reference is: a run directory, a stored baseline name, or a "
            "divergence folder.")] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", "-o", help="Folder that receives divergence/ (default with --baseline: a new folder under runs/); "
            "give the candidate's run directory so bench gate and bench report find it.")] = None,
        spec: Annotated[str | None, typer.Option(
            "--spec", "-s", help="Gate spec whose divergence: rules decide: exit 1 on FailDivergence, 3 when a rule "
            "could not be told.")] = None,
        tier: Annotated[str, _opt("--tier")] = _OPT.tier,
        limit: Annotated[int | None, _opt("--limit")] = None,
        domain: Annotated[list[str] | None, _opt("--domain")] = None,
        texts: Annotated[Path | None, _opt("--texts")] = None,
        top_k: Annotated[int, _opt("--top-k")] = _OPT.top_k,
        max_text_tokens: Annotated[int, _opt("--max-text-tokens")] = _OPT.max_text_tokens,
        generate: Annotated[int, _opt("--generate")] = _OPT.generate,
        max_new_tokens: Annotated[int, _opt("--max-new-tokens")] = _OPT.max_new_tokens,
        concurrency: Annotated[int, _opt("--concurrency")] = _OPT.concurrency,
        request_timeout: Annotated[float, _opt("--request-timeout")] = _OPT.request_timeout_s,
        seed: Annotated[int, _opt("--seed")] = _OPT.seed,
        served_model_name: ServedNameOpt = None,
        vllm_python: VllmPythonOpt = _SERVE.python,
        max_model_len: MaxLenOpt = str(_SERVE.max_model_len),
        chat_template: TemplateOpt = None,
        vllm_arg: VllmArgOpt = None,
        startup_timeout: StartupOpt = _SERVE.startup_timeout_s,
        baselines_dir: Annotated[Path, typer.Option("--baselines-dir", help="Your folder of named baselines.")] = USER_BASELINES_DIR,
    ) -> None:
        """How far a candidate's next-token distributions drifted from its base's (teacher-forced, per domain).

        First the base, once: bench diverge --reference --model BASE --out BASE_RUN. Then each candidate: bench diverge --baseline BASE_RUN --model CANDIDATE --out CANDIDATE_RUN. Needs a server that returns prompt_logprobs (vLLM).
        """  # noqa: E501 - one paragraph, so the help text reflows
        from bench.compare.baselines import resolve_run
        from bench.divergence import runner
        from bench.errors import UserError
        from bench.run.store import new_run_id

        if reference == (baseline is not None):
            raise UserError("give --reference (measure the base) or --baseline REF (measure a candidate against it)")
        options = checked(DivergenceOptions, {
            "tier": tier, "limit": limit, "domains": list(domain or []), "texts": str(texts) if texts else None,
            "top_k": top_k, "max_text_tokens": max_text_tokens, "generate": generate, "max_new_tokens": max_new_tokens,
            "concurrency": concurrency, "request_timeout_s": request_timeout, "seed": seed,
        }, FLAGS)
        serve = serve_options(vllm_python=vllm_python, port=None, max_model_len=max_model_len, chat_template=chat_template,
                              reasoning_parser="none", tool_call_parser="none", vllm_arg=vllm_arg,
                              startup_timeout=startup_timeout)
        source = {"model": str(model) if model else None, "endpoint": endpoint, "served_model_name": served_model_name}
        echo = lambda line: print(line, file=sys.stderr)  # noqa: E731
        if reference:
            if out is None:
                raise UserError("--reference needs --out: the base's run directory (or any folder) to hold divergence/")
            folder = runner.make_reference(**source, serve=serve, options=options, out=out, echo=echo)
            print(f"wrote the base's divergence reference to {folder}")
            return
        assert baseline is not None
        reference_path = Path(baseline) if Path(baseline).is_dir() else resolve_run(baseline, baselines_dir=baselines_dir)
        _refuse_settings_the_reference_fixed(reference_path, options)
        label = model.name if model else "endpoint"
        out = out or Path("runs") / f"diverge-{new_run_id(label)}"
        rules = _spec(spec)
        summary = runner.measure(reference=reference_path, **source, serve=serve, options=options, out=out, echo=echo)
        for line in runner.summary_lines(summary):
            print(line)
        print(f"wrote {out / 'divergence'}")
        if rules is not None:
            from bench.divergence.verdict import decide

            verdict = decide(summary, rules)
            print(verdict.line)
            raise typer.Exit(verdict.exit_code)


# A candidate is measured on the reference's own texts and continuations: these flags were the base's to choose.
_FIXED_BY_REFERENCE = {"--tier": ("tier", "tier"), "--limit": ("limit", "limit"),
                       "--max-text-tokens": ("max_text_tokens", "max_text_tokens"),
                       "--generate": ("generate", "generate_per_domain"), "--max-new-tokens": ("max_new_tokens", "max_new_tokens")}


def _refuse_settings_the_reference_fixed(path: Path, options: Any) -> None:
    """One line when a flag asks for texts or continuations other than the ones the reference holds."""
    from bench.divergence.options import DivergenceOptions
    from bench.divergence.reference import read_meta, reference_dir
    from bench.errors import UserError

    folder = reference_dir(path)
    if folder is None:
        return  # measuring reports the missing reference in its own words
    meta = read_meta(folder)
    for flag, (field, stored) in _FIXED_BY_REFERENCE.items():
        asked, default, kept = getattr(options, field), DivergenceOptions.model_fields[field].default, getattr(meta, stored)
        if asked != default and asked != kept:
            raise UserError(f"{flag} {asked}: the reference in {folder} was measured with {flag} {kept}, and a candidate "
                            "is measured on the reference's own texts: drop the flag, or measure a new reference "
                            f"with bench diverge --reference ... {flag} {asked}")


def _spec(spec: str | None) -> Any:
    """The gate spec's divergence rules, checked before anything is served."""
    if spec is None:
        return None
    from bench.compare.spec import load_spec
    from bench.errors import UserError
    from bench.shipped import resolve_spec

    path = resolve_spec(spec)
    loaded = load_spec(path)
    if loaded.divergence is None:
        raise UserError(f"gate spec {path} has no divergence: rules (mean_kl_max, p99_kl_max, top1_agreement_min)")
    return loaded
