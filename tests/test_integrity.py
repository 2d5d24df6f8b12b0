"""Run integrity under faults, without a vLLM server: one record per item and repeat, one writer,
schema versions, completeness checks, disk full, failed starts and the resume of a finished run.

Run directories are built through the real store and aggregator (tests/rundirs.py for gate and
report, a smoke-pack run with stored options for resume and rescore); behaviour that is the
command line's is checked through the real ``bench`` command in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from rundirs import FixturePack, write_run

from bench.compare.rundata import load_run
from bench.errors import UserError
from bench.records import ItemRecord, PreflightCheck, ServerInfo
from bench.run import evaluation
from bench.run.aggregate import build_results
from bench.run.lock import LOCK_FILE
from bench.run.options import EvalOptions, RunOptions
from bench.run.rescore import rescore
from bench.run.store import RunStore
from bench.serve.options import ServeOptions
from bench.testing import record_for, transcript_for_text

STALE_ERROR = "connection refused by http://127.0.0.1:9/v1 (stale)"


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line a refused command prints (and nothing traceback-like)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def fake_checkpoint(path: Path) -> Path:
    """Enough of a checkpoint for the checks made before a launch; nothing could serve it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "max_position_embeddings": 4096,
        "hidden_size": 64, "num_attention_heads": 2, "head_dim": 32, "num_experts": 4}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def loud_vllm(tmp_path: Path) -> Path:
    """A --vllm-python that leaves a mark and fails if anything ever launches it."""
    script = tmp_path / "vllm-python"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path / 'LAUNCHED'}\necho launched >&2\nexit 1\n")
    script.chmod(0o755)
    return script


def smoke_run(runs_dir: Path, run_id: str, model: Path, *, stale_errors: int = 0) -> Path:
    """A finished smoke-pack run with stored options (so resume and rescore work), answered offline."""
    options = RunOptions(model=str(model), evaluate=EvalOptions(packs="smoke", tier="quick"),
                         runs_dir=str(runs_dir), run_id=run_id)
    plan = evaluation.build_plan(options.evaluate)
    store = RunStore.create(runs_dir, run_id)
    manifest = evaluation._manifest(run_id, options, plan, ServerInfo(launched=True))
    manifest.preflight = [PreflightCheck(name="plain_answer", ok=True)]
    pack_plan = plan.packs["smoke"]
    for index, item in enumerate(pack_plan.items):
        if index < stale_errors:
            stale = record_for(pack_plan.pack, item, transcript_for_text(None))
            store.append_item(stale.model_copy(update={"score": None, "error": STALE_ERROR}))
        calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}] if item.data["kind"] != "say" else None
        store.append_item(record_for(pack_plan.pack, item, transcript_for_text("Hello, visitor!", calls)))
    results = evaluation._write_results(store, plan, manifest)
    manifest.status = "complete" if results.complete else "interrupted"
    store.write_manifest(manifest)
    return store.root


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    return smoke_run(tmp_path / "runs", "done", fake_checkpoint(tmp_path / "model"))


