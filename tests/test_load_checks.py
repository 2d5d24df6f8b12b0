"""Load checks before serving: vLLM's FP8 block and expert-parallel rules, from headers and --vllm-arg flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, bench_cmd

from bench.engine.planning.parallelism import ExpertLayout, ParallelSizes, load_problem, parse_parallel_sizes
from bench.errors import UserError

GATE = "model.layers.1.mlp.experts.0.gate_proj.weight"
DOWN = "model.layers.1.mlp.experts.0.down_proj.weight"
ROUTER = "model.layers.1.mlp.gate.weight"


def experts(n: int = 128, rows: int = 1536, block: tuple[int, int] | None = (128, 128)) -> ExpertLayout:
    return ExpertLayout(n_experts=n, intermediate=rows, block=block, gate_weight=GATE, down_weight=DOWN, router=ROUTER)


@pytest.mark.parametrize(("args", "sizes"), [
    ([], ParallelSizes(1, 1, False)),
    (["--tensor-parallel-size=8"], ParallelSizes(8, 1, False)),
    (["-tp", "4", "--enable-expert-parallel"], ParallelSizes(4, 1, True)),
    (["--tensor_parallel_size", "2", "-dp=2", "--max-num-seqs", "8"], ParallelSizes(2, 2, False)),
    (["-tp=2", "-ep", "--tensor-parallel-size", "4", "--no-enable-expert-parallel"], ParallelSizes(4, 1, False)),
])
def test_parallel_sizes_are_read_as_vllm_reads_them(args: list[str], sizes: ParallelSizes) -> None:
    assert parse_parallel_sizes(args) == sizes


@pytest.mark.parametrize("args", [["--tensor-parallel-size"], ["-tp", "two"], ["--data-parallel-size=0"]])
def test_bad_parallel_size_is_one_line(args: list[str]) -> None:
    with pytest.raises(UserError, match="must be a positive integer"):
        parse_parallel_sizes(args)


def test_tensor_parallel_shards_of_block_fp8_experts_must_be_whole_blocks() -> None:
    # Qwen3-235B-A22B-FP8's 1536 rows: 384 per rank at TP4 load; 192 at TP8 is vLLM's well-known refusal.
    assert load_problem(experts(), ParallelSizes(4)) is None
    problem = load_problem(experts(), ParallelSizes(8))
    assert problem == (
        f"{GATE}: tensor parallel 8 leaves each rank 192 of its 1536 rows, not whole 128x128 FP8 blocks (vLLM stops "
        "with \"The output_size of gate's and up's weight = 192 is not divisible by weight quantization block_n = "
        "128\"); tensor x data parallel sizes that keep whole blocks: 1, 2, 3, 4, 6, 12; or add --enable-expert-parallel"
    )
    # Expert parallel keeps experts whole, and 128 experts spread over 8 ranks evenly.
    assert load_problem(experts(), ParallelSizes(8, 1, True)) is None
    # Without expert parallel, MoE layers shard over tensor x data parallel ranks together.
    assert "leaves each rank 192 of its 1536 rows" in str(load_problem(experts(), ParallelSizes(4, 2)))
    # bf16 and per-channel FP8 experts have no blocks: only an even split is needed.
    assert load_problem(experts(block=None), ParallelSizes(8)) is None
    assert "do not split evenly over the 5 ranks" in str(load_problem(experts(block=None), ParallelSizes(5)))


def test_down_projection_rule_applies_only_under_tensor_parallel() -> None:
    """vLLM checks block_k on each rank's down-projection input only when tensor parallel is above 1."""
    layout = experts(rows=384, block=(64, 128))
    assert f"{DOWN}: tensor parallel 2 leaves each rank 192 of its 384 input columns" in str(
        load_problem(layout, ParallelSizes(2)))
    assert load_problem(layout, ParallelSizes(1, 2)) is None  # data parallel alone: 192 rows, whole 64-row blocks


def test_rows_that_are_not_whole_blocks_cannot_be_served_at_any_size() -> None:
    problem = str(load_problem(experts(rows=160), ParallelSizes(1)))
    assert problem.startswith(f"{GATE}: its 160 rows are not whole 128x128 FP8 blocks at any parallel size")
    assert "per-channel scales" in problem


