"""bench gate on stored runs: verdicts, exit codes, warnings, spec errors and the CI outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from junitparser import Error, Failure, JUnitXml
from rundirs import write_run

from bench.compare import gate
from bench.compare.baselines import resolve_run, save_baseline
from bench.compare.rundata import load_run
from bench.compare.spec import load_spec, parse_spec
from bench.errors import UserError
from bench.report import gate_files

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "baselines" / "default.yaml"
STRICT_SPEC = REPO / "baselines" / "strict.yaml"
N = 200
# Allowances the N-item fixture runs have the power to check, for the packs those runs hold.
POWERED = {"packs": {"toolcall": {"allowed_drop": 0.2}, "mmlu": {"metric": "pass_rate", "allowed_drop": 0.2}}}


@pytest.fixture(scope="module")
def powered_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("specs") / "powered.json"
    path.write_text(json.dumps(POWERED), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "base": write_run(root, "base", n_per_pack=N),
        "same": write_run(root, "same", n_per_pack=N),
        "toolcall_regressed": write_run(root, "toolcall-regressed", n_per_pack=N, regress={"toolcall": 0.4}),
        "both_regressed": write_run(root, "both-regressed", n_per_pack=N, regress={"toolcall": 0.4, "mmlu": 0.4}),
        "leaked": write_run(root, "leaked", n_per_pack=N, leaked_items=3),
        "template": write_run(root, "template", n_per_pack=N, template_sha="f" * 64),
        "pack_version": write_run(root, "pack-version", n_per_pack=N, pack_versions={"toolcall": "2"}),
        "incomplete": write_run(root, "incomplete", n_per_pack=N, drop_items={"mmlu": 5}),
        "preflight": write_run(root, "preflight", n_per_pack=N, preflight_ok=False),
        "slight": write_run(root, "slight", n_per_pack=N, regress={"toolcall": 0.06}),
    }


def evaluate(runs: dict[str, Path], candidate: str, spec: Path | dict[str, Any] = DEFAULT_SPEC, baseline: str = "base") -> gate.GateResult:
    gate_spec = load_spec(spec) if isinstance(spec, Path) else parse_spec(spec)
    return gate.judge(load_run(runs[candidate]), load_run(runs[baseline]), gate_spec, str(spec))


def bench(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a real process, so exit codes and stdout/stderr are what CI sees."""
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )  # fmt: skip


# --- verdicts through the CLI


def test_planted_toolcall_regression_fails_with_exit_1(runs: dict[str, Path], tmp_path: Path) -> None:
    junit = tmp_path / "gate.xml"
    proc = bench("gate", runs["toolcall_regressed"], "--baseline", runs["base"], "--spec", DEFAULT_SPEC, "--junit", junit)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("FailToolcall: toolcall.score.drop:")


def test_identical_candidate_passes_with_exit_0(runs: dict[str, Path], powered_spec: Path) -> None:
    proc = bench("gate", runs["same"], "--baseline", runs["base"], "--spec", powered_spec)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Pass: all 2 rules shown to hold")
    assert "WARNING" not in proc.stderr


def test_identical_candidate_under_small_allowances_is_inconclusive_with_exit_3(runs: dict[str, Path]) -> None:
    proc = bench("gate", runs["same"], "--baseline", runs["base"], "--spec", DEFAULT_SPEC)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("Inconclusive: no rule failed, but ") and "underpowered" in proc.stdout
    assert "mmlu: 300 paired items in the pack (has 200)" in proc.stdout


def test_leaked_markers_make_the_run_invalid_with_exit_2(runs: dict[str, Path]) -> None:
    proc = bench("gate", runs["leaked"], "--baseline", runs["base"], "--spec", DEFAULT_SPEC)
    assert proc.returncode == 2
    assert proc.stdout.startswith("Invalid:")
    assert "leaked" in proc.stdout


def test_chat_template_difference_is_warned_loudly(runs: dict[str, Path], powered_spec: Path) -> None:
    proc = bench("gate", runs["template"], "--baseline", runs["base"], "--spec", powered_spec)
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == 1
    assert "chat template sha256 differs" in warnings[0] and "f" * 64 in warnings[0]


def test_spec_typo_is_one_clear_line_with_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("packs:\n  toolcall:\n    alowed_drop: 0.05\n", encoding="utf-8")
    proc = bench("gate", runs["same"], "--baseline", runs["base"], "--spec", spec)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {spec}: unknown key 'alowed_drop' at packs.toolcall; did you mean 'allowed_drop'?"
    ]


