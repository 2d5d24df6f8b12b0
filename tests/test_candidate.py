"""bench candidate: plan validation, cache keys, step freshness, and the whole loop on real vLLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DATA_DIR, REPO, bench_cmd, vllm_python

from bench.candidate import Step, StepStore, load_plan, pareto_front, parse_plan
from bench.errors import UserError

PLANS = REPO / "baselines" / "plans"
needs_data = pytest.mark.skipif(not (DATA_DIR / "calibration").is_dir(), reason="no shared calibration samples")


def tiny_plan(**changes: Any) -> dict[str, Any]:
    """The tiny-smoke plan as data, with dotted-path changes such as ``{"evaluate.limit": 3}``."""
    plan = yaml.safe_load((PLANS / "tiny-smoke.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = plan
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return plan


def write_plan(folder: Path, plan: dict[str, Any], name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(plan))
    return path


# ---------------------------------------------------------------------------------------------
# Plan validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prune.ratio": [0.5]}, "unknown key 'ratio' at prune; did you mean 'ratios'?"),
        ({"prune.criterion": "reep"}, "prune.criterion: 'reep' is not one of reap, frequency, mean-gate, ean, random; did you mean 'reap'?"),
        ({"prune.criterion": ["reap", "freqency"]}, "prune.criterion.1: 'freqency' is not one of reap, frequency, mean-gate, ean, random; did you mean 'frequency'?"),
        ({"prune.criterion": []}, "prune.criterion: [] should be non-empty"),
        ({"prune.ratios": [1.5]}, "prune.ratios: 1.5 is not in [0, 1) (the share of experts removed)"),
        ({"prune.ratios": ["half"]}, "prune.ratios.0: 'half' is not of type 'number'"),
        ({"prune.mixes": []}, "prune.mixes: [] should be non-empty"),
        ({"evaluate.limt": 3}, "unknown key 'limt' at evaluate; did you mean 'limit'?"),
        ({"evaluate.limit": 0}, "evaluate.limit: 0 is less than the minimum of 1"),
        ({"evaluate.tier": "fast"}, "evaluate.tier: 'fast' is not one of quick, full"),
        ({"quantize": "yes"}, "quantize: 'yes' must be true/false or a mapping"),
        ({"quantize.experts": "fp16"}, "quantize.experts: 'fp16' is not one of auto, fp8, bf16; did you mean 'bf16'?"),
        ({"vllm.max_model_len": "big"}, "vllm.max_model_len: 'big' must be an integer or 'auto'"),
        ({"gate": 5}, "gate: 5 must be a string or a mapping"),
        ({"vlm": {}}, "unknown key 'vlm' at top level; did you mean 'vllm'?"),
    ],
)
def test_plan_typos_are_one_line_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_plan(tiny_plan(**change), "plan.yaml")
    assert str(caught.value) == f"plan.yaml: {message}"


def test_plan_needs_an_amount_of_pruning() -> None:
    plan = tiny_plan()
    del plan["prune"]["ratios"]
    with pytest.raises(UserError, match="prune: give ratios, keep or fit"):
        parse_plan(plan, "p")


def test_plan_files(tmp_path: Path) -> None:
    for path in sorted(PLANS.glob("*.yaml")):
        assert load_plan(path).prune.mixes, path  # every shipped example is valid
    with pytest.raises(UserError, match="not found"):
        load_plan(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("prune: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_plan(tmp_path / "broken.yaml")
    plan = parse_plan({"prune": {"keep": [4], "mixes": ["m"]}, "quantize": True})
    assert plan.quantize_spec is not None and plan.quantize_spec.experts == "auto"
    assert parse_plan({"prune": {"keep": [4], "mixes": ["m"]}, "quantize": False}).quantize_spec is None


def test_cli_typo_prints_one_line(tmp_path: Path, scripted_model: Path) -> None:
    plan = write_plan(tmp_path, tiny_plan(**{"evaluate.limt": 3}))
    result = subprocess.run([*bench_cmd(), "candidate", "--model", str(scripted_model), "--plan", str(plan),
                             "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {plan}: unknown key 'limt' at evaluate; did you mean 'limit'?"


# ---------------------------------------------------------------------------------------------
# Steps, freshness, Pareto


def test_pareto_front_keeps_what_nothing_beats() -> None:
    points = {"base": (100, 0.80), "a": (60, 0.80), "b": (40, 0.70), "c": (50, 0.60), "d": (40, 0.65)}
    # a beats base (smaller, same score); c is beaten by b (smaller and better); d by b (same size, better).
    assert pareto_front(points) == ["b", "a"]


def test_summary_markdown_and_exit_codes() -> None:
    from bench.candidate import Summary, exit_code
    from bench.candidate.summary import Row, Steps, render_markdown

    def summary(*rows: Row, failed: tuple[str, ...] = ()) -> Summary:
        base = Row(label="base", role="base", experts_total=8, experts_kept=8, precision="bf16", size_bytes=100,
                   scores={"smoke": 0.9}, mean_score=0.9)
        return Summary(name="t", plan="p.yaml", base="/m", out="/o", created_at="now", bench_version="0",
                       packs=["smoke"], gate_spec="default.yaml", rows=[base, *rows], pareto=["base"],
                       steps=Steps(ran=0, cached=0, resumed=0, failed=list(failed)))

    passing = Row(label="m-k4", role="candidate", experts_total=8, experts_kept=4, precision="bf16", size_bytes=50,
                  scores={"smoke": 0.9}, mean_score=0.9, verdict="Pass", verdict_line="Pass: 1 rules held",
                  origin="ratio 0.5")
    failing = passing.model_copy(update={"label": "m-k2", "verdict": "FailToolcall", "verdict_line": "FailToolcall: x|y"})
    broken = Row(label="m-k3", role="candidate", experts_total=8, experts_kept=3, precision="bf16",
                 error="vLLM exited with code 1; see server.log")
    assert exit_code(summary(passing, failing)) == 0
    assert exit_code(summary(failing)) == 1
    assert exit_code(summary(passing, broken, failed=("m-k3",))) == 2
    text = render_markdown(summary(passing, failing, broken, failed=("m-k3",)))
    assert "| m-k2 | 50 B | - | 4/8 | bf16 | 0.900 | 0.900 | FailToolcall |  |" in text
    assert "- `m-k2` (ratio 0.5): FailToolcall: x\\|y" in text  # a pipe in a verdict cannot break the table
    assert "| m-k3 | - | - | 3/8 | bf16 | - | - | error |  |" in text
    assert "- `m-k3`: stopped: vLLM exited with code 1; see server.log" in text
    assert "KL from base" not in text  # no divergence measured: no columns for it


def test_summary_table_shows_divergence_beside_the_packs() -> None:
    """Two criteria at one ratio: the table sets their KL and top-1 agreement side by side."""
    from bench.candidate import Summary
    from bench.candidate.summary import Row, Steps, render_markdown
    from bench.records import Interval
    from bench.report.candidates import Divergence

    base = Row(label="base", role="base", experts_total=8, experts_kept=8, precision="bf16", scores={"smoke": 0.5})
    reap = Row(label="m-k4", role="candidate", criterion="reap", experts_total=8, experts_kept=4, precision="bf16",
               scores={"smoke": 0.5}, divergence=Divergence(
                   mean_kl=Interval(mean=0.0412, n=30, low=0.0351, high=0.0478),
                   top1_agreement=Interval(mean=0.912, n=30, low=0.9, high=0.925)))
    weaker = reap.model_copy(update={"label": "m-k4-frequency", "criterion": "frequency", "divergence": Divergence(
        mean_kl=Interval(mean=0.25, n=30), top1_agreement=Interval(mean=0.7, n=30))})
    unmeasured = reap.model_copy(update={"label": "m-k2", "divergence": None})
    text = render_markdown(Summary(name="t", plan="p.yaml", base="/m", out="/o", created_at="now", bench_version="0",
                                   packs=["smoke"], gate_spec="default.yaml", rows=[base, reap, weaker, unmeasured],
                                   pareto=[], steps=Steps(ran=0, cached=0, resumed=0, failed=[])))
    assert "| candidate | size | vs base | experts kept | precision | KL from base (nats) [95%] | top-1 agreement | smoke |" in text
    assert "| base | - | - | 8/8 | bf16 | (reference) | (reference) | 0.500 |" in text
    assert "| m-k4 | - | - | 4/8 | bf16 | 0.0412 [0.0351, 0.0478] | 0.912 [0.900, 0.925] | 0.500 |" in text
    assert "| m-k4-frequency | - | - | 4/8 | bf16 | 0.25 | 0.700 | 0.500 |" in text
    assert "| m-k2 | - | - | 4/8 | bf16 | - | - | 0.500 |" in text


def test_a_rerun_upstream_step_makes_downstream_stale(tmp_path: Path) -> None:
    store = StepStore(tmp_path)
    up = Step("prune", "up", "x", {})
    down = Step("run", "down", "x", {}, upstream=("up",))
    store.begin(up)
    store.finish(up, time.monotonic(), {})
    folder = store.begin(down)
    (folder / "out").write_text("result")
    store.finish(down, time.monotonic(), {"paths": ["out"]})
    assert store.fresh(up) is not None and store.fresh(down) is not None
    (folder / "out").unlink()  # an output deleted by hand: redo the step
    assert store.fresh(down) is None
    (folder / "out").write_text("result")
    assert store.fresh(down) is not None
    store.begin(up)
    store.finish(up, time.monotonic(), {})  # upstream re-ran (same key, new stamp)
    assert store.fresh(down) is None
    store.begin(up)  # upstream started again and never finished
    assert store.fresh(up) is None and store.fresh(down) is None


# ---------------------------------------------------------------------------------------------
# Cache keys


def test_file_digests_are_remembered_by_stat(tmp_path: Path) -> None:
    from bench.candidate import FileDigests

    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights v1")
    (tmp_path / "model" / ".bench-toy.json").write_text("marker")
    memo = tmp_path / "digests.json"
    first = FileDigests(memo)
    whole = first.directory(weights.parent)
    first.save()
    assert str(weights.resolve()) in json.loads(memo.read_text())
    second = FileDigests(memo)
    assert second.directory(weights.parent) == whole
    (tmp_path / "model" / ".bench-toy.json").write_text("other marker")  # hidden files are not the model
    assert second.directory(weights.parent) == whole
    weights.write_bytes(b"weights v2, longer")
    assert second.directory(weights.parent) != whole


def _keys(plan: dict[str, Any], folder: Path, base: Path, data_dir: Path = DATA_DIR) -> dict[str, str]:
    from bench.candidate import prepare

    path = write_plan(folder, plan, f"plan-{time.monotonic_ns()}.yaml")
    prepared = prepare(load_plan(path), path, base, data_dir=data_dir, vllm_python=sys.executable)
    return {f"{step.kind}:{step.label}": step.key for step in prepared.steps()}


@needs_data
@pytest.mark.engine
def test_a_plan_run_gets_the_plan_sections_as_run_options(tmp_path: Path, scripted_model: Path) -> None:
    from bench.candidate import prepare
    from bench.run.options import EvalOptions
    from bench.serve.options import ServeOptions

    (tmp_path / "t.j2").write_text("{{ messages }}")
    path = write_plan(tmp_path, tiny_plan(**{"vllm.chat_template": "t.j2", "vllm.args": ["--seed=1"]}))
    prepared = prepare(load_plan(path), path, scripted_model, data_dir=DATA_DIR, vllm_python=sys.executable)
    options = prepared.run_options(prepared.base_run, scripted_model, tmp_path / "runs")
    # The plan's vllm: section with the interpreter and the template resolved, nothing copied by hand.
    assert options.serve == ServeOptions(python=sys.executable, max_model_len=1024, chat_template=str(tmp_path / "t.j2"),
                                         args=["--seed=1"])
    assert options.evaluate == EvalOptions(packs="smoke", tier="quick", limit=2)
    assert (options.served_model_name, options.run_id, options.runs_dir) == ("base", "base", str(tmp_path / "runs"))


@needs_data
@pytest.mark.engine
def test_an_endpoint_baseline_runs_the_base_packs_there(tmp_path: Path, scripted_model: Path) -> None:
    from bench.candidate import prepare

    path = write_plan(tmp_path, tiny_plan(baseline="http://gpu-box:8000", baseline_model="big-base"))
    prepared = prepare(load_plan(path), path, scripted_model, data_dir=DATA_DIR, vllm_python=sys.executable)
    assert prepared.baseline.kind == "endpoint" and prepared.baseline.url == "http://gpu-box:8000/v1"
    assert prepared.base_run is not None and prepared.base_run.inputs["endpoint"] == "http://gpu-box:8000/v1"
    options = prepared.run_options(prepared.base_run, scripted_model, tmp_path / "runs")
    assert options.model is None and options.endpoints == ["http://gpu-box:8000/v1"]  # nothing is launched for it
    assert options.served_model_name == "big-base"
    candidate = prepared.candidates[0]
    assert prepared.run_options(candidate.run, tmp_path / "cand", tmp_path / "runs").model == str(tmp_path / "cand")
    assert candidate.gate.upstream == (prepared.base_run.key, candidate.run.key)


@needs_data
@pytest.mark.engine
def test_cache_keys_change_with_inputs_and_only_then(tmp_path: Path, scripted_model: Path) -> None:
    base = _keys(tiny_plan(), tmp_path, scripted_model)
    assert list(base) == ["run:base", "prune:local-sample-k4", "quantize:local-sample-k4-fp8dense",
                          "run:local-sample-k4-fp8dense", "gate:local-sample-k4-fp8dense"]
    assert len(set(base.values())) == len(base)
    assert _keys(tiny_plan(), tmp_path, scripted_model) == base

    # Settings that do not change what is measured: same keys.
    for change in ({"evaluate.concurrency": 2}, {"evaluate.request_timeout_s": 10.0},
                   {"vllm.startup_timeout_s": 60.0}, {"vllm.port": 8123}, {"prune.device": "cpu:0"},
                   {"description": "other words"}):
        assert _keys(tiny_plan(**change), tmp_path, scripted_model) == base, change

    def roles(keys: dict[str, str]) -> dict[str, str]:
        return {(name if name == "run:base" else name.split(":")[0] + ":cand"): key for name, key in keys.items()}

    def changed(**change: Any) -> set[str]:
        before, after = roles(base), roles(_keys(tiny_plan(**change), tmp_path, scripted_model))
        return {role for role in after if after[role] != before[role]}

    # The ratio 0.75 keeps 2 experts: a different candidate, the base run stays.
    assert changed(**{"prune.ratios": [0.75]}) == {"prune:cand", "quantize:cand", "run:cand", "gate:cand"}
    assert changed(**{"prune.samples": 5}) == {"prune:cand", "quantize:cand", "run:cand", "gate:cand"}
    assert changed(**{"quantize.experts": "fp8"}) == {"quantize:cand", "run:cand", "gate:cand"}
    assert changed(**{"evaluate.limit": 3}) == {"run:base", "run:cand", "gate:cand"}
    assert changed(**{"vllm.max_model_len": 512}) == {"run:base", "run:cand", "gate:cand"}
    inline_gate = {"version": 1, "decision": "point", "defaults": {"allowed_drop": 0.1}}
    assert changed(gate=inline_gate) == {"gate:cand"}

    # Criteria: a list of one is the single criterion; a second one adds its own candidate beside it.
    assert _keys(tiny_plan(**{"prune.criterion": ["reap"]}), tmp_path, scripted_model) == base
    both = _keys(tiny_plan(**{"prune.criterion": ["reap", "frequency"]}), tmp_path, scripted_model)
    assert {name: both[name] for name in base} == base
    assert sorted(set(both) - set(base)) == ["gate:local-sample-k4-frequency-fp8dense", "prune:local-sample-k4-frequency",
                                             "quantize:local-sample-k4-frequency-fp8dense",
                                             "run:local-sample-k4-frequency-fp8dense"]
    alone = _keys(tiny_plan(**{"prune.criterion": "frequency"}), tmp_path, scripted_model)
    assert alone["prune:local-sample-k4-frequency"] == both["prune:local-sample-k4-frequency"]

    # A changed calibration file changes the prune key (and what depends on it), nothing else.
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR / "calibration", data / "calibration")
    assert _keys(tiny_plan(), tmp_path, scripted_model, data) == base  # same bytes elsewhere: same keys
    sample = data / "calibration" / "c4-en-sample.jsonl"
    sample.write_text(sample.read_text() + json.dumps({"text": "One more line of web text."}) + "\n")
    moved = _keys(tiny_plan(), tmp_path, scripted_model, data)
    assert {k for k in moved if moved[k] != base[k]} == set(base) - {"run:base"}

    # The base checkpoint: a touched file keeps its keys, changed bytes change every key.
    copy = tmp_path / "base"
    shutil.copytree(scripted_model, copy)
    assert _keys(tiny_plan(), tmp_path, copy) == base
    config = copy / "generation_config.json"
    config.touch()
    assert _keys(tiny_plan(), tmp_path, copy) == base
    config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
    assert not set(_keys(tiny_plan(), tmp_path, copy).values()) & set(base.values())


@needs_data
@pytest.mark.engine
def test_plan_errors_found_before_anything_runs(tmp_path: Path, scripted_model: Path) -> None:
    from bench.candidate import prepare

    def attempt(plan: dict[str, Any]) -> str:
        path = write_plan(tmp_path, plan)
        with pytest.raises(UserError) as caught:
            prepare(load_plan(path), path, scripted_model, data_dir=DATA_DIR, vllm_python=sys.executable)
        return str(caught.value)

    assert "fewer than the 2 each token is routed to" in attempt(tiny_plan(**{"prune.keep": [1]}))
    assert "pack 'smok' not found. Did you mean 'smoke'?" in attempt(tiny_plan(**{"evaluate.packs": "smok"}))
    assert "neither a file nor a recipe" in attempt(tiny_plan(**{"prune.mixes": ["local-sampel"]}))
    assert "neither a spec file nor a spec name" in attempt(tiny_plan(gate="nope"))
    no_rule = {"version": 1, "packs": {"toolcall": {"allowed_drop": 0.1}}}
    assert "has no rule for pack(s) smoke" in attempt(tiny_plan(gate=no_rule))


# ---------------------------------------------------------------------------------------------
# The whole loop against real vLLM


def _server_logs(out: Path) -> dict[str, int]:
    """Every pack run's server log and its modification time: one log per vLLM launch."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "steps").glob("*/*/server.log")}


