"""HumanEval+ as a chat pack, graded by evalplus inside the sandbox.

Each task's prompt (a signature and docstring) is sent with a short instruction asking for the
complete function in a python code block. The reply's code goes through evalplus's sanitizer,
then evalplus's own checker runs the base (original HumanEval) and plus (EvalPlus's extra)
inputs against evalplus's expected outputs, in the sandbox. The score is the HumanEval+ metric:
1 when the base and the plus tests all pass; the ``base`` subdimension is the base tests alone.

evalplus 0.3.1 grades every solution of HumanEval/32 as failing (see ``driver.py``). That task is
graded with the corrected oracle instead, and both verdicts are kept in the score's details and
counted in ``aggregate`` under ``known_evalplus_defect``; nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bench.errors import UserError
from bench.pack import Item, Pack, Sampling, Score, Tier, unscorable
from bench.packs.code import data as code_data
from bench.packs.code.extract import build_solution, certain_failure
from bench.packs.code.scoring import GT_TIME_LIMIT_FACTOR, Sample, Verdict, check
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

PASS = "pass"
# Task -> (corrected oracle, what is wrong), for the evalplus releases that carry the defect.
KNOWN_DEFECTS: dict[str, tuple[str, str]] = {
    "HumanEval/32": (
        "find_zero_residual",
        "evalplus 0.3.1's find_zero oracle never records a passed input, so it fails every solution "
        "(its canonical one too); graded instead by |poly(xs, x)| <= atol through the same checker",
    ),
}
DEFECTIVE_EVALPLUS = {"0.3.1"}
QUICK_IDS: tuple[str, ...] = tuple(
    f"HumanEval/{n}" for n in (0, 2, 4, 12, 22, 28, 32, 34, 48, 53, 60, 87, 101, 124, 152)
)
INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its "
    "signature and any imports it needs, in a single ```python code block."
)


def evalplus_version() -> str:
    from importlib.metadata import version

    return version("evalplus")


def defect_oracle(task_id: str) -> str | None:
    """The corrected oracle for a task the installed evalplus misgrades, else None."""
    if task_id in KNOWN_DEFECTS and evalplus_version() in DEFECTIVE_EVALPLUS:
        return KNOWN_DEFECTS[task_id][0]
    return None


def _fenced(code: str, before: str) -> str:
    return f"{before}\n\n```python\n{code.rstrip()}\n```\n"


def _item(problem: dict[str, Any]) -> Item:
    task_id = problem["task_id"]
    prompt = problem["prompt"]
    canonical = prompt + problem["canonical_solution"]
    broken = prompt.rstrip() + "\n    return None\n"  # the signature kept, the work replaced by a constant
    return Item(
        id=task_id,
        data={"task_id": task_id, "entry_point": problem["entry_point"], "prompt": prompt},
        tiers=["quick", "full"] if task_id in QUICK_IDS else ["full"],
        reference={"content": _fenced(canonical, "Here is the complete function:")},
        wrong=[{"content": _fenced(broken, "Here is the function:")}],
    )


class CodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int | None = Field(None, ge=1)  # sandboxed checks side by side (default: CPU count)
    time_limit_factor: float = Field(GT_TIME_LIMIT_FACTOR, gt=0)  # times each input's ground-truth run time


class CodePack(Pack):
    name = "code"
    version = "1"
    description = "HumanEval+ (164 tasks) through a chat prompt; evalplus's sanitizer and checker, sandboxed."
    subdimensions = ("base", "plus")
    # No breakdowns: HumanEval+ tasks come from one source with no shared grouping worth a table,
    # and base versus plus is already the pair of subdimensions.
    Options = CodeOptions
    default_sampling = Sampling(temperature=0.0, max_tokens=1024, thinking=False)

    def __init__(self, workers: int | None = None, time_limit_factor: float = GT_TIME_LIMIT_FACTOR) -> None:
        """
        Args:
            workers: sandboxed checks run side by side by :meth:`score_many` (default: CPU count).
            time_limit_factor: evalplus's per-input time limit is this times the input's
                ground-truth run time (at least 1 s). 4.0 is evalplus's own default; raise it only
                where the checks share the CPU with heavy work (a CPU-served model) and correct but
                slow-ish solutions (HumanEval/15, 83, 139) start failing on time.
        """
        if time_limit_factor <= 0:
            raise UserError(f"code time_limit_factor={time_limit_factor} must be positive (evalplus uses 4.0)")
        self.workers = workers
        self.time_limit_factor = time_limit_factor
        self._by_id: dict[str, Item] | None = None

    # -- items ---------------------------------------------------------------------------------

    def _items(self) -> dict[str, Item]:
        if self._by_id is None:
            self._by_id = {task_id: _item(problem) for task_id, problem in code_data.problems().items()}
        return self._by_id

    def items(self, tier: Tier = "full") -> list[Item]:
        by_id = self._items()
        if tier == "quick":
            return [by_id[task_id] for task_id in QUICK_IDS]
        return list(by_id.values())

    def item_by_id(self, item_id: str) -> Item | None:
        return self._items().get(item_id)

    def data_files(self) -> list[Path]:
        path = code_data.data_file()
        return [path] if path is not None else []

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{item.data['prompt'].strip()}\n```"}]

    # -- scoring -------------------------------------------------------------------------------

    def score(self, item: Item, transcript: Transcript) -> Score:
        return self.score_many([(item, transcript)])[0]

    def score_many(self, pairs: Sequence[tuple[Item, Transcript]]) -> list[Score]:
        """Scores for many items at once: the sandboxed checks run in batches, side by side.

        Same result as calling :meth:`score` on each pair; this is the fast path for rescoring
        a run or grading a samples file.
        """
        scores: list[Score | None] = [None] * len(pairs)
        pending: list[tuple[int, Item, Sample, str]] = []
        for index, (item, transcript) in enumerate(pairs):
            if (bad := unscorable(transcript)) is not None:
                scores[index] = bad
                continue
            built = build_solution(transcript.final_content, item.data["prompt"], item.data["entry_point"])
            if built is None:
                scores[index] = self._fail_unrun(item, "no code in the reply", None, None)
                continue
            solution, rule = built
            if (why := certain_failure(solution, item.data["entry_point"])) is not None:
                scores[index] = self._fail_unrun(item, why, rule, solution)
                continue
            pending.append((index, item, Sample(item.id, solution, defect_oracle(item.id)), rule))
        verdicts = check(
            [sample for _, _, sample, _ in pending], workers=self.workers, time_limit_factor=self.time_limit_factor
        )
        for (index, item, sample, rule), verdict in zip(pending, verdicts):
            scores[index] = self._judge(item, sample, rule, verdict)
        return [score for score in scores if score is not None]

    def _fail_unrun(self, item: Item, reason: str, rule: str | None, solution: str | None) -> Score:
        """A reply evalplus would fail without running any test (no code, no parse, no entry point)."""
        details: dict[str, Any] = {"base_status": "fail", "plus_status": "fail", "not_run": True}
        if solution is not None:
            details["solution"] = solution
        if defect_oracle(item.id) is not None:
            details["known_evalplus_defect"] = KNOWN_DEFECTS[item.id][1]
            details["evalplus_base_status"] = details["evalplus_plus_status"] = "fail"
        return Score(
            value=0.0, passed=False, subscores={"base": 0.0, "plus": 0.0}, reason=reason, extraction=rule, details=details
        )

    def _judge(self, item: Item, sample: Sample, rule: str, verdict: Verdict) -> Score:
        details: dict[str, Any] = {"solution": sample.solution, "sandbox": verdict.backend, "check_s": round(verdict.wall_s, 3)}
        if verdict.error is not None or verdict.base is None or verdict.plus is None:
            return Score(
                value=0.0,
                passed=False,
                status="error",
                extraction=rule,
                reason=f"checker failed: {verdict.error}",
                details=details,
            )
        base, plus = verdict.base, verdict.plus
        if sample.oracle is not None and verdict.corrected is not None:
            details["known_evalplus_defect"] = KNOWN_DEFECTS[item.id][1]
            details["evalplus_base_status"], details["evalplus_plus_status"] = base, plus
            base, plus = verdict.corrected["base"], verdict.corrected["plus"]
        details["base_status"], details["plus_status"] = base, plus
        base_ok = base == PASS
        plus_ok = base_ok and plus == PASS
        reason = "base and plus tests pass" if plus_ok else f"base: {base}, plus: {plus}"
        return Score(
            value=float(plus_ok),
            passed=plus_ok,
            subscores={"base": float(base_ok), "plus": float(plus_ok)},
            reason=reason,
            extraction=rule,
            details=details,
        )

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """How failures split, and the known-defect items counted apart.

        ``plus_pass_evalplus`` is the rate evalplus 0.3.1 itself would report (every known-defect
        item failing); the ``plus`` subdimension uses the corrected oracle. Records of failed
        requests are left out, as in the score.
        """
        n = raw_plus_passes = no_code = errors = 0
        statuses: dict[str, int] = {}
        defects: dict[str, dict[str, Any]] = {}
        for record in records:
            score = record.score
            if score is None or record.error is not None:
                continue
            details = score.details
            n += 1
            plus_ok = score.subscores.get("plus", 0.0) == 1.0
            errors += int(score.status == "error")
            no_code += int(bool(details.get("not_run")))
            if status := details.get("plus_status"):
                statuses[status] = statuses.get(status, 0) + 1
            if "known_evalplus_defect" in details:
                raw_ok = details.get("evalplus_base_status") == PASS and details.get("evalplus_plus_status") == PASS
                raw_plus_passes += int(raw_ok)
                entry = defects.setdefault(
                    record.item_id,
                    {"reason": details["known_evalplus_defect"], "n": 0, "plus_pass_corrected": 0, "plus_pass_evalplus": 0},
                )
                entry["n"] += 1
                entry["plus_pass_corrected"] += int(plus_ok)
                entry["plus_pass_evalplus"] += int(raw_ok)
            else:
                raw_plus_passes += int(plus_ok)
        return {
            "plus_pass_evalplus": raw_plus_passes / n if n else None,
            "plus_status_counts": dict(sorted(statuses.items())),
            "no_code": no_code,
            "errors": errors,
            "known_evalplus_defect": defects,
            "evalplus_version": evalplus_version(),
        }