def test_unknown_baseline_is_one_line_with_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = bench("gate", runs["same"], "--baseline", "no-such-baseline", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no-such-baseline is neither a run directory nor a baseline" in proc.stderr


def test_outputs_junit_markdown_json(runs: dict[str, Path], tmp_path: Path) -> None:
    junit, markdown, as_json = tmp_path / "g.xml", tmp_path / "g.md", tmp_path / "g.json"
    proc = bench(
        "gate", runs["both_regressed"], "-b", runs["base"], "--spec", DEFAULT_SPEC,
        "--junit", junit, "--markdown", markdown, "--json", as_json,
    )  # fmt: skip
    assert proc.returncode == 1
    result = gate.load_gate_result(as_json)
    assert result.verdict == "FailToolcall"

    xml = JUnitXml.fromfile(str(junit))
    cases = [case for suite in xml for case in suite]
    assert [case.name for case in cases] == [rule.id for rule in result.rules]
    failed = {case.name for case in cases if any(isinstance(r, Failure) for r in case.result)}
    assert failed == {rule.id for rule in result.rules if rule.counts_as_failure}
    assert "mmlu.pass_rate.drop" in failed and "toolcall.score.drop" in failed
    failure_types = {r.type for case in cases for r in case.result if isinstance(r, Failure)}
    assert failure_types == {"FailToolcall", "FailKnowledge"}

    text = markdown.read_text(encoding="utf-8")
    assert text.startswith("### bench gate: **FailToolcall**")
    assert sum(1 for line in text.splitlines() if line.startswith("| `")) == len(result.rules)


def test_junit_for_an_invalid_run_marks_every_case_as_an_error(runs: dict[str, Path], tmp_path: Path) -> None:
    result = evaluate(runs, "leaked")
    path = tmp_path / "invalid.xml"
    gate_files.write_outputs(result, junit=path)
    cases = [case for suite in JUnitXml.fromfile(str(path)) for case in suite]
    assert len(cases) == len(result.rules) > 0
    assert all(any(isinstance(r, Error) for r in case.result) for case in cases)


# --- rules and verdict mapping


def test_every_failing_rule_is_listed_headline_by_spec_order(runs: dict[str, Path]) -> None:
    result = evaluate(runs, "both_regressed")
    assert result.verdict == "FailToolcall"  # toolcall comes before mmlu in the spec
    assert result.failing_verdicts == ["FailToolcall", "FailKnowledge"]
    assert "also failing:" in result.line and "mmlu.pass_rate.drop [FailKnowledge]" in result.line
    spec = {"packs": {"mmlu": {"metric": "pass_rate", "allowed_drop": 0.02}, "toolcall": {"allowed_drop": 0.03}}}
    assert evaluate(runs, "both_regressed", spec).verdict == "FailKnowledge"


def test_verdict_mapping_can_be_overridden(runs: dict[str, Path]) -> None:
    spec = {"verdicts": {"toolcall": "FailTools"}, "packs": {"toolcall": {"allowed_drop": 0.03}}}
    assert evaluate(runs, "toolcall_regressed", spec).verdict == "FailTools"


def test_code_pack_maps_to_fail_code(tmp_path: Path) -> None:
    base = write_run(tmp_path, "b", packs=("code",), n_per_pack=N)
    cand = write_run(tmp_path, "c", packs=("code",), n_per_pack=N, regress={"code": 0.5})
    result = gate.judge(load_run(cand), load_run(base), load_spec(DEFAULT_SPEC))
    assert result.verdict == "FailCode" and result.exit_code == 1


def test_point_and_confident_decisions_differ_on_a_small_drop(runs: dict[str, Path]) -> None:
    point = evaluate(runs, "slight", {"decision": "point", "packs": {"toolcall": {"allowed_drop": 0.03}}})
    confident = evaluate(runs, "slight", {"decision": "confident", "packs": {"toolcall": {"allowed_drop": 0.03}}})
    rule = point.rules[0]
    assert rule.value is not None and rule.value > 0.03  # measured drop past the allowance
    assert rule.high is not None and rule.high > -0.03  # but the interval reaches inside it
    assert point.verdict == "FailToolcall"
    assert confident.verdict == "Inconclusive" and not confident.failures  # no failure, but 0.03 is below what 200 items see


def test_floor_rule(runs: dict[str, Path]) -> None:
    spec = {"packs": {"toolcall": {"floor": 0.7}}}
    assert evaluate(runs, "same", spec).verdict == "Pass"
    result = evaluate(runs, "toolcall_regressed", spec)
    assert result.verdict == "FailToolcall"
    assert result.rules[0].kind == "floor" and "below the floor 0.700" in result.rules[0].message


def test_small_pack_is_underpowered_not_passed(tmp_path: Path) -> None:
    base = write_run(tmp_path, "b", n_per_pack=20)
    cand = write_run(tmp_path, "c", n_per_pack=20)
    spec = {"packs": {"toolcall": {"allowed_drop": 0.05}}}
    result = gate.judge(load_run(cand), load_run(base), parse_spec(spec))
    assert result.verdict == "Inconclusive" and result.exit_code == 3
    assert result.rules[0].status == "underpowered"
    assert result.rules[0].items_needed == 120 and result.needed == ["toolcall: 120 paired items in the pack (has 20)"]
    assert result.rules[0].comparison is not None and result.rules[0].comparison.min_detectable_drop == pytest.approx(6 / 20)
    assert "underpowered" in result.line
    strict = gate.judge(load_run(cand), load_run(base), parse_spec({**spec, "on_underpowered": "fail"}))
    assert strict.verdict == "FailToolcall" and strict.exit_code == 1


def test_repeats_are_folded_before_pairing(tmp_path: Path) -> None:
    base = write_run(tmp_path, "b", n_per_pack=40, repeats=3, repeat_noise=0.2)
    cand = write_run(tmp_path, "c", n_per_pack=40, repeats=3, repeat_noise=0.2)
    result = gate.judge(load_run(cand), load_run(base), parse_spec({"packs": {"toolcall": {"allowed_drop": 0.05}}}))
    rule = result.rules[0]
    assert rule.comparison is not None and rule.comparison.n_paired == 40
    assert rule.candidate_repeat_spread is not None and rule.candidate_repeat_spread > 0


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [("incomplete", "5 items missing"), ("preflight", "preflight"), ("leaked", "leaked")],
)
def test_untrustworthy_runs_are_invalid(runs: dict[str, Path], candidate: str, reason: str) -> None:
    result = evaluate(runs, candidate)
    assert result.verdict == "Invalid" and result.exit_code == 2
    assert any(reason in line for line in result.invalid_reasons)


