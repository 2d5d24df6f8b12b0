"""Divergence from base: the comparison arithmetic, drift, gate rules, the loop's early stop and the
report section on stored data; then the real vLLM server: the base against itself is exact, and a
candidate with a certain difference (the scripted model with its final norm scaled by 1/16, which
keeps every top-1 token but softens every distribution) diverges, with an interval, and fails a gate.

Why not a pruned scripted model: its logit margins are about 140 nats and its experts only carry
noise, so pruning half of them moves KL to about 1e-46 nats (measured: top-1 agreement 1, identical
continuations). A different noise seed moves nothing more. Scaling the final norm is a difference
that is certain and known: KL(one-hot base || softened) = -log q(top) = about 0.06 nats per token.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import shutil
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import vllm_python
from rundirs import write_run
from typer.testing import CliRunner

from bench.cli import app
from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import parse_spec
from bench.divergence import drift
from bench.divergence.collect import TokenizerMismatch, collect_reference, measure_candidate
from bench.divergence.endpoint import Endpoint, NotMeasurable, PromptLogprobs, parse_prompt_logprobs
from bench.divergence.measure import compare
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import (
    DIVERGENCE_DIR,
    ReferenceMeta,
    RefText,
    TextLogprobs,
    load_reference,
    read_meta,
    write_reference,
)
from bench.divergence.runner import write_measurement
from bench.divergence.summary import (
    ALL,
    DivergenceSummary,
    Measured,
    SideRef,
    by_domain,
    load_summary,
    text_result,
    worst_texts,
)
from bench.divergence.texts import DOMAINS, Text, load_text_set, select
from bench.divergence.verdict import decide
from bench.errors import UserError

HOSTILE = "<script>alert(1)</script>"


# ---------------------------------------------------------------------------------------------
# Stored data: logprobs made from known logits


def logprobs_of(logits: np.ndarray, ids: list[int], k: int, names: list[str] | None = None) -> PromptLogprobs:
    """What a server would return for ``ids`` if its logits at positions 0..n-2 were ``logits``."""
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    order = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    actual = lp[np.arange(len(ids) - 1), ids[1:]]
    decoded = [names[i] if names else f"t{i}" for i in ids[1:]]
    return PromptLogprobs(order.astype(np.int32), np.take_along_axis(lp, order, 1).astype(np.float32),
                          actual.astype(np.float32), decoded)


def true_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    p = np.exp(p_logits) / np.exp(p_logits).sum(axis=1, keepdims=True)
    q = np.exp(q_logits) / np.exp(q_logits).sum(axis=1, keepdims=True)
    return np.asarray((p * (np.log(p) - np.log(q))).sum(axis=1))


def test_kl_is_exact_when_the_top_k_holds_the_whole_vocabulary() -> None:
    rng = np.random.default_rng(0)
    base, cand = rng.normal(size=(30, 6)) * 2, rng.normal(size=(30, 6)) * 2
    ids = list(rng.integers(0, 6, size=31))
    metrics = compare(logprobs_of(base, ids, 6), logprobs_of(cand, ids, 6), ids)
    assert np.allclose(metrics.kl, true_kl(base, cand), atol=2e-6)
    assert np.all(metrics.tail < 1e-5)
    assert np.array_equal(metrics.agree, base.argmax(1) == cand.argmax(1))


def test_top_k_with_a_tail_bucket_is_a_lower_bound_and_same_is_zero() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 50)) * 3
    cand = base + rng.normal(size=(200, 50))
    ids = list(rng.integers(0, 50, size=201))
    b, c = logprobs_of(base, ids, 5), logprobs_of(cand, ids, 5)
    metrics = compare(b, c, ids)
    truth = true_kl(base, cand)
    assert np.all(metrics.kl <= truth + 1e-6) and metrics.kl.mean() > 0.3 * truth.mean()
    assert np.all(metrics.tail > 0)  # five tokens of fifty leave mass unresolved, and it is reported
    same = compare(b, b, ids)
    assert np.all(same.kl == 0.0) and same.agree.all() and np.all(same.delta_nll == 0.0)
    assert np.all(same.base_top_lp == b.top_lp[:, 0])


def test_candidate_logprob_of_the_base_top_token_is_nan_where_not_reported() -> None:
    base = np.array([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    cand = np.array([[0.0, 5.0, 4.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    metrics = compare(logprobs_of(base, [1, 1, 1], 2), logprobs_of(cand, [1, 1, 1], 2), [1, 1, 1])
    assert np.isnan(metrics.base_top_lp[0]) and not metrics.agree[0]  # token 0 is outside the candidate's top-2
    assert metrics.agree[1] and metrics.kl[1] == 0.0


def test_vllm_prompt_logprobs_are_parsed_with_the_actual_token_outside_the_top_k() -> None:
    entries: list[Any] = [None,
                          {"69": {"logprob": -150.0, "rank": 675, "decoded_token": "f"},
                           "560": {"logprob": 0.0, "rank": 1, "decoded_token": "Here"},
                           "276": {"logprob": -140.7, "rank": 2, "decoded_token": "The"}},
                          {"475": {"logprob": -0.1, "rank": 1, "decoded_token": " add"},
                           "7": {"logprob": -2.5, "rank": 2, "decoded_token": "("}}]
    parsed = parse_prompt_logprobs(entries, [287, 69, 475], 2, "t")
    assert parsed.top_ids.tolist() == [[560, 276], [475, 7]]
    assert parsed.actual_lp.tolist() == pytest.approx([-150.0, -0.1])
    assert parsed.decoded == ["f", " add"]
    with pytest.raises(UserError, match="position 1 does not list the prompt token 70"):
        parse_prompt_logprobs(entries, [287, 70, 475], 2, "t")


def test_drift_measures() -> None:
    assert drift.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert drift.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert drift.first_divergence([1, 2, 3], [1, 2]) == 2
    assert drift.loops([9, 8] + [1, 2, 3] * 5) and not drift.loops(list(range(40)))
    assert not drift.loops([4, 4, 4])  # too short to call a loop
    assert drift.distinct([1, 2, 1, 2], 2) == pytest.approx(2 / 3)
    assert drift.repetition([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 - 4 / 5)
    found = drift.compare_continuations("x", "code", [1, 2, 3, 4], "stop", [1, 2] + [7] * 20, "length")
    assert (found.first_divergence, found.base_eos, found.candidate_eos, found.candidate_loop) == (2, True, False, True)
    assert found.length_ratio == pytest.approx(22 / 4)


def test_the_shipped_text_set_covers_five_domains() -> None:
    texts = load_text_set()
    counts = {d: sum(t.domain == d for t in texts.texts) for d in DOMAINS}
    assert counts == dict.fromkeys(DOMAINS, 60)
    quick = select(texts.texts, "quick")
    assert len(quick) == 60 and len({t.source for t in quick}) >= 8
    assert not any("calibration" in t.source for t in texts.texts)  # held out from every calibration mix
    chats = [t for t in texts.texts if t.domain == "toolcall"]
    assert all(t.tools and t.messages and any(m.get("tool_calls") for m in t.messages) for t in chats[:10])
    with pytest.raises(UserError, match="no divergence texts in domain\\(s\\) poetry"):
        select(texts.texts, domains=["poetry"])


def _measurement(tmp_path: Path, shift: float, *, texts_per_domain: int = 6, seed: int = 0,
                 domains: tuple[str, ...] = ("code", "chat")) -> tuple[Path, DivergenceSummary]:
    """A reference and a measurement written from known logits; the candidate's logits are the
    base's plus ``shift`` times noise (0: the base itself)."""
    rng = np.random.default_rng(seed)
    vocab, names = 40, [f" w{i}" for i in range(40)]
    names[7] = HOSTILE
    measured: list[TextLogprobs] = []
    compared: list[Measured] = []
    for domain in domains:
        for index in range(texts_per_domain):
            ids = [int(i) for i in rng.integers(0, vocab, size=30)]
            ids[12] = 7
            base = rng.normal(size=(29, vocab)) * 3
            cand = base + shift * rng.normal(size=(29, vocab))
            text = Text(id=f"{domain}/{index}", domain=domain, source="test", text=" ".join(names[i] for i in ids))
            b = logprobs_of(base, ids, 8, names)
            entry = TextLogprobs(text, ids, [names[ids[0]], *b.decoded], b)
            measured.append(entry)
            compared.append(Measured(entry, compare(b, logprobs_of(cand, ids, 8, names), ids)))
    meta = ReferenceMeta(created_at="2025-01-01T00:00:00Z", model="base", endpoint="http://x/v1", k=8,
                         text_set="test", text_set_sha256="0" * 64, tier="full", max_text_tokens=64,
                         generate_per_domain=0, max_new_tokens=8,
                         texts=[RefText(id=m.text.id, domain=m.text.domain, tokens=len(m.token_ids)) for m in measured])
    folder = write_reference(tmp_path / "ref" / DIVERGENCE_DIR, meta, measured)
    results = [text_result(m) for m in compared]
    summary = DivergenceSummary(
        created_at="2025-01-01T00:00:00Z", reference_sha256=meta.arrays_sha256, reference_path=str(folder),
        base=SideRef(model="base", endpoint="http://x/v1"), candidate=SideRef(model=f"shift{shift}", endpoint="http://y/v1"),
        k=8, text_set_sha256="0" * 64, domains=by_domain(compared, 0.95, 0),
        worst=worst_texts(compared, results, dict(enumerate(names))), positions=sum(r.positions for r in results),
    )
    return folder, summary


