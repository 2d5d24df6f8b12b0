"""`bench fit`: predictions from headers match the bytes prune and quantize really write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.engine.compute.prune import write_pruned
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fit import FitRequest, fit, kv_cache_bytes_per_token, predicted_sizes, render_fit
from bench.engine.planning.moe import resolve
from bench.engine.planning.prune_plan import plan_pruned
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

TOLERANCE = 0.02


def written_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_fit_predicts_written_sizes_within_2_percent(tmp_path: Path, layout: str) -> None:
    from bench.engine.compute.fp8 import quantize_checkpoint

    source = build_tiny(tmp_path / "src", "qwen3_moe", layout=layout, layers=3)
    checkpoint = Checkpoint.open(source)
    moe = resolve(checkpoint)
    kept = {0: [1, 2, 5], 1: [0, 3, 7], 2: [2, 4, 6]}
    config, plan = plan_pruned(checkpoint, moe, kept)
    write_pruned(checkpoint, tmp_path / "pruned", config, plan)
    quantize_checkpoint(tmp_path / "pruned", tmp_path / "pruned-fp8")
    quantize_checkpoint(source, tmp_path / "fp8")

    full = predicted_sizes(source)
    pruned = predicted_sizes(source, keep=3)
    report = fit(FitRequest(source, gpu_gib=1.0))
    cases = {
        "pruned bf16": (pruned["bf16"], written_bytes(tmp_path / "pruned")),
        "pruned fp8": (pruned["fp8"], written_bytes(tmp_path / "pruned-fp8")),
        "fp8": (full["fp8"], written_bytes(tmp_path / "fp8")),
        "bf16": (full["bf16"], written_bytes(source)),
        "fit bf16 at keep 3": (report.bf16.at(3), written_bytes(tmp_path / "pruned")),
        "fit fp8 at keep 3": (report.fp8.at(3), written_bytes(tmp_path / "pruned-fp8")),
    }
    for what, (predicted, actual) in cases.items():
        assert abs(predicted - actual) <= TOLERANCE * actual, (what, predicted, actual)
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["num_local_experts"] == 3


def test_keep_solves_for_the_budget(tmp_path: Path) -> None:
    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=2, tokenizer=False)
    report = fit(FitRequest(source, gpu_gib=1.0, context=64, concurrency=1, overhead_gib=0.0))
    # Choose a budget between the 4-expert and 5-expert bf16 sizes: fit must answer 4.
    budget = (report.bf16.at(4) + report.bf16.at(5)) // 2
    assert report.bf16.keep_for(budget) == 4
    assert report.bf16.keep_for(report.bf16.full_bytes) == 8
    assert report.bf16.keep_for(report.bf16.at(2) - 1) is None
    assert report.fp8.full_bytes < 0.75 * report.bf16.full_bytes


def test_render_says_how_many_experts_to_keep(tmp_path: Path) -> None:
    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=2, tokenizer=False)
    probe = fit(FitRequest(source, gpu_gib=1.0, context=16, concurrency=1, overhead_gib=0.0))
    target = probe.bf16.at(5) + probe.kv_bytes + 100
    gpu_gib = target / (1 << 30) / 0.9
    text = render_fit(fit(FitRequest(source, gpu_gib=gpu_gib, context=16, concurrency=1, overhead_gib=0.0)))
    assert "bf16:" in text and "bench prune --keep 5" in text
    assert " fp8:" in text and "fits" in text.split(" fp8:")[1]


def test_kv_cache_formulas() -> None:
    gqa = {"num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128}
    assert kv_cache_bytes_per_token(gqa) == (48 * 2 * 4 * 128 * 2, 0)
    mla = {"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "num_attention_heads": 128}
    assert kv_cache_bytes_per_token(mla) == (61 * 576 * 2, 0)
    hybrid = {**gqa, "num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
              "linear_num_value_heads": 2, "linear_num_key_heads": 1, "linear_key_head_dim": 8,
              "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4}
    per_token, state = kv_cache_bytes_per_token(hybrid)
    assert per_token == 2 * 4 * 128 * 2
    assert state == 3 * (2 * 8 * 8 * 4 + (2 * 8 + 2 * 8) * 3 * 2)


def test_fit_reads_no_weights_and_needs_no_torch(tmp_path: Path) -> None:
    source = build_tiny(tmp_path / "src", "mixtral", layers=2, tokenizer=False)
    # Truncate every weight file after its header: only headers may be read.
    for file in source.glob("*.safetensors"):
        raw = file.read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        file.write_bytes(raw[: 8 + header_len])
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from bench.engine.planning.fit import FitRequest, fit, render_fit\n"
        f"print(render_fit(fit(FitRequest(Path({str(source)!r}), gpu_gib=0.0001, context=8, concurrency=1,"
        " overhead_gib=0))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Mixtral" in done.stdout and "does not fit" in done.stdout


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        fit(FitRequest(tmp_path / "missing", gpu_gib=32))
    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=1, tokenizer=False)
    with pytest.raises(UserError, match="must be positive"):
        fit(FitRequest(source, gpu_gib=-1))
