"""`bench gate RUN --baseline URL`: the base, served elsewhere, is asked RUN's items there, then gated.

On the real vLLM server: the candidate's run and the base's run at the endpoint ask the same items
with the same sampling; a second gate reuses the finished base run; one cut off is resumed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import bench_cmd
from typer.testing import CliRunner

from bench.cli import app
from bench.run.store import RunStore


def _base_dirs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.startswith("base-"))


@pytest.mark.vllm
def test_gate_against_an_endpoint_asks_the_candidates_items_there(scripted_server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "--endpoint", scripted_server, "--packs", "smoke,toolcall", "--limit", "3",
                              "--runs-dir", str(tmp_path), "--run-id", "cand", "--thinking-budget", "48", "--no-report"])
    assert ran.exit_code in (0, 3), ran.output
    candidate = tmp_path / "cand"

    gated = runner.invoke(app, ["gate", str(candidate), "--baseline", scripted_server, "--baseline-model", "scripted",
                                "--json", str(tmp_path / "gate.json")])
    assert gated.exit_code in (0, 3), gated.output  # the same model behind both: nothing can fail
    assert f"baseline: asking {candidate}'s items at {scripted_server}/v1" in gated.output
    [base] = _base_dirs(tmp_path)
    assert base.name.startswith("base-127.0.0.1-") and "-scripted-" in base.name
    cand_store, base_store = RunStore.open(candidate), RunStore.open(base)
    cand_manifest, base_manifest = cand_store.read_manifest(), base_store.read_manifest()
    assert base_manifest.server.launched is False and base_manifest.server.endpoints == [f"{scripted_server}/v1"]
    assert [(p.name, p.sampling, p.data_hash) for p in base_manifest.packs] == \
        [(p.name, p.sampling, p.data_hash) for p in cand_manifest.packs]  # same items, sent the same way
    assert {p.name: p.budget["thinking_tokens"] for p in base_manifest.packs if p.budget} == \
        {p.name: p.budget["thinking_tokens"] for p in cand_manifest.packs if p.budget}
    assert sorted(base_store.finished_keys()) == sorted(cand_store.finished_keys())
    result = json.loads((tmp_path / "gate.json").read_text())
    assert result["baseline"]["path"] == str(base)

    again = runner.invoke(app, ["gate", str(candidate), "--baseline", scripted_server, "--baseline-model", "scripted"])
    assert again.exit_code == gated.exit_code, again.output
    assert f"baseline: {base} already holds the base's answers" in again.output and _base_dirs(tmp_path) == [base]

    (base / "results.json").unlink()  # cut off before its results were written
    resumed = runner.invoke(app, ["gate", str(candidate), "--baseline", scripted_server, "--baseline-model", "scripted"])
    assert resumed.exit_code == gated.exit_code, resumed.output
    assert f"baseline: resuming {base}" in resumed.output and (base / "results.json").is_file()


def test_endpoint_only_options_need_an_endpoint(tmp_path: Path) -> None:
    result = subprocess.run([*bench_cmd(), "gate", str(tmp_path), "--baseline", str(tmp_path), "--baseline-model", "m"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --baseline-model and --baseline-runs go with an endpoint baseline "
                                     "(--baseline http://...)")