def _spec(divergence: dict[str, Any], **top: Any) -> Any:
    return parse_spec({"version": 1, **top, "divergence": divergence})


def test_divergence_rules_decide_fail_pass_and_inconclusive(tmp_path: Path) -> None:
    _, moved = _measurement(tmp_path / "a", shift=1.0)
    _, same = _measurement(tmp_path / "b", shift=0.0)
    assert same.domains[ALL].mean_kl.mean == 0.0 and same.domains[ALL].top1_agreement.mean == 1.0
    kl = moved.domains[ALL].mean_kl
    assert kl.low is not None and kl.high is not None and 0 < kl.low < kl.mean < kl.high

    strict = _spec({"mean_kl_max": kl.low / 2, "top1_agreement_min": 0.99})
    found = decide(moved, strict)
    assert (found.verdict, found.exit_code) == ("FailDivergence", 1)
    assert found.line.startswith("FailDivergence: divergence.all.mean_kl.ceiling: divergence all mean KL")
    assert decide(same, strict).verdict == "Pass"
    # A limit inside the interval: a point decision fails on the mean, a confident one cannot tell.
    inside = {"mean_kl_max": (kl.mean + kl.low) / 2}
    assert decide(moved, _spec({**inside, "decision": "point"})).verdict == "FailDivergence"
    unsure = decide(moved, _spec(inside, decision="confident"))
    assert (unsure.verdict, unsure.exit_code) == ("Inconclusive", 3)
    assert decide(moved, _spec(inside, decision="confident", on_underpowered="fail")).verdict == "FailDivergence"
    # Per domain, a renamed verdict, and a domain that was never measured.
    per_domain = decide(moved, _spec({"domains": {"chat": {"p99_kl_max": 1e-9}}, "verdict": "FailDrift"}))
    assert per_domain.verdict == "FailDrift" and per_domain.outcomes[0].id == "divergence.chat.p99_kl.ceiling"
    each = decide(moved, _spec({"each_domain": {"mean_kl_max": 100.0}}))
    assert [o.subdimension for o in each.outcomes] == ["code", "chat"] and each.verdict == "Pass"
    invalid = decide(moved, _spec({"domains": {"kode": {"mean_kl_max": 1.0}}}))
    assert invalid.verdict == "Invalid" and "did you mean 'code'?" in invalid.line


