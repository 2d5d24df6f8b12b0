"""One evaluation run, end to end: serve (or connect), preflight, ask, score, aggregate.

This is the library behind ``bench run``; the CLI only parses flags into :class:`RunOptions`
(declared in :mod:`bench.run.options`). The options are stored in the manifest, so ``--resume``
rebuilds exactly the same plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shlex
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from bench import __version__, registry
from bench.client import (
    ChatClient,
    ClientConfig,
    ServerCheck,
    ServerDown,
    normalize_endpoint,
    served_models,
    server_root,
)
from bench.engine.planning.parallelism import check_load
from bench.errors import PreflightError, UserError
from bench.pack import Pack, Sampling
from bench.records import Manifest, PackEntry, PreflightCheck, Results, ServerInfo
from bench.run.aggregate import build_results
from bench.run.budgets import AUTO, Context, ModelFacts, pack_budget, resolve_context, truncation_warnings
from bench.run.checkpoint_facts import copy_checkpoint_facts
from bench.run.concurrency import ConcurrencyControl, client_limit
from bench.run.context_fit import mark_unfit
from bench.run.options import EvalOptions, RunOptions, check_sampling, upgrade_options
from bench.run.runner import PackPlan, RunPlan, run_plan
from bench.run.store import RunStore, StoreWriteError, new_run_id
from bench.serve.launch import (
    LaunchConfig,
    check_checkpoint,
    check_vllm_importable,
    is_cpu_only,
    resolve_vllm_python,
    serving,
    vllm_version,
)
from bench.serve.model_info import CheckpointInfo, ParserChoice, choose_parsers, read_checkpoint, sampling_defaults
from bench.serve.options import AUTO_PARSER, NO_PARSER, ServeOptions
from bench.serve.preflight import (
    PreflightOptions,
    fingerprint_check,
    first_failure,
    rendered_prompt_sha256,
    run_preflight,
    unverifiable,
)

__all__ = ["RunOptions", "RunOutcome", "build_plan", "execute", "launch_config", "options_from_run", "pack_sampling"]


class RunOutcome(BaseModel):
    run_dir: str
    results: Results
    asked: int
    preflight: list[PreflightCheck]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parser_choice(serve: ServeOptions, auto: ParserChoice | None) -> ParserChoice:
    def pick(flag: str, automatic: str | None) -> str | None:
        if flag == NO_PARSER:
            return None
        if flag == AUTO_PARSER:
            return automatic
        return flag

    reasoning = pick(serve.reasoning_parser, auto.reasoning_parser if auto else None)
    tool = pick(serve.tool_call_parser, auto.tool_call_parser if auto else None)
    why = auto.why if auto else "external endpoint: parsers are the server's own"
    if serve.parser_overridden():
        why += " (overridden on the command line)"
    return ParserChoice(reasoning_parser=reasoning, tool_call_parser=tool, why=why)


def pack_sampling(pack: Pack, options: EvalOptions) -> Sampling:
    """The pack's default sampling with the run's overrides applied."""
    return options.sampling_for(pack.default_sampling)


def build_plan(options: EvalOptions, facts: ModelFacts | None = None, context: int | None = None,
               echo: Callable[[str], object] | None = None) -> RunPlan:
    """The packs, items and per-pack sampling of a run. ``facts`` (what the checkpoint says; unknown
    for an endpoint) and ``context`` (the server's context length) shape each pack's token budget."""
    names = registry.resolve(options.packs)
    stray = set(options.pack_options) - set(names)
    if stray:
        raise UserError(f"--pack-option names pack(s) not in this run: {', '.join(sorted(stray))}")
    stray = set(options.pack_sampling) - set(names)
    if stray:
        raise UserError(f"sampling names pack(s) not in this run: {', '.join(sorted(stray))}")
    plans: dict[str, PackPlan] = {}
    for name in names:
        pack = registry.load(name, options.pack_options.get(name))
        items = pack.items(options.tier)
        if options.limit is not None:
            limiter = getattr(pack, "limit", None)
            items = limiter(items, options.limit, options.seed) if callable(limiter) else items[: options.limit]
        if not items:
            raise UserError(f"pack {name!r} has no items in tier {options.tier!r}")
        budget = pack_budget(name, pack.default_sampling, facts or ModelFacts(), flags=options.sampling_overrides(),
                             per_pack=options.pack_sampling.get(name, {}),
                             flag_thinking_budget=options.thinking_budget, context=context)
        check_sampling(name, budget.sampling)
        for warning in budget.warnings:
            if echo is not None:
                echo(f"warning: {warning}")
        plans[name] = PackPlan(pack=pack, items=items, sampling=budget.sampling, budget=budget)
    return RunPlan(packs=plans, repeats=options.repeats, seed=options.seed, concurrency=options.concurrency)


def _host() -> dict[str, Any]:
    from bench.sandbox import sandbox_backend

    return {
        "sandbox": sandbox_backend(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def served_context(url: str, name: str | None) -> int | None:
    """The context length a vLLM server reports in ``/models`` for ``name`` (None: its first model);
    None where it does not say."""
    try:
        response = httpx.get(f"{url}/models", timeout=10.0)
        for card in response.json().get("data", []):
            if name in (None, card.get("id")) and isinstance(card.get("max_model_len"), int):
                return int(card["max_model_len"])
    except (httpx.HTTPError, ValueError, AttributeError, TypeError):
        return None
    return None


def _precheck(options: RunOptions) -> None:
    """Catch a bad model path or a dead endpoint before anything is created on disk."""
    if options.endpoints:
        for url in options.endpoints:
            served_models(normalize_endpoint(url), options.evaluate.request_timeout_s)
    elif options.model:
        path = Path(options.model).expanduser().resolve()
        check_checkpoint(read_checkpoint(path))
        check_load(path, options.serve.args)  # FP8 blocks and expert counts against the parallel sizes
    else:
        raise UserError("give --model DIR to launch a server, or --endpoint URL to use a running one")


def server_context(serve: ServeOptions, info: CheckpointInfo) -> Context:
    """The context length a launched server gets (``--max-model-len``, or ``auto`` worked out here)."""
    kv_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or LaunchConfig.cpu_kv_cache_gib)
    return resolve_context(serve.max_model_len, info, cpu=is_cpu_only(), kv_cache_gib=kv_gib)


def model_facts(options: RunOptions) -> tuple[ModelFacts, Context | None]:
    """What the launched checkpoint says about budgets and sampling; nothing is known of an endpoint's."""
    if options.endpoints:  # the context is the server's (requests past it are refused, not clamped)
        served = served_context(normalize_endpoint(options.endpoints[0]), options.served_model_name)
        return ModelFacts(), Context(served, "the endpoint's /models") if served is not None else None
    if not options.model:
        return ModelFacts(), None
    info = read_checkpoint(Path(options.model).expanduser().resolve())
    return ModelFacts.of(info), server_context(options.serve, info)


def launch_config(model: str | None, serve: ServeOptions, *, served_model_name: str | None = None,
                  cache_root: Path | None = None) -> tuple[LaunchConfig, CheckpointInfo]:
    """How ``bench run`` and ``bench serve`` launch vLLM for ``model``: checked, parsers chosen, paths resolved."""
    if not model:
        raise UserError("give --model DIR to launch a server, or --endpoint URL to use a running one")
    path = Path(model).expanduser().resolve()
    info = read_checkpoint(path)
    check_checkpoint(info)
    check_load(path, serve.args)
    template_path = Path(serve.chat_template).expanduser().resolve() if serve.chat_template else None
    if template_path is not None and not template_path.is_file():
        raise UserError(f"chat template {template_path} does not exist")
    python = resolve_vllm_python(serve.python)
    check_vllm_importable(python)
    context = server_context(serve, info)
    resolved = serve.model_copy(update={
        "python": python,
        "chat_template": str(template_path) if template_path else None,
        "max_model_len": context.value,
    })
    config = LaunchConfig(
        model=path,
        served_model_name=served_model_name or path.name,
        parsers=_parser_choice(serve, choose_parsers(info)),
        serve=resolved,
        cache_root=cache_root,
    )
    return config, info


@contextlib.contextmanager
def _connect(options: RunOptions, store: RunStore) -> Iterator[tuple[ServerInfo, ServerCheck | None]]:
    """Launch a server for --model, or check the given endpoints; yield how the model is served, and for a
    launched server the check that says when it has died."""
    if options.endpoints:
        urls = [normalize_endpoint(u) for u in options.endpoints]
        served: list[str] = []
        for url in urls:
            served = served_models(url, options.evaluate.request_timeout_s)
        name = options.served_model_name or (served[0] if served else "")
        if not name:
            raise UserError(f"endpoint {urls[0]} serves no model")
        if name not in served:
            raise UserError(f"endpoint {urls[0]} does not serve {name!r}; it serves {served}")
        serve = options.serve
        parsers = _parser_choice(serve, None)
        yield ServerInfo(
            launched=False, endpoints=urls, served_model_name=name, vllm_version=vllm_version(server_root(urls[0])),
            max_model_len=served_context(urls[0], name), max_model_len_source="the endpoint's /models",
            reasoning_parser=parsers.reasoning_parser if serve.reasoning_parser != AUTO_PARSER else None,
            tool_call_parser=parsers.tool_call_parser if serve.tool_call_parser != AUTO_PARSER else None,
        ), None
        return
    config, info = launch_config(options.model, options.serve, served_model_name=options.served_model_name,
                                 cache_root=store.root / "vllm-cache")
    template_path, parsers = config.chat_template, config.parsers
    template_text = template_path.read_text(encoding="utf-8") if template_path else info.chat_template
    with serving(config, store.server_log) as server:
        from bench.serve.model_info import template_sha256

        yield ServerInfo(
            launched=True,
            command=server.command,
            endpoints=[server.base_url + "/v1"],
            served_model_name=config.served_model_name,
            vllm_version=vllm_version(server.base_url),
            reasoning_parser=parsers.reasoning_parser,
            tool_call_parser=parsers.tool_call_parser,
            chat_template_sha256=template_sha256(template_text) if template_text else None,
            chat_template_source=str(template_path) if template_path else "checkpoint",
            max_model_len=served_context(server.base_url + "/v1", config.served_model_name),
            max_model_len_source=server_context(options.serve, info).source,
            generation_config=sampling_defaults(info),
            start_seconds=round(server.start_seconds, 2),
            parser_reason=parsers.why,
            pid=server.server_pid(), pgid=server.pgid, port=server.port, bench_pid=os.getpid(),
        ), server.exit_message


def _manifest(run_id: str, options: RunOptions, plan: RunPlan, server: ServerInfo) -> Manifest:
    evaluate = options.evaluate
    entries = []
    for name, pack_plan in plan.packs.items():
        pack = pack_plan.pack
        sampling = pack_plan.sampling.model_dump(exclude_none=True)
        if server.generation_config:
            sampling["server_defaults"] = {k: v for k, v in server.generation_config.items() if k not in sampling}
        entries.append(PackEntry(
            name=name, version=pack.version, data_hash=pack.data_hash(), items=len(pack_plan.items),
            tier=evaluate.tier, subdimensions=list(pack.subdimensions), sampling=sampling,
            options=evaluate.pack_options.get(name, {}),
            budget=pack_plan.budget.record() if pack_plan.budget else None,
        ))
    return Manifest(
        run_id=run_id, created_at=_now(), bench_version=__version__, model=options.model, server=server,
        packs=entries, sampling_overrides=evaluate.sampling_overrides(), limit=evaluate.limit,
        repeats=evaluate.repeats, seed=evaluate.seed, concurrency=evaluate.concurrency, host=_host(),
        options=options.model_dump(mode="json"),
    )


def sends_tools(plan: RunPlan) -> bool:
    """Whether any item of the run is asked with OpenAI ``tools`` (the tool probe then must pass)."""
    for pack_plan in plan.packs.values():
        for item in pack_plan.items:
            try:
                if pack_plan.pack.tools(item):
                    return True
            except Exception:  # a pack that builds its requests inside run_item only: assume it may
                return True
    return False


def client_config(endpoints: list[str], model: str, options: EvalOptions) -> ClientConfig:
    """The client of one run: its concurrency and request timeout, and ``BENCH_API_KEY`` when set."""
    config = ClientConfig(endpoints=endpoints, model=model, concurrency=client_limit(options.concurrency),
                          timeout_s=options.request_timeout_s)
    if api_key := os.environ.get("BENCH_API_KEY"):
        config.api_key = api_key
    return config


def execute(options: RunOptions, *, resume_dir: Path | None = None, show_progress: bool | None = None,
            echo: Any = print) -> RunOutcome:
    """Run (or resume) an evaluation and return where it went and what it found."""
    facts, context = model_facts(options)
    known_context = context.value if context is not None and context.value != AUTO else facts.context
    plan = build_plan(options.evaluate, facts, known_context if isinstance(known_context, int) else None, echo)
    created_at: str | None = None
    if resume_dir is not None:
        # The records are read and checked before anything is launched: a complete run needs no server.
        store = RunStore.open(resume_dir, lock="bench run --resume")
        store.check_versions()
        previous = store.read_manifest()
        run_id, created_at = previous.run_id, previous.created_at
        store.drop_torn_tail()
        if not plan.todo(store.finished_keys()):
            return _already_complete(store, plan, previous, echo)
        _precheck(options)
    else:
        _precheck(options)
        run_id = options.run_id or new_run_id(Path(options.model).name if options.model else "endpoint")
        store = RunStore.create(Path(options.runs_dir), run_id, lock="bench run")
        _write_first_manifest(store, _manifest(run_id, options, plan, ServerInfo(launched=not options.endpoints)), options)
        copy_checkpoint_facts(options.model, store.root)  # the report reads the run directory only
    echo(f"run directory: {store.root}")
    manifest: Manifest | None = None
    try:
        if isinstance(known_context, int) and not options.endpoints:
            mark_unfit(plan, options.model, known_context, echo)
        with _connect(options, store) as (server, server_down):
            if server.launched:
                echo(f"vLLM ready in {server.start_seconds:.1f} s: {shlex.join(server.command)}")
            manifest = _manifest(run_id, options, plan, server)
            manifest.created_at = created_at or manifest.created_at
            client = ChatClient(client_config(server.endpoints, server.served_model_name, options.evaluate),
                                server_down=server_down)
            try:
                asked = asyncio.run(_checked_run(options, plan, client, store, manifest, show_progress, echo))
            except StoreWriteError as exc:
                _mark_interrupted(store, manifest)
                raise StoreWriteError(f"{exc}; finished items are kept: free space, then bench run --resume {store.root}") from exc
    except (KeyboardInterrupt, ServerDown) as exc:
        _stop_interrupted(store, plan, manifest, exc, echo)
        raise
    assert manifest is not None
    results = _write_results(store, plan, manifest)
    manifest.status = "complete" if results.complete else "interrupted"
    store.write_manifest(manifest)
    store.release()
    cut_off = {name: (result.health.truncated, result.health.responses) for name, result in results.packs.items()}
    for line in truncation_warnings(cut_off, {name: p.budget for name, p in plan.packs.items()},
                                    manifest.server.max_model_len):
        echo(line)
    return RunOutcome(run_dir=str(store.root), results=results, asked=asked, preflight=manifest.preflight)


async def _checked_run(options: RunOptions, plan: RunPlan, client: ChatClient, store: RunStore,
                       manifest: Manifest, show_progress: bool | None, echo: Any) -> int:
    try:
        checks = await run_preflight(client, PreflightOptions(
            reasoning_parser=manifest.server.reasoning_parser, tool_call_parser=manifest.server.tool_call_parser,
            launched=manifest.server.launched, tools_required=sends_tools(plan)))
        manifest.preflight = checks
        manifest.server.rendered_prompt_sha256 = rendered_prompt_sha256(manifest.server.endpoints[0], manifest.server.served_model_name)
        manifest.server.unverifiable = unverifiable(manifest.server)  # the gate warns about these
        checks.append(fingerprint_check(manifest.server.unverifiable))
        for check in checks:
            evidence = f" ({check.evidence})" if check.evidence else ""
            echo(f"preflight {check.name}: {'ok' if check.ok else 'FAILED'} - {check.detail}{evidence}")
        failed = first_failure(checks)
        if failed is not None:
            manifest.status = "failed"
            store.write_manifest(manifest)
            raise PreflightError(f"preflight failed: {failed.detail.splitlines()[0]}: {failed.fix}")
        store.write_manifest(manifest)
        control = ConcurrencyControl(plan.concurrency, [server_root(e) for e in manifest.server.endpoints],
                                     api_key=client.config.api_key, echo=echo)
        try:
            counters = await run_plan(plan, client, store, show_progress=show_progress, concurrency=control)
        finally:
            manifest.concurrency_levels = control.record()  # an interrupted run keeps its levels too
        echo(control.summary())
        return counters.asked
    finally:
        await client.close()


def _write_results(store: RunStore, plan: RunPlan, manifest: Manifest) -> Results:
    preflight_ok = bool(manifest.preflight) and first_failure(manifest.preflight) is None
    items = store.read_effective()
    results = build_results(manifest.run_id, {n: p.pack for n, p in plan.packs.items()}, items.records,
                            plan.expected(), preflight_ok=preflight_ok, seed=plan.seed)
    store.write_results(results, items.digest)
    return results


def _write_first_manifest(store: RunStore, manifest: Manifest, options: RunOptions) -> None:
    """The manifest goes first, before the server log and the launch: a failed start leaves a resumable run."""
    try:
        store.write_manifest(manifest)
    except StoreWriteError as exc:
        store.release()
        raise StoreWriteError(f"{exc}; nothing was asked: free space, then run the same command with "
                              f"--runs-dir {options.runs_dir} --run-id {manifest.run_id}") from exc


def _stop_interrupted(store: RunStore, plan: RunPlan, manifest: Manifest | None,
                      cause: KeyboardInterrupt | ServerDown, echo: Any) -> None:
    """Ctrl-C, SIGTERM or a dead server, at any phase (startup included): finished items kept, the
    manifest marked ``interrupted``, and the resume command said (in the error line for a dead server)."""
    with contextlib.suppress(UserError):
        manifest = manifest or store.read_manifest()  # still starting: the manifest on disk
        _mark_interrupted(store, manifest)
        _write_results(store, plan, manifest)
    store.release()
    resume = f"bench run --resume {store.root}"
    if isinstance(cause, ServerDown):
        cause.args = (f"{cause}; finished items are kept: resume with: {resume}",)
    else:
        echo(f"interrupted: finished items are kept; resume with: {resume}")


def _mark_interrupted(store: RunStore, manifest: Manifest) -> None:
    """Mark the manifest ``interrupted`` where the disk still takes it; the error being reported matters more."""
    manifest.status = "interrupted"
    with contextlib.suppress(StoreWriteError):
        store.write_manifest(manifest)


def _already_complete(store: RunStore, plan: RunPlan, manifest: Manifest, echo: Any) -> RunOutcome:
    """A resume with nothing left to ask: no server; a finished run's files are left exactly as they are."""
    current = store.read_effective().digest
    results = store.read_results() if store.has_results() else None
    if results is None or manifest.status != "complete" or results.items_sha256 not in (None, current.sha256):
        results = _write_results(store, plan, manifest)
        manifest.status = "complete"
        store.write_manifest(manifest)
    echo(f"run {manifest.run_id} is complete: every item is recorded, nothing to ask (no server started)")
    store.release()
    return RunOutcome(run_dir=str(store.root), results=results, asked=0, preflight=manifest.preflight)


def options_from_run(run_dir: Path) -> RunOptions:
    """The options a run was started with (for --resume and rescore)."""
    manifest = RunStore.open(run_dir).read_manifest()
    if not manifest.options:
        raise UserError(f"{run_dir}/manifest.json records no options: it cannot be resumed")
    try:
        return RunOptions.model_validate(upgrade_options(manifest.options))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UserError(f"{run_dir}/manifest.json: options.{where}: {error['msg']}") from exc
