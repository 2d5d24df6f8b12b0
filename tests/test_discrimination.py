"""bench packs --discrimination: items whose outcome never changed across runs, on stored runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from packruns import Regression, RunSpec, planted_item_ids, write_pack_run
from rundirs import write_run

from bench.compare.discrimination import discrimination
from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.report import html as report

SELECTION = {"toolcall": "quick"}
WRONG = Regression(pack="toolcall", attacks="parameter_precision", fraction=1.0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real toolcall pack's quick items: answered with their references, or (twice) with the
    stored wrong replies on every item that has one attacking parameter precision."""
    root = tmp_path_factory.mktemp("discrimination")
    return {
        "reference": write_pack_run(root, "reference", RunSpec(selection=SELECTION)),
        "wrong": write_pack_run(root, "wrong", RunSpec(model="cand", selection=SELECTION, regression=WRONG)),
        "wrong-again": write_pack_run(root, "wrong-again", RunSpec(model="cand2", selection=SELECTION, regression=WRONG)),
    }


@pytest.fixture(scope="module")
def planted() -> list[str]:
    return sorted(planted_item_ids(WRONG, SELECTION))


def bench(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_items_that_changed_are_the_planted_ones(runs: dict[str, Path], planted: list[str]) -> None:
    found = discrimination([load_run(runs["reference"]), load_run(runs["wrong"])]).packs
    assert [pack.pack for pack in found] == ["toolcall"]
    pack = found[0]
    assert pack.items == 15 and pack.observations == 2 and not pack.not_in_every_run
    assert 0 < len(planted) < 15
    assert pack.changed == len(planted)
    assert pack.changed_share == pytest.approx(len(planted) / 15)
    assert pack.always_failed == []  # every reference reply passes
    assert set(pack.always_passed).isdisjoint(planted)
    assert len(pack.always_passed) == 15 - len(planted)


def test_an_item_every_run_fails_is_listed_as_always_failed(runs: dict[str, Path], planted: list[str]) -> None:
    pack = discrimination([load_run(runs["wrong"]), load_run(runs["wrong-again"])]).packs[0]
    assert pack.always_failed == planted  # the same wrong reply twice: no run can pass it
    assert pack.changed == 0 and pack.changed_share == 0.0
    three = discrimination([load_run(runs[name]) for name in ("reference", "wrong", "wrong-again")]).packs[0]
    assert three.always_failed == [] and three.changed == len(planted) and three.observations == 3


def test_cli_lists_the_frozen_items_and_writes_json(runs: dict[str, Path], planted: list[str]) -> None:
    proc = bench("packs", "--discrimination", runs["wrong"], runs["wrong-again"])
    assert proc.returncode == 0, proc.stderr
    assert f"toolcall always failed ({len(planted)}): {', '.join(planted)}" in proc.stdout
    assert "always passed" in proc.stdout and "changed" in proc.stdout
    proc = bench("packs", "--discrimination", "--json", runs["reference"], runs["wrong"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["runs"] == [str(runs["reference"]), str(runs["wrong"])]
    (pack,) = data["packs"]
    assert pack["pack"] == "toolcall" and pack["changed"] == len(planted) and pack["items"] == 15
    assert pack["always_failed"] == [] and len(pack["always_passed"]) == 15 - len(planted)


def test_trials_of_one_run_count_as_observations(tmp_path: Path) -> None:
    path = write_run(tmp_path, "noisy", packs=("toolcall",), n_per_pack=30, repeats=3, repeat_noise=0.3)
    by_item: dict[str, set[bool]] = defaultdict(set)
    for line in (path / "items.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        by_item[record["item_id"]].add(record["score"]["passed"])
    pack = discrimination([load_run(path)]).packs[0]
    assert pack.observations == 3 and pack.items == 30
    assert pack.always_passed == sorted(i for i, seen in by_item.items() if seen == {True})
    assert pack.always_failed == sorted(i for i, seen in by_item.items() if seen == {False})
    assert pack.changed == sum(len(seen) == 2 for seen in by_item.values()) > 0


def test_one_observation_per_item_says_so(tmp_path: Path) -> None:
    pack = discrimination([load_run(write_run(tmp_path, "once", packs=("toolcall",), n_per_pack=6))]).packs[0]
    assert pack.changed == 0 and pack.note.startswith("one run with one trial per item")


def test_runs_of_different_pack_versions_get_one_line(tmp_path: Path) -> None:
    old = write_run(tmp_path, "v1", packs=("toolcall",), n_per_pack=6)
    new = write_run(tmp_path, "v2", packs=("toolcall",), n_per_pack=6, pack_versions={"toolcall": "2"})
    with pytest.raises(UserError, match=r"^toolcall: the runs asked different items \(v1: version 1, .*v2: version 2"):
        discrimination([load_run(old), load_run(new)])
    proc = bench("packs", "--discrimination", old, new)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: toolcall: the runs asked")
    html = report.render_report([load_run(old), load_run(new)])
    assert 'id="discrimination"' in html and "the runs asked different items" in html


@pytest.mark.parametrize(("args", "says"), [
    (["--discrimination"], "--discrimination needs run directories"),
    (["runs/x"], "run directories are read only with --discrimination"),
    (["--json"], "--json goes with --discrimination"),
    (["--discrimination", "no/such/run"], "no/such/run is not a directory"),
])  # fmt: skip
def test_misuse_is_one_line(args: list[str], says: str) -> None:
    proc = bench("packs", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and says in proc.stderr


def test_report_has_a_discrimination_table(runs: dict[str, Path], planted: list[str]) -> None:
    html = report.render_report([load_run(runs["wrong"]), load_run(runs["wrong-again"])])
    assert 'id="T_discrimination"' in html
    assert planted[0] in html.split('id="T_discrimination"')[1].split("</table>")[0]