@needs_data
@pytest.mark.vllm
@pytest.mark.engine
def test_loop_runs_once_then_reuses_and_resumes(tmp_path: Path, scripted_model: Path) -> None:
    from bench.candidate import candidate_loop, load_summary

    plan = write_plan(tmp_path, tiny_plan())
    out = tmp_path / "out"
    lines: list[str] = []

    def loop() -> Any:
        return candidate_loop(scripted_model, plan, out, data_dir=DATA_DIR, vllm_python=vllm_python(),
                              echo=lines.append, show_progress=False)

    first = loop()
    assert (first.steps.ran, first.steps.cached) == (5, 0)
    logs = _server_logs(out)
    assert len(logs) == 2  # base and candidate, one server each
    base_row, row = first.rows
    assert row.experts_kept == 4 and row.experts_total == 8 and row.precision == "fp8 (experts bf16)"
    assert row.size_bytes is not None and base_row.size_bytes is not None and row.size_bytes < 0.7 * base_row.size_bytes
    assert base_row.scores == {"smoke": 1.0} and row.scores == {"smoke": 1.0}  # the scripted model survives pruning
    assert row.verdict == "Inconclusive" and first.pareto == [row.label]  # two items cannot check a 0.05 drop
    assert load_summary(out) == first
    html = (out / "report.html").read_text()
    assert row.label in html and "base" in html
    assert f"`{row.label}`" in (out / "candidates.md").read_text()

    second = loop()
    assert (second.steps.ran, second.steps.cached) == (0, 5)
    assert _server_logs(out) == logs  # no server started

    # A candidate run killed after its first item: the rerun resumes it and asks only the rest.
    run_dir = Path(row.run_dir or "")
    (run_dir.parent / "done.json").unlink()
    (run_dir / "results.json").unlink()
    items = (run_dir / "items.jsonl").read_text().splitlines(keepends=True)
    assert len(items) == 2
    (run_dir / "items.jsonl").write_text(items[0])
    third = loop()
    assert (third.steps.ran, third.steps.resumed, third.steps.cached) == (2, 1, 3)  # run + gate; base, prune, FP8 kept
    done = json.loads((run_dir.parent / "done.json").read_text())
    assert done["outputs"]["asked"] == 1
    assert len((run_dir / "items.jsonl").read_text().splitlines()) == 2
    now = _server_logs(out)
    assert [name for name in now if now[name] != logs[name]] == [str((run_dir / "server.log").relative_to(out))]
    assert third.rows[1].verdict == "Inconclusive"

    # Where the base does not fit, the plan names a stored baseline instead: the base is never served.
    from bench.compare.baselines import save_baseline

    stored = save_baseline(Path(base_row.run_dir or ""), "tiny-base", baselines_dir=tmp_path / "baselines")
    write_plan(tmp_path, tiny_plan(baseline=str(stored)))
    before = _server_logs(out)
    fourth = loop()
    assert fourth.steps.launches == 0 and _server_logs(out) == before
    assert (fourth.steps.ran, fourth.steps.cached) == (1, 3)  # only the gate, now against the stored baseline
    assert any(line == f"baseline: stored baseline {stored.resolve()} (the base is not served)" for line in lines)
    assert fourth.rows[0].run_dir == str(stored.resolve()) and fourth.rows[0].scores == {"smoke": 1.0}
    assert fourth.rows[1].verdict == "Inconclusive" and (out / "report.html").is_file()
    # A stored baseline that ran other packs is refused before anything is pruned or served.
    write_plan(tmp_path, tiny_plan(baseline=str(stored), **{"evaluate.packs": "smoke,mmlu"}))
    with pytest.raises(UserError, match="did not run pack\\(s\\) mmlu"):
        loop()