def test_invalid_baseline_is_invalid_too(runs: dict[str, Path]) -> None:
    result = evaluate(runs, "same", baseline="leaked")
    assert result.verdict == "Invalid"
    assert result.invalid_reasons[0].startswith("baseline run leaked is invalid")


def test_pack_version_difference_is_warned(runs: dict[str, Path]) -> None:
    result = evaluate(runs, "pack_version")
    assert any(w.startswith("toolcall version differs: baseline 1 vs candidate 2") for w in result.warnings)


def test_spec_naming_an_unknown_subdimension_is_invalid_with_a_hint(runs: dict[str, Path]) -> None:
    spec = {"packs": {"toolcall": {"subdimensions": {"restrain": {"allowed_drop": 0.1}}}}}
    result = evaluate(runs, "same", spec)
    assert result.verdict == "Invalid"
    assert "did you mean 'restraint'?" in result.invalid_reasons[0]


def test_spec_with_no_rule_for_the_run_is_a_user_error(runs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="defines no rule"):
        evaluate(runs, "same", {"packs": {"code": {"allowed_drop": 0.1}}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"decison": "point"}, "unknown key 'decison' at top level; did you mean 'decision'?"),
        ({"packs": {"mmlu": {"subdimensions": {"stem": {"flor": 0.5}}}}}, "unknown key 'flor' at packs.mmlu.subdimensions.stem; did you mean 'floor'?"),
        ({"decision": "maybe"}, "decision: 'maybe' is not one of ['point', 'confident']"),
        ({"packs": {"toolcall": {"allowed_drop": 1.5}}}, "packs.toolcall.allowed_drop: 1.5 is greater than the maximum of 1.0"),
        ({"verdicts": {"toolcall": "Broken"}}, "verdicts.toolcall: 'Broken' is not a verdict name"),
    ],
)
def test_spec_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_spec(data, "spec.yaml")
    assert str(caught.value).startswith(f"spec.yaml: {message}")
    assert "\n" not in str(caught.value)


def test_json_specs_load_like_yaml(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"decision": "point", "packs": {"toolcall": {"allowed_drop": 0.1}}}), encoding="utf-8")
    assert load_spec(path).decision == "point"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_spec(path)


def test_bundled_specs_are_valid() -> None:
    assert load_spec(DEFAULT_SPEC).decision == "confident"
    assert load_spec(STRICT_SPEC).on_underpowered == "fail"


# --- baselines