def test_expert_parallel_needs_an_expert_count_the_ranks_divide() -> None:
    assert load_problem(experts(n=6, block=None), ParallelSizes(4, 1, True)) == (
        f"{ROUTER}: 6 experts per layer do not divide over expert parallel size 4 (tensor parallel 4 with expert "
        "parallel): some ranks would hold one expert more and set every step's pace; keep a multiple of 4 experts, "
        "or change the parallel sizes"
    )
    assert "expert parallel size 4 (tensor parallel 2 x data parallel 2" in str(
        load_problem(experts(n=6), ParallelSizes(2, 2, True)))
    assert load_problem(experts(n=6), ParallelSizes(1, 1, True)) is None  # one rank: expert parallel is off


# ---------------------------------------------------------------------------------------------
# The real pre-launch paths (engine: tiny checkpoints are built with torch)


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A block-FP8 tiny DeepSeek-V3 whose experts have exactly one 128-row block: fine at TP1, not at TP2."""
    pytest.importorskip("torch")
    from engine_block_fp8 import build_block_fp8, build_wide

    root = tmp_path_factory.mktemp("loadcheck")
    return build_block_fp8(root / "fp8", build_wide(root / "bf16", moe_intermediate=128))


def run_cli(model: Path, runs: Path, *vllm_args: str) -> subprocess.CompletedProcess[str]:
    args = [f"--vllm-arg={arg}" for arg in vllm_args]
    return subprocess.run([*bench_cmd(), "run", "--model", str(model), "--packs", "smoke", "--runs-dir", str(runs),
                           "--vllm-python", "/nonexistent/python", "--no-report", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.engine
def test_bench_run_stops_a_tp_indivisible_fp8_checkpoint_before_launch(fp8_model: Path, tmp_path: Path) -> None:
    stopped = run_cli(fp8_model, tmp_path / "runs", "--tensor-parallel-size=2")
    assert stopped.returncode == 2
    assert stopped.stderr.splitlines() == [
        f"error: {GATE}: tensor parallel 2 leaves each rank 64 of its 128 rows, not whole 128x128 FP8 blocks (vLLM "
        "stops with \"The output_size of gate's and up's weight = 64 is not divisible by weight quantization block_n "
        "= 128\"); tensor x data parallel sizes that keep whole blocks: 1; or add --enable-expert-parallel"
    ]
    assert not (tmp_path / "runs").exists()  # no run directory, no server log: nothing was launched
    # At TP1 the same checkpoint passes the same check (and would go on to look for the vLLM interpreter).
    from bench.run.evaluation import RunOptions, _precheck
    from bench.serve.options import ServeOptions

    _precheck(RunOptions(model=str(fp8_model), serve=ServeOptions(args=["--tensor-parallel-size=1"])))


@pytest.mark.engine
@pytest.mark.skipif(not (DATA_DIR / "calibration").is_dir(), reason="no shared calibration samples")
def test_candidate_loop_stops_a_tp_indivisible_fp8_candidate_before_pruning(tmp_path: Path) -> None:
    """The bf16 base shards fine at TP2; its block-FP8 candidate would not, so it stops before any work."""
    pytest.importorskip("torch")
    from engine_block_fp8 import build_wide

    from bench.candidate import load_plan
    from bench.candidate.loop import Loop
    from bench.candidate.prepare import prepare

    base = build_wide(tmp_path / "base", moe_intermediate=128)
    plan = {"prune": {"keep": [4], "mixes": ["local-sample"], "samples": 4, "seq_len": 32},
            "quantize": {"experts": "fp8", "block": 128}, "evaluate": {"packs": "smoke", "limit": 1},
            "vllm": {"args": ["--tensor-parallel-size=2"]}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    prepared = prepare(load_plan(path), path, base, data_dir=DATA_DIR, vllm_python=sys.executable)
    (candidate,) = prepared.candidates
    assert candidate.load_problem is not None and candidate.load_problem.startswith(
        f"{GATE}: tensor parallel 2 leaves each rank 64 of its 128 rows, not whole 128x128 FP8 blocks")
    loop = Loop(prepared, tmp_path / "out", echo=lambda line: None)
    with pytest.raises(UserError) as stopped:
        loop.candidate(candidate, tmp_path / "base-run")
    assert str(stopped.value) == candidate.load_problem
    assert loop.log.launches == 0 and loop.log.ran == [] and not (tmp_path / "out" / "steps").exists()
