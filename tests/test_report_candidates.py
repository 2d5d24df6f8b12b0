"""The report's candidates section and expert heatmaps, read back from the rendered page."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from candidate_tables import HOSTILE_LABEL, sample_summary, sample_table, write_pruning
from rundirs import write_run

from bench.candidate.summary import report_table, write_loop_report, write_summary
from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.report import html as report
from bench.report.candidates import load_candidate_table, table_cells
from bench.run.checkpoint_facts import copy_checkpoint_facts

SVG = "{http://www.w3.org/2000/svg}"
CELL_TITLE = re.compile(r"^layer (\d+), expert (\d+) \((kept as expert \d+|pruned)\): reap score ([^;]+)")


class _Table(HTMLParser):
    """The text of every cell of the table with a given id, row by row."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.rows, self._inside, self._cell = table_id, [], False, None  # type: ignore[var-annotated]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self._inside = True
        elif self._inside and tag == "tr":
            self.rows.append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        elif self._inside and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data


def table_rows(html: str, table_id: str) -> list[list[str]]:
    parser = _Table(table_id)
    parser.feed(html)
    return parser.rows


def expert_svgs(html: str, section: str) -> list[ET.Element]:
    """The expert heatmaps inside one ``<section id=...>``, parsed as XML."""
    match = re.search(rf'<section id="{section}">(.*?)</section>', html, re.S)
    assert match, f"no section {section}"
    return [ET.fromstring(svg) for svg in re.findall(r'<svg [^>]*class="chart expert-map".*?</svg>', match.group(1), re.S)]


def cells(svg: ET.Element) -> dict[tuple[int, int], tuple[str, str]]:
    """(layer, expert) -> (class, tooltip) of every cell of a heatmap."""
    found = {}
    for rect in svg.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is None:
            continue  # legend swatches
        match = CELL_TITLE.match(title.text or "")
        assert match, title.text
        key = (int(match.group(1)), int(match.group(2)))
        assert key not in found
        found[key] = (rect.get("class", ""), title.text or "")
    return found


# ---------------------------------------------------------------------------------------------
# Size vs score


def test_table_rows_and_pareto_flags_match_the_summary(tmp_path: Path) -> None:
    runs = {"base": write_run(tmp_path, "base", n_per_pack=10), "mix-k6": write_run(tmp_path, "cand", n_per_pack=10)}
    summary = sample_summary(runs=runs)
    assert summary.pareto == ["mix-k4", "mix-k6", "base"]  # the hostile row is smaller than nothing it beats
    path = write_loop_report(summary, tmp_path / "loop")
    assert path is not None and summary.report == str(path)
    html = path.read_text(encoding="utf-8")
    rows = table_rows(html, "T_candidates")
    header, expected = table_cells(summary.packs, summary.rows)
    assert rows[0] == ["", *header[1:]]
    body = [row for row in rows[1:] if row[0] != "candidate"]  # pandas puts the index name on a row of its own
    assert [row[0] for row in body] == [row.label for row in summary.rows]
    for shown, cells_, row in zip(body, expected, summary.rows, strict=True):
        assert shown[:-1] == cells_[:-1]
        assert shown[-1] == ("yes" if row.label in summary.pareto else "no")
    assert dict((r[0], r[header.index("verdict")]) for r in body) == {
        "base": "(baseline)", "mix-k6": "Pass", "mix-k4": "FailToolcall", HOSTILE_LABEL: "FailToolcall", "mix-k2": "error"}
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "KL from base" not in html


def test_divergence_columns_reach_the_page(tmp_path: Path) -> None:
    from bench.records import Interval
    from bench.report.candidates import Divergence

    summary = sample_summary(runs={"base": write_run(tmp_path, "base", n_per_pack=10)})
    summary.rows[1].divergence = Divergence(mean_kl=Interval(mean=0.0412, n=30, low=0.0351, high=0.0478),
                                            top1_agreement=Interval(mean=0.912, n=30))
    path = write_loop_report(summary, tmp_path / "loop")
    assert path is not None
    rows = table_rows(path.read_text(encoding="utf-8"), "T_candidates")
    header = rows[0]
    kl, top1 = header.index("KL from base (nats) [95%]"), header.index("top-1 agreement")
    shown = {row[0]: (row[kl], row[top1]) for row in rows[1:] if row[0] != "candidate"}
    assert shown["base"] == ("(reference)", "(reference)")
    assert shown["mix-k6"] == ("0.0412 [0.0351, 0.0478]", "0.912")
    assert shown["mix-k4"] == ("-", "-")


