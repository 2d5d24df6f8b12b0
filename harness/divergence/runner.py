"""The library behind ``bench diverge`` and the candidate loop's divergence steps: serve or connect,
measure, write the folder.

A measurement needs one server at a time: the base's (once, for the reference) or a candidate's.
``--model`` launches the checkpoint the way ``bench run`` does; ``--endpoint`` uses a running server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.client import normalize_endpoint, served_models, server_root
from bench.divergence.collect import collect_reference, measure_candidate
from bench.divergence.drift import Drift
from bench.divergence.endpoint import Endpoint
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import DIVERGENCE_DIR, Reference, load_reference, write_reference
from bench.divergence.summary import PER_TEXT_FILE, SUMMARY_JSON, DivergenceSummary, TextResult
from bench.errors import UserError
from bench.records import Interval
from bench.serve.options import ServeOptions

DRIFT_FILE = "drift.jsonl"
SERVER_LOG = "server.log"
Echo = Callable[[str], object]


@dataclass
class Served:
    """Where the model answers: its /v1 URL and name, and what it is."""

    url: str
    model: str
    checkpoint: str | None
    vllm_version: str | None


@contextlib.contextmanager
def serve_or_connect(*, model: str | None, endpoint: str | None, served_model_name: str | None, serve: ServeOptions,
                     folder: Path, echo: Echo = print) -> Iterator[Served]:
    """Launch ``model`` behind vLLM (its log in ``folder``), or check ``endpoint``; stop what was launched."""
    from bench.serve.launch import vllm_version

    if (model is None) == (endpoint is None):
        raise UserError("give --model DIR to launch a vLLM server, or --endpoint URL to use a running one (one of them)")
    if endpoint is not None:
        url = normalize_endpoint(endpoint)
        names = served_models(url, 30.0)
        name = served_model_name or (names[0] if names else "")
        if not name or name not in names:
            raise UserError(f"endpoint {url} does not serve {name or 'any model'}; it serves {names}")
        yield Served(url, name, None, vllm_version(server_root(url)))
        return
    from bench.run.evaluation import launch_config
    from bench.serve.launch import serving

    assert model is not None
    config, _ = launch_config(model, serve, served_model_name=served_model_name, cache_root=(folder / "vllm-cache").resolve())
    folder.mkdir(parents=True, exist_ok=True)
    echo(f"launching vLLM for {config.model} (log: {folder / SERVER_LOG})")
    with serving(config, (folder / SERVER_LOG).resolve()) as server:
        echo(f"vLLM ready in {server.start_seconds:.1f} s")
        yield Served(server.base_url + "/v1", config.served_model_name, str(config.model), vllm_version(server.base_url))


def _endpoint(served: Served, options: DivergenceOptions) -> Endpoint:
    return Endpoint(served.url, served.model, concurrency=options.concurrency, timeout_s=options.request_timeout_s,
                    api_key=os.environ.get("BENCH_API_KEY"))


def reference_at(served: Served, options: DivergenceOptions, out: Path, echo: Echo = print) -> Path:
    """Measure the base behind ``served`` and write its reference into ``out/divergence``."""

    async def go() -> Path:
        endpoint = _endpoint(served, options)
        try:
            meta, measured = await collect_reference(endpoint, options, checkpoint=served.checkpoint,
                                                     vllm_version=served.vllm_version, echo=echo)
        finally:
            await endpoint.close()
        return write_reference(out / DIVERGENCE_DIR, meta, measured)

    return asyncio.run(go())


def measure_at(served: Served, reference: Reference, options: DivergenceOptions,
               echo: Echo = print) -> tuple[DivergenceSummary, list[TextResult], list[Drift]]:
    """Measure the candidate behind ``served`` against ``reference``."""

    async def go() -> tuple[DivergenceSummary, list[TextResult], list[Drift]]:
        endpoint = _endpoint(served, options)
        try:
            return await measure_candidate(endpoint, reference, options, checkpoint=served.checkpoint,
                                           vllm_version=served.vllm_version, echo=echo)
        finally:
            await endpoint.close()

    return asyncio.run(go())


def write_measurement(out: Path, summary: DivergenceSummary, results: list[TextResult], drifts: list[Drift]) -> Path:
    """``out/divergence/``: summary.json, per_text.jsonl and drift.jsonl."""
    folder = out / DIVERGENCE_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PER_TEXT_FILE).write_text("".join(r.model_dump_json() + "\n" for r in results), encoding="utf-8")
        (folder / DRIFT_FILE).write_text("".join(d.model_dump_json() + "\n" for d in drifts), encoding="utf-8")
        tmp = folder / (SUMMARY_JSON + ".tmp")
        tmp.write_text(summary.model_dump_json(indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, folder / SUMMARY_JSON)
    except OSError as exc:
        raise UserError(f"cannot write the divergence measurement into {folder}: {exc.strerror or exc}") from exc
    return folder / SUMMARY_JSON


def make_reference(*, model: str | None, endpoint: str | None, served_model_name: str | None, serve: ServeOptions,
                   options: DivergenceOptions, out: Path, echo: Echo = print) -> Path:
    """Serve (or reach) the base and store its reference in ``out/divergence``."""
    with serve_or_connect(model=model, endpoint=endpoint, served_model_name=served_model_name, serve=serve,
                          folder=out / DIVERGENCE_DIR, echo=echo) as served:
        return reference_at(served, options, out, echo)


def measure(*, reference: Path, model: str | None, endpoint: str | None, served_model_name: str | None,
            serve: ServeOptions, options: DivergenceOptions, out: Path, echo: Echo = print) -> DivergenceSummary:
    """Serve (or reach) a candidate, measure it against the reference, write ``out/divergence``."""
    loaded = load_reference(reference)
    with serve_or_connect(model=model, endpoint=endpoint, served_model_name=served_model_name, serve=serve,
                          folder=out / DIVERGENCE_DIR, echo=echo) as served:
        summary, results, drifts = measure_at(served, loaded, options, echo)
    write_measurement(out, summary, results, drifts)
    return summary


def _interval(found: Interval) -> str:
    if found.mean is None:
        return "-"
    if found.low is None or found.high is None:
        return f"{found.mean:.4g}"
    return f"{found.mean:.4g} [{found.low:.4g}, {found.high:.4g}]"


def summary_lines(summary: DivergenceSummary) -> list[str]:
    """The measurement as plain lines (terminal and logs)."""

    lines = [f"divergence of {summary.candidate.model} from {summary.base.model} (top-{summary.k}, "
             f"{summary.positions} positions, {summary.tokens_per_s or 0:.0f} tokens/s)"]
    for name, d in summary.domains.items():
        lines.append(f"  {name:<10} texts {d.texts:>3}  KL {_interval(d.mean_kl)}  p50/p95/p99 {d.p50_kl:.3g}/{d.p95_kl:.3g}/"
                     f"{d.p99_kl:.3g}  top-1 {_interval(d.top1_agreement)}  tail {d.tail_mean:.2g}")
    for name, g in summary.drift.items():
        lines.append(f"  drift {name:<10} {g.identical}/{g.prompts} identical, first divergence median "
                     f"{'-' if g.first_divergence_median is None else f'{g.first_divergence_median:g}'}, length ratio "
                     f"{'-' if g.length_ratio_mean is None else f'{g.length_ratio_mean:.2f}'}, EOS {g.base_eos_rate:.0%} -> "
                     f"{g.candidate_eos_rate:.0%}, loops {g.base_loops} -> {g.candidate_loops}")
    lines += [f"  note: {note}" for note in summary.notes]
    return lines
