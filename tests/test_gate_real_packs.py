"""bench gate and bench report on run directories written by the real packs.

tests/test_gate.py checks the gate's logic on synthetic records; here every record comes from a
real pack asking its real items and scoring a stored reply with its real scorer (tests/packruns.py),
so a planted tool-call regression is whatever ``packs/toolcall`` makes of wrong arguments, and
the CLI is driven in a real process, as CI runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase
from packruns import Regression, RunSpec, planted_item_ids, write_pack_run

from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import load_spec
from bench.records import ItemRecord, Results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "baselines" / "default.yaml"
# Every toolcall item that has a stored wrong reply giving wrong argument values answers with it.
PRECISION = Regression(pack="toolcall", attacks="parameter_precision", fraction=1.0)
# The same, for one item only: a change in a single item.
ONE_ITEM = Regression(pack="toolcall", attacks="parameter_precision", fraction=0.01)
OTHER_TEMPLATE = "c" * 64
TOOLCALL_EACH = "    each_subdimension: {allowed_drop: 0.08}"  # only the toolcall block of default.yaml says 0.08


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pack-runs")
    candidate = "moe-reap50-fp8"
    return {
        "base": write_pack_run(root, "base", RunSpec(model="moe-bf16")),
        "same": write_pack_run(root, "same", RunSpec(model=candidate)),
        "regressed": write_pack_run(root, "regressed", RunSpec(model=candidate, regression=PRECISION)),
        "one_item": write_pack_run(root, "one-item", RunSpec(model=candidate, regression=ONE_ITEM)),
        "leaked": write_pack_run(root, "leaked", RunSpec(model=candidate, leaked={"mmlu": 2, "instructfollow": 1})),
        "template": write_pack_run(root, "template", RunSpec(model=candidate, chat_template_sha256=OTHER_TEMPLATE)),
    }


def typo_spec(path: Path) -> Path:
    """default.yaml with one key misspelt, as a person editing it might."""
    text = DEFAULT_SPEC.read_text(encoding="utf-8")
    assert TOOLCALL_EACH in text
    path.write_text(text.replace(TOOLCALL_EACH, TOOLCALL_EACH.replace("allowed_drop", "allowed_dorp")), encoding="utf-8")
    return path


CliRuns = dict[str, tuple[subprocess.CompletedProcess[str], Path]]


@pytest.fixture(scope="module")
def cli(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    """Every CLI call the tests read, run at once in real processes, as CI runs them.

    Each entry holds the finished process and the folder its --junit/--markdown/--json/--out files went to.
    """
    out = tmp_path_factory.mktemp("cli")
    spec = typo_spec(out / "typo.yaml")
    commands: dict[str, list[str | Path]] = {}
    for name in ("regressed", "same", "leaked", "template"):
        folder = out / name
        commands[name] = [
            "gate", runs[name], "--baseline", runs["base"], "--spec", DEFAULT_SPEC,
            "--junit", folder / "gate.xml", "--markdown", folder / "gate.md", "--json", folder / "gate.json",
        ]  # fmt: skip
    commands["typo"] = ["gate", runs["regressed"], "--baseline", runs["base"], "--spec", spec]
    commands["report"] = ["report", runs["base"], runs["regressed"], "--out", out / "report" / "report.html"]
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        done = dict(zip(commands, pool.map(lambda args: bench(*args), commands.values()), strict=True))
    return {name: (proc, out / name) for name, proc in done.items()}


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real CLI in a real process, so exit codes and stdout/stderr are what CI sees."""
    command = [sys.executable, "-m", "bench.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def results(run: Path) -> Results:
    return Results.model_validate_json((run / "results.json").read_text(encoding="utf-8"))


def records(run: Path) -> list[ItemRecord]:
    return [ItemRecord.model_validate_json(line) for line in (run / "items.jsonl").read_text(encoding="utf-8").splitlines()]


def expected_rule_ids(spec_path: Path, run: Results) -> list[str]:
    """The rules default.yaml spells out for this run: per pack its metric, then each subdimension."""
    spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    ids: list[str] = []
    for pack, rules in spec["packs"].items():
        if pack not in run.packs:
            continue
        ids.append(f"{pack}.{rules.get('metric', 'score')}.drop")
        if "each_subdimension" in rules:
            ids += [f"{pack}.{sub}.drop" for sub in run.packs[pack].subdimensions]
        if rules.get("dead_categories") == "fail":
            ids.append(f"{pack}.dead_categories.collapse")
    return ids


def warnings_of(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The WARNING lines, less the one every run gets from default.yaml for the packs it did not run."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("WARNING:")]
    return [line for line in lines if not line.startswith("WARNING: the spec has rules for packs not in either run")]


# --- the stored runs are what the packs make of the stored replies


def test_reference_replies_score_full_marks_on_every_real_pack(runs: dict[str, Path]) -> None:
    base = results(runs["base"])
    assert base.valid and base.complete
    assert set(base.packs) == {"toolcall", "dataextract", "instructfollow", "bugfind", "mmlu"}
    for name, pack in base.packs.items():
        assert pack.score.mean == 1.0 and pack.pass_rate.mean == 1.0, name
        assert pack.health.leaked_markers == 0 and pack.health.truncated == 0, name
    stored = records(runs["base"])
    assert all(r.error is None and r.score is not None and r.score.status == "scored" for r in stored)
    # Multi-step tool-call items went through the pack's own run_item: the mock results were sent back.
    two_step = [r for r in stored if r.pack == "toolcall" and len(r.transcript.exchanges) > 1]
    assert len(two_step) >= 8
    assert all(ex.request.messages[-1]["role"] == "tool" for r in two_step for ex in r.transcript.exchanges[1:])


def test_planted_regression_comes_from_the_toolcall_scorer(runs: dict[str, Path]) -> None:
    planted = set(planted_item_ids(PRECISION))
    assert len(planted) >= 30
    base = {r.item_id: r.score for r in records(runs["base"]) if r.pack == "toolcall"}
    cand = {r.item_id: r.score for r in records(runs["regressed"]) if r.pack == "toolcall"}
    for item_id, score in cand.items():
        assert score is not None and base[item_id] is not None
        if item_id in planted:
            assert not score.passed and score.subscores["parameter_precision"] < 1.0, item_id
            assert score.reason, item_id
        else:
            assert score == base[item_id], item_id
    regressed = results(runs["regressed"])
    assert regressed.valid
    precision = regressed.packs["toolcall"].subdimensions["parameter_precision"].mean
    assert precision is not None and precision < 0.8
    for name in ("dataextract", "instructfollow", "bugfind", "mmlu"):
        assert regressed.packs[name].score.mean == 1.0, name


# --- verdicts through the CLI


def junit_cases(path: Path) -> list[TestCase]:
    return [case for suite in JUnitXml.fromfile(str(path)) for case in suite]


def test_planted_toolcall_regression_fails_with_exit_1_and_one_junit_case_per_rule(
    runs: dict[str, Path], cli: CliRuns
) -> None:
    proc, out = cli["regressed"]
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("FailToolcall: toolcall.score.drop: toolcall score fell ")
    assert "toolcall.parameter_precision.drop [FailToolcall]" in lines[0]
    assert not warnings_of(proc)

    result = gate.load_gate_result(out / "gate.json")
    assert result.verdict == "FailToolcall" and result.failing_verdicts == ["FailToolcall"]
    failing = {rule.id for rule in result.failures}
    assert {"toolcall.score.drop", "toolcall.parameter_precision.drop"} <= failing
    assert all(rule.pack == "toolcall" for rule in result.failures)

    cases = junit_cases(out / "gate.xml")
    assert [case.name for case in cases] == expected_rule_ids(DEFAULT_SPEC, results(runs["regressed"]))
    assert [case.name for case in cases] == [rule.id for rule in result.rules]
    failed = {case.name for case in cases if any(isinstance(r, Failure) for r in case.result)}
    assert failed == failing
    assert {r.type for case in cases for r in case.result if isinstance(r, Failure)} == {"FailToolcall"}
    # The quick-tier packs held, but 16 MMLU items cannot show a 2-point drop: skipped, not passed.
    skipped = {case.name for case in cases if any(isinstance(r, Skipped) for r in case.result)}
    assert "mmlu.pass_rate.drop" in skipped and not skipped & failing

    assert (out / "gate.md").read_text(encoding="utf-8").startswith("### bench gate: **FailToolcall**")


def test_identical_candidate_on_quick_tiers_is_inconclusive_with_exit_3(runs: dict[str, Path], cli: CliRuns) -> None:
    proc, out = cli["same"]
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("Inconclusive: no rule failed, but ") and len(proc.stdout.strip().splitlines()) == 1
    assert "; to check them: " in proc.stdout and "mmlu: 300 paired items in the pack (has 16)" in proc.stdout
    assert not warnings_of(proc)
    cases = junit_cases(out / "gate.xml")
    assert [case.name for case in cases] == expected_rule_ids(DEFAULT_SPEC, results(runs["same"]))
    assert not any(isinstance(r, Failure) for case in cases for r in case.result)


def test_leaked_think_markers_make_the_run_invalid_with_exit_2(runs: dict[str, Path], cli: CliRuns) -> None:
    leaked = results(runs["leaked"])
    assert not leaked.valid and leaked.health.leaked_markers == 3
    assert leaked.packs["mmlu"].health.leaked_markers == 2
    flagged = [r for r in records(runs["leaked"]) if r.flags.leaked_markers]
    assert {r.pack for r in flagged} == {"mmlu", "instructfollow"}
    assert all("</think>" in r.transcript.final_content for r in flagged)

    proc, out = cli["leaked"]
    assert proc.returncode == 2
    assert proc.stdout.startswith("Invalid: candidate run leaked is invalid: 3 responses leaked reasoning")
    assert len(proc.stdout.strip().splitlines()) == 1
    cases = junit_cases(out / "gate.xml")
    assert [case.name for case in cases] == expected_rule_ids(DEFAULT_SPEC, leaked)
    assert all(any(isinstance(r, Error) for r in case.result) for case in cases)


def test_chat_template_difference_is_warned_about(runs: dict[str, Path], cli: CliRuns) -> None:
    proc, out = cli["template"]
    warnings = warnings_of(proc)
    assert len(warnings) == 1
    base_sha = json.loads((runs["base"] / "manifest.json").read_text(encoding="utf-8"))["server"]["chat_template_sha256"]
    assert "chat template sha256 differs" in warnings[0]
    assert base_sha in warnings[0] and OTHER_TEMPLATE in warnings[0]
    assert "chat template sha256" in (out / "gate.md").read_text(encoding="utf-8")
    # Same answers, so no rule fails (quick tiers leave some unchecked); the warning is what CI shows beside it.
    assert proc.returncode == 3 and proc.stdout.startswith("Inconclusive: ")


def test_spec_typo_is_one_clear_line_with_exit_2(cli: CliRuns) -> None:
    proc, out = cli["typo"]
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {out.parent / 'typo.yaml'}: unknown key 'allowed_dorp' at packs.toolcall.each_subdimension; "
        "did you mean 'allowed_drop'?"
    ]


def test_a_change_in_a_single_item_still_gets_a_verdict(runs: dict[str, Path]) -> None:
    """One wrongly answered item is the only nonzero paired difference of a graded measure.

    Flipping the sign of that one difference gives the same |sum|, so the exact sign-flip
    p-value is 1 (hand-computed: both of the two sign patterns are as extreme as the observed).
    """
    assert len(planted_item_ids(ONE_ITEM)) == 1
    result = gate.judge(load_run(runs["one_item"]), load_run(runs["base"]), load_spec(DEFAULT_SPEC), str(DEFAULT_SPEC))
    assert result.verdict in ("Pass", "Inconclusive", "FailToolcall")
    rule = next(rule for rule in result.rules if rule.id == "toolcall.score.drop")
    assert rule.comparison is not None and rule.comparison.changed_items == 1
    assert rule.comparison.test == "sign-flip-permutation" and rule.comparison.p_value == 1.0


# --- the report puts the flipped items first


class DrillDown(HTMLParser):
    """Collects the drill-down entries in page order: (category badge, "pack/item_id")."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[str, str]] = []
        self._in_summary = False
        self._badge: str | None = None
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "summary":
            self._in_summary, self._badge = True, None
        elif self._in_summary and tag == "span" and "badge" in classes:
            self._badge = next(c for c in classes if c != "badge")
        elif self._in_summary and tag == "code":
            self._in_code = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "summary":
            self._in_summary = False
        elif tag == "code":
            self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code and self._badge is not None:
            self.entries.append((self._badge, data.strip()))
            self._in_code = False


def test_report_lists_the_flipped_toolcall_items_first(runs: dict[str, Path], cli: CliRuns) -> None:
    proc, out = cli["report"]
    assert proc.returncode == 0, proc.stderr
    parser = DrillDown()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    # Flipped: passed in the baseline, failed in the candidate, read from the stored records.
    base_passed = {(r.pack, r.item_id) for r in records(runs["base"]) if r.score and r.score.passed}
    cand_failed = {(r.pack, r.item_id) for r in records(runs["regressed"]) if r.score and not r.score.passed}
    flipped = {f"{pack}/{item_id}" for pack, item_id in base_passed & cand_failed}
    assert flipped == {f"toolcall/{item_id}" for item_id in planted_item_ids(PRECISION)}
    assert len(parser.entries) == len(records(runs["base"]))  # fewer than --max-items: every item shown
    head = parser.entries[: len(flipped)]
    assert {entry for _, entry in head} == flipped
    assert {badge for badge, _ in head} == {"regressed"}
    assert all(badge != "regressed" for badge, _ in parser.entries[len(flipped) :])