def _blank_line(path: Path, index: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = "\n"
    path.write_text("".join(lines))


def _with_stale_errors(run: Path, item_ids: list[str]) -> None:
    """Put an error record before each named item's scored one, as a resumed run leaves them."""
    lines = (run / "items.jsonl").read_text().splitlines(keepends=True)
    out = []
    for line in lines:
        record = ItemRecord.model_validate_json(line)
        if record.item_id in item_ids:
            stale = record.model_copy(update={"score": None, "error": STALE_ERROR})
            out.append(stale.model_dump_json() + "\n")
        out.append(line)
    (run / "items.jsonl").write_text("".join(out))


# --- 1. one record per (pack, item, repeat) ---------------------------------------------------

def test_stale_error_records_count_once_in_results_gate_and_report(tmp_path: Path) -> None:
    from bench.report.html import write_report

    runs = tmp_path / "runs"
    base = write_run(runs, "base", packs=("toolcall", "mmlu"), n_per_pack=30)
    cand = write_run(runs, "cand", packs=("toolcall", "mmlu"), n_per_pack=30)
    stale = [f"toolcall-{i:04d}" for i in range(0, 30, 3)] + [f"mmlu-{i:04d}" for i in range(0, 30, 4)]
    _with_stale_errors(cand, stale)
    store = RunStore.open(cand)
    items = store.read_effective()
    assert len(items.records) == 60 and all(r.error is None for r in items.records)
    results = build_results("cand", {p: FixturePack(p) for p in ("toolcall", "mmlu")}, items.records,
                            {"toolcall": 30, "mmlu": 30})
    store.write_results(results, items.digest)

    reference = RunStore.open(base).read_results()
    for pack in ("toolcall", "mmlu"):
        assert results.packs[pack].score == reference.packs[pack].score
    loaded = load_run(cand)
    assert len(loaded.pack_items("toolcall")) == 30 and all(i.error is None for i in loaded.items)
    assert loaded.folded("toolcall", "score").values == load_run(base).folded("toolcall", "score").values

    spec = tmp_path / "spec.yaml"  # any counted stale error would be a drop far past 0.01
    spec.write_text("decision: point\non_underpowered: pass\npacks:\n"
                    "  toolcall: {allowed_drop: 0.01}\n  mmlu: {allowed_drop: 0.01}\n")
    gate = bench("gate", str(cand), "--baseline", str(base), "--spec", str(spec))
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "fell" not in gate.stdout + gate.stderr

    html = write_report([base, cand], tmp_path / "report.html", max_items=100).read_text()
    assert "connection refused" not in html  # the item view shows the answer that counts, not the old error


def test_two_scored_records_of_one_key_are_an_integrity_error(finished: Path) -> None:
    items = finished / "items.jsonl"
    first = items.read_text().splitlines(keepends=True)[0]
    with items.open("a") as handle:
        handle.write(first)
    with pytest.raises(UserError, match=r"items.jsonl:\d+: smoke/say-1 repeat 0 is scored twice \(also line 1\)"):
        RunStore.open(finished).read_items()
    with pytest.raises(UserError, match="scored twice"):
        load_run(finished)


def test_aggregation_counts_unique_items_not_lines(finished: Path) -> None:
    from bench.registry import load

    records = RunStore.open(finished).read_items()
    doubled = records[:-1] + [records[0]]  # the last item lost, the first written twice
    results = build_results("r", {"smoke": load("smoke")}, doubled, {"smoke": len(records)})
    assert not results.valid and results.missing_items == 1


# --- 7. completeness: a lost line is refused by gate and report, fixed by rescore -------------

def test_blank_middle_line_is_refused_by_gate_and_report(tmp_path: Path) -> None:
    from bench.report.html import write_report

    runs = tmp_path / "runs"
    base = write_run(runs, "base", packs=("toolcall",), n_per_pack=20)
    cand = write_run(runs, "cand", packs=("toolcall",), n_per_pack=20)
    _blank_line(cand / "items.jsonl", 7)
    result = bench("gate", str(cand), "--baseline", str(base))
    assert result.returncode == 2
    line = error_line(result)
    assert "no longer matches results.json" in line and "toolcall 20 -> 19" in line
    assert line.endswith(f"run: bench rescore {cand}")
    with pytest.raises(UserError, match=f"toolcall 20 -> 19.* since it was aggregated; run: bench rescore {cand}$"):
        write_report([base, cand], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_rescore_fixes_a_lost_line_and_exits_3_on_the_invalid_run(finished: Path) -> None:
    _blank_line(finished / "items.jsonl", 2)
    with pytest.raises(UserError, match="bench rescore"):
        load_run(finished)
    result = bench("rescore", str(finished))
    assert result.returncode == 3, result.stderr
    assert "run INVALID" in result.stdout and "1 items missing" in result.stdout
    loaded = load_run(finished)  # results.json matches items.jsonl again
    assert loaded.results.missing_items == 1 and not loaded.results.valid


# --- 6. schema versions -----------------------------------------------------------------------

def _set_version(run: Path, name: str, version: int) -> None:
    path = run / name
    if name == "items.jsonl":
        lines = path.read_text().splitlines(keepends=True)
        data = json.loads(lines[1])
        data["schema_version"] = version
        data["new_field_of_a_later_bench"] = True
        lines[1] = json.dumps(data) + "\n"
        path.write_text("".join(lines))
    else:
        data = json.loads(path.read_text())
        data["schema_version"] = version
        data["new_field_of_a_later_bench"] = True
        path.write_text(json.dumps(data))


@pytest.mark.parametrize("version", [2, 999, -7])
@pytest.mark.parametrize("name", ["manifest.json", "results.json", "items.jsonl"])
def test_unknown_schema_versions_are_refused_untouched(tmp_path: Path, finished: Path, name: str, version: int) -> None:
    _set_version(finished, name, version)
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    expected = (f"written by a newer bench \\(schema {version}\\); upgrade bench" if version > 1
                else f"unknown schema_version {version} \\(this bench reads 1\\)")
    with pytest.raises(UserError, match=expected):
        load_run(finished)  # gate and report
    with pytest.raises(UserError, match=expected):
        rescore(finished)
    with pytest.raises(UserError, match=expected):
        evaluation.execute(evaluation.options_from_run(finished) if name != "manifest.json" else RunOptions(),
                           resume_dir=finished, echo=lambda line: None)
    after = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file() and p.name != LOCK_FILE}
    assert after == {k: v for k, v in before.items() if k != LOCK_FILE}


def test_gate_names_the_newer_schema_in_one_line(tmp_path: Path, finished: Path) -> None:
    runs = tmp_path / "runs"
    base = write_run(runs, "base", packs=("toolcall",), n_per_pack=10)
    _set_version(base, "results.json", 2)
    result = bench("gate", str(write_run(runs, "cand", packs=("toolcall",), n_per_pack=10)), "--baseline", str(base))
    assert result.returncode == 2
    assert "results.json was written by a newer bench (schema 2); upgrade bench" in error_line(result)


# --- 2. one writer per run --------------------------------------------------------------------

@contextlib.contextmanager
def live_writer(run: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the run's writer lock, as a live `bench run` does."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from bench.run.lock import acquire
        acquire(Path(sys.argv[1]), "bench run")
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_naming_the_live_owner(tmp_path: Path, finished: Path) -> None:
    _blank_line(finished / "items.jsonl", 3)  # an unfinished item, so a resume would ask it
    vllm = loud_vllm(tmp_path)
    with live_writer(finished) as owner:
        result = bench("run", "--resume", str(finished), "--vllm-python", str(vllm), "--no-report")
        assert result.returncode == 2, result.stderr
        line = error_line(result)
        assert f"is being written by PID {owner.pid} on " in line and "bench run, since " in line
        with pytest.raises(UserError, match=f"being written by PID {owner.pid}"):
            rescore(finished)
        with pytest.raises(UserError, match=f"being written by PID {owner.pid}"):  # same run id, new run
            RunStore.create(finished.parent, finished.name, lock="bench run")
        with pytest.raises(UserError, match=f"being written by PID {owner.pid}"):  # a reader, mid-write
            load_run(finished)
    assert not (tmp_path / "LAUNCHED").exists()


def test_a_stale_lock_of_a_killed_writer_is_taken_over(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with live_writer(finished) as owner:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert str(owner.pid) in (finished / LOCK_FILE).read_text()
    assert rescore(finished).outcome.results.valid
    notes = [line for line in capsys.readouterr().err.splitlines() if "took over the lock" in line]
    assert len(notes) == 1 and f"PID {owner.pid}" in notes[0] and "that process is gone" in notes[0]
    assert (finished / LOCK_FILE).read_text() == ""  # released: the next writer has nothing to take over


# --- 5. resume checks the records before any launch ---------------------------------------------

def test_resume_of_a_complete_run_exits_0_without_a_launch(tmp_path: Path, finished: Path) -> None:
    manifest_before = (finished / "manifest.json").read_bytes()
    results_before = (finished / "results.json").read_bytes()
    result = bench("run", "--resume", str(finished), "--vllm-python", str(loud_vllm(tmp_path)), "--no-report")
    assert result.returncode == 0, result.stderr
    assert "is complete: every item is recorded, nothing to ask (no server started)" in result.stderr
    assert not (tmp_path / "LAUNCHED").exists()
    assert (finished / "manifest.json").read_bytes() == manifest_before  # status and created_at kept
    assert (finished / "results.json").read_bytes() == results_before


def test_resume_reads_records_before_launch_and_a_failed_one_keeps_the_manifest(tmp_path: Path, finished: Path) -> None:
    first = (finished / "items.jsonl").read_text().splitlines(keepends=True)[0]
    with (finished / "items.jsonl").open("a") as handle:
        handle.write(first)  # two writers' duplicate: found before anything is launched
    manifest_before = (finished / "manifest.json").read_bytes()
    options = evaluation.options_from_run(finished)
    options.serve.python = str(loud_vllm(tmp_path))
    with pytest.raises(UserError, match="scored twice"):
        evaluation.execute(options, resume_dir=finished, echo=lambda line: None)
    assert not (tmp_path / "LAUNCHED").exists()
    assert (finished / "manifest.json").read_bytes() == manifest_before


def test_resume_supersedes_stale_errors_in_results(tmp_path: Path) -> None:
    run = smoke_run(tmp_path / "runs", "resumed", fake_checkpoint(tmp_path / "model"), stale_errors=3)
    results = RunStore.open(run).read_results()
    assert results.valid and results.complete and results.health.errors == 0
    assert results.item_records == {"smoke": 8}
    assert load_run(run).results == results


# --- 8. failed starts and full disks never burn the run id --------------------------------------

def _start_options(tmp_path: Path, runs: Path) -> RunOptions:
    """A new run of the smoke pack whose vLLM cannot start."""
    return RunOptions(model=str(fake_checkpoint(tmp_path / "model")), evaluate=EvalOptions(packs="smoke", tier="quick"),
                      serve=ServeOptions(python=str(loud_vllm(tmp_path)), startup_timeout_s=5),
                      runs_dir=str(runs), run_id="r1")


def test_a_failed_start_leaves_a_resumable_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(UserError):
        evaluation.execute(_start_options(tmp_path, runs), echo=lambda line: None)
    manifest = json.loads((runs / "r1" / "manifest.json").read_text())  # written before the launch
    assert manifest["run_id"] == "r1" and manifest["options"]["evaluate"]["packs"] == "smoke"
    (tmp_path / "LAUNCHED").unlink()
    options = evaluation.options_from_run(runs / "r1")
    with pytest.raises(UserError) as failed:
        evaluation.execute(options, resume_dir=runs / "r1", echo=lambda line: None)
    assert "not a run directory" not in str(failed.value) and "already exists" not in str(failed.value)
    assert (tmp_path / "LAUNCHED").exists()  # the resume went as far as starting vLLM again


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real disk-full, not a simulated one."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; disk-full is checked where tests run as root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as handle:
        while True:
            handle.write(b"\0" * 1024)
            handle.flush()
    return filler


def test_disk_full_while_rewriting_records_is_one_line_and_keeps_them(tiny_disk: Path, finished: Path) -> None:
    run = Path(shutil.copytree(finished, tiny_disk / "done"))
    items_before = (run / "items.jsonl").read_bytes()
    _fill(tiny_disk)
    result = bench("rescore", str(run))
    assert result.returncode == 2
    line = error_line(result)
    assert f"cannot write {run}/" in line and "(errno 28 ENOSPC)" in line
    assert (run / "items.jsonl").read_bytes() == items_before  # every finished record kept
    assert not list(run.glob("*.tmp"))


def test_disk_full_while_appending_a_record_leaves_no_torn_line(tiny_disk: Path, finished: Path) -> None:
    from bench.run.store import StoreWriteError

    run = Path(shutil.copytree(finished, tiny_disk / "done"))
    store = RunStore.open(run)
    before = store.items_path.read_bytes()
    record = store.read_items()[0]
    _fill(tiny_disk)
    big = record.model_copy(update={"item_id": "x" * 20000})
    with pytest.raises(StoreWriteError, match=r"items.jsonl: No space left on device \(errno 28 ENOSPC\)"):
        store.append_item(big)
    assert store.items_path.read_bytes() == before


def test_disk_full_at_start_does_not_burn_the_run_id(tmp_path: Path, tiny_disk: Path) -> None:
    model = fake_checkpoint(tmp_path / "model")
    args = ("run", "--model", str(model), "--packs", "smoke", "--tier", "quick", "--runs-dir", str(tiny_disk),
            "--run-id", "r1", "--vllm-python", str(loud_vllm(tmp_path)), "--startup-timeout", "5", "--no-report")
    filler = _fill(tiny_disk)
    full = bench(*args)
    assert full.returncode == 2
    line = error_line(full)
    assert f"cannot write {tiny_disk}/r1/manifest.json" in line and "errno 28 ENOSPC" in line
    assert f"--runs-dir {tiny_disk} --run-id r1" in line
    assert not (tmp_path / "LAUNCHED").exists() and not (tiny_disk / "r1" / "server.log").exists()
    resume = bench("run", "--resume", str(tiny_disk / "r1"), "--vllm-python", str(loud_vllm(tmp_path)), "--no-report")
    assert "--run-id r1" in error_line(resume)  # names the command that reuses the id
    filler.unlink()
    with pytest.raises(UserError) as again:  # the same run, once there is room: as far as starting vLLM
        evaluation.execute(_start_options(tmp_path, tiny_disk), echo=lambda line: None)
    assert "already exists" not in str(again.value)
    assert (tiny_disk / "r1" / "manifest.json").is_file() and (tmp_path / "LAUNCHED").exists()


def test_a_broken_json_line_is_named_with_its_column(tmp_path: Path) -> None:
    from bench.run.store import RunStore

    store = RunStore.create(tmp_path, "r")
    store.items_path.write_text('{"pack": "smoke", "item_id": "a\tb"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"items\.jsonl:1: not valid JSON \(Invalid control character at: column \d+\)$"):
        store.read_items()
