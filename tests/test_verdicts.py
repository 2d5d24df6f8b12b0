"""Honest verdicts: Pass only when every rule was checked, Inconclusive with what it would take,
knowledge collapse that fails a gate, specs that cover every pack, and reports that agree."""

from __future__ import annotations

import json
import subprocess
import sys
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from junitparser import JUnitXml, Skipped
from rundirs import write_run

from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import load_spec, parse_spec
from bench.knowledge import collapse, min_items_dead
from bench.packs.mmlu import MMLUPack
from bench.records import GroupResult, Interval, PackResult
from bench.report import gate_files
from bench.report import html as report
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.stats import proportion_interval
from bench.testing import record_for, transcript_for_answer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "baselines" / "default.yaml"
SMALL = {"packs": {"toolcall": {"allowed_drop": 0.05}, "mmlu": {"metric": "pass_rate", "allowed_drop": 0.05}}}


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A demo-sized pair: 15 items per pack, same answers."""
    root = tmp_path_factory.mktemp("demo")
    return write_run(root, "demo-base", n_per_pack=15), write_run(root, "demo-cand", n_per_pack=15)


def _spec_file(tmp_path: Path, data: dict[str, Any], name: str = "spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- verdicts and exit codes


def test_demo_sized_pair_is_inconclusive_with_what_it_would_take(demo_pair: tuple[Path, Path]) -> None:
    base, cand = demo_pair
    result = gate.judge(load_run(cand), load_run(base), parse_spec(SMALL))
    assert result.verdict == "Inconclusive" and result.exit_code == gate.EXIT_INCONCLUSIVE == 3
    assert not result.failures and len(result.underpowered) == 2
    # 0.05 needs k_min=6 changed items / 0.05 = 120 paired items at 95%.
    assert result.needed == ["toolcall: 120 paired items in the pack (has 15)", "mmlu: 120 paired items in the pack (has 15)"]
    assert result.line.startswith("Inconclusive: no rule failed, but 2 of 2 rules could not be checked")
    assert result.line.endswith("to check them: " + "; ".join(result.needed))


def test_a_floor_the_interval_straddles_is_not_shown_to_hold(demo_pair: tuple[Path, Path]) -> None:
    base, cand = demo_pair
    run = load_run(cand)
    mean = run.results.packs["toolcall"].score
    assert mean.mean is not None and mean.low is not None and mean.low < 0.7 < mean.mean
    result = gate.judge(run, load_run(base), parse_spec({"packs": {"toolcall": {"floor": 0.7}, "mmlu": {"allowed_drop": 0.9}}}))
    floor = result.rules[0]
    assert floor.kind == "floor" and floor.status == "underpowered" and floor.items_needed is not None
    assert result.verdict == "Inconclusive"
    assert f"toolcall: about {floor.items_needed} items to show score above its floor 0.7" in result.needed


def test_fully_powered_pair_passes(tmp_path: Path) -> None:
    base = write_run(tmp_path, "big-base", n_per_pack=600)
    cand = write_run(tmp_path, "big-cand", n_per_pack=600)
    result = gate.judge(load_run(cand), load_run(base), load_spec(DEFAULT_SPEC), str(DEFAULT_SPEC))
    assert result.verdict == "Pass" and result.exit_code == 0, result.line
    assert all(rule.status == "pass" for rule in result.rules) and not result.needed
    assert result.line.startswith(f"Pass: all {len(result.rules)} rules shown to hold")


def test_exit_codes_through_the_cli(demo_pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, cand = demo_pair
    inconclusive = bench("gate", cand, "-b", base, "--spec", _spec_file(tmp_path, SMALL))
    assert inconclusive.returncode == 3 and inconclusive.stdout.startswith("Inconclusive: "), inconclusive.stderr
    as_pass = bench("gate", cand, "-b", base, "--spec", _spec_file(tmp_path, {**SMALL, "on_underpowered": "pass"}, "p.json"))
    assert as_pass.returncode == 0 and as_pass.stdout.startswith("Inconclusive: ")
    assert "(counted as a pass: on_underpowered: pass)" in as_pass.stdout
    as_fail = bench("gate", cand, "-b", base, "--spec", _spec_file(tmp_path, {**SMALL, "on_underpowered": "fail"}, "f.json"))
    assert as_fail.returncode == 1 and as_fail.stdout.startswith("FailToolcall: ")
    loose = {"packs": {"toolcall": {"allowed_drop": 0.5}, "mmlu": {"metric": "pass_rate", "allowed_drop": 0.5}}}
    passed = bench("gate", cand, "-b", base, "--spec", _spec_file(tmp_path, loose, "l.json"))
    assert passed.returncode == 0 and passed.stdout.startswith("Pass: all 2 rules shown to hold")
    help_text = bench("gate", "--help").stdout
    assert "3 Inconclusive" in " ".join(help_text.split())


def test_markdown_junit_and_html_say_the_same_words(demo_pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, cand = demo_pair
    result = gate.judge(load_run(cand), load_run(base), parse_spec(SMALL))
    markdown = gate_files.render_markdown(result)
    junit_path = tmp_path / "gate.xml"
    junit_path.write_text(gate_files.render_junit(result), encoding="utf-8")
    page = report.render_report([load_run(base), load_run(cand)], gate=result)

    assert markdown.startswith("### bench gate: **Inconclusive**")
    assert result.line in markdown.replace("\\", "")  # the md filter escapes Markdown punctuation only
    suite = next(iter(JUnitXml.fromfile(str(junit_path))))
    properties = {(p.name, p.value) for p in suite.properties()}
    assert ("verdict", "Inconclusive") in properties and ("headline", result.line) in properties
    assert {value for name, value in properties if name == "needed"} == set(result.needed)
    assert all(any(isinstance(r, Skipped) for r in case.result) for case in suite)
    assert 'class="banner inconclusive"' in page
    assert result.line in unescape(page)
    for need in result.needed:
        assert f"- {need}" in markdown and need in unescape(page)


# --- gate specs are total


def test_spec_rule_for_a_pack_not_in_the_run_warns_and_a_pack_without_rule_is_ungated(demo_pair: tuple[Path, Path]) -> None:
    base, cand = demo_pair
    spec = {"packs": {"toolcall": {"allowed_drop": 0.5}, "bugfind": {"allowed_drop": 0.05}}}
    result = gate.judge(load_run(cand), load_run(base), parse_spec(spec))
    assert result.verdict == "Pass" and result.ungated == ["mmlu"]
    assert "the spec has rules for packs not in either run, not checked: bugfind" in result.warnings
    assert any(w.startswith("ungated: no rule of the spec judges mmlu") for w in result.warnings)
    assert result.line.endswith("; ungated (no rule, not judged): mmlu")
    strict = gate.judge(load_run(cand), load_run(base), parse_spec({**spec, "strict": True}))
    assert strict.verdict == "Invalid" and strict.exit_code == 2
    assert any("'bugfind' is not in the candidate run" in r for r in strict.invalid_reasons)
    assert any("no rule in the strict spec: mmlu" in r for r in strict.invalid_reasons)
    with_defaults = gate.judge(load_run(cand), load_run(base), parse_spec({**spec, "defaults": {"allowed_drop": 0.5}}))
    assert with_defaults.ungated == []


# --- knowledge collapse


def _mmlu_run(root: Path, run_id: str, per_category: int, dead: str | None) -> Path:
    """A run of the real MMLU pack: right answers everywhere except ``dead``, which gets every item wrong."""
    pack = MMLUPack()
    by_category: dict[str, list[Any]] = {}
    for item in pack.items("full"):
        chosen = by_category.setdefault(item.data["category"], [])
        if len(chosen) < per_category:
            chosen.append(item)
    records = []
    for items in by_category.values():
        for item in items:
            answer = item.wrong[0] if item.data["category"] == dead else item.reference
            assert answer is not None
            records.append(record_for(pack, item, transcript_for_answer(answer)))
    template = write_run(root, run_id, packs=("mmlu",), n_per_pack=1)  # manifest and store layout
    store = RunStore.open(template)
    store.rewrite_items(records)
    store.write_results(build_results(run_id, {"mmlu": pack}, records, {"mmlu": len(records)}))
    manifest = store.read_manifest()
    manifest.packs[0].items = len(records)
    store.write_manifest(manifest)
    return template


def test_min_items_to_call_a_category_dead() -> None:
    need = min_items_dead(0.25, 0.95)
    assert need == 12
    assert (proportion_interval(0, need, 0.95).high or 1) < 0.25 <= (proportion_interval(0, need - 1, 0.95).high or 0)


def test_planted_dead_category_fails_the_gate(tmp_path: Path) -> None:
    base = _mmlu_run(tmp_path, "mmlu-base", per_category=12, dead=None)
    cand = _mmlu_run(tmp_path, "mmlu-dead", per_category=12, dead="humanities")
    results = load_run(cand).results.packs["mmlu"]
    assert results.extra["dead_categories"] == ["humanities"] and results.extra["chance"] == 0.25
    spec = {"packs": {"mmlu": {"metric": "pass_rate", "allowed_drop": 0.5, "dead_categories": "fail"}}}
    result = gate.judge(load_run(cand), load_run(base), parse_spec(spec))
    assert result.verdict == "FailKnowledge" and result.exit_code == 1
    rule = next(rule for rule in result.rules if rule.kind == "collapse")
    assert rule.id == "mmlu.dead_categories.collapse" and rule.counts_as_failure
    assert "dead categories (no right answer, n >= 12): humanities" in rule.message
    # Without the rule, the gate still says it.
    warned = gate.judge(load_run(cand), load_run(base), parse_spec({"packs": {"mmlu": {"allowed_drop": 0.5}}}))
    assert any("dead categories" in warning for warning in warned.warnings)
    notes = report.collapse_notes([load_run(cand)], ["mmlu-dead"])
    assert notes == ["mmlu-dead: mmlu dead categories (no right answer, n >= 12): humanities"]


def test_four_items_per_category_cannot_tell(tmp_path: Path) -> None:
    base = _mmlu_run(tmp_path, "q-base", per_category=4, dead=None)
    cand = _mmlu_run(tmp_path, "q-dead", per_category=4, dead="humanities")
    extra = load_run(cand).results.packs["mmlu"].extra
    assert extra["dead_categories"] == [] and extra["cannot_tell_categories"] == ["humanities"]
    spec = {"packs": {"mmlu": {"metric": "pass_rate", "allowed_drop": 0.9, "dead_categories": "fail"}}}
    result = gate.judge(load_run(cand), load_run(base), parse_spec(spec))
    rule = next(rule for rule in result.rules if rule.kind == "collapse")
    assert rule.status == "underpowered" and rule.items_needed == 12
    assert "cannot tell whether dead" in rule.message and "humanities" in rule.message
    assert result.verdict == "Inconclusive"
    assert "mmlu: 12 items per category to tell a dead category" in result.line


def test_a_pack_below_chance_is_called_out() -> None:
    rate = proportion_interval(9, 96, 0.95)  # 9.4%, the post-fine-tune model's MMLU
    groups = {"stem": GroupResult(score=rate, pass_rate=rate)}
    result = PackResult(name="mmlu", version="1", n=96, score=rate, pass_rate=rate,
                        breakdowns={"category": groups}, extra={"chance": 0.25, "collapse_breakdown": "category"})
    found = collapse(result, 0.95)
    assert found is not None and found.collapsed
    assert found.pack_below_chance is not None and found.below_chance == ["stem"]
    assert found.lines()[0].startswith("mmlu below chance: 0.094")
    assert collapse(result.model_copy(update={"extra": {}}), 0.95) is None
    unsure = Interval(mean=0.0, n=3, low=0.0, high=0.56)
    assert not collapse(result.model_copy(update={"pass_rate": unsure, "breakdowns": {}}), 0.95).collapsed  # type: ignore[union-attr]


# --- nothing moved


def test_report_marks_a_pack_where_nothing_moved(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "m-base", n_per_pack=40))
    same = load_run(write_run(tmp_path, "m-same", n_per_pack=40))
    moved = load_run(write_run(tmp_path, "m-moved", n_per_pack=40, regress={"toolcall": 0.3}))
    assert report.movement(base, same, "toolcall").startswith("nothing moved: identical answers and scores on all 40")
    assert report.movement(base, moved, "toolcall").split(" of ")[1].startswith("40 answers differ")
    assert report.movement(base, moved, "mmlu").startswith("nothing moved")
    table, classes = report.pack_table([base, same, moved], ["m-base", "m-same", "m-moved"])
    assert table.loc[("toolcall", "answers"), "Δ m-same"].startswith("nothing moved")
    assert classes.loc[("toolcall", "answers"), "Δ m-same"] == "unmoved"
    assert not table.loc[("toolcall", "answers"), "Δ m-moved"].startswith("nothing moved")


def test_scores_that_merely_agree_are_told_apart(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "a-base", n_per_pack=20))
    other = write_run(tmp_path, "a-swap", n_per_pack=20)
    # Swap two toolcall answers of equal score: the pack's scores agree, its answers do not.
    store = RunStore.open(other)
    records = store.read_items()
    toolcall = [r for r in records if r.pack == "toolcall" and r.transcript.final_content and r.score and r.score.value == 1.0]
    first, second = toolcall[0], toolcall[1]
    first.transcript, second.transcript = second.transcript, first.transcript
    store.rewrite_items(records)
    store.write_results(store.read_results())  # results again describe the items beside them
    text = report.movement(base, load_run(other), "toolcall")
    assert text.startswith("scores agree, but 2 of 20 answers differ"), text


def test_a_forced_tool_call_tells_a_dropping_server_from_a_weak_model() -> None:
    from bench.serve.preflight import PreflightOptions, forced_tool_verdict
    from bench.transcript import Response, ToolCall

    options = PreflightOptions(reasoning_parser=None, tool_call_parser="hermes")
    auto = Response(content="It is sunny, I think.", finish_reason="stop")
    called = forced_tool_verdict(auto, Response(tool_calls=[ToolCall(id="1", name="get_weather", arguments='{"city": "Paris"}')],
                                                finish_reason="tool_calls"), options)
    assert called.ok and "a model choice" in called.detail
    # Prose under a forced tool_choice, finished or cut off: the server ignored the tools.
    for forced in (Response(content="Paris is sunny today.", finish_reason="stop"),
                   Response(content="Paris, the City of Light, the capital of", finish_reason="length")):
        prose = forced_tool_verdict(auto, forced, options)
        assert not prose.ok and prose.detail.startswith("the server ignores tools")
    # A weak model that starts a call it cannot finish: the tools reached it, so the server is not to blame.
    for forced in (Response(content='<tool_call>\n{"name": "get_weather", "arguments": "1.0.0.0.0', finish_reason="length"),
                   Response(content='{"location": "Par', finish_reason="length")):
        verdict = forced_tool_verdict(auto, forced, options)
        assert verdict.ok and "not verifiable on this server" in verdict.detail and "length" in verdict.detail