def test_gate_specs_with_divergence_stay_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown key 'mean_kl' at divergence; did you mean 'mean_kl_max'"):
        _spec({"mean_kl": 0.1})
    with pytest.raises(UserError, match="'Divergence' is not a verdict name"):
        _spec({"verdict": "Divergence"})
    from bench.compare.spec import load_spec
    from bench.shipped import spec_names, spec_path

    for name in spec_names():  # the shipped specs load unchanged and ask for no divergence
        path = spec_path(name)
        assert path is not None and load_spec(path).divergence is None


def test_gate_over_runs_reads_the_candidates_divergence(tmp_path: Path) -> None:
    folder, moved = _measurement(tmp_path / "m", shift=1.0)
    base = write_run(tmp_path / "runs", "base", packs=("toolcall",), n_per_pack=20)
    cand = write_run(tmp_path / "runs", "cand", packs=("toolcall",), n_per_pack=20)
    spec = _spec({"mean_kl_max": 1e-6}, decision="point", packs={"toolcall": {"allowed_drop": 0.5}})
    # Not measured: warned (or Invalid when required), never a silent pass of the divergence rules.
    result = gate.judge(load_run(cand), load_run(base), spec)
    assert result.verdict == "Pass" and any("has no divergence measurement" in w for w in result.warnings)
    required = _spec({"mean_kl_max": 1e-6, "required": True}, decision="point", packs={"toolcall": {"allowed_drop": 0.5}})
    assert gate.judge(load_run(cand), load_run(base), required).verdict == "Invalid"
    shutil.copytree(folder, base / DIVERGENCE_DIR)
    write_measurement(cand, moved, [], [])
    result = gate.judge(load_run(cand), load_run(base), spec)
    assert result.verdict == "FailDivergence" and result.exit_code == 1
    assert result.failures[0].id == "divergence.all.mean_kl.ceiling"
    # A divergence-only spec is a whole gate, packs warned as ungated.
    only = gate.judge(load_run(cand), load_run(base), _spec({"top1_agreement_min": 0.0}))
    assert only.verdict == "Pass" and only.ungated == ["toolcall"]
    # Measured against another reference than the baseline's: said.
    _, other = _measurement(tmp_path / "o", shift=1.0, seed=5)
    write_measurement(cand, other, [], [])
    warned = gate.judge(load_run(cand), load_run(base), spec)
    assert any("another reference" in w for w in warned.warnings)


