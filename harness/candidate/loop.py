"""The candidate loop: run packs on the base, then prune -> (FP8) -> run packs -> gate per candidate.

Each step runs only when its folder under ``steps/`` lacks a reusable completion record (see
:mod:`bench.candidate.cache`). A checkpoint step killed half-way is redone from scratch into a
fresh folder; a pack run killed half-way is resumed from its ``items.jsonl``, so finished items
are not asked again. One candidate's failure (a server that will not start, a failed preflight)
is recorded in its row and the loop goes on with the next.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.candidate.cache import Done, Step, StepStore
from bench.candidate.keys import FileDigests
from bench.candidate.prepare import Candidate, Prepared
from bench.errors import UserError
from bench.run.store import MANIFEST, RunStore

Echo = Callable[[str], None]
MODEL_DIR = "model"
DIGEST_MEMO = "digests.json"


@dataclass
class StepLog:
    """What the loop did with each step: ran it, resumed it, or found it cached."""

    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    launches: int = 0  # vLLM servers started


@dataclass
class CandidateOutcome:
    """Where one candidate's (or the base's) artifacts are, or why it stopped."""

    label: str
    checkpoint: Path | None = None
    run_dir: Path | None = None
    gate_json: Path | None = None
    prune: dict[str, Any] = field(default_factory=dict)
    quantize: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def weight_bytes(model_dir: Path) -> int:
    """Bytes of a checkpoint's weight files on disk (headers included)."""
    from bench.engine.planning.checkpoint import Checkpoint

    return Checkpoint.open(model_dir).file_bytes()


