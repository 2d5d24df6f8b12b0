"""Cross-checking the pack against evalplus's own evaluator on the same programs.

Used by the test suite and by ``benchmarks/code_scoring.py``: build replies of known kinds for
every task (correct, broken, correct on base inputs only), and run ``python -m evalplus.evaluate``
on a samples file of the programs the pack tested, in a fresh folder, to read evalplus's own
per-task statuses.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from bench.errors import UserError
from bench.packs.code import data as code_data

Kind = Literal["reference", "wrong", "plus_break", "no_function"]
KINDS: tuple[Kind, ...] = ("reference", "wrong", "plus_break", "no_function")


def plus_break_program(problem: dict[str, Any]) -> str:
    """The canonical solution, but answering None for any input larger than every base input.

    It passes the base tests and fails the plus tests wherever EvalPlus added a larger input,
    which makes the two statuses differ on purpose.
    """
    entry = problem["entry_point"]
    renamed = re.sub(rf"\b{re.escape(entry)}\b", "_canonical_impl", problem["prompt"] + problem["canonical_solution"])
    largest = max(len(repr(tuple(args))) for args in problem["base_input"])
    return (
        f"{renamed.rstrip()}\n\n\n"
        f"def {entry}(*args):\n"
        f"    if len(repr(args)) > {largest}:\n"
        f"        return None\n"
        f"    return _canonical_impl(*args)\n"
    )


def reply_for(kind: Kind, problem: dict[str, Any], reference: str, wrong: str) -> str:
    """A chat reply of the given kind for one task."""
    if kind == "reference":
        return reference
    if kind == "wrong":
        return wrong
    if kind == "plus_break":
        return f"Here it is.\n\n```python\n{plus_break_program(problem)}```\n"
    return "```python\ndef unrelated_helper(x):\n    return x\n```\n"


def mixed_kinds(task_ids: list[str], seed: int) -> dict[str, Kind]:
    """A seeded kind per task; every kind appears when there are at least four tasks."""
    rng = random.Random(f"code-crosscheck:{seed}")
    kinds = [KINDS[index % len(KINDS)] for index in range(len(task_ids))]
    rng.shuffle(kinds)
    return dict(zip(task_ids, kinds))


def evalplus_own_statuses(
    programs: dict[str, str], workdir: Path, *, parallel: int | None = None, timeout_s: float = 1800.0
) -> dict[str, tuple[str, str]]:
    """Run evalplus's own evaluator on one program per task; (base, plus) status per task.

    evalplus wants every task in the samples file and silently reuses an existing
    ``*_eval_results.json``, so ``workdir`` must be fresh and ``programs`` complete.
    """
    missing = set(code_data.problems()) - set(programs)
    if missing:
        raise ValueError(f"evalplus needs every task in the samples file; missing {len(missing)}")
    workdir.mkdir(parents=True, exist_ok=True)
    samples = workdir / "samples.jsonl"
    results = workdir / "samples_eval_results.json"
    if results.exists():
        raise ValueError(f"{results} exists: evalplus would reuse it instead of evaluating")
    with samples.open("w", encoding="utf-8") as handle:
        for task_id, program in programs.items():
            handle.write(json.dumps({"task_id": task_id, "solution": program}) + "\n")
    env = dict(os.environ)
    source = code_data.configure_source()
    if source is not None:
        env[code_data.OVERRIDE_ENV] = str(source)
    env.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # evalplus hangs when it is set
    command = [sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples", str(samples)]
    if parallel is not None:
        command += ["--parallel", str(parallel)]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not results.is_file():
        raise UserError(f"evalplus.evaluate failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    evaluated = json.loads(results.read_text(encoding="utf-8"))["eval"]
    return {task_id: (rows[0]["base_status"], rows[0]["plus_status"]) for task_id, rows in evaluated.items()}