def test_report_section_escapes_tokens_and_draws_the_histogram(tmp_path: Path) -> None:
    from bench.report.html import render_report

    folder, moved = _measurement(tmp_path / "m", shift=1.0)
    base = write_run(tmp_path / "runs", "base", packs=("toolcall",), n_per_pack=10)
    cand = write_run(tmp_path / "runs", "cand", packs=("toolcall",), n_per_pack=10)
    plain = render_report([load_run(base), load_run(cand)])
    assert 'id="divergence"' not in plain
    shutil.copytree(folder, base / DIVERGENCE_DIR)
    write_measurement(cand, moved, [], [])
    html = render_report([load_run(base), load_run(cand)])
    section = html[html.index('<section id="divergence">'): html.index('<section id="latency">')]
    assert "base holds the base&#39;s reference: base, 12 texts" in section
    assert 'aria-label="divergence-kl"' in section and "<svg" in section
    assert f"{moved.domains[ALL].mean_kl.mean:.4g}" in section and "T_divergence-top1" in section
    assert section.count("<mark>") == min(5, len(moved.worst)) and "<script" not in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section  # the hostile token is text


def test_reference_round_trip_and_baseline_save_keep_it(tmp_path: Path) -> None:
    from bench.compare.baselines import save_baseline

    folder, _ = _measurement(tmp_path / "m", shift=0.0)
    loaded = load_reference(folder.parent)
    assert len(loaded.measured) == 12 and loaded.measured[0].logprobs.top_ids.shape == (29, 8)
    run = write_run(tmp_path / "runs", "base", packs=("toolcall",), n_per_pack=5)
    shutil.copytree(folder, run / DIVERGENCE_DIR)
    (run / DIVERGENCE_DIR / "server.log").write_text("log")
    stored = save_baseline(run, "b", baselines_dir=tmp_path / "baselines")
    assert load_reference(stored).sha256 == loaded.sha256 and not (stored / DIVERGENCE_DIR / "server.log").exists()
    npz = stored / DIVERGENCE_DIR / "reference.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(UserError, match="unreadable|does not match the hash"):
        load_reference(stored)
    with pytest.raises(UserError, match="holds no divergence reference"):
        load_reference(tmp_path)


def test_summary_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no divergence measurement"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "divergence"}))
    with pytest.raises(UserError, match="summary.json: field"):
        load_summary(tmp_path)


