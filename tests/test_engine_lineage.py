"""Lineage in pruning.json: the source's identity, the chain of earlier prunes, the stacking stop, the report."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import bench_cmd

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.lineage import checkpoint_identity, headers_sha256
from bench.errors import UserError
from bench.pruning_record import read_pruning

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

DATA = Path(__file__).parents[1].parent / "shared" / "data"
pytestmark.append(pytest.mark.skipif(not (DATA / "calibration").is_dir(), reason="shared calibration samples not present"))


@pytest.fixture(scope="module")
def mix():  # type: ignore[no-untyped-def]
    from bench.engine.planning.calibration import load_mix

    return load_mix("local-sample", data_dir=DATA, seq_len=32, samples=4).model_copy(
        update={"datasets": [d.model_copy(update={"count": 2}) for d in load_mix("local-sample").datasets]}
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, mix) -> list[Path]:  # type: ignore[no-untyped-def]
    """base (8 experts) -> 6 -> 4 (stacked) -> 3 (stacked again), with the warnings each stacked prune printed."""
    from bench.engine.compute.prune import prune_checkpoint
    from bench.engine.planning.prune_plan import PruneOptions

    root = tmp_path_factory.mktemp("lineage")
    paths = [build_tiny(root / "base", "qwen3_moe", layers=2)]
    for keep in (6, 4, 3):
        lines: list[str] = []
        out = root / f"k{keep}"
        prune_checkpoint(paths[-1], out, mix, PruneOptions(keep=keep), allow_stacked=keep != 6, progress=lines.append)
        (out / "progress.txt").write_text("\n".join(lines))
        paths.append(out)
    return paths


def test_record_names_its_source_by_cheap_hashes(chain: list[Path]) -> None:
    base, first = chain[0], chain[1]
    record = read_pruning(first / "pruning.json")
    assert record.source is not None and record.chain == [] and not record.stacked
    assert record.source.path == str(base.resolve())
    assert record.source.config_sha256 == hashlib.sha256((base / "config.json").read_bytes()).hexdigest()
    assert record.source.index_sha256 is None and record.source.quantization is None  # one file, bf16
    assert record.source == checkpoint_identity(Checkpoint.open(base))
    # The header digest follows tensor names, dtypes and shapes: it tells the pruned output from its base.
    assert headers_sha256(Checkpoint.open(first)) != record.source.headers_sha256
    assert "warning" not in (first / "progress.txt").read_text()


def test_stacked_prunes_carry_the_whole_chain(chain: list[Path]) -> None:
    base, k6, k4, k3 = chain
    last = read_pruning(k3 / "pruning.json")
    assert last.stacked and [step.n_experts_after for step in last.lineage()] == [6, 4, 3]
    assert [step.n_experts_before for step in last.lineage()] == [8, 6, 4]
    assert [step.source.path for step in last.lineage() if step.source] == [str(p.resolve()) for p in (base, k6, k4)]
    # The k4 record, chain included, is the k3 chain's earlier part: nothing is lost on the way.
    middle = read_pruning(k4 / "pruning.json")
    assert last.chain == middle.lineage()
    assert middle.chain == [read_pruning(k6 / "pruning.json").as_step()]
    # Kept ids compose back to the base's experts.
    first, second, third = (step.kept[0].kept for step in last.lineage())
    assert all(0 <= expert < 8 for expert in (first[second[i]] for i in third))
    assert last.lineage()[0].calibration_name == "local-sample" and last.lineage()[0].calibration_hash
    warning = (k4 / "progress.txt").read_text().splitlines()[0]
    assert warning.startswith(f"warning: {k6} is already pruned (8 -> 6 experts per layer)")
    assert "lose most of the upstream calibration's gains" in warning


def test_pruning_a_pruned_checkpoint_stops_unless_allowed(chain: list[Path], mix, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bench.engine.compute.prune import prune_checkpoint
    from bench.engine.planning.prune_plan import PruneOptions

    with pytest.raises(UserError, match=r"is already pruned \(8 -> 6 experts per layer.*--allow-stacked"):
        prune_checkpoint(chain[1], tmp_path / "again", mix, PruneOptions(keep=4))
    assert not (tmp_path / "again").exists()


def test_cli_stops_a_stacked_prune_in_one_line(chain: list[Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [*bench_cmd(), "prune", "--model", str(chain[2]), "--calibration", "local-sample", "--data-dir", str(DATA),
         "--keep", "3", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {chain[2]} is already pruned (8 -> 6 -> 4 experts per layer")
    assert "--allow-stacked" in lines[0] and f"prune the original {chain[0].resolve()} once" in lines[0]
    assert result.stdout == "" and not (tmp_path / "out").exists()  # stopped before the calibration preflight


def test_candidate_plan_refuses_a_pruned_base_unless_allowed(chain: list[Path], tmp_path: Path) -> None:
    import sys

    import yaml

    from bench.candidate import load_plan
    from bench.candidate.prepare import prepare

    plan = {"prune": {"keep": [2], "mixes": ["local-sample"], "samples": 4, "seq_len": 32},
            "evaluate": {"packs": "smoke", "limit": 1}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(UserError, match="is already pruned .*allow_stacked: true under prune:"):
        prepare(load_plan(path), path, chain[2], data_dir=DATA, vllm_python=sys.executable)
    plan["prune"]["allow_stacked"] = True
    path.write_text(yaml.safe_dump(plan))
    prepared = prepare(load_plan(path), path, chain[2], data_dir=DATA, vllm_python=sys.executable)
    assert [c.keep for c in prepared.candidates] == [2] and prepared.plan.prune.allow_stacked


def test_report_shows_the_chain(chain: list[Path], tmp_path: Path) -> None:
    from rundirs import write_run

    from bench.compare.rundata import load_run
    from bench.report import html as report
    from bench.run.checkpoint_facts import copy_checkpoint_facts

    stacked, single = write_run(tmp_path / "runs", "k3", n_per_pack=4), write_run(tmp_path / "runs", "k6", n_per_pack=4)
    copy_checkpoint_facts(chain[3], stacked)
    copy_checkpoint_facts(chain[1], single)
    page = report.render_report([load_run(single), load_run(stacked)])
    assert page.count("Stacked pruning, 3 prunes:") == 1
    for before, after in ((8, 6), (6, 4), (4, 3)):
        assert f"<li>{before} -&gt; {after} experts (reap, per-layer; calibration local-sample " in page
    assert f"Pruned from <code>{chain[0].resolve()}</code>" in page  # the single prune names its source
    assert json.loads((stacked / "pruning.json").read_text())["chain"][0]["n_experts_after"] == 6
