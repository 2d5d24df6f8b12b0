"""pass@1 and pass^k: exact values on stored runs with known trials, the gate rule, the report's marks."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench import passk
from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import parse_spec
from bench.errors import UserError
from bench.pack import Item, Pack, Score, Tier
from bench.records import ItemRecord, Manifest, PackEntry, PreflightCheck, ServerInfo
from bench.report import html as report
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.transcript import Exchange, Request, Response, Transcript

PACK = "toolcall"  # a real pack name, so the gate maps a failure to FailToolcall
SUBDIMENSIONS = ("tool_selection", "parameter_precision")
HOSTILE_ID = "t-<b>x</b>"
# Six items, three trials each; "band" is the breakdown. Counts of passes c: 3, 3, 2, 1, 0, 3.
SMALL: dict[str, list[bool]] = {
    "t01": [True, True, True],
    "t02": [True, True, True],
    "t03": [True, True, False],
    "t04": [True, False, False],
    "t05": [False, False, False],
    "t06": [True, True, True],
}
BANDS = {"t01": "easy", "t02": "easy", "t03": "easy", "t04": "hard", "t05": "hard", "t06": "hard"}
# parameter_precision applies to four items; a trial passes it only with full marks (t03's 0.9 does not).
PRECISION = {"t01": [1.0, 1.0, 1.0], "t02": [1.0, 1.0, 1.0], "t03": [1.0, 1.0, 0.9], "t05": [1.0, 1.0, 1.0]}


class TrialPack(Pack):
    """The items of one test run, with their band; scores are written with the records."""

    version = "1"
    subdimensions = SUBDIMENSIONS
    breakdowns = ("band",)

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.name = PACK
        self._items = [Item(id=item_id, data={"band": BANDS.get(item_id, "easy")}) for item_id in item_ids]

    def items(self, tier: Tier = "full") -> list[Item]:
        return list(self._items)

    def score(self, item: Item, transcript: Transcript) -> Score:
        raise NotImplementedError("scored when written")


def _record(item_id: str, repeat: int, passed: bool, precision: float | None) -> ItemRecord:
    subscores = {"tool_selection": 1.0 if passed else 0.5}
    if precision is not None:
        subscores["parameter_precision"] = precision
    response = Response(content=f"answer {repeat} to {item_id}", finish_reason="stop", latency_s=0.1)
    transcript = Transcript(exchanges=[Exchange(request=Request(messages=[{"role": "user", "content": item_id}]),
                                                response=response)])
    return ItemRecord(
        pack=PACK, pack_version="1", item_id=item_id, repeat=repeat, seed=repeat, transcript=transcript,
        score=Score(value=1.0 if passed else 0.0, passed=passed, subscores=subscores),
        started_at="2025-01-01T00:00:00Z", finished_at="2025-01-01T00:00:01Z", elapsed_s=0.1,
    )  # fmt: skip


def write_trials_run(root: Path, run_id: str, outcomes: Mapping[str, Sequence[bool]],
                     precision: Mapping[str, Sequence[float]] | None = None) -> Path:
    """A run directory whose item ``i`` has exactly the trial outcomes ``outcomes[i]`` (k = their length)."""
    precision = precision or {}
    k = max(len(trials) for trials in outcomes.values())
    pack = TrialPack(list(outcomes))
    store = RunStore.create(root, run_id)
    store.write_manifest(Manifest(
        run_id=run_id, created_at="2025-01-01T00:00:00Z", bench_version="0.1.0", model=f"/models/{run_id}",
        server=ServerInfo(launched=False, endpoints=["http://127.0.0.1:8000/v1"], chat_template_sha256="a" * 64),
        preflight=[PreflightCheck(name="first_request", ok=True)],
        packs=[PackEntry(name=PACK, version="1", data_hash=hashlib.sha256(b"trials").hexdigest(), items=len(outcomes),
                         tier="full", subdimensions=list(SUBDIMENSIONS), sampling={"temperature": 0.6})],
        repeats=k, seed=0, concurrency=4, status="complete",
    ))  # fmt: skip
    records = [_record(item_id, repeat, passed, precision[item_id][repeat] if item_id in precision else None)
               for item_id, trials in outcomes.items() for repeat, passed in enumerate(trials)]
    store.rewrite_items(records)
    store.write_results(build_results(run_id, {PACK: pack}, records, {PACK: len(records)}))
    return store.root


def _flaky(n: int, flaky: int, k: int = 3) -> dict[str, list[bool]]:
    """``n`` items that pass every trial, except ``flaky`` of them that fail their last trial."""
    return {f"t-{i:03d}": [True] * (k - 1) + [i >= flaky] for i in range(n)}


# --- the estimator


def test_pass_hat_is_the_unbiased_all_pass_estimate() -> None:
    assert passk.pass_hat(3, 3, 3) == 1.0
    assert passk.pass_hat(2, 3, 3) == 0.0
    assert passk.pass_hat(2, 3, 2) == pytest.approx(1 / 3)  # C(2,2)/C(3,2)
    assert passk.pass_hat(3, 5, 2) == pytest.approx(3 / 10)  # C(3,2)/C(5,2)
    assert passk.pass_hat(4, 4, 1) == 1.0 and passk.pass_hat(1, 4, 1) == 0.25
    with pytest.raises(ValueError):
        passk.pass_hat(1, 2, 3)  # cannot estimate 3 trials from 2
    assert passk.marks([True, False, None]) == "✓✗·"


def test_an_item_with_a_failed_request_is_short_not_a_failure() -> None:
    found = passk.summarize({"a": [True, True], "b": [True], "c": []}, 2, 0.95, 0)
    assert found is not None
    assert found.short == 2  # b has one scored trial of two, c none
    assert found.pass_hat_k.mean == 1.0 and found.pass_hat_k.n == 1  # only a has its two trials
    assert found.pass_at_1.mean == 1.0 and found.pass_at_1.n == 2  # a and b: a trial that was scored counts


# --- results.json


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trials_run(tmp_path_factory.mktemp("small"), "small", SMALL, PRECISION)


def test_results_carry_exact_pass_at_1_and_pass_hat_k(small_run: Path) -> None:
    result = load_run(small_run).results.packs[PACK]
    found = result.passk
    assert found is not None and found.k == 3 and found.short == 0
    assert Fraction(found.pass_at_1.mean).limit_denominator(100) == Fraction(2, 3)  # 12 passes of 18 trials
    assert found.pass_at_1.mean == pytest.approx(result.pass_rate.mean)  # pass@1 is the pass rate
    assert found.pass_hat_k.mean == 0.5 and found.pass_hat_k.n == 6  # t01, t02, t06 of six
    assert found.pass_hat_k.method == "wilson"  # 0/1 per item with exactly k trials
    assert found.pass_hat_k.low is not None and found.pass_hat_k.low < 0.5 < (found.pass_hat_k.high or 0)
    # pass^2 = mean of C(c,2)/C(3,2) = (1 + 1 + 1/3 + 0 + 0 + 1) / 6
    assert found.curve == pytest.approx([2 / 3, 5 / 9, 1 / 2])


def test_breakdown_groups_and_subdimensions_carry_pass_hat_k(small_run: Path) -> None:
    result = load_run(small_run).results.packs[PACK]
    bands = result.breakdowns["band"]
    easy, hard = bands["easy"].passk, bands["hard"].passk
    assert easy is not None and hard is not None
    assert easy.pass_at_1.mean == pytest.approx(8 / 9) and easy.pass_hat_k.mean == pytest.approx(2 / 3)
    assert hard.pass_at_1.mean == pytest.approx(4 / 9) and hard.pass_hat_k.mean == pytest.approx(1 / 3)
    precision = result.subdimension_passk["parameter_precision"]
    # t01, t02, t05 had full marks in every trial; t03's 0.9 is not a pass of the subdimension.
    assert precision.pass_hat_k.mean == 0.75 and precision.pass_hat_k.n == 4
    assert precision.pass_at_1.mean == pytest.approx(11 / 12)
    selection = result.subdimension_passk["tool_selection"]
    assert selection.pass_hat_k.mean == 0.5  # full marks exactly when the trial passed


# --- the gate rule


N = 120
PASS_HAT_K_SPEC = {"packs": {PACK: {"metric": "pass_hat_k", "allowed_drop": 0.1}}}
PASS_RATE_SPEC = {"packs": {PACK: {"metric": "pass_rate", "allowed_drop": 0.1}}}


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    return {
        "base": write_trials_run(root, "base", _flaky(N, 0)),
        "same": write_trials_run(root, "same", _flaky(N, 0)),
        "flaky": write_trials_run(root, "flaky", _flaky(N, 24)),  # 24 items now fail one trial of three
        "k5": write_trials_run(root, "k5", _flaky(N, 0, k=5)),
    }


def _judge(runs: dict[str, Path], candidate: str, spec: dict[str, object]) -> gate.GateResult:
    return gate.judge(load_run(runs[candidate]), load_run(runs["base"]), parse_spec(spec), "test spec")


def test_pass_hat_k_rule_fails_what_the_pass_rate_lets_through(gate_runs: dict[str, Path]) -> None:
    # The pass rate fell by 24/360 = 0.067, inside the allowance; 24 of 120 items no longer pass every time.
    assert _judge(gate_runs, "flaky", PASS_RATE_SPEC).verdict == "Pass"
    result = _judge(gate_runs, "flaky", PASS_HAT_K_SPEC)
    assert result.verdict == "FailToolcall" and result.exit_code == gate.EXIT_FAIL
    rule = result.rules[0]
    assert rule.id == "toolcall.pass_hat_k.drop" and rule.status == "fail"
    assert rule.value == pytest.approx(0.2)  # 1.0 -> 0.8
    assert rule.comparison is not None and rule.comparison.test == "mcnemar-exact"
    assert (rule.comparison.regressed, rule.comparison.improved) == (24, 0)
    assert result.line.startswith("FailToolcall: toolcall.pass_hat_k.drop: toolcall pass_hat_k fell 0.200")


def test_pass_hat_k_rule_passes_an_unchanged_candidate_and_holds_a_floor(gate_runs: dict[str, Path]) -> None:
    assert _judge(gate_runs, "same", PASS_HAT_K_SPEC).verdict == "Pass"
    floor = _judge(gate_runs, "flaky", {"packs": {PACK: {"metric": "pass_hat_k", "floor": 0.9}}})
    assert floor.verdict == "FailToolcall" and floor.rules[0].id == "toolcall.pass_hat_k.floor"
    assert floor.rules[0].value == pytest.approx(0.8)


def test_pass_hat_k_with_a_different_k_is_invalid_with_one_line(gate_runs: dict[str, Path]) -> None:
    result = _judge(gate_runs, "k5", PASS_HAT_K_SPEC)
    assert result.verdict == "Invalid" and result.exit_code == gate.EXIT_INVALID
    assert result.invalid_reasons == [
        "toolcall pass_hat_k: the baseline asked each item 3 times, the candidate 5: "
        "pass^k pairs only runs with the same --repeats"
    ]
    assert _judge(gate_runs, "k5", PASS_RATE_SPEC).verdict != "Invalid"  # other measures still compare


def test_the_cli_gate_takes_a_pass_hat_k_spec(gate_runs: dict[str, Path], tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(PASS_HAT_K_SPEC), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "gate", str(gate_runs["k5"]), "--baseline",
                           str(gate_runs["base"]), "--spec", str(spec)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "Invalid: toolcall pass_hat_k: the baseline asked each item 3 times, the candidate 5: "
        "pass^k pairs only runs with the same --repeats"
    ]
    with pytest.raises(UserError, match=r"packs\.toolcall\.metric: 'pass_hat_kk' is not one of"):
        parse_spec({"packs": {PACK: {"metric": "pass_hat_kk"}}})


# --- the report


class _Tables(HTMLParser):
    """Rows of every table with an id: id -> [[cell text, ...], ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id")
            if self._table:
                self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _rows(table: list[list[str]]) -> dict[str, list[str]]:
    """Body rows by their first cell (the header rows hold run labels and the index name)."""
    return {row[0]: row[1:] for row in table if row and row[0] not in ("", "item")}


def test_report_shows_each_items_trials_as_marks(gate_runs: dict[str, Path], tmp_path: Path) -> None:
    outcomes = _flaky(10, 3) | {HOSTILE_ID: [False, True, False]}
    hostile = write_trials_run(tmp_path, "hostile", outcomes)
    runs = [load_run(gate_runs["base"]), load_run(gate_runs["flaky"])]
    html = report.render_report(runs)
    parser = _Tables()
    parser.feed(html)
    rows = _rows(parser.tables["T_toolcall-trials"])
    assert rows["t-000"] == ["✓✓✓ 3/3", "✓✓✗ 2/3"]
    assert rows["t-100"] == ["✓✓✓ 3/3", "✓✓✓ 3/3"]
    assert list(rows)[:24] == [f"t-{i:03d}" for i in range(24)]  # mixed outcomes first
    row = next(cells[1:] for cells in parser.tables["T_packs"] if cells[0] == "pass^k")  # under toolcall's rowspan
    assert row[0].startswith("1.000") and "k=3" in row[0] and row[1].startswith("0.800") and row[2].startswith("-0.200")
    assert "pass^3 0.800" in html

    single = report.render_report([load_run(hostile)])
    parser = _Tables()
    parser.feed(single)
    rows = _rows(parser.tables["T_toolcall-trials"])
    assert rows[HOSTILE_ID] == ["✗✓✗ 1/3"]  # the id came back as text
    assert "<b>x</b>" not in single and "t-&lt;b&gt;x&lt;/b&gt;" in single
    assert re.search(r"trials <span class=\"marks\">[✓✗]{3}</span>", single)  # the drill-down's score row


def test_a_run_without_repeats_has_no_trials_section(tmp_path: Path) -> None:
    run = load_run(write_trials_run(tmp_path, "once", {f"t-{i}": [i % 2 == 0] for i in range(6)}))
    found = run.results.packs[PACK].passk
    assert found is not None and found.k == 1 and found.pass_hat_k.mean == found.pass_at_1.mean == 0.5
    html = report.render_report([run])
    assert 'id="trials"' not in html and "T_toolcall-trials" not in html
