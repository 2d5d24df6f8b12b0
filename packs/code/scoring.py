"""Run evalplus's checker on solutions, inside the sandbox, and read back its verdicts.

One sandbox run checks a batch of samples with ``driver.py`` (one interpreter start and one
evalplus import per batch; every check still runs in its own killable process, as evalplus does
it). Batches run side by side on a thread pool. The wall clock given to the sandbox is the sum of
evalplus's own per-check time bounds plus a margin, so it only fires if the driver itself hangs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.packs.code import data as code_data
from bench.sandbox import run_python

DRIVER = Path(__file__).with_name("driver.py")
# evalplus's evaluator defaults (evalplus.config), spelled out because they set the time limits.
MIN_TIME_LIMIT = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
EVALPLUS_TASK_TIMEOUT = 60.0  # untrusted_check's cap on one check's summed limits
MEMORY_MB = 4096  # evalplus's own default address-space cap for the checked code
SANDBOX_MARGIN_S = 20.0  # interpreter start, evalplus import, the first payload read


@dataclass(frozen=True)
class Sample:
    """One program to test against one task. ``oracle`` names a corrected oracle, if any."""

    task_id: str
    solution: str
    oracle: str | None = None


@dataclass(frozen=True)
class Verdict:
    """evalplus's statuses (``pass``/``fail``/``timeout``) for one sample, or why there are none.

    ``corrected`` holds the statuses under the corrected oracle when the sample asked for one.
    """

    base: str | None
    plus: str | None
    corrected: dict[str, str] | None
    error: str | None
    backend: str
    wall_s: float


def check_bound_s(times: Sequence[float], factor: float) -> float:
    """The longest evalplus lets one untrusted_check run (its own formula, plus its join wait)."""
    limits = sum(max(MIN_TIME_LIMIT, factor * t) for t in times)
    return min(EVALPLUS_TASK_TIMEOUT, limits) + 1 + 1 + 0.3


def sample_bound_s(sample: Sample, factor: float) -> float:
    times = code_data.reference_times(sample.task_id)
    once = check_bound_s(times["base"], factor) + check_bound_s(times["plus"], factor)
    return once * (2 if sample.oracle else 1)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def check(
    samples: Sequence[Sample],
    *,
    workers: int | None = None,
    batch_size: int = 8,
    time_limit_factor: float = GT_TIME_LIMIT_FACTOR,
) -> list[Verdict]:
    """evalplus verdicts for every sample, in order.

    Args:
        samples: the programs and their tasks.
        workers: sandboxes run side by side (default: the CPU count).
        batch_size: samples checked per sandbox start.
        time_limit_factor: evalplus's per-input limit is this times the ground-truth run time
            (at least 1 s); 4.0 is evalplus's default and what its own evaluator uses.
    """
    if not samples:
        return []
    paths = {sample.task_id: code_data.payload_path(sample.task_id) for sample in samples}
    batches = [list(samples[start : start + batch_size]) for start in range(0, len(samples), batch_size)]
    pool_size = min(len(batches), workers or default_workers())
    if pool_size == 1:
        results = [_run_batch(batch, paths, time_limit_factor) for batch in batches]
    else:
        with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="code-check") as pool:
            results = list(pool.map(lambda batch: _run_batch(batch, paths, time_limit_factor), batches))
    return [verdict for batch_result in results for verdict in batch_result]


def _run_batch(batch: list[Sample], paths: dict[str, Path], factor: float) -> list[Verdict]:
    files = {"driver.py": DRIVER.read_text(encoding="utf-8")}
    entries = []
    for index, sample in enumerate(batch):
        name = f"solution_{index}.py"
        files[name] = sample.solution
        entries.append({"solution": name, "payload": str(paths[sample.task_id]), "oracle": sample.oracle})
    files["manifest.json"] = json.dumps(
        {"samples": entries, "limits": {"min_time_limit": MIN_TIME_LIMIT, "gt_time_limit_factor": factor}}
    )
    timeout_s = SANDBOX_MARGIN_S + sum(sample_bound_s(sample, factor) for sample in batch)
    outcome = run_python(files, "driver.py", args=("manifest.json",), timeout_s=timeout_s, memory_mb=MEMORY_MB)
    share = outcome.wall_s / len(batch)
    failure = None
    parsed: list[dict[str, object]] = []
    if not outcome.ok:
        failure = f"sandboxed checker {outcome.describe()}: {outcome.stderr.strip()[-400:]}"
    else:
        try:
            parsed = json.loads(outcome.stdout)["results"]
        except (json.JSONDecodeError, KeyError, TypeError):
            failure = f"sandboxed checker printed no result: {outcome.stdout[-200:]!r} {outcome.stderr.strip()[-300:]}"
        if failure is None and len(parsed) != len(batch):
            failure = f"sandboxed checker returned {len(parsed)} results for {len(batch)} samples"
    if failure is not None:
        return [Verdict(None, None, None, failure, outcome.backend, share) for _ in batch]
    verdicts = []
    for raw in parsed:
        error = raw.get("error")
        corrected = raw.get("corrected")
        verdicts.append(
            Verdict(
                base=str(raw["base"]) if "base" in raw else None,
                plus=str(raw["plus"]) if "plus" in raw else None,
                corrected={str(k): str(v) for k, v in corrected.items()} if isinstance(corrected, dict) else None,
                error=str(error) if error else None,
                backend=outcome.backend,
                wall_s=share,
            )
        )
    return verdicts