def test_scatter_marks_base_and_front(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, "base", n_per_pack=10))
    html = report.render_report([run], candidates=sample_table())
    section = re.search(r'<section id="candidates">(.*?)</section>', html, re.S)
    assert section
    scatter = re.search(r'<svg class="chart" role="img" aria-label="candidates-scatter".*?</svg>', section.group(1), re.S)
    assert scatter
    svg = scatter.group(0)
    for label in ("base", "mix-k6", "mix-k4", "Pareto front", "dominated"):
        assert f">{label}<" in svg, label
    assert "&lt;b&gt;k2&lt;/b&gt;" in svg and "<b>" not in svg
    assert ">mix-k2<" not in svg  # no size, no score: not a point
    assert "Pareto front" in section.group(1) and "<code>mix-k4</code>, <code>mix-k6</code>, <code>base</code>" in html


def test_candidates_json_is_what_the_report_reads(tmp_path: Path) -> None:
    summary = sample_summary(pruning={"mix-k4": tmp_path / "k4" / "pruning.json"})
    json_path, _ = write_summary(summary, tmp_path)
    assert load_candidate_table(json_path) == report_table(summary)
    (tmp_path / "other.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(UserError, match=r"^candidate summary .*other.json: base: Field required$"):
        load_candidate_table(tmp_path / "other.json")


# ---------------------------------------------------------------------------------------------
# Expert heatmaps


def test_broken_or_missing_pruning_records_are_notes(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad-json" / "pruning.json"
    bad_json.parent.mkdir()
    bad_json.write_text("{not json")
    out_of_range = write_pruning(tmp_path / "bad-ids", layers=1, experts=4, keep=2)
    record = json.loads(out_of_range.read_text())
    record["layers"][0]["kept"] = [1, 9]
    out_of_range.write_text(json.dumps(record))
    table = sample_table(pruning={"mix-k6": bad_json, "mix-k4": out_of_range, "mix-k2": tmp_path / "gone" / "pruning.json"})
    served = write_run(tmp_path, "served", n_per_pack=10)
    assert copy_checkpoint_facts(bad_json.parent, served) == [served / "pruning.json"]
    html = report.render_report([load_run(served)], candidates=table)
    notes = re.findall(r'<p class="note">(.*?)</p>', html)
    assert notes == [
        f"mix-k6: no expert heatmap: pruning record {bad_json} is not valid JSON: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)",
        f"mix-k4: no expert heatmap: pruning record {out_of_range}: layers.0: Value error, kept ids [9] are outside 0..3",
        f"mix-k2: no expert heatmap: pruning record {tmp_path / 'gone' / 'pruning.json'} not found",
    ]
    assert 'id="pruning"' not in html  # the run's copy is the broken record already noted
    assert expert_svgs(html, "candidates") == []


def test_a_run_keeps_its_heatmap_after_the_checkpoint_is_gone(tmp_path: Path) -> None:
    checkpoint = write_pruning(tmp_path / "ckpt", layers=2, experts=6, keep=3).parent
    kept, plain = write_run(tmp_path / "runs", "pruned", n_per_pack=10), write_run(tmp_path / "runs", "plain", n_per_pack=10)
    copy_checkpoint_facts(checkpoint, kept)
    assert copy_checkpoint_facts(tmp_path / "unpruned", plain) == [] and copy_checkpoint_facts(None, plain) == []
    record = json.loads((checkpoint / "pruning.json").read_text())
    shutil.rmtree(checkpoint)
    for run in (kept, plain):  # the report must not look for the checkpoint, wherever the run says it was
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["model"] != str(checkpoint)
    html = report.render_report([load_run(plain), load_run(kept)])
    assert 'href="#pruning"' in html and 'id="candidates"' not in html
    assert "<summary><code>pruned</code> " in html and "<summary><code>plain</code> " not in html
    svgs = expert_svgs(html, "pruning")
    assert len(svgs) == 2
    assert sum(css == "kept" for css, _ in cells(svgs[0]).values()) == sum(len(layer["kept"]) for layer in record["layers"])
    assert "no expert heatmap" not in html  # (other sections have notes of their own, e.g. the flips' floor)

    html = report.render_report([load_run(plain)])
    assert 'id="pruning"' not in html and 'href="#pruning"' not in html and "no expert heatmap" not in html


def test_bench_run_copies_the_checkpoint_pruning_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.run import evaluation
    from bench.run.budgets import ModelFacts
    from bench.run.options import EvalOptions

    class Stop(Exception):
        pass

    def stop(*args: object) -> None:
        raise Stop

    checkpoint = write_pruning(tmp_path / "ckpt").parent
    monkeypatch.setattr(evaluation, "_precheck", lambda options: None)
    monkeypatch.setattr(evaluation, "model_facts", lambda options: (ModelFacts(), None))  # no config.json here
    monkeypatch.setattr(evaluation, "_connect", stop)  # nothing is served or asked: only the run directory is made
    options = evaluation.RunOptions(model=str(checkpoint), runs_dir=str(tmp_path / "runs"), run_id="r",
                                    evaluate=EvalOptions(packs="smoke"))
    with pytest.raises(Stop):
        evaluation.execute(options, echo=lambda line: None)
    assert (tmp_path / "runs" / "r" / "pruning.json").read_bytes() == (checkpoint / "pruning.json").read_bytes()


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted tiny MoE, pruned to half its experts by a real REAP pass on a few lines of text."""
    pytest.importorskip("torch")
    import torch

    from bench.engine.compute.prune import prune_checkpoint
    from bench.engine.planning.calibration import Mix
    from bench.engine.planning.prune_plan import PruneOptions
    from bench.engine.toys.builders import build_scripted

    root = tmp_path_factory.mktemp("pruned")
    text = root / "text.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}  # the quick brown fox"})
                              for i in range(6)))
    mix = Mix(name="lines", seq_len=64, samples=6, datasets=[{"adapter": "text", "count": 6, "data_files": str(text)}])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices on shared cores: one thread avoids OpenMP spin-waits
    try:
        prune_checkpoint(build_scripted(root / "scripted"), root / "pruned", mix, PruneOptions(compression=0.5))
    finally:
        torch.set_num_threads(threads)
    return root / "pruned"


def _check_maps(svgs: list[ET.Element], record: dict) -> None:  # type: ignore[type-arg]
    assert len(svgs) == 2  # by score, by usage
    n_experts = record["n_experts_before"]
    for svg in svgs:
        found = cells(svg)
        assert set(found) == {(layer["layer"], e) for layer in record["layers"] for e in range(n_experts)}
        for layer in record["layers"]:
            pruned_ids = {e for (lay, e), (css, _) in found.items() if lay == layer["layer"] and css == "pruned"}
            assert pruned_ids == set(range(n_experts)) - set(layer["kept"])
            for new_id, expert in enumerate(layer["kept"]):
                css, title = found[(layer["layer"], expert)]
                assert css == "kept" and f"(kept as expert {new_id})" in title
            for expert in range(n_experts):
                title = found[(layer["layer"], expert)][1]
                assert float(CELL_TITLE.match(title).group(4)) == layer["scores"][expert]  # type: ignore[union-attr]
                assert f"({layer['frequency'][expert]:g} tokens)" in title
        crosses = [p for p in svg.iter(f"{SVG}path") if p.get("stroke") == "#c0392b" and p.get("pointer-events")]
        pruned_total = sum(n_experts - len(layer["kept"]) for layer in record["layers"])
        assert len(crosses) == 1 and crosses[0].get("d", "").count("M") == 2 * pruned_total


@pytest.mark.engine
def test_real_pruning_heatmap_in_a_plain_report(tmp_path: Path, pruned: Path) -> None:
    record = json.loads((pruned / "pruning.json").read_text())
    assert record["n_experts_after"] < record["n_experts_before"]
    run = write_run(tmp_path, "pruned-run", n_per_pack=10)
    copy_checkpoint_facts(pruned, run)  # as bench run does when it creates the run directory
    html = report.render_report([load_run(run)])
    assert 'href="#pruning"' in html and 'id="candidates"' not in html
    _check_maps(expert_svgs(html, "pruning"), record)


@pytest.mark.engine
def test_real_pruning_heatmap_in_a_loop_report(tmp_path: Path, pruned: Path) -> None:
    record = json.loads((pruned / "pruning.json").read_text())
    run = write_run(tmp_path, "pruned-run", n_per_pack=10)
    copy_checkpoint_facts(pruned, run)  # the same record the loop noted: drawn once, in the candidates section
    html = report.render_report([load_run(run)], candidates=sample_table(pruning={"mix-k4": pruned / "pruning.json"}))
    _check_maps(expert_svgs(html, "candidates"), record)
    assert 'id="pruning"' not in html
    assert "<summary><code>mix-k4</code> " in html
