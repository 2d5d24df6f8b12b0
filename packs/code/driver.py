"""Runs inside the sandbox: evalplus's own checker on each listed sample, results as JSON.

Usage: ``python driver.py manifest.json``. The manifest lists samples, each a solution file (in
the sandbox's working folder), the task's payload pickle (inputs and expected outputs written by
the harness from evalplus's ground truth) and an optional corrected oracle. For each sample the
base and plus inputs go through ``evalplus.eval.untrusted_check`` exactly as
``evalplus.evaluate.check_correctness`` passes them (evalplus's evaluator defaults: fast check,
its time limits), so a verdict here is the verdict evalplus's own evaluator gives.

This file is standalone on purpose: it imports nothing from the harness, only evalplus.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from typing import Any

# The sandbox already sets the memory limit. evalplus would otherwise try to *raise* RLIMIT_AS,
# RLIMIT_DATA and RLIMIT_STACK to its own 4 GiB default, which an unprivileged process may not,
# and every check would fail on that alone.
os.environ["EVALPLUS_MAX_MEMORY_BYTES"] = "-1"

# HumanEval/32 in evalplus 0.3.1: its find_zero oracle ``continue``s past the line that records a
# passed input, so every solution (the canonical one included) is graded "fail". The corrected
# oracle asks the same question (is |poly(xs, x)| <= atol at the returned x?) through a wrapper
# that returns True when it holds, checked by the same untrusted_check against True.
FIND_ZERO_WRAPPER = '''

def __bench_find_zero_residual_ok(xs):
    from evalplus.eval._special_oracle import _poly
    return abs(_poly(xs, find_zero(xs))) <= {atol!r}
'''
FIND_ZERO_ENTRY = "__bench_find_zero_residual_ok"


def check(untrusted_check: Any, solution: str, task: dict[str, Any], entry_point: str, expected: dict[str, Any],
          atol: float, limits: dict[str, float]) -> dict[str, str]:
    """Base then plus, both always run, as evalplus's check_correctness does."""
    verdict: dict[str, str] = {}
    for part in ("base", "plus"):
        status, _details = untrusted_check(
            "humaneval",
            solution,
            task[f"{part}_input"],
            entry_point,
            expected=expected[part],
            atol=atol,
            ref_time=task[f"{part}_time"],
            fast_check=True,
            min_time_limit=limits["min_time_limit"],
            gt_time_limit_factor=limits["gt_time_limit_factor"],
        )
        verdict[part] = str(status)
    return verdict


def run_sample(untrusted_check: Any, sample: dict[str, Any], limits: dict[str, float]) -> dict[str, Any]:
    with open(sample["solution"], encoding="utf-8") as handle:
        solution = handle.read()
    with open(sample["payload"], "rb") as handle:
        task = pickle.load(handle)
    expected = {"base": task["base"], "plus": task["plus"]}
    result: dict[str, Any] = check(untrusted_check, solution, task, task["entry_point"], expected, task["atol"], limits)
    if sample.get("oracle") == "find_zero_residual":
        wrapped = solution + FIND_ZERO_WRAPPER.format(atol=task["atol"])
        always = {part: [True] * len(task[f"{part}_input"]) for part in ("base", "plus")}
        result["corrected"] = check(untrusted_check, wrapped, task, FIND_ZERO_ENTRY, always, 0, limits)
    return result


def main() -> None:
    # Keep fd 1 for the result alone: whatever the checked code prints goes nowhere.
    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    with open(sys.argv[1], encoding="utf-8") as handle:
        manifest = json.load(handle)
    from evalplus.eval import untrusted_check

    results = []
    for sample in manifest["samples"]:
        try:
            results.append(run_sample(untrusted_check, sample, manifest["limits"]))
        except Exception as exc:  # a broken payload is the harness's fault: say so per sample
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        json.dump({"results": results}, out)


if __name__ == "__main__":
    main()