def test_cli_refuses_bad_combinations_in_one_line(tmp_path: Path) -> None:
    import subprocess

    from conftest import bench_cmd

    both = subprocess.run([*bench_cmd(), "diverge", "--reference", "--baseline", "x", "--endpoint", "http://127.0.0.1:9"],
                          capture_output=True, text=True)
    assert both.returncode == 2 and both.stderr == ("error: give --reference (measure the base) or --baseline REF "
                                                    "(measure a candidate against it)\n")
    runner = CliRunner()
    no_out = runner.invoke(app, ["diverge", "--reference", "--endpoint", "http://127.0.0.1:9"])
    assert isinstance(no_out.exception, UserError) and "--reference needs --out" in str(no_out.exception)
    bad = runner.invoke(app, ["diverge", "--baseline", str(tmp_path), "--endpoint", "http://127.0.0.1:9", "--top-k", "0"])
    assert isinstance(bad.exception, UserError) and "--top-k 0" in str(bad.exception)
    gone = runner.invoke(app, ["diverge", "--baseline", str(tmp_path), "--endpoint", "http://127.0.0.1:9"])
    assert isinstance(gone.exception, UserError) and "holds no divergence reference" in str(gone.exception)
    folder, _ = _measurement(tmp_path / "m", shift=0.0)
    kept = read_meta(folder).max_text_tokens
    fixed = runner.invoke(app, ["diverge", "--baseline", str(folder.parent), "--endpoint", "http://127.0.0.1:9",
                                "--max-text-tokens", "77"])  # refused before the endpoint is asked anything
    assert isinstance(fixed.exception, UserError)
    assert str(fixed.exception).startswith(f"--max-text-tokens 77: the reference in {folder} was measured with "
                                           f"--max-text-tokens {kept}")


# ---------------------------------------------------------------------------------------------
# The candidate loop: divergence first, packs skipped for a candidate that fails it


