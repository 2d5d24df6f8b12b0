"""bench report opened in a real headless Chromium: self-contained, script-free, model text inert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from candidate_tables import HOSTILE_LABEL, sample_summary, write_pruning
from rundirs import HOSTILE_CONTENT, write_run
from websockets.sync.client import ClientConnection, connect

from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import load_spec
from bench.report import gate_files
from bench.report import html as report

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
HOSTILE_ITEM = "mmlu-0001"

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report through the CLI: baseline vs a candidate with a tool-call regression,
    a different chat template and one response made of markup."""
    root = tmp_path_factory.mktemp("report")
    base = write_run(root, "base", n_per_pack=60)
    cand = write_run(
        root, "cand", n_per_pack=60, regress={"toolcall": 0.4}, template_sha="e" * 64, hostile_items=[HOSTILE_ITEM]
    )
    gate_json = root / "gate.json"
    result = gate.judge(load_run(cand), load_run(base), load_spec(REPO / "baselines" / "default.yaml"))
    gate_files.write_outputs(result, json_path=gate_json)
    out = root / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", str(base), str(cand), "--out", str(out), "--gate", str(gate_json), "--max-items", "500"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


class _Dom(HTMLParser):
    """Element counts, ids and visible text of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.ids.update(value for name, value in attrs if name == "id" and value)
        if tag == "style":
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


@needs_chromium

def test_one_row_heatmap_with_long_column_labels_keeps_its_cells() -> None:
    import warnings

    import pandas as pd

    from bench.report import charts

    frame = pd.DataFrame([[0.25, -0.5]], index=["toolcall.params"],
                         columns=["a-long-candidate-label-from-a-plan − base", "local-sample-k4 − base"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when the layout collapses the cells to nothing
        svg = str(charts.heatmap(frame, title="Change vs the first run", salt="one-row", diverging=True,
                                 value_format="{:+.2f}"))
    assert "+0.25" in svg and "-0.50" in svg

def test_dumped_dom_has_the_tables_and_no_active_content(report_file: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", report_file.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    text = "".join(dom.text)
    assert dom.tags["script"] == 0 and dom.tags["img"] == 0 and dom.tags["iframe"] == 0
    for table in ("T_stack", "T_packs", "T_subdimensions", "T_mmlu-subject", "T_timing", "T_health", "T_flips"):
        assert table in dom.ids, table
    assert dom.tags["svg"] >= 4  # subdimension means and changes, MMLU subjects, latency
    # The markup a model wrote is on the page as text, not as elements.
    assert HOSTILE_CONTENT in text
    assert "FailToolcall" in text
    assert "chat template sha256" in text


def _cdp_events(page_url: str, profile: Path, settle_s: float = 1.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load ``page_url`` in headless Chromium over the DevTools protocol; return every event and
    the result of a DOM probe evaluated in the page."""
    proc = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        browser_url = None
        while time.monotonic() < deadline and browser_url is None:
            line = proc.stderr.readline()
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                browser_url = match.group(1)
        assert browser_url, "Chromium did not open its DevTools port"
        with connect(browser_url, max_size=None, open_timeout=30) as ws:
            return _drive(ws, page_url, settle_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drive(ws: ClientConnection, page_url: str, settle_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    counter = iter(range(1, 10_000))

    def call(method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        ident = next(counter)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        ws.send(json.dumps(message))
        while True:
            reply = json.loads(ws.recv(timeout=60))
            if reply.get("id") == ident:
                assert "error" not in reply, reply
                return reply.get("result", {})
            events.append(reply)

    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        call(f"{domain}.enable", session=session)
    call("Page.navigate", {"url": page_url}, session=session)
    deadline = time.monotonic() + 60
    while not any(e.get("method") == "Page.loadEventFired" for e in events):
        assert time.monotonic() < deadline, "page never finished loading"
        events.append(json.loads(ws.recv(timeout=60)))
    settle_until = time.monotonic() + settle_s
    while (left := settle_until - time.monotonic()) > 0:
        try:
            events.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            break
    probe = call(
        "Runtime.evaluate",
        {
            # Open every drill-down entry so innerText covers what a reader can expand.
            "expression": """document.querySelectorAll('details').forEach(d => { d.open = true; });
            JSON.stringify({
                tables: document.querySelectorAll('table').length,
                scripts: document.querySelectorAll('script').length,
                images: document.querySelectorAll('img').length,
                hostile: document.body.innerText.includes(%s),
                banner: document.querySelector('.banner .verdict') && document.querySelector('.banner .verdict').textContent,
                candidates: !!document.getElementById('candidates'),
                expert_maps: document.querySelectorAll('svg.expert-map').length,
                expert_cells: document.querySelectorAll('svg.expert-map rect.kept, svg.expert-map rect.pruned').length,
                pruned_cells: document.querySelectorAll('svg.expert-map rect.pruned').length,
                hostile_label: document.body.innerText.includes(%s),
            })"""
            % (json.dumps(HOSTILE_CONTENT), json.dumps(HOSTILE_LABEL)),
            "returnByValue": True,
        },
        session=session,
    )
    return events, json.loads(probe["result"]["value"])


def _console_errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e for e in events
        if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]  # fmt: skip


@needs_chromium
def test_opens_with_no_console_errors_and_no_network_requests(report_file: Path, tmp_path: Path) -> None:
    url = report_file.as_uri()
    events, probe = _cdp_events(url, tmp_path / "profile")
    requested = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert requested == [url]  # the page itself, nothing else
    assert _console_errors(events) == []
    assert probe["scripts"] == 0 and probe["images"] == 0
    assert probe["tables"] >= 7
    assert probe["hostile"] is True
    assert probe["banner"] == "FailToolcall"


@pytest.fixture(scope="module")
def candidates_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loop-style report through the CLI: candidates.json with a hostile label, one pruned
    checkpoint recorded by the loop and another kept in a run directory, as ``bench run`` copies it."""
    root = tmp_path_factory.mktemp("candidates")
    base = write_run(root, "base", n_per_pack=20)
    cand = write_run(root, "cand", n_per_pack=20, regress={"toolcall": 0.3})
    write_pruning(cand, layers=2, experts=6, keep=3)
    summary = sample_summary(runs={"base": base, "mix-k6": cand}, pruning={"mix-k4": write_pruning(root / "k4-ckpt")})
    (root / "candidates.json").write_text(summary.model_dump_json())
    out = root / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "report", str(base), str(cand), "--out", str(out),
         "--candidates", str(root / "candidates.json")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


@needs_chromium
def test_candidates_section_opens_with_no_console_errors(candidates_report: Path, tmp_path: Path) -> None:
    url = candidates_report.as_uri()
    events, probe = _cdp_events(url, tmp_path / "profile")
    assert [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"] == [url]
    assert _console_errors(events) == []
    assert probe["scripts"] == 0 and probe["images"] == 0
    assert probe["candidates"] is True and probe["hostile_label"] is True
    # Two maps (score, usage) per pruned checkpoint: 3 layers x 8 experts from the loop, 2 x 6 from the run directory.
    assert probe["expert_maps"] == 4
    assert probe["expert_cells"] == 2 * (3 * 8) + 2 * (2 * 6)
    assert probe["pruned_cells"] == 2 * (3 * 4) + 2 * (2 * 3)


def test_flipped_items_come_first(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "base", n_per_pack=40))
    cand = load_run(write_run(tmp_path, "cand", n_per_pack=40, regress={"mmlu": 0.5}))
    items, summary = report.drilldown([base, cand], max_items=10)
    regressed = int(summary.loc["mmlu", "regressed"])
    assert regressed > 0
    shown = [item.category for item in items]
    assert shown[: min(regressed, 10)] == ["regressed"] * min(regressed, 10)
    first = items[0]
    assert first.values[0] == 1.0 and first.values[1] == 0.0
    assert all(cell.present and cell.exchanges for cell in first.cells)


def test_pack_table_shows_paired_delta(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "base", n_per_pack=80))
    cand = load_run(write_run(tmp_path, "cand", n_per_pack=80, regress={"toolcall": 0.5}))
    table, classes = report.pack_table([base, cand], ["base", "cand"])
    delta = table.loc[("toolcall", "score"), "Δ cand"]
    assert delta.startswith("-") and "p=" in delta
    assert classes.loc[("toolcall", "score"), "Δ cand"] == "worse"
    assert table.loc[("mmlu", "score"), "Δ cand"].startswith("+0.000")


def test_stack_differences_are_marked(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "base", n_per_pack=10))
    cand = load_run(write_run(tmp_path, "cand", n_per_pack=10, template_sha="0" * 64))
    _, classes, differing = report.stack_table([base, cand], ["base", "cand"])
    assert differing == ["chat template sha256"]
    assert (classes.loc["chat template sha256"] == "diff").all()
    assert (classes.drop(index="chat template sha256") == "").all().all()


def test_single_run_report_and_size(tmp_path: Path) -> None:
    run = write_run(tmp_path, "only", n_per_pack=50, hostile_items=[HOSTILE_ITEM])
    out = report.write_report([run], tmp_path / "one.html")
    html = out.read_text(encoding="utf-8")
    assert "<script" not in html.replace("&lt;script", "")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert out.stat().st_size < 5_000_000


def test_same_run_twice_gets_distinct_columns(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, "twice", n_per_pack=10))
    assert report._labels([run, run]) == ["twice", "twice #2"]


def test_repeat_spread_is_shown(tmp_path: Path) -> None:
    base = load_run(write_run(tmp_path, "base", n_per_pack=20, repeats=3, repeat_noise=0.3))
    table, _ = report.pack_table([base], ["base"])
    spread = table.loc[("toolcall", "repeat spread"), "base"]
    assert float(spread) == pytest.approx(base.results.packs["toolcall"].repeat_spread, abs=5e-4)
    assert float(spread) > 0
