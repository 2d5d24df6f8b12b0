"""Divergence of pruning criteria on the real-language MoE: how far each 50% pruning moved the base.

Builds (or reuses) the SmolLM2 MoE (``bench toy --kind smollm-moe``), prunes half its experts per
layer with REAP and with a weaker criterion (expert frequency; ``--random`` adds a random selection)
through ``bench prune`` on the demo's calibration recipe (local-sample, 256-token samples), then with
``bench diverge``'s library: serves the base once for its reference and one more measurement of the
base against itself on the same server (the noise floor: the same numbers on both sides give 0), and
serves each pruned checkpoint to measure it against that reference.

Prints, per domain and over all texts: mean KL(base||candidate) with its 95% bootstrap interval over
texts, p99 per-token KL, and top-1 agreement with its interval; then each criterion's per-text KL
minus REAP's, paired on the same texts. Which criterion wins is a measurement, not an assertion. One
fact is checked: every pruned candidate's KL interval lies above the base against itself, in every
domain (exit 1 if not).

    BENCH_DATA_DIR=../shared/data BENCH_VLLM_PYTHON=.vllm-venv/bin/python \\
    .venv/bin/python benchmarks/divergence_criteria.py --out /tmp/divcrit [--model MOE_DIR] [--tier quick|full]
        [--limit N] [--max-text-tokens 512] [--generate 2] [--max-new-tokens 64] [--random]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.cli.diverge import FLAGS
from bench.cli.run import checked
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import load_reference
from bench.divergence.runner import measure, measure_at, reference_at, serve_or_connect, write_measurement
from bench.divergence.summary import ALL, PER_TEXT_FILE, DivergenceSummary, TextResult
from bench.errors import UserError
from bench.serve.options import ServeOptions
from bench.stats import mean_interval

FLOOR = "base vs base"


def prune(model: Path, out: Path, criterion: str, args: argparse.Namespace) -> Path:
    """``bench prune`` into ``out`` (a finished pruning there is reused)."""
    if (out / "pruning.json").is_file():
        print(f"{criterion}: reusing {out}")
        return out
    command = [sys.executable, "-m", "bench.cli", "prune", "--model", str(model), "--calibration", args.calibration,
               "--compression", str(args.ratio), "--seq-len", str(args.seq_len), "--criterion", criterion,
               "--seed", str(args.seed), "--out", str(out)]
    if args.data_dir:
        command += ["--data-dir", str(args.data_dir)]
    subprocess.run(command, check=True)
    return out


def per_text(run: Path) -> dict[str, float]:
    """Each text's mean KL, by text id, from a measurement's per_text.jsonl."""
    lines = (run / "divergence" / PER_TEXT_FILE).read_text(encoding="utf-8").splitlines()
    return {r.id: r.mean_kl for r in (TextResult.model_validate_json(line) for line in lines if line.strip())}


def table(rows: dict[str, DivergenceSummary]) -> None:
    domains = list(next(iter(rows.values())).domains)
    print("| domain | candidate | texts | positions | mean KL [95% CI] | p99 KL | top-1 agreement [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    for domain in [ALL, *(d for d in domains if d != ALL)]:
        for name, summary in rows.items():
            d = summary.domains[domain]
            print(f"| {domain} | {name} | {d.texts} | {d.positions} | {d.mean_kl.text(4, 'f')} | {d.p99_kl:.4f} | "
                  f"{d.top1_agreement.text(3, 'f')} |")


def drift(rows: dict[str, DivergenceSummary]) -> None:
    for name, summary in rows.items():
        g = summary.drift.get(ALL)
        if g is not None:
            print(f"drift {name}: {g.identical}/{g.prompts} greedy continuations identical, first divergence median "
                  f"{'-' if g.first_divergence_median is None else f'{g.first_divergence_median:g}'} tokens, "
                  f"loops {g.base_loops} -> {g.candidate_loops}")


def paired(runs: dict[str, Path], against: str, seed: int) -> None:
    """Each candidate's per-text KL minus ``against``'s, on the same texts, with its bootstrap interval."""
    reference = per_text(runs[against])
    for name, run in runs.items():
        if name == against:
            continue
        own = per_text(run)
        found = mean_interval([own[text] - reference[text] for text in reference], seed=seed)
        if found.low is not None and found.low > 0:
            reading = f"wholly above 0: {against} moved the base less"
        elif found.high is not None and found.high < 0:
            reading = f"wholly below 0: {name} moved the base less"
        else:
            reading = "it holds 0: not told apart on these texts"
        print(f"{name} minus {against}, per-text mean KL: {found.text(4, 'f')} over {found.n} texts ({reading})")


def above_floor(rows: dict[str, DivergenceSummary]) -> list[str]:
    """Where a pruned candidate's KL interval does not lie wholly above the base against itself."""
    floor = rows[FLOOR]
    failures = []
    for name, summary in rows.items():
        if name == FLOOR:
            continue
        for domain, d in summary.domains.items():
            f = floor.domains[domain].mean_kl
            ceiling = f.high if f.high is not None else f.mean
            low = d.mean_kl.low if d.mean_kl.low is not None else d.mean_kl.mean
            if low is None or ceiling is None or not low > ceiling:
                failures.append(f"{name} {domain}: KL low end {low} is not above base vs base's {ceiling}")
    return failures


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder: the MoE, pruned checkpoints, measurements")
    parser.add_argument("--model", type=Path, help="the MoE to prune (default: build the SmolLM2 MoE into OUT/smollm-moe)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ["BENCH_DATA_DIR"]) if "BENCH_DATA_DIR" in os.environ else None)
    parser.add_argument("--criteria", default="reap,frequency", help="pruning criteria, comma-separated; REAP first")
    parser.add_argument("--random", action="store_true", help="add a random selection (seeded by --seed)")
    parser.add_argument("--ratio", type=float, default=0.5, help="share of experts removed per layer")
    parser.add_argument("--calibration", default="local-sample", help="calibration mix (shipped recipe name or YAML)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tier", default="quick", choices=["quick", "full"])
    parser.add_argument("--limit", type=int, default=None, help="texts per domain")
    parser.add_argument("--max-text-tokens", type=int, default=512)
    parser.add_argument("--generate", type=int, default=2, help="greedy continuations per domain (drift)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=2048)
    return parser.parse_args()


def run(args: argparse.Namespace) -> int:
    options = checked(DivergenceOptions, {
        "tier": args.tier, "limit": args.limit, "max_text_tokens": args.max_text_tokens, "generate": args.generate,
        "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "concurrency": args.concurrency, "seed": args.seed,
    }, FLAGS)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from bench.engine.toys.builders import build_smollm_moe

        model = build_smollm_moe(args.out / "smollm-moe", data_dir=args.data_dir)
    criteria = [c for c in args.criteria.split(",") if c] + (["random"] if args.random else [])
    checkpoints = {c: prune(model, args.out / f"{c}-{round(args.ratio * 100)}", c, args) for c in criteria}
    pruned = time.perf_counter()

    serve = ServeOptions(max_model_len=args.max_model_len, reasoning_parser="none", tool_call_parser="none")
    base_run, runs = args.out / "base", {FLOOR: args.out / "base-vs-base"}
    with serve_or_connect(model=str(model), endpoint=None, served_model_name=None, serve=serve,
                          folder=base_run / "divergence", echo=print) as served:
        reference_at(served, options, base_run)
        summary, results, drifts = measure_at(served, load_reference(base_run), options)
        write_measurement(runs[FLOOR], summary, results, drifts)
    rows = {FLOOR: summary}
    measured = {FLOOR: time.perf_counter()}
    for criterion, checkpoint in checkpoints.items():
        name = f"{criterion} {args.ratio:.0%}"
        runs[name] = args.out / f"{checkpoint.name}-run"
        rows[name] = measure(reference=base_run, model=str(checkpoint), endpoint=None, served_model_name=None,
                             serve=serve, options=options, out=runs[name])
        measured[name] = time.perf_counter()

    reference = load_reference(base_run)
    print(f"\nmodel {model}; {len(reference.measured)} texts ({args.tier} tier, limit {args.limit}, cut to "
          f"{args.max_text_tokens} tokens), {reference.meta.tokens} tokens, top-{rows[FLOOR].k}; pruning {args.ratio:.0%} "
          f"of experts per layer on {args.calibration} (seq_len {args.seq_len}); load {os.getloadavg()[0]:.2f}")
    table(rows)
    drift(rows)
    first = next(name for name in runs if name != FLOOR)
    paired({n: r for n, r in runs.items() if n != FLOOR}, first, args.seed)
    failures = above_floor(rows)
    print(f"every pruned candidate's KL interval lies above base vs base (mean KL {rows[FLOOR].domains[ALL].mean_kl.text(4, 'f')}), "
          f"in every domain: {'holds' if not failures else 'VIOLATED'}")
    for line in failures:
        print(f"  {line}")
    steps, last = [f"build and prune {pruned - started:.0f} s"], pruned
    for name, at in measured.items():
        steps.append(f"{name} {at - last:.0f} s")
        last = at
    print(f"time: {', '.join(steps)}; {time.perf_counter() - started:.0f} s in all")
    return 1 if failures else 0


def main() -> int:
    try:
        return run(parse())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except subprocess.CalledProcessError as exc:
        print(f"error: bench prune stopped with exit code {exc.returncode} (its message is above)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