class Loop:
    """Runs the steps of a prepared plan inside one output folder."""

    def __init__(self, prepared: Prepared, out: Path, *, echo: Echo = print, show_progress: bool | None = None) -> None:
        self.prepared = prepared
        self.out = out
        self.store = StepStore(out / "steps")
        self.echo = echo
        self.show_progress = show_progress
        self.log = StepLog()
        self._total = len(prepared.steps())
        self._index = 0

    # ------------------------------------------------------------------------------------------
    # bookkeeping

    def _announce(self, step: Step, what: str) -> None:
        self._index += 1
        self.echo(f"[{self._index}/{self._total}] {step.kind} {step.label} ({step.key}): {what}")

    def _finish(self, step: Step, started: float, outputs: dict[str, Any]) -> Done:
        done = self.store.finish(step, started, outputs)
        self.log.ran.append(step.key)
        self.echo(f"    done in {done.seconds:.1f} s")
        return done

    def _cached(self, step: Step) -> Done | None:
        done = self.store.fresh(step)
        if done is not None:
            self._announce(step, "cached")
            self.log.cached.append(step.key)
        return done

    # ------------------------------------------------------------------------------------------
    # steps

    def prune(self, candidate: Candidate) -> Done:
        step = candidate.prune
        if (done := self._cached(step)) is not None:
            from bench.pruning_record import PRUNING_FILE, coverage_warnings

            # A fresh prune prints its coverage table as it runs; a cached one repeats its warnings before serving.
            for line in coverage_warnings(self.store.path(step.key) / MODEL_DIR / PRUNING_FILE):
                self.echo(f"    {line}")
            return done
        from bench.engine.compute.prune import prune_checkpoint
        from bench.engine.planning.prune_plan import PruneOptions

        self._announce(step, f"pruning to {candidate.keep}/{self.prepared.n_experts} experts per layer ({candidate.criterion})")
        started = time.monotonic()
        folder = self.store.begin(step)
        staging = self.store.clear(step.key, MODEL_DIR + ".partial")
        self.store.clear(step.key, MODEL_DIR)
        spec = self.prepared.plan.prune
        mix = self.prepared.mixes[candidate.mix_name]
        options = PruneOptions(
            keep=candidate.keep, criterion=candidate.criterion, selection=spec.selection, renormalize=spec.renormalize,
            propagate=spec.propagate, seed=spec.seed if spec.seed is not None else mix.seed, device=spec.device,
            score_gates=mix.score_gates,
        )
        result = prune_checkpoint(self.prepared.base, staging, mix, options, allow_stacked=spec.allow_stacked,
                                  progress=lambda line: self.echo(f"    {line}"), coverage_warn=spec.coverage_warn)
        os.replace(staging, folder / MODEL_DIR)
        self.echo(f"    {result.summary().replace(str(staging), str(folder / MODEL_DIR))}")
        return self._finish(step, started, {
            "paths": [MODEL_DIR], "model": MODEL_DIR, "n_experts_before": result.n_experts_before,
            "n_experts_after": result.n_experts_after, "size_bytes": result.after_bytes,
            "calibration_hash": result.record.get("calibration", {}).get("hash"),
            "calibration_tokens": result.record.get("calibration", {}).get("tokens"),
            "peak_rss_bytes": result.peak_rss_bytes,
        })

    def quantize(self, step: Step, source: Path) -> Done:
        if (done := self._cached(step)) is not None:
            return done
        from bench.engine.compute.fp8 import quantize_checkpoint

        precision = self.prepared.experts_precision
        self._announce(step, "FP8" + (" (experts kept bf16)" if precision == "bf16" else ""))
        started = time.monotonic()
        folder = self.store.begin(step)
        staging = self.store.clear(step.key, MODEL_DIR + ".partial")
        self.store.clear(step.key, MODEL_DIR)
        block = self.prepared.plan.quantize_spec.block if self.prepared.plan.quantize_spec else None
        result = quantize_checkpoint(source, staging, block=block, skip_experts=precision == "bf16")
        os.replace(staging, folder / MODEL_DIR)
        self.echo(f"    {result.scheme}: {result.quantized} tensors quantized, {result.kept} kept; "
                  f"{result.before_bytes} -> {result.after_bytes} bytes; worst relative error "
                  f"{result.worst_error:.4f} ({result.worst_tensor})")
        return self._finish(step, started, {
            "paths": [MODEL_DIR], "model": MODEL_DIR, "scheme": result.scheme, "experts": precision,
            "size_bytes": result.after_bytes, "worst_error": result.worst_error, "worst_tensor": result.worst_tensor,
        })

    def run(self, step: Step, model_dir: Path) -> Done:
        if (done := self._cached(step)) is not None:
            return done
        from bench.run.evaluation import execute

        folder = self.store.path(step.key)
        previous = sorted(p for p in folder.iterdir() if (p / MANIFEST).is_file()) if folder.is_dir() else []
        started = time.monotonic()
        self.store.begin(step)
        options = self.prepared.run_options(step, model_dir, folder)
        finished = RunStore.open(previous[0]).finished_results() if previous else None
        if previous and finished is not None:  # killed after the run ended but before it was marked done
            self._announce(step, f"already finished in {previous[0]}")
            return self._finish(step, started, {"paths": [previous[0].name], "run_dir": previous[0].name,
                                                     "asked": 0, "valid": finished.valid})
        if previous:
            self._announce(step, f"resuming {previous[0]}")
            self.log.resumed.append(step.key)
            run_dir: Path | None = previous[0]
        else:
            self._announce(step, f"running packs {','.join(self.prepared.packs)}")
            run_dir = None
            stale = folder / step.label
            if stale.exists():  # killed before its manifest was written: nothing worth keeping
                shutil.rmtree(stale)
        self.log.launches += 0 if options.endpoints else 1
        outcome = execute(options, resume_dir=run_dir, show_progress=self.show_progress,
                          echo=lambda line: self.echo(f"    {line}"))
        if not outcome.results.complete:
            raise UserError(f"run {outcome.run_dir} finished with {outcome.results.missing_items} item(s) missing: "
                            "rerun bench candidate to resume it")
        name = Path(outcome.run_dir).name
        return self._finish(step, started, {"paths": [name], "run_dir": name, "asked": outcome.asked,
                                                 "valid": outcome.results.valid})

    def gate(self, step: Step, baseline: Path, candidate: Path) -> Done:
        if (done := self._cached(step)) is not None:
            return done
        from bench.compare import gate
        from bench.compare.rundata import load_run
        from bench.report import gate_files

        self._announce(step, "gating against the base")
        started = time.monotonic()
        folder = self.store.begin(step)
        result = gate.judge(load_run(candidate), load_run(baseline), self.prepared.gate_spec,
                               self.prepared.gate_source)
        gate_files.write_outputs(result, markdown=folder / "gate.md", junit=folder / "gate.xml", json_path=folder / "gate.json")
        self.echo(f"    {result.line}")
        return self._finish(step, started, {"paths": ["gate.json"], "gate_json": "gate.json",
                                                 "verdict": result.verdict, "line": result.line,
                                                 "exit_code": result.exit_code})

    # ------------------------------------------------------------------------------------------
    # the whole loop

    def diverge_base(self, step: Step) -> Done:
        """The base's divergence reference (bench diverge --reference), measured once."""
        if (done := self._cached(step)) is not None:
            return done
        from bench.divergence.steps import base_reference

        prepared = self.prepared
        assert prepared.divergence is not None
        self._announce(step, "the base's divergence reference")
        started = time.monotonic()
        folder = self.store.begin(step)
        baseline = prepared.baseline
        launched = base_reference(folder, prepared.divergence, base=prepared.base, endpoint=baseline.url,
                                  served_model_name=baseline.model if baseline.url else step.label, serve=prepared.serve,
                                  stored=baseline.run_dir, echo=lambda line: self.echo(f"    {line}"))
        self.log.launches += int(launched)
        return self._finish(step, started, {"paths": ["divergence"], "reference": "divergence"})

    def diverge(self, step: Step, model_dir: Path, reference: Path) -> Done:
        """The candidate's divergence from the base, before its packs; a failed verdict is its gate.json."""
        if (done := self._cached(step)) is not None:
            return done
        from bench.divergence.steps import GATE_FILE, candidate_divergence, headline

        prepared = self.prepared
        assert prepared.divergence is not None
        self._announce(step, "divergence from the base")
        started = time.monotonic()
        folder = self.store.begin(step)
        measured = candidate_divergence(folder, model_dir, reference, prepared.divergence, label=step.label,
                                        serve=prepared.serve, spec=prepared.gate_spec, spec_source=prepared.gate_source,
                                        echo=lambda line: self.echo(f"    {line}"))
        self.log.launches += 1
        outputs: dict[str, Any] = {"paths": ["divergence"], "headline": headline(measured.summary), "failed": False}
        if measured.verdict is not None:
            self.echo(f"    {measured.verdict.line}")
            outputs.update(paths=["divergence", GATE_FILE], gate_json=GATE_FILE, verdict=measured.verdict.verdict,
                           line=measured.verdict.line, failed=measured.verdict.failed)
        return self._finish(step, started, outputs)

    def candidate(self, candidate: Candidate, base_run: Path | None) -> CandidateOutcome:
        if candidate.load_problem is not None:  # vLLM would refuse it: stop before pruning, let alone serving
            raise UserError(candidate.load_problem)
        outcome = CandidateOutcome(candidate.label)
        pruned = self.prune(candidate)
        outcome.prune = pruned.outputs
        model = self.store.path(candidate.prune.key) / MODEL_DIR
        if candidate.quantize is not None:
            quantized = self.quantize(candidate.quantize, model)
            outcome.quantize = quantized.outputs
            model = self.store.path(candidate.quantize.key) / MODEL_DIR
        outcome.checkpoint = model
        if candidate.diverge is not None and self.prepared.base_divergence is not None:
            from bench.divergence.reference import DIVERGENCE_DIR
            from bench.divergence.steps import mark_skipped, place

            diverged = self.diverge(candidate.diverge, model, self.store.path(self.prepared.base_divergence.key) / DIVERGENCE_DIR)
            skip = self.prepared.divergence is not None and self.prepared.divergence.skip_packs_on_fail
            if diverged.outputs.get("failed") and skip:
                outcome.gate_json = self.store.path(candidate.diverge.key) / diverged.outputs["gate_json"]
                mark_skipped(outcome.gate_json)
                self.echo(f"    candidate {candidate.label}: packs skipped, it failed divergence from the base "
                          "(divergence: {skip_packs_on_fail: false} in the plan runs them anyway)")
                return outcome
        run = self.run(candidate.run, model)
        outcome.run_dir = self.store.path(candidate.run.key) / run.outputs["run_dir"]
        if candidate.diverge is not None:
            place(self.store.path(candidate.diverge.key), outcome.run_dir)
        assert base_run is not None
        self.gate(candidate.gate, base_run, outcome.run_dir)
        outcome.gate_json = self.store.path(candidate.gate.key) / "gate.json"
        return outcome

    def check_calibration(self) -> None:
        """Calibration preflight of every mix still to be used: a drifted dataset fails in seconds, not after serving."""
        from bench.engine.planning.calibration import preflight, render_preflight

        pending = {c.mix_name for c in self.prepared.candidates if self.store.fresh(c.prune) is None}
        for name in sorted(pending):
            self.echo(f"calibration preflight of mix {name}")
            report = preflight(self.prepared.mixes[name], self.prepared.base, device=self.prepared.plan.prune.device)
            self.echo("    " + render_preflight(report).replace("\n", "\n    "))

    def execute(self) -> tuple[CandidateOutcome, list[CandidateOutcome]]:
        """Run every step; the base must succeed, a candidate may fail on its own."""
        prepared = self.prepared
        self.check_calibration()
        base = CandidateOutcome("base", checkpoint=prepared.base)
        self.echo(f"baseline: {prepared.baseline.describe()}")
        if prepared.base_run is None:
            base.run_dir = prepared.baseline.run_dir
        else:
            done = self.run(prepared.base_run, prepared.base)
            base.run_dir = self.store.path(prepared.base_run.key) / done.outputs["run_dir"]
        if prepared.base_divergence is not None:
            self.diverge_base(prepared.base_divergence)
            if prepared.base_run is not None and base.run_dir is not None:  # a run this loop owns: keep the reference there
                from bench.divergence.steps import place

                place(self.store.path(prepared.base_divergence.key), base.run_dir)
        outcomes = []
        for candidate in prepared.candidates:
            try:
                outcomes.append(self.candidate(candidate, base.run_dir))
            except UserError as exc:
                self.echo(f"    candidate {candidate.label} stopped: {exc}")
                self.log.failed.append(candidate.label)
                outcomes.append(CandidateOutcome(candidate.label, error=str(exc)))
        return base, outcomes


def run_loop(prepared: Prepared, out: Path, *, echo: Echo = print,
             show_progress: bool | None = None) -> tuple[CandidateOutcome, list[CandidateOutcome], StepLog]:
    """Run (or resume) every step of ``prepared`` in ``out``; the caller holds ``out``'s lock."""
    loop = Loop(prepared, out, echo=echo, show_progress=show_progress)
    base, candidates = loop.execute()
    return base, candidates, loop.log


def step_status(prepared: Prepared, out: Path) -> list[tuple[Step, str]]:
    """Each step and what a run would do with it now: cached, resume or run (for --dry-run)."""
    store = StepStore(out / "steps")
    status = []
    for step in prepared.steps():
        folder = store.path(step.key)
        if store.fresh(step) is not None:
            what = "cached"
        elif step.kind == "run" and folder.is_dir() and any((p / MANIFEST).is_file() for p in folder.iterdir()):
            what = "resume"
        else:
            what = "run"
        status.append((step, what))
    return status


def digest_memo(out: Path) -> FileDigests:
    """The file digest memo of an output folder (kept beside its steps)."""
    return FileDigests(out / DIGEST_MEMO)
