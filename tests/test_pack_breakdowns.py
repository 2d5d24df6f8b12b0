"""Declared breakdowns reach results.json with intervals and the report shows every group;
pack options are typed; every pack follows one layout."""

from __future__ import annotations

import importlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rundirs import write_run

from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.pack import JsonlPack, Pack
from bench.packs.bugfind import BugFindPack
from bench.packs.dataextract import DataExtractPack
from bench.packs.instructfollow import InstructFollowPack
from bench.packs.smoke import SmokePack
from bench.packs.toolcall import ToolCallPack
from bench.records import ItemRecord, Results
from bench.report import html as report
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.testing import record_for, transcript_for_answer, transcript_for_text

PACKS_DIR = Path(__file__).resolve().parents[1] / "packs"
# Hand-written packs whose reference answers need no sandbox to score (bugfind's Python fixes do).
FAST: dict[str, type[JsonlPack]] = {"toolcall": ToolCallPack, "dataextract": DataExtractPack, "instructfollow": InstructFollowPack}


def _reference_records(pack: Pack, per_group: int = 2) -> list[ItemRecord]:
    """Reference and first wrong answers of a few items per group, scored by the pack itself."""
    seen: dict[tuple[str, str], int] = {}
    records = []
    for item in pack.items("full"):
        keys = [(name, group) for name, group in pack.groups(item).items()]
        if all(seen.get(key, 0) >= per_group for key in keys):
            continue
        for key in keys:
            seen[key] = seen.get(key, 0) + 1
        assert item.reference is not None
        records.append(record_for(pack, item, transcript_for_answer(item.reference)))
        if item.wrong:
            records.append(record_for(pack, item, transcript_for_answer(item.wrong[0]), repeat=1))
    return records


@pytest.mark.parametrize("name", sorted(FAST))
def test_declared_breakdowns_reach_results_with_intervals(name: str, tmp_path: Path) -> None:
    pack = FAST[name]()
    records = _reference_records(pack)
    results = build_results("r", {name: pack}, records, {name: len(records)})
    store = RunStore.create(tmp_path, "r")
    store.write_results(results)  # validated against the checked-in schema on write
    result = store.read_results().packs[name]
    assert list(result.breakdowns) == list(pack.breakdowns)
    for breakdown, groups in result.breakdowns.items():
        expected = {pack.groups(item)[breakdown] for item in pack.items("full") if any(r.item_id == item.id for r in records)}
        assert set(groups) == expected, breakdown
        assert sum(group.score.n for group in groups.values()) == result.n
        for group_name, group in groups.items():
            assert group.score.mean is not None
            # A reference and a wrong answer fold to one value between them (toolcall's two-step
            # references need their tool rounds, which a one-reply transcript lacks).
            if group_name != "two_step":
                assert 0 < group.score.mean < 1, (breakdown, group_name)
            assert group.score.low is not None and group.score.high is not None
            assert group.score.low <= group.score.mean <= group.score.high


def test_bugfind_breaks_down_by_language_and_bug_kind() -> None:
    pack = BugFindPack()
    items = [item for item in pack.items("full") if item.data["language"] != "python"][:6]
    records = [record_for(pack, item, transcript_for_answer(item.reference or {})) for item in items]
    result = build_results("r", {"bugfind": pack}, records, {"bugfind": len(records)}).packs["bugfind"]
    assert set(result.breakdowns) == {"language", "kind"}
    assert set(result.breakdowns["language"]) == {item.data["language"] for item in items}
    assert set(result.breakdowns["kind"]) == {(item.data["bug"] or {}).get("kind", "no_bug") for item in items}
    assert all(group.score.mean == 1.0 for group in result.breakdowns["language"].values())


def test_failed_groups_and_empty_breakdowns_still_appear() -> None:
    pack = SmokePack()
    say, tool = pack.items("full")[0], pack.items("full")[6]
    ok = record_for(pack, say, transcript_for_text("hello"))
    failed = record_for(pack, tool, transcript_for_text("x")).model_copy(update={"score": None, "error": "timeout"})
    result = build_results("r", {"smoke": pack}, [ok, failed], {"smoke": 2}).packs["smoke"]
    assert result.breakdowns["kind"]["say"].score.mean == 1.0
    assert result.breakdowns["kind"]["tool"].score.n == 0 and result.breakdowns["kind"]["tool"].score.mean is None
    assert build_results("r", {"smoke": pack}, [], {"smoke": 0}).packs["smoke"].breakdowns == {"kind": {}}


def test_old_results_without_breakdowns_still_load() -> None:
    old = {"run_id": "r", "valid": True, "complete": True, "packs": {"p": {
        "name": "p", "version": "1", "n": 0, "score": {"mean": None, "n": 0}, "pass_rate": {"mean": None, "n": 0},
        "extra": {"subjects": {"a": {"accuracy": 1.0}}}}}}  # fmt: skip
    assert Results.model_validate(old).packs["p"].breakdowns == {}


class _Tables(HTMLParser):
    """Row headers of every table, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._table: str | None = None
        self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.rows.setdefault(self._table, [])
        self._in_th = tag == "th" and dict(attrs).get("class", "") is not None and "row_heading" in (dict(attrs).get("class") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "th":
            self._in_th = False

    def handle_data(self, data: str) -> None:
        if self._in_th and self._table is not None and data.strip():
            self.rows[self._table].append(data.strip())


def test_report_shows_every_breakdown_group_with_deltas(tmp_path: Path) -> None:
    base = write_run(tmp_path, "base", packs=("toolcall", "mmlu"), n_per_pack=24)
    cand = write_run(tmp_path, "cand", packs=("toolcall", "mmlu"), n_per_pack=24, regress={"mmlu": 1.0})
    runs = [load_run(base), load_run(cand)]
    page = report.render_report(runs, max_items=5)
    parser = _Tables()
    parser.feed(page)
    groups = runs[0].results.packs["mmlu"].breakdowns["subject"]
    assert len(groups) == 8
    assert parser.rows["T_mmlu-subject"] == sorted(groups)
    frame, _ = report.breakdown_table(runs, ["base", "cand"], "mmlu", "subject")
    assert list(frame.columns) == ["base", "cand", "Δ cand"]
    assert all(cell.startswith("-") for cell in frame["Δ cand"])  # every right answer regressed
    assert "mmlu by subject" in page


def test_options_are_typed_and_bad_ones_are_one_line() -> None:
    assert BugFindPack.from_options({"timeout_s": "2"}).timeout_s == 2.0
    assert isinstance(SmokePack.from_options({}), SmokePack)
    with pytest.raises(UserError, match="pack 'smoke' has no option 'x'; its options: none"):
        SmokePack.from_options({"x": "1"})
    with pytest.raises(UserError) as caught:
        BugFindPack.from_options({"timeout_s": "-1"})
    assert "\n" not in str(caught.value) and "timeout_s" in str(caught.value)


@pytest.mark.parametrize("folder", sorted(p.name for p in PACKS_DIR.iterdir() if (p / "__init__.py").is_file()))
def test_every_pack_follows_the_layout(folder: str) -> None:
    root = PACKS_DIR / folder
    assert (root / "pack.py").is_file() and (root / "scoring.py").is_file()
    package = importlib.import_module(f"bench.packs.{folder}")
    classes = [getattr(package, name) for name in package.__all__ if isinstance(getattr(package, name), type)]
    pack_class = next(cls for cls in classes if issubclass(cls, Pack))
    assert pack_class.__module__ == f"bench.packs.{folder}.pack"
    if (root / "items.jsonl").is_file():
        assert issubclass(pack_class, JsonlPack) and (root / "item.schema.json").is_file()
