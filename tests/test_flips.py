"""bench flips: per-item paired tables, exact McNemar, and noise floors, on runs with planted outcomes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from packruns import Regression, RunSpec, planted_item_ids, write_pack_run

from bench import stats
from bench.cli import main
from bench.compare.flips import flips
from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.pack import Item, Pack, Score, Tier
from bench.records import ItemRecord, Manifest, PackEntry, PreflightCheck, ServerInfo
from bench.report import html as report
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.transcript import Exchange, Request, Response, Transcript

PACK = "toolcall"
SUBDIMENSIONS = ("tool_selection", "parameter_precision")
HOSTILE_ID = "t-<b>x</b>"
Trial = bool | None  # passed, failed, or a request that failed (no score)


class FlipPack(Pack):
    """The items of one test run; scores are written with the records."""

    version = "1"
    subdimensions = SUBDIMENSIONS

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.name = PACK
        self._items = [Item(id=item_id, data={}) for item_id in item_ids]

    def items(self, tier: Tier = "full") -> list[Item]:
        return list(self._items)

    def score(self, item: Item, transcript: Transcript) -> Score:
        raise NotImplementedError("scored when written")


def _record(item_id: str, repeat: int, passed: Trial, precision: float | None) -> ItemRecord:
    response = Response(content=f"answer {repeat} to {item_id}", finish_reason="stop", latency_s=0.1)
    transcript = Transcript(exchanges=[Exchange(request=Request(messages=[{"role": "user", "content": item_id}]),
                                                response=response)])
    score = None
    if passed is not None:
        subscores = {"tool_selection": 1.0 if passed else 0.0}
        if precision is not None:
            subscores["parameter_precision"] = precision
        score = Score(value=1.0 if passed else 0.0, passed=passed, subscores=subscores)
    return ItemRecord(
        pack=PACK, pack_version="1", item_id=item_id, repeat=repeat, seed=repeat, transcript=transcript, score=score,
        error=None if passed is not None else "server returned 500 three times",
        started_at="2025-01-01T00:00:00Z", finished_at="2025-01-01T00:00:01Z", elapsed_s=0.1,
    )  # fmt: skip


def write_outcomes(root: Path, run_id: str, outcomes: Mapping[str, Sequence[Trial]], *, seed: int = 0,
                   precision: Mapping[str, float] | None = None, data: bytes = b"flip items") -> Path:
    """A run whose item ``i`` has exactly the trials ``outcomes[i]``; ``precision`` gives a
    parameter_precision subscore (to every trial) of the items it names, the others lack it."""
    precision = precision or {}
    k = max(len(trials) for trials in outcomes.values())
    store = RunStore.create(root, run_id)
    store.write_manifest(Manifest(
        run_id=run_id, created_at="2025-01-01T00:00:00Z", bench_version="0.1.0", model="/models/base",
        server=ServerInfo(launched=False, endpoints=["http://127.0.0.1:8000/v1"], chat_template_sha256="a" * 64),
        preflight=[PreflightCheck(name="first_request", ok=True)],
        packs=[PackEntry(name=PACK, version="1", data_hash=hashlib.sha256(data).hexdigest(), items=len(outcomes),
                         tier="full", subdimensions=list(SUBDIMENSIONS), sampling={"temperature": 0.6})],
        repeats=k, seed=seed, concurrency=4, status="complete",
    ))  # fmt: skip
    records = [_record(item_id, repeat, passed, precision.get(item_id))
               for item_id, trials in outcomes.items() for repeat, passed in enumerate(trials)]
    store.rewrite_items(records)
    store.write_results(build_results(run_id, {PACK: FlipPack(list(outcomes))}, records, {PACK: len(records)}))
    return store.root


def _single(right: Sequence[str], wrong: Sequence[str]) -> dict[str, list[Trial]]:
    return {item_id: [True] for item_id in right} | {item_id: [False] for item_id in wrong}


PLANTED = [HOSTILE_ID, *(f"t-planted-{i}" for i in range(5))]  # right in the base, wrong in the candidate
RECOVERED = ["t-recovered"]  # wrong in the base, right in the candidate
STEADY = [f"t-steady-{i:02d}" for i in range(10)]  # right in both
HARD = ["t-hard-0", "t-hard-1", "t-hard-2"]  # wrong in both
BASE = _single([*PLANTED, *STEADY], [*RECOVERED, *HARD])
CANDIDATE = _single([*RECOVERED, *STEADY], [*PLANTED, *HARD])
# The rerun of the base flips two items: one planted item fails there too, one hard item passes.
RERUN = _single([*PLANTED[1:], *STEADY, HARD[0]], [PLANTED[0], *RECOVERED, *HARD[1:]])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flips")
    # parameter_precision: a 0.9 is not full marks, so p-0 goes right -> wrong on it while it passes overall.
    return {
        "base": write_outcomes(root, "base", BASE, precision={STEADY[0]: 1.0, STEADY[1]: 1.0}),
        "cand": write_outcomes(root, "cand", CANDIDATE, precision={STEADY[0]: 0.9, STEADY[1]: 1.0}),
        "rerun": write_outcomes(root, "rerun", RERUN, seed=1, precision={STEADY[0]: 1.0, STEADY[1]: 1.0}),
        "other-data": write_outcomes(root, "other-data", CANDIDATE, data=b"other items"),
    }


# --- the table and McNemar


def test_planted_flips_give_exact_counts_and_mcnemar_p(runs: dict[str, Path]) -> None:
    found = flips(load_run(runs["base"]), load_run(runs["cand"]))
    (pack,) = found.packs
    assert pack.pack == PACK and not pack.refused and pack.trials == {"baseline": 1, "candidate": 1}
    table = pack.measures[0].table
    assert pack.measures[0].measure == "pass"
    assert (table.right_to_wrong, table.wrong_to_right, table.both_right, table.both_wrong) == (6, 1, 10, 3)
    assert table.paired == 20 and table.unpaired == 0
    assert table.regressed == sorted(PLANTED) and table.improved == RECOVERED
    # Exact two-sided McNemar on 6 vs 1: P(X <= 1 | n=7, 1/2) = 8/128, doubled.
    assert table.p_value == pytest.approx(16 / 128)
    # The same p as the gate's paired comparison of the pass flags.
    base = {i: float(t[0] is True) for i, t in BASE.items()}
    cand = {i: float(t[0] is True) for i, t in CANDIDATE.items()}
    assert stats.compare_paired(base, cand).p_value == pytest.approx(table.p_value)
    assert "no noise floor" in " ".join(pack.notes) and pack.measures[0].floors == []


def test_a_subdimension_pairs_only_the_items_it_applies_to(runs: dict[str, Path]) -> None:
    (pack,) = flips(load_run(runs["base"]), load_run(runs["cand"])).packs
    measures = {measure.measure: measure.table for measure in pack.measures}
    assert list(measures) == ["pass", "tool_selection", "parameter_precision"]
    precision = measures["parameter_precision"]
    assert precision.paired == 2  # only the two items carrying the subscore
    assert precision.regressed == [STEADY[0]] and precision.both_right == 1  # 0.9 is not full marks
    assert measures["tool_selection"].right_to_wrong == 6  # follows the pass flag in these records


# --- noise floors


def test_a_rerun_of_the_base_gives_the_floor_and_the_excess_test(runs: dict[str, Path]) -> None:
    found = flips(load_run(runs["base"]), load_run(runs["cand"]), load_run(runs["rerun"]))
    (pack,) = found.packs
    assert pack.trials == {"baseline": 1, "candidate": 1, "noise": 1}
    measure = pack.measures[0]
    (floor,) = measure.floors
    assert floor.source == "rerun" and floor.paired == 20
    assert (floor.right_to_wrong, floor.wrong_to_right, floor.per_direction) == (1, 1, 1.0)
    # Base-right items: the candidate lost five the rerun kept; the rerun lost none the candidate kept
    # (its one loss, the hostile id, the candidate lost too): 5 vs 0 -> 2 * (1/2)^5.
    assert (floor.lost_only_by_candidate, floor.lost_only_by_rerun) == (5, 0)
    assert floor.excess_p == pytest.approx(2 / 32)
    assert "6 right→wrong, 1 wrong→right of 20 paired" in measure.line()
    assert "vs 1 right→wrong in base-vs-base, excess p=0.062" in measure.line()
    assert not any("no noise floor" in note for note in pack.notes)
    assert found.notes == []  # same model, another seed: nothing to warn about


def test_a_rerun_at_the_same_seed_is_noted(runs: dict[str, Path], tmp_path: Path) -> None:
    same_seed = write_outcomes(tmp_path, "same-seed", RERUN, seed=0)
    found = flips(load_run(runs["base"]), load_run(runs["cand"]), load_run(same_seed))
    assert len(found.notes) == 1 and "baseline's seed (0)" in found.notes[0]


def test_the_bases_own_repeats_give_a_floor(tmp_path: Path) -> None:
    # Pairs of trials (0,1), (0,2), (1,2): "a" flips right->wrong twice, "b" wrong->right twice.
    base = {"a": [True, True, False], "b": [False, True, True], "c": [True, True, True], "d": [False, False, False]}
    # Majorities: base a, b, c right, d wrong; candidate a wrong, b right, c split (one unscored), d wrong.
    cand = {"a": [False, False, True], "b": [True, True, True], "c": [True, False, None], "d": [False, False, True]}
    found = flips(load_run(write_outcomes(tmp_path, "base", base)), load_run(write_outcomes(tmp_path, "cand", cand)))
    (pack,) = found.packs
    measure = pack.measures[0]
    table = measure.table
    assert (table.right_to_wrong, table.wrong_to_right, table.both_right, table.both_wrong) == (1, 0, 1, 1)
    assert table.unpaired == 1 and table.regressed == ["a"] and table.p_value == 1.0
    (floor,) = measure.floors
    assert floor.source == "repeats" and floor.paired == 4
    assert floor.right_to_wrong == pytest.approx(2 / 3) and floor.wrong_to_right == pytest.approx(2 / 3)
    assert floor.per_direction == pytest.approx(2 / 3)
    assert "0.7 per direction between base trials (3 repeats, 3 pairs)" in measure.line()
    assert pack.notes == []


# --- bad input


def test_runs_of_different_items_are_refused_in_one_line(runs: dict[str, Path]) -> None:
    (pack,) = flips(load_run(runs["base"]), load_run(runs["other-data"])).packs
    assert pack.measures == [] and pack.refused.startswith(f"{PACK}: the runs asked different items")
    assert "\n" not in pack.refused
    (pack,) = flips(load_run(runs["base"]), load_run(runs["cand"]), load_run(runs["other-data"])).packs
    assert pack.measures[0].floors == []  # a noise run of other items gives no floor, only its line
    assert any(note.startswith("no base-vs-base floor: the runs asked different items") for note in pack.notes)


def bench(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> tuple[int, str, str]:
    """Run the bench entry point in this process: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["bench", *map(str, args)])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def test_cli_prints_the_table_and_json(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = bench(capsys, monkeypatch, "flips", runs["cand"], "--baseline", runs["base"],
                           "--noise", runs["rerun"])
    assert code == 0, err
    row = next(line for line in out.splitlines() if " pass " in line)
    assert [cell.strip() for cell in row.split("│")[3:9]] == ["20", "6", "1", "10", "3", "0.12"]
    assert f"{PACK} pass right→wrong (6): {', '.join(sorted(PLANTED))}" in out
    code, out, err = bench(capsys, monkeypatch, "flips", runs["cand"], "-b", runs["base"], "--noise", runs["rerun"], "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["noise"] == str(runs["rerun"])
    table = data["packs"][0]["measures"][0]["table"]
    assert (table["right_to_wrong"], table["wrong_to_right"], table["both_right"], table["both_wrong"]) == (6, 1, 10, 3)
    assert data["packs"][0]["measures"][0]["floors"][0]["excess_p"] == pytest.approx(2 / 32)


@pytest.mark.parametrize(("extra", "expected"), [
    (("--baseline", "no-such-baseline"), "no-such-baseline is neither a run directory nor a baseline"),
    (("--baseline", "{base}", "--noise", "{base}"), "is the baseline itself: give a second run of the base"),
    (("--baseline", "{base}", "--packs", "mmlu"), "--packs mmlu: not in both runs (both hold: toolcall)"),
    (("--baseline", "{other-data}"), f"error: {PACK}: the runs asked different items"),
])  # fmt: skip
def test_cli_bad_input_is_one_line(runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path, extra: tuple[str, ...], expected: str) -> None:
    args = [arg.format(**{name: str(path) for name, path in runs.items()}) for arg in extra]
    code, out, err = bench(capsys, monkeypatch, "flips", runs["cand"], *args, "--baselines-dir", tmp_path)
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_installed_command_refuses_other_items_without_a_traceback(runs: dict[str, Path]) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "flips", str(runs["cand"]), "--baseline", str(runs["other-data"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {PACK}: the runs asked different items (baseline other-data: version 1")
    assert proc.stderr.count("\n") == 1


# --- the report


def test_report_section_shows_the_table_floor_and_escapes_ids(runs: dict[str, Path]) -> None:
    html = report.render_report([load_run(runs["base"]), load_run(runs["cand"])], noise=load_run(runs["rerun"]))
    assert 'id="flips"' in html and 'id="T_flip-table-1"' in html
    section = html[html.index('id="flips"'):html.index("Items by category")]
    assert "6 right→wrong, 1 wrong→right of 20 paired (McNemar p=0.12); vs 1 right→wrong in base-vs-base" in section
    assert "t-&lt;b&gt;x&lt;/b&gt;" in section  # the hostile id is listed among the right→wrong ids, as text
    assert "<b>x</b>" not in html
    assert ' worse"' not in section  # p = 0.12: no count is marked as a significant drop
    without_floor = report.render_report([load_run(runs["base"]), load_run(runs["cand"])])
    assert "no noise floor: give a rerun of the base" in without_floor
    assert 'id="flips"' not in report.render_report([load_run(runs["base"])])


def test_report_command_takes_the_noise_run(runs: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out_file = tmp_path / "report.html"
    code, _, err = bench(capsys, monkeypatch, "report", runs["base"], runs["cand"], "--noise", runs["rerun"], "-o", out_file)
    assert code == 0, err
    assert "vs 1 right→wrong in base-vs-base, excess p=0.062" in out_file.read_text(encoding="utf-8")
    code, _, err = bench(capsys, monkeypatch, "report", runs["base"], "--noise", runs["rerun"], "-o", out_file)
    assert code == 2 and err.startswith("error: --noise sets the floor for flips between the first run and another")


def test_report_marks_a_significant_drop(tmp_path: Path) -> None:
    base = write_outcomes(tmp_path, "base", {f"t-{i:02d}": [True] for i in range(20)})
    cand = write_outcomes(tmp_path, "cand", {f"t-{i:02d}": [i >= 10] for i in range(20)})  # 10 vs 0: p = 2^-9
    html = report.render_report([load_run(base), load_run(cand)])
    section = html[html.index('id="flips"'):html.index("Items by category")]
    assert '<td class="data row0 col1 worse" >10</td>' in section and "(McNemar p=0.002)" in section


def test_report_gives_one_line_for_other_items_and_refuses_the_base_as_noise(runs: dict[str, Path]) -> None:
    html = report.render_report([load_run(runs["base"]), load_run(runs["other-data"])])
    section = html[html.index('id="flips"'):html.index("Items by category")]
    assert f"{PACK}: the runs asked different items" in section and 'id="T_flip-table-1"' not in section
    with pytest.raises(UserError, match="is the first run itself"):
        report.render_report([load_run(runs["base"]), load_run(runs["cand"])], noise=load_run(runs["base"]))


# --- real packs, a planted regression


def test_real_pack_regression_flips_exactly_the_planted_items(tmp_path: Path) -> None:
    selection = {"toolcall": "quick"}
    wrong = Regression(pack="toolcall", attacks="parameter_precision", fraction=0.5)
    base = load_run(write_pack_run(tmp_path, "reference", RunSpec(selection=selection)))
    cand = load_run(write_pack_run(tmp_path, "wrong", RunSpec(model="cand", selection=selection, regression=wrong)))
    planted = sorted(planted_item_ids(wrong, selection))
    (pack,) = flips(base, cand).packs
    table = pack.measures[0].table
    assert table.regressed == planted and table.wrong_to_right == 0 and table.both_wrong == 0
    assert table.paired == 15 and table.both_right == 15 - len(planted)
    assert table.p_value == pytest.approx(min(1.0, 2 * 0.5 ** len(planted)))
    precision = next(m.table for m in pack.measures if m.measure == "parameter_precision")
    assert set(precision.regressed) <= set(planted) and precision.regressed  # the subdimension the reply attacks
