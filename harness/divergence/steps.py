"""Divergence inside the candidate loop: the base's reference once, then each candidate before its packs.

Each step writes into its own step folder: ``divergence/`` (the reference, or the measurement), and for a
candidate, when the gate spec has divergence rules, ``gate.json``: a gate result holding only those
rules, which becomes the candidate's verdict when it fails them and its packs are skipped. A reference
already stored with the baseline (``bench baseline save`` keeps it) is copied when it was measured the
same way, so the base is not served again.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.compare.gate import GateResult, RunRef
from bench.compare.spec import GateSpec
from bench.divergence import runner
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import DIVERGENCE_DIR, ReferenceMeta, load_reference, read_meta, reference_dir
from bench.divergence.summary import ALL, DivergenceSummary
from bench.divergence.verdict import DivergenceVerdict, decide
from bench.serve.options import ServeOptions

GATE_FILE = "gate.json"
_COPY_IGNORE = shutil.ignore_patterns("vllm-cache", runner.SERVER_LOG, "*.tmp")
Echo = Callable[[str], object]


@dataclass
class CandidateDivergence:
    summary: DivergenceSummary
    verdict: DivergenceVerdict | None  # None: the gate spec has no divergence rules


def matches(meta: ReferenceMeta, options: DivergenceOptions, text_set_sha256: str) -> bool:
    """Whether a stored reference was measured on the texts and settings ``options`` asks for."""
    domains = {text.domain for text in meta.texts}
    return (meta.text_set_sha256 == text_set_sha256 and meta.tier == options.tier and meta.limit == options.limit
            and meta.k == options.top_k and meta.max_text_tokens == options.max_text_tokens
            and meta.generate_per_domain == options.generate and meta.max_new_tokens == options.max_new_tokens
            and (not options.domains or domains == set(options.domains)))


def base_reference(folder: Path, options: DivergenceOptions, *, base: Path, endpoint: str | None,
                   served_model_name: str | None, serve: ServeOptions, stored: Path | None,
                   echo: Echo) -> bool:
    """Write the base's reference into ``folder/divergence``; True when a server was launched for it."""
    from bench.divergence.texts import load_text_set

    sha = load_text_set(Path(options.texts) if options.texts else None).sha256
    found = reference_dir(stored) if stored is not None else None
    if found is not None and matches(read_meta(found), options, sha):
        shutil.copytree(found, folder / DIVERGENCE_DIR, ignore=_COPY_IGNORE, dirs_exist_ok=True)
        echo(f"    the baseline's stored reference {found} is used (measured the same way)")
        return False
    if found is not None:
        echo(f"    the baseline's stored reference {found} was measured otherwise: measuring the base again")
    with runner.serve_or_connect(model=None if endpoint else str(base), endpoint=endpoint,
                                 served_model_name=served_model_name, serve=serve, folder=folder, echo=echo) as served:
        runner.reference_at(served, options, folder, echo)
    return endpoint is None


def candidate_divergence(folder: Path, model: Path, reference: Path, options: DivergenceOptions, *, label: str,
                         serve: ServeOptions, spec: GateSpec, spec_source: str, echo: Echo) -> CandidateDivergence:
    """Serve the candidate, measure it against the reference, judge the divergence rules."""
    loaded = load_reference(reference)
    with runner.serve_or_connect(model=str(model), endpoint=None, served_model_name=label, serve=serve,
                                 folder=folder, echo=echo) as served:
        summary, results, drifts = runner.measure_at(served, loaded, options, echo)
    runner.write_measurement(folder, summary, results, drifts)
    for line in runner.summary_lines(summary):
        echo("    " + line)
    if spec.divergence is None:
        return CandidateDivergence(summary, None)
    verdict = decide(summary, spec)
    result = GateResult(
        verdict=verdict.verdict, exit_code=verdict.exit_code, line=verdict.line,
        candidate=RunRef(run_id=label, path=str(folder / DIVERGENCE_DIR), model=str(model)),
        baseline=RunRef(run_id="base", path=str(loaded.root), model=loaded.meta.checkpoint or loaded.meta.model),
        spec_source=spec_source, decision=spec.divergence.decision or spec.decision, confidence=summary.confidence,
        power=spec.power, rules=verdict.outcomes, failing_verdicts=list(dict.fromkeys(o.verdict for o in verdict.outcomes
                                                                                        if o.counts_as_failure)),
        invalid_reasons=verdict.invalid, warnings=list(summary.notes), stack_differences=[],
    )  # fmt: skip
    (folder / GATE_FILE).write_text(result.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return CandidateDivergence(summary, verdict)


def skipped_line(line: str) -> str:
    """A failed divergence verdict, saying plainly that the packs were not run and how to run them."""
    return (f"{line}; packs not run: the candidate failed divergence from the base (set divergence: "
            "{skip_packs_on_fail: false} in the plan to run them anyway)")


def mark_skipped(gate_json: Path) -> None:
    """Rewrite the step's gate.json so its line says the packs were skipped."""
    result = GateResult.model_validate_json(gate_json.read_text(encoding="utf-8"))
    if "packs not run" not in result.line:
        result.line = skipped_line(result.line)
        gate_json.write_text(result.model_dump_json(indent=1) + "\n", encoding="utf-8")


def place(step_folder: Path, run_dir: Path) -> None:
    """Copy a step's ``divergence/`` into a run directory the loop owns, so the gate and report find it there."""
    source = step_folder / DIVERGENCE_DIR
    if source.is_dir():
        shutil.copytree(source, run_dir / DIVERGENCE_DIR, ignore=_COPY_IGNORE, dirs_exist_ok=True)


def headline(summary: DivergenceSummary) -> str:
    figures = summary.domains[ALL]
    return f"mean KL {figures.mean_kl.mean:.4g}, top-1 agreement {figures.top1_agreement.mean:.3f}"
