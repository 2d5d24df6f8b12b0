"""How fast the code pack grades HumanEval+ samples, against evalplus's own evaluator.

Builds one chat reply per task (a seeded mix of correct, broken, base-only-correct and
function-less replies), grades them with ``CodePack.score_many`` (sandboxed evalplus checks), then
runs ``python -m evalplus.evaluate`` on the very programs the pack tested, in a fresh folder, and
prints seconds per 100 samples for both, their ratio, and whether every per-task base/plus status
agreed.

    BENCH_DATA_DIR=../shared/data python benchmarks/code_scoring.py [--workers N] [--seed S]

evalplus needs every task in a samples file, so a run always grades all 164 tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.packs.code import CodePack
from bench.packs.code import data as code_data
from bench.packs.code.crosscheck import evalplus_own_statuses, mixed_kinds, reply_for
from bench.transcript import Exchange, Request, Response, Transcript


def _reply(content: str) -> Transcript:
    return Transcript(exchanges=[Exchange(request=Request(messages=[]), response=Response(content=content, finish_reason="stop"))])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandboxes side by side (pack)")
    parser.add_argument(
        "--evalplus-parallel",
        type=int,
        default=None,
        help="evalplus.evaluate --parallel (default: evalplus's own choice, half the CPUs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the reply-kind mix")
    args = parser.parse_args()

    pack = CodePack(workers=args.workers)
    items = pack.items("full")
    problems = code_data.problems()
    kinds = mixed_kinds([item.id for item in items], args.seed)
    pairs = []
    for item in items:
        assert item.reference is not None
        pairs.append((item, _reply(reply_for(kinds[item.id], problems[item.id], item.reference["content"], item.wrong[0]["content"]))))
    code_data.payload_path(items[0].id)  # the one-time expected-output split is not scoring time

    started = time.perf_counter()
    scores = pack.score_many(pairs)
    pack_s = time.perf_counter() - started

    programs = {item.id: str(score.details.get("solution", "")) for item, score in zip(items, scores)}
    with tempfile.TemporaryDirectory(prefix="evalplus-bench-") as folder:
        started = time.perf_counter()
        theirs = evalplus_own_statuses(programs, Path(folder) / "run", parallel=args.evalplus_parallel)
        evalplus_s = time.perf_counter() - started

    mismatches = []
    for item, score in zip(items, scores):
        details = score.details
        ours = (
            details.get("evalplus_base_status", details.get("base_status")),
            details.get("evalplus_plus_status", details.get("plus_status")),
        )
        if ours != theirs[item.id]:
            mismatches.append(f"{item.id} ({kinds[item.id]}): pack {ours}, evalplus {theirs[item.id]}")

    n = len(items)
    per_100_pack = pack_s / n * 100
    per_100_evalplus = evalplus_s / n * 100
    evalplus_parallel = args.evalplus_parallel or max(1, (os.cpu_count() or 1) // 2)
    print(f"samples: {n} (one per task; seed {args.seed}); cpus: {os.cpu_count()}")
    print(f"pack (sandboxed, {args.workers} workers): {pack_s:.1f} s total, {per_100_pack:.1f} s per 100 samples")
    print(f"evalplus.evaluate (--parallel {evalplus_parallel}): {evalplus_s:.1f} s total, {per_100_evalplus:.1f} s per 100 samples")
    print(f"ratio pack / evalplus: {pack_s / evalplus_s:.2f} (below 1 = faster)")
    print(f"per-task base/plus statuses equal: {n - len(mismatches)}/{n}")
    for line in mismatches:
        print(f"  mismatch: {line}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
