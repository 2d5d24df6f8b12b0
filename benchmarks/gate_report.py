"""Time `bench gate` and `bench report` on two runs of 10,000 items each.

Targets: gate under 2 s, report under 10 s, report file under 5 MB. The runs are synthetic but
schema-valid (tests/rundirs.py): six packs with their real subdimensions, a baseline and a
candidate with a planted tool-call regression, each reasoning padded to a realistic length.
Two timings each: in-process (load + decide/render + write, what the library costs) and the
CLI as a user runs it (a fresh interpreter, imports included).

    .venv/bin/python benchmarks/gate_report.py [--items 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import load_spec
from bench.report import gate_files
from bench.report import html as report
from bench.shipped import resolve_spec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic run writer is a test helper, not part of bench

from rundirs import write_run  # noqa: E402

PACKS = ("toolcall", "bugfind", "dataextract", "instructfollow", "code", "mmlu")
SPEC = resolve_spec("default")  # the shipped spec, as the installed package holds it


def _cli(*args: str | Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="items per run (split over six packs)")
    parser.add_argument("--reasoning-chars", type=int, default=1500)
    parser.add_argument("--keep", type=Path, help="write the runs and outputs here and keep them")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-gate-report-"))
    root.mkdir(parents=True, exist_ok=True)
    per_pack = args.items // len(PACKS)
    try:
        start = time.perf_counter()
        common = dict(packs=PACKS, n_per_pack=per_pack, reasoning_chars=args.reasoning_chars)
        base = write_run(root, "baseline", **common)  # type: ignore[arg-type]
        cand = write_run(root, "candidate", regress={"toolcall": 0.1}, **common)  # type: ignore[arg-type]
        items = per_pack * len(PACKS)
        size_mb = (cand / "items.jsonl").stat().st_size / 1e6
        print(f"setup: two runs of {items} items ({size_mb:.1f} MB items.jsonl each) in {time.perf_counter() - start:.1f} s")

        start, cpu = time.perf_counter(), time.process_time()
        result = gate.judge(load_run(cand), load_run(base), load_spec(SPEC), str(SPEC))
        gate_files.write_outputs(result, markdown=root / "gate.md", junit=root / "gate.xml", json_path=root / "gate.json")
        gate_s, gate_cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"gate (in-process): {gate_s:.2f} s wall, {gate_cpu:.2f} s cpu -> {result.verdict}, "
              f"{len(result.rules)} rules   [target < 2 s]")

        start, cpu = time.perf_counter(), time.process_time()
        out = report.write_report([base, cand], root / "report.html", gate_path=root / "gate.json")
        report_s, report_cpu = time.perf_counter() - start, time.process_time() - cpu
        report_mb = out.stat().st_size / 1e6
        print(f"report (in-process): {report_s:.2f} s wall, {report_cpu:.2f} s cpu, {report_mb:.2f} MB   [targets < 10 s, < 5 MB]")

        cli_gate_s, code = _cli("gate", cand, "--baseline", base, "--spec", SPEC, "--json", root / "gate.json")
        print(f"bench gate (CLI, fresh interpreter): {cli_gate_s:.2f} s, exit {code}")
        cli_report_s, code = _cli("report", base, cand, "--out", root / "report-cli.html", "--gate", root / "gate.json")
        print(f"bench report (CLI, fresh interpreter): {cli_report_s:.2f} s, exit {code}")
        print(f"load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