@pytest.mark.engine
def test_loop_skips_the_packs_of_a_candidate_that_fails_divergence(tmp_path: Path, scripted_model: Path) -> None:
    """The divergence step's stored result (a failing verdict) decides; no server is started."""
    pytest.importorskip("torch")
    from bench.candidate import load_plan, prepare
    from bench.candidate.loop import Loop
    from bench.candidate.summary import build_summary
    from bench.divergence.steps import GATE_FILE

    test_dir = Path(__file__).resolve().parent
    plan = yaml.safe_load((test_dir.parent / "baselines" / "plans" / "tiny-smoke.yaml").read_text())
    plan["gate"] = {"version": 1, "defaults": {"allowed_drop": 0.1}, "divergence": {"mean_kl_max": 1e-6}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    prepared = prepare(load_plan(path), path, scripted_model, data_dir=Path(__file__).parents[2] / "shared" / "data",
                       vllm_python=sys.executable)
    kinds = [f"{s.kind}:{s.label}" for s in prepared.steps()]
    assert kinds[:2] == ["run:base", "diverge:base"] and kinds[4] == "diverge:local-sample-k4-fp8dense"
    candidate = prepared.candidates[0]
    assert candidate.diverge is not None and candidate.diverge.key in candidate.gate.upstream

    folder, moved = _measurement(tmp_path / "m", shift=1.0)
    ran: list[str] = []

    class Recording(Loop):
        def run(self, step: Any, model_dir: Path) -> Any:  # the packs: recorded, not asked (no server here)
            ran.append(step.label)
            raise UserError("packs were asked")

    def prime(loop: Loop) -> None:
        """Finished prune, quantize and divergence steps, as a first pass leaves them."""
        assert prepared.base_divergence is not None and candidate.quantize is not None and candidate.diverge is not None
        for step in (prepared.base_divergence, candidate.prune, candidate.quantize, candidate.diverge):
            target = loop.store.begin(step)
            if step in (candidate.prune, candidate.quantize):
                shutil.copytree(scripted_model, target / "model", dirs_exist_ok=True)
            outputs: dict[str, Any] = {"paths": ["model"]} if step in (candidate.prune, candidate.quantize) else {"paths": []}
            if step is candidate.diverge:
                write_measurement(target, moved, [], [])
                verdict = decide(moved, prepared.gate_spec)
                from bench.compare.gate import GateResult, RunRef

                result = GateResult(verdict=verdict.verdict, exit_code=verdict.exit_code, line=verdict.line,
                                    candidate=RunRef(run_id=step.label, path=str(target), model=None),
                                    baseline=RunRef(run_id="base", path=str(folder), model=None), spec_source="inline",
                                    decision="point", confidence=0.95, power=0.8, rules=verdict.outcomes,
                                    failing_verdicts=[verdict.verdict], invalid_reasons=[], warnings=[], stack_differences=[])
                (target / GATE_FILE).write_text(result.model_dump_json())
                outputs = {"paths": ["divergence", GATE_FILE], "gate_json": GATE_FILE, "failed": verdict.failed,
                           "verdict": verdict.verdict}
            loop.store.finish(step, 0.0, outputs)

    lines: list[str] = []
    loop = Recording(prepared, tmp_path / "out", echo=lines.append)
    prime(loop)
    outcome = loop.candidate(candidate, base_run=None)
    assert ran == [] and outcome.run_dir is None and outcome.gate_json is not None
    assert any("packs skipped, it failed divergence" in line for line in lines)
    base = type(outcome)("base", checkpoint=prepared.base)
    row = build_summary(prepared, tmp_path / "out", base, [outcome], loop.log).rows[1]
    assert row.verdict == "FailDivergence" and row.verdict_line is not None
    assert "packs not run: the candidate failed divergence from the base" in row.verdict_line
    assert "skip_packs_on_fail: false" in row.verdict_line
    figures = moved.domains[ALL]  # the table's KL and top-1 columns come from the step's measurement
    assert row.divergence is not None and row.divergence.mean_kl.mean == figures.mean_kl.mean
    assert (row.divergence.mean_kl.low, row.divergence.top1_agreement.mean) == (figures.mean_kl.low,
                                                                                figures.top1_agreement.mean)

    # The plan overrides it: the packs are asked anyway.
    plan["divergence"] = {"skip_packs_on_fail": False}
    path.write_text(yaml.safe_dump(plan))
    prepared = prepare(load_plan(path), path, scripted_model, data_dir=Path(__file__).parents[2] / "shared" / "data",
                       vllm_python=sys.executable)
    candidate = prepared.candidates[0]
    loop = Recording(prepared, tmp_path / "out", echo=lines.append)
    with pytest.raises(UserError, match="packs were asked"):
        loop.candidate(candidate, base_run=None)
    assert ran == [candidate.run.label]


# ---------------------------------------------------------------------------------------------
# A real vLLM server


SMALL = DivergenceOptions(limit=1, max_text_tokens=96, generate=1, max_new_tokens=12, top_k=25, concurrency=4)


@pytest.fixture(scope="module")
def reference(scripted_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted model's reference: one text per domain, 96 tokens each (top-k asked 25, granted 20)."""
    out = tmp_path_factory.mktemp("base-run")

    async def go() -> None:
        endpoint = Endpoint(f"{scripted_server}/v1", "scripted")
        try:
            meta, measured = await collect_reference(endpoint, SMALL, echo=lambda line: None)
        finally:
            await endpoint.close()
        write_reference(out / DIVERGENCE_DIR, meta, measured)

    asyncio.run(go())
    return out


@pytest.mark.vllm
def test_base_against_itself_is_exact(scripted_server: str, reference: Path, tmp_path: Path) -> None:
    loaded = load_reference(reference)
    assert loaded.meta.k == 20 and len(loaded.measured) == 5 and len(loaded.meta.generations) == 5
    assert {m.text.domain for m in loaded.measured} == set(DOMAINS)
    assert all(len(m.token_ids) == 96 for m in loaded.measured)  # every text is longer: cut to 96
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "decision": "point",
                                    "divergence": {"mean_kl_max": 1e-9, "p99_kl_max": 1e-9, "top1_agreement_min": 1.0}}))
    result = CliRunner().invoke(app, ["diverge", "--baseline", str(reference), "--endpoint", scripted_server,
                                      "--out", str(tmp_path / "self"), "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    assert "Pass: all 3 divergence rules held, scripted vs scripted" in result.output
    summary = load_summary(tmp_path / "self")
    for name, figures in summary.domains.items():
        assert figures.mean_kl.mean == 0.0 and figures.p99_kl == 0.0, name
        assert figures.top1_agreement.mean == 1.0 and figures.delta_nll == 0.0, name
    assert summary.positions == 5 * 95 and summary.tokens_per_s and summary.worst == []
    assert summary.drift[ALL].identical == 5 and summary.drift[ALL].candidate_eos_rate == summary.drift[ALL].base_eos_rate


@pytest.mark.vllm
def test_a_candidate_that_tokenizes_otherwise_is_refused(scripted_server: str, reference: Path, tmp_path: Path) -> None:
    loaded = load_reference(reference)
    first = loaded.measured[0]
    first.token_ids = [first.token_ids[0], first.token_ids[2], *first.token_ids[2:]]
    folder = write_reference(tmp_path / DIVERGENCE_DIR, loaded.meta, loaded.measured)
    tampered = load_reference(folder)

    async def go() -> None:
        endpoint = Endpoint(f"{scripted_server}/v1", "scripted")
        try:
            await measure_candidate(endpoint, tampered, SMALL, echo=lambda line: None)
        finally:
            await endpoint.close()

    with pytest.raises(TokenizerMismatch, match=f"text {first.text.id} token 1 is .* for the base, .* for the candidate"):
        asyncio.run(go())


def soften(source: Path, out: Path) -> Path:
    """A copy of the scripted model whose final norm weight is 1/16 (bf16 0x3D80): logits / 16."""
    shutil.copytree(source, out)
    path = out / "model.safetensors"
    raw = bytearray(path.read_bytes())
    size = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8 : 8 + size])["model.norm.weight"]
    assert entry["dtype"] == "BF16"
    start, end = (8 + size + offset for offset in entry["data_offsets"])
    raw[start:end] = struct.pack("<H", 0x3D80) * ((end - start) // 2)
    path.write_bytes(bytes(raw))
    return out


@pytest.mark.vllm
def test_a_softened_candidate_diverges_and_fails_the_gate(scripted_model: Path, reference: Path, tmp_path: Path) -> None:
    """One more vLLM launch: ``bench diverge --model`` serves the candidate itself."""
    candidate = soften(scripted_model, tmp_path / "soft")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"version": 1, "divergence": {"mean_kl_max": 0.01, "top1_agreement_min": 0.99}}))
    result = CliRunner().invoke(app, ["diverge", "--baseline", str(reference), "--model", str(candidate),
                                      "--vllm-python", vllm_python(), "--max-model-len", "1024",
                                      "--out", str(tmp_path / "run"), "--spec", str(spec)])
    assert result.exit_code == 1, result.output
    assert "FailDivergence: divergence.all.mean_kl.ceiling: divergence all mean KL" in result.output
    summary = load_summary(tmp_path / "run")
    kl = summary.domains[ALL].mean_kl
    assert kl.low is not None and 0.01 < kl.low <= kl.mean
    assert summary.domains[ALL].top1_agreement.mean == 1.0  # logits / 16 keep every argmax
    assert summary.domains[ALL].base_top_logprob is not None and summary.domains[ALL].base_top_logprob < -0.01
    assert summary.drift[ALL].identical == 5  # greedy continuations are the same
    assert summary.worst and summary.worst[0].departed is False  # no top-1 changed: the largest KL is shown
    assert (tmp_path / "run" / DIVERGENCE_DIR / "server.log").is_file()


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible server without prompt_logprobs


class _NoLogprobs(http.server.BaseHTTPRequestHandler):
    """Answers /v1/completions as a server that ignores prompt_logprobs does (plain OpenAI)."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_an_endpoint_without_prompt_logprobs_is_not_measurable(plain_server: str) -> None:
    async def go() -> None:
        endpoint = Endpoint(plain_server, "m")
        try:
            await endpoint.usable_k(20, [1, 2, 3])
        finally:
            await endpoint.close()

    with pytest.raises(NotMeasurable, match="returned no prompt_logprobs: divergence is not measurable there"):
        asyncio.run(go())


def test_tokens_file_holds_every_token(tmp_path: Path) -> None:
    folder, _ = _measurement(tmp_path, shift=0.0, texts_per_domain=1, domains=("code",))
    lines = gzip.decompress((folder / "tokens.jsonl.gz").read_bytes()).decode().splitlines()
    stored = json.loads(lines[0])
    assert len(stored["ids"]) == len(stored["tokens"]) == 30 and stored["tokens"][12] == HOSTILE