def test_baseline_save_and_gate_by_name(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = bench("baseline", "save", runs["base"], "main-v1", "--dir", tmp_path / "baselines")
    assert proc.returncode == 0, proc.stderr
    stored = tmp_path / "baselines" / "main-v1"
    assert sorted(p.name for p in stored.iterdir()) == ["items.jsonl", "manifest.json", "results.json"]
    assert resolve_run("main-v1", baselines_dir=tmp_path / "baselines") == stored
    proc = bench("gate", runs["toolcall_regressed"], "-b", "main-v1", "--baselines-dir", tmp_path / "baselines", "--spec", DEFAULT_SPEC)
    assert proc.returncode == 1 and proc.stdout.startswith("FailToolcall")
    with pytest.raises(UserError, match="already exists"):
        save_baseline(runs["base"], "main-v1", baselines_dir=tmp_path / "baselines")


def test_baseline_keeps_the_runs_pruning_record(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "pruned-run"
    shutil.copytree(runs["base"], run)
    (run / "pruning.json").write_text('{"criterion": "reap"}', encoding="utf-8")
    stored = save_baseline(run, "pruned", baselines_dir=tmp_path / "baselines")
    assert (stored / "pruning.json").read_text(encoding="utf-8") == '{"criterion": "reap"}'
    assert sorted(p.name for p in stored.iterdir()) == ["items.jsonl", "manifest.json", "pruning.json", "results.json"]

def test_subdimension_lost_to_truncation_is_warned_not_skipped(runs: dict[str, Path], tmp_path: Path) -> None:
    cand = write_run(tmp_path, "cut", n_per_pack=N, truncated_subdimension={"toolcall": "restraint"})
    result = gate.judge(load_run(cand), load_run(runs["base"]), load_spec(DEFAULT_SPEC))
    assert "toolcall.restraint.drop" not in {rule.id for rule in result.rules}
    assert any(w.startswith("toolcall/restraint: the baseline scored 40 items, the candidate none") for w in result.warnings)
    # The truncated replies count as zeros in the pack score, so the overall drop is still judged.
    assert result.verdict == "FailToolcall"
    # ... and the gate names the cut-off rate difference as a difference in what was measured.
    cut = [w for w in result.warnings if w.startswith("toolcall: replies cut off at max_tokens")]
    assert len(cut) == 1 and "baseline 0% vs candidate " in cut[0] and "not only in skill" in cut[0]
    assert not any(w.startswith("mmlu: replies cut off") for w in result.warnings)


def test_subdimension_never_asked_is_warned_as_not_asked(runs: dict[str, Path], tmp_path: Path) -> None:
    # Two toolcall items measure only the first two subdimensions; nothing was cut off or failed.
    cand = write_run(tmp_path, "two-items", packs=("toolcall",), n_per_pack=2)
    result = gate.judge(load_run(cand), load_run(runs["base"]), parse_spec({"packs": {"toolcall": {
        "allowed_drop": 0.5, "each_subdimension": {"allowed_drop": 0.5}}}}))
    lost = [w for w in result.warnings if w.startswith("toolcall/restraint: the baseline scored")]
    assert lost and "it asked no item that measures it" in lost[0] and "truncated" not in lost[0]

def test_measure_never_on_the_same_item_is_underpowered_not_invalid(tmp_path: Path) -> None:
    # Ten toolcall items; restraint is measured on items 3 and 8. The baseline's reply to item 3 and
    # the candidate's to item 8 ran past max_tokens: both runs report restraint, on different items.
    base = load_run(write_run(tmp_path, "small-base", packs=("toolcall",), n_per_pack=10, truncated_items={"toolcall": [3]}))
    cand = load_run(write_run(tmp_path, "small-cand", packs=("toolcall",), n_per_pack=10, truncated_items={"toolcall": [8]}))
    assert set(base.folded("toolcall", "restraint").values) == {"toolcall-0008"}
    assert set(cand.folded("toolcall", "restraint").values) == {"toolcall-0003"}
    rules = {"version": 1, "packs": {"toolcall": {"allowed_drop": 0.5, "subdimensions": {"restraint": {"allowed_drop": 0.5}}}}}
    result = gate.judge(cand, base, parse_spec(rules))
    rule = next(rule for rule in result.rules if rule.id == "toolcall.restraint.drop")
    assert rule.status == "underpowered" and not rule.counts_as_failure
    assert "no item measured in both runs (1 only in the baseline, 1 only in the candidate)" in rule.message
    assert result.verdict != "Invalid" and not result.invalid_reasons
    strict = gate.judge(cand, base, parse_spec({**rules, "on_underpowered": "fail"}))
    assert next(rule for rule in strict.rules if rule.id == "toolcall.restraint.drop").counts_as_failure
