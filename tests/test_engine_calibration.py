"""Calibration: adapters render rows through the chat template; the preflight catches schema drift fast."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from bench.engine.planning.calibration import (
    build_samples,
    convert_row,
    load_mix,
    load_tokenizer,
    preflight,
    recipe_names,
    render,
    source_label,
)
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

DATA = Path(__file__).parents[1].parent / "shared" / "data"
CALIBRATION = DATA / "calibration"
needs_data = pytest.mark.skipif(not CALIBRATION.is_dir(), reason="shared calibration samples not present")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("cal") / "model", "qwen3_moe", layers=1)


def write_mix(path: Path, datasets: list[dict], **extra: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"name": path.stem, "seq_len": 256, "samples": 4, "datasets": datasets, **extra}))
    return path


def test_shipped_recipes_load() -> None:
    assert {"code-general-70-30", "agentic-code", "local-sample", "reap-agentic",
            "code-agentic-general-70-30"} <= set(recipe_names())
    code = load_mix("code-general-70-30")
    assert [d.adapter for d in code.datasets] == ["evol-codealpaca", "c4"]
    assert code.counts() == [358, 154] and sum(code.counts()) == code.samples
    agentic = load_mix("agentic-code")
    assert len(agentic.datasets) == 6 and sum(agentic.counts()) == agentic.samples
    assert {"xlam-function-calling", "swe-smith"} <= {d.adapter for d in agentic.datasets}


def test_reap_agentic_recipe_is_the_published_mix() -> None:
    """REAP's agentic calibration: six hub sources in equal shares, packed to 16,384 tokens, raw gates."""
    mix = load_mix("reap-agentic")
    assert [source_label(d) for d in mix.datasets] == [
        "theblackcat102/evol-codealpaca-v1 split train",
        "Salesforce/xlam-function-calling-60k split train",
        "open-r1/Mixture-of-Thoughts [code] split train",
        "open-r1/Mixture-of-Thoughts [math] split train",
        "open-r1/Mixture-of-Thoughts [science] split train",
        "SWE-bench/SWE-smith-trajectories split tool",
    ]
    assert (mix.samples, mix.seq_len, mix.pack, mix.score_gates) == (1024, 16384, True, "raw")
    assert mix.counts() == [171, 171, 171, 171, 170, 170] and mix.max_tokens == 1024 * 16384
    assert load_mix("reap-agentic", samples=24576).counts() == [4096] * 6  # the authors' full set


def test_seed_mix_is_70_30_and_samples_scale_counts() -> None:
    mix = load_mix("code-agentic-general-70-30")
    assert [d.label for d in mix.datasets] == ["evol-codealpaca", "bigcodebench", "swe-bench",
                                               "xlam-function-calling", "mmlu", "c4"]
    assert mix.counts() == [700, 700, 700, 700, 600, 600] and mix.general_share() == pytest.approx(0.3)
    assert [source_label(d) for d in mix.datasets[1:3]] == ["bigcode/bigcodebench split v0.1.4",
                                                            "princeton-nlp/SWE-bench split train"]
    assert source_label(mix.datasets[4]) == "cais/mmlu [all] split auxiliary_train"  # not the test questions
    # --samples scales a mix of counts (it used to be ignored for them).
    assert load_mix("code-agentic-general-70-30", samples=1000).counts() == [175, 175, 175, 175, 150, 150]


def test_general_share_rescales_general_and_task_data() -> None:
    mix = load_mix("code-agentic-general-70-30")
    half = mix.with_general_share(0.5)
    assert half.name == "code-agentic-general-70-30-general50"
    assert half.counts() == [500, 500, 500, 500, 1000, 1000] and half.general_share() == 0.5
    assert mix.with_general_share(0.3).counts() == mix.counts()
    # Weighted mixes: C4 is general by default; the total stays the mix's.
    assert load_mix("code-general-70-30").with_general_share(0.5).counts() == [256, 256]
    with pytest.raises(UserError, match="no general-text dataset"):
        load_mix("reap-agentic").with_general_share(0.5)
    with pytest.raises(UserError, match="leaves no samples for evol-codealpaca"):
        load_mix("code-general-70-30", samples=3).with_general_share(0.9)
    assert load_mix("reap-agentic").with_general_share(0.0).counts() == load_mix("reap-agentic").counts()


@needs_data
def test_plan_general_share_sweep_expands_candidates(model: Path, tmp_path: Path) -> None:
    import sys

    import yaml

    from bench.candidate import load_plan, prepare

    plan = {"version": 1, "prune": {"keep": [4], "mixes": ["local-sample"], "general_share": [0.3, 0.5]},
            "quantize": False, "evaluate": {"packs": "smoke", "limit": 2}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    prepared = prepare(load_plan(path), path, model, data_dir=DATA, vllm_python=sys.executable)
    assert [c.label for c in prepared.candidates] == ["local-sample-general30-k4", "local-sample-general50-k4"]
    assert [m.counts() for m in prepared.mixes.values()] == [[9, 5, 6], [7, 3, 10]]  # c4 is the general one
    assert len({c.prune.key for c in prepared.candidates}) == 2
    plan["prune"]["general_share"] = [1.5]
    path.write_text(yaml.safe_dump(plan))
    with pytest.raises(UserError, match=r"prune.general_share.0: 1.5 is greater than the maximum of 1"):
        load_plan(path)


@needs_data
def test_packed_mix_fills_every_sequence(model: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"text": f"Line {i}: experts route tokens."}) + "\n" for i in range(60)))
    mix_path = write_mix(tmp_path / "packed.yaml", [
        {"adapter": "text", "name": "short", "count": 3, "data_files": str(short)},
        {"adapter": "c4", "count": 2, "data_files": str(CALIBRATION / "c4-en-sample.jsonl")},
    ], pack=True, seq_len=200, samples=5)
    packed = build_samples(load_mix(mix_path), model)
    assert packed.per_dataset == {"short": 3, "c4": 2}
    assert [len(ids) for ids in packed.token_ids] == [200] * 5
    rows = build_samples(load_mix(mix_path).model_copy(update={"pack": False}), model)
    assert all(len(ids) < 50 for ids in rows.token_ids[:3])  # one short line per sample
    assert packed.sha256 != rows.sha256


def write_headers_only_qwen36(out: Path, layers: int = 2) -> Path:
    """A checkpoint of Qwen3.6-35B-A3B's real shapes holding headers only (no weight bytes at all)."""
    hidden, experts, width, vocab = 2048, 256, 512, 248320
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        p = f"model.layers.{i}."
        if i % 4 == 3 or i == layers - 1:
            shapes.update({f"{p}self_attn.q_proj.weight": [8192, hidden], f"{p}self_attn.k_proj.weight": [512, hidden],
                           f"{p}self_attn.v_proj.weight": [512, hidden], f"{p}self_attn.o_proj.weight": [hidden, 4096],
                           f"{p}self_attn.q_norm.weight": [256], f"{p}self_attn.k_norm.weight": [256]})
        else:
            shapes.update({f"{p}linear_attn.in_proj_qkv.weight": [8192, hidden],
                           f"{p}linear_attn.in_proj_z.weight": [4096, hidden],
                           f"{p}linear_attn.in_proj_b.weight": [32, hidden], f"{p}linear_attn.in_proj_a.weight": [32, hidden],
                           f"{p}linear_attn.conv1d.weight": [8192, 1, 4], f"{p}linear_attn.dt_bias": [32],
                           f"{p}linear_attn.A_log": [32], f"{p}linear_attn.norm.weight": [128],
                           f"{p}linear_attn.out_proj.weight": [hidden, 4096]})
        shapes.update({f"{p}mlp.gate.weight": [experts, hidden],
                       f"{p}mlp.experts.gate_up_proj": [experts, 2 * width, hidden],
                       f"{p}mlp.experts.down_proj": [experts, hidden, width],
                       f"{p}mlp.shared_expert.gate_proj.weight": [width, hidden],
                       f"{p}mlp.shared_expert.up_proj.weight": [width, hidden],
                       f"{p}mlp.shared_expert.down_proj.weight": [hidden, width],
                       f"{p}mlp.shared_expert_gate.weight": [1, hidden],
                       f"{p}input_layernorm.weight": [hidden], f"{p}post_attention_layernorm.weight": [hidden]})
    shapes.update({"model.norm.weight": [hidden], "lm_head.weight": [vocab, hidden]})
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    types = ["full_attention" if i % 4 == 3 or i == layers - 1 else "linear_attention" for i in range(layers)]
    (out / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3_5MoeForCausalLM"], "model_type": "qwen3_5_moe_text", "vocab_size": vocab,
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 16, "num_key_value_heads": 2,
        "head_dim": 256, "num_experts": experts, "num_experts_per_tok": 8, "moe_intermediate_size": width,
        "shared_expert_intermediate_size": width, "layer_types": types}))
    return out


def test_field_scale_recipe_is_estimated_without_data_or_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """1,024 x 16,384 tokens at Qwen3.6-35B-A3B's shapes: host, scratch and device memory from declared counts."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.engine.planning.calibration import render_preflight

    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)  # hub datasets, unreachable here: nothing may be read
    model = write_headers_only_qwen36(tmp_path / "qwen36")
    report = preflight(load_mix("reap-agentic"), model, rows=0, device="cuda", scratch_dir=tmp_path)
    cost = report.cost
    assert report.datasets == [] and report.total_tokens == 1024 * 16384
    assert cost.scratch_bytes == 1024 * 16384 * 2048 * 2  # 64 GiB of bfloat16 rows, one copy
    experts = 256 * 3 * 512 * 2048
    assert 2 * experts < cost.layer_bytes < 2 * experts + (60 << 20) * 4  # bf16 experts, the rest float32
    assert cost.layer_bytes < cost.device_bytes < 32 << 30  # one layer and one sequence: fits a 32 GiB GPU
    assert cost.host_bytes < 16 << 30 and cost.embedding_bytes == 248320 * 2048 * 2
    text = render_preflight(report)
    assert "1024 sequences packed to 16384 tokens" in text and "score gates raw" in text
    assert "scratch disk: 64.000 GiB" in text and "host RAM: ~" in text and "device cuda: ~" in text
    assert "(not read)" in text
    # A disk too small for the scratch: a warning when estimating, a one-line error once rows were read.
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1 << 30))
    small = preflight(load_mix("reap-agentic"), model, rows=0, device="cuda", scratch_dir=tmp_path)
    assert any("64.000 GiB of scratch" in note and "pass --scratch-dir" in note for note in small.notes)
    monkeypatch.setattr(shutil, "disk_usage", real)
    # The same through the CLI, which stops after the estimate.
    result = CliRunner().invoke(app, ["prune", "--model", str(model), "--calibration", "reap-agentic",
                                      "--estimate-only", "--device", "cuda", "--scratch-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "scratch disk: 64.000 GiB" in result.output and os.listdir(tmp_path) == ["qwen36"]


def test_unknown_recipe_and_adapter_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Did you mean 'agentic-code'"):
        load_mix("agentic-cod")
    bad = write_mix(tmp_path / "bad.yaml", [{"adapter": "xlam-function-caling", "count": 2}])
    with pytest.raises(UserError, match="unknown adapter 'xlam-function-caling'.*Did you mean 'xlam-function-calling'"):
        load_mix(bad)


@needs_data
def test_local_sample_recipe_builds_chat_formatted_samples(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    with pytest.raises(UserError, match=r"\{data_dir\}: pass --data-dir"):
        build_samples(load_mix("local-sample", samples=3), model)
    mix = load_mix("local-sample", data_dir=DATA, seq_len=128)
    first = build_samples(mix, model)
    assert first.per_dataset == {"code-feedback-sample": 10, "swe-smith-sample": 5, "c4-sample": 5}
    assert all(2 <= len(ids) <= 128 for ids in first.token_ids)
    assert build_samples(mix, model).sha256 == first.sha256
    assert build_samples(mix.model_copy(update={"seed": 1}), model).sha256 != first.sha256


@needs_data
def test_renamed_column_fails_preflight_fast_naming_dataset_and_field(model: Path, tmp_path: Path) -> None:
    drifted = tmp_path / "c4-drifted.jsonl"
    rows = [json.loads(line) for line in (CALIBRATION / "c4-en-sample.jsonl").read_text().splitlines()]
    drifted.write_text("".join(json.dumps({"body" if k == "text" else k: v for k, v in r.items()}) + "\n"
                               for r in rows))
    mix_path = write_mix(tmp_path / "drift.yaml", [
        {"adapter": "code-feedback", "count": 2, "data_files": str(CALIBRATION / "code-feedback-sample.json")},
        {"adapter": "c4", "name": "web", "count": 2, "data_files": str(drifted)},
    ])
    started = time.perf_counter()
    with pytest.raises(UserError) as error:
        preflight(load_mix(mix_path), model)
    assert time.perf_counter() - started < 60
    message = str(error.value)
    assert "'web'" in message and "field 'text' is missing" in message and "body" in message
    # The mapping the message suggests fixes it.
    fixed = write_mix(tmp_path / "fixed.yaml", [{"adapter": "c4", "name": "web", "count": 2, "data_files": str(drifted),
                                                 "fields": {"text": "body"}}])
    report = preflight(load_mix(fixed), model)
    assert report.datasets[0].rows_checked == 5 and report.total_tokens > 0


@needs_data
def test_preflight_reads_no_weights(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    headers_only = tmp_path / "headers"
    shutil.copytree(model, headers_only)
    for file in headers_only.glob("*.safetensors"):
        raw = file.read_bytes()
        file.write_bytes(raw[: 8 + int.from_bytes(raw[:8], "little")])
    report = preflight(load_mix("local-sample", data_dir=DATA), headers_only)
    assert [d.rows_checked for d in report.datasets] == [8, 5, 5]
    assert report.cost.host_bytes > report.cost.layer_bytes > 0 and report.estimated_seconds > 0
    assert 0 < report.cost.scratch_bytes == report.total_tokens * 64 * 2  # hidden 64, bfloat16
    assert report.seconds < 60
    # Rows read and a scratch disk too small for them: the run would fail hours in, so it stops here.
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024))
    with pytest.raises(UserError, match=r"needs .* of scratch .* has 0.00 MiB free: pass --scratch-dir"):
        preflight(load_mix("local-sample", data_dir=DATA), headers_only, rows=1, scratch_dir=tmp_path)


def test_xlam_row_renders_tools_and_tool_calls(model: Path) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    spec = DatasetSpec(adapter="xlam-function-calling", count=1)
    row = {
        "query": "What is the weather in Lyon?",
        "tools": json.dumps([{"name": "get_weather", "description": "Current weather",
                              "parameters": {"city": {"type": "str", "description": "City name"},
                                             "unit": {"type": "str, optional", "description": "C or F",
                                                      "default": "C"}}}]),
        "answers": json.dumps([{"name": "get_weather", "arguments": {"city": "Lyon"}}]),
    }
    conversation = convert_row(spec, row, 0)
    assert conversation.tools[0]["function"]["parameters"]["required"] == ["city"]
    text = render(conversation, load_tokenizer(model))
    assert "<tools>" in text and '"get_weather"' in text and '"Lyon"' in text and "<tool_call>" in text


@pytest.mark.parametrize(
    ("adapter", "row", "expected"),
    [
        ("evol-codealpaca", {"instruction": "Reverse a list in Python.", "output": "xs[::-1]"}, "xs[::-1]"),
        ("mixture-of-thoughts-math", {"messages": [{"role": "user", "content": "2+2?"},
                                                   {"role": "assistant", "content": "<think>easy</think>4"}]},
         "<think>easy</think>4"),
        ("swe-smith", {"messages": json.dumps([
            {"role": "user", "content": "Fix the bug"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "bash", "arguments": "{\"cmd\": \"ls\"}"}}]},
            {"role": "tool", "content": "README.md"}])}, "README.md"),
        ("mmlu", {"question": "Which is a prime?", "choices": ["4", "6", "7", "9"], "answer": 2}, "The answer is C."),
    ],
)
def test_adapters_render_through_the_chat_template(model: Path, adapter: str, row: dict, expected: str) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    text = render(convert_row(DatasetSpec(adapter=adapter, count=1), row, 0), load_tokenizer(model))
    assert "<|im_start|>assistant" in text and expected in text


def test_wrong_type_is_named(tmp_path: Path) -> None:
    from bench.engine.planning.calibration import DatasetSpec

    spec = DatasetSpec(adapter="evol-codealpaca", name="code", count=1)
    with pytest.raises(UserError, match=r"'code'.*row 3: field 'output' should be str, found int"):
        convert_row(spec, {"instruction": "x", "output": 5}, 3)


@needs_data
def test_local_parquet_with_field_mapping(model: Path, tmp_path: Path) -> None:
    import pandas as pd

    parquet = tmp_path / "pairs.parquet"
    pd.DataFrame({"q": ["Name a color.", "Name a fruit."], "a": ["Blue.", "Apple."]}).to_parquet(parquet)
    mix_path = write_mix(tmp_path / "pairs.yaml", [{"adapter": "prompt-response", "count": 2, "data_files": str(parquet),
                                                    "fields": {"prompt": "q", "response": "a"}}])
    samples = build_samples(load_mix(mix_path), model)
    assert samples.per_dataset == {"prompt-response": 2}
    mmlu = DATA / "mmlu" / "mmlu_all_dev.parquet"
    mix_path = write_mix(tmp_path / "mmlu.yaml", [{"adapter": "mmlu", "count": 3, "data_files": str(mmlu)}])
    assert len(build_samples(load_mix(mix_path), model).token_ids) == 3


# --------------------------------------------------------------------------------------------
# Score gates: how scoring weighs each expert's output norm, apart from the served config


def _expected_sums(mlp, x):  # type: ignore[no-untyped-def]
    """Per expert: sums of its output norm times the raw, renormalized gate, from first principles."""
    import torch

    probs = torch.softmax(x @ mlp.gate.weight.T, dim=-1)
    top, index = probs.topk(2, dim=-1)
    raw, renormalized = [0.0] * 8, [0.0] * 8
    for t in range(x.shape[0]):
        for slot in range(2):
            e = int(index[t, slot])
            gate, up = (x[t] @ mlp.experts.gate_up_proj[e].float().T).chunk(2)
            norm = float((mlp.experts.down_proj[e].float() @ (torch.nn.functional.silu(gate) * up)).norm())
            raw[e] += float(probs[t, e]) * norm
            renormalized[e] += float(top[t, slot] / top[t].sum()) * norm
    return raw, renormalized


def test_score_gates_weigh_norms_by_raw_or_renormalized_gates(model: Path) -> None:
    import torch

    from bench.engine.compute.reap import LayerRunner, LayerStats, _router_logits_tap, attach_experts_forward
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve

    checkpoint = Checkpoint.open(model)  # qwen3_moe, norm_topk_prob true: its router renormalizes
    moe = resolve(checkpoint)
    torch.manual_seed(1)
    x = torch.randn(30, 64)
    sums = {}
    with torch.inference_mode():
        for gates in ("router", "renormalized", "raw"):
            module = LayerRunner(checkpoint, moe).build(0)
            stats = LayerStats(8)
            tap = _router_logits_tap(module, moe) if gates == "raw" else None
            attach_experts_forward(module.mlp.experts, stats, 7, gates=gates, router_logits=tap)
            module.mlp(x[None])
            sums[gates] = stats.reap_sum
        raw, renormalized = _expected_sums(module.mlp, x)
    assert sums["raw"] == pytest.approx(raw, rel=1e-4)
    assert sums["renormalized"] == pytest.approx(renormalized, rel=1e-4)
    assert sums["router"] == pytest.approx(renormalized, rel=1e-4)  # what this router serves
    assert all(r < n for r, n in zip(sums["raw"], sums["renormalized"], strict=True) if n)


def test_qwen36_family_takes_score_gates_but_no_config_switch(tmp_path: Path) -> None:
    """Qwen3.5/3.6-MoE always renormalizes when served; REAP's raw-gate scoring is still on offer."""
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve
    from bench.engine.planning.prune_plan import PruneOptions, renormalization

    source = build_tiny(tmp_path / "q36", "qwen3_5_moe", layout="fused", layers=2, tokenizer=False)
    checkpoint = Checkpoint.open(source)
    moe = resolve(checkpoint)
    with pytest.raises(UserError, match="no router renormalization switch.*pass --score-gates raw"):
        renormalization(moe, False)
    tokens = [list(range(3, 60)), list(range(100, 140))]
    # Unpruned inputs: both runs hand the same states on, so every layer compares like with like.
    runs = {gates: score_experts(checkpoint, moe, tokens, PruneOptions(keep=4, score_gates=gates, propagate="unpruned",
                                                                      scratch_dir=str(tmp_path)), keep=4)
            for gates in ("router", "raw")}
    for layer in (0, 1):
        router, raw = runs["router"].stats[layer], runs["raw"].stats[layer]
        assert raw.count == router.count and raw.norm_sum == pytest.approx(router.norm_sum)
        assert all(r < g for r, g in zip(raw.gate_sum, router.gate_sum, strict=True) if g)


def test_sigmoid_routers_have_no_raw_gates(tmp_path: Path) -> None:
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.checkpoint import Checkpoint
    from bench.engine.planning.moe import resolve
    from bench.engine.planning.prune_plan import PruneOptions

    source = build_tiny(tmp_path / "dsv3", "deepseek_v3", layers=2, tokenizer=False)
    checkpoint = Checkpoint.open(source)
    with pytest.raises(UserError, match="sigmoid scores.*use --score-gates router or renormalized"):
        score_experts(checkpoint, resolve(checkpoint), [list(range(3, 20))],
                      PruneOptions(keep=4, score_gates="raw", scratch_dir=str(tmp_path)), keep=4)
    assert list(tmp_path.glob("bench-hidden-*")) == []


def test_cli_takes_the_mix_score_gates_and_refuses_unknown_ones(model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from bench.cli import main
    from bench.engine.planning.prune_plan import PruneOptions, score_gates_for

    assert score_gates_for(PruneOptions(keep=4), load_mix("reap-agentic").score_gates) == "raw"
    assert score_gates_for(PruneOptions(keep=4, score_gates="router"), "raw") == "router"
    assert score_gates_for(PruneOptions(keep=4), None) == "router"
    monkeypatch.setattr(sys, "argv", ["bench", "prune", "--model", str(model), "--calibration", "reap-agentic",
                                      "--out", str(tmp_path / "out"), "--keep", "4", "--score-gates", "sideways"])
    with pytest.raises(SystemExit) as stopped:
        main()
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    assert captured.err.strip() == "error: --score-gates 'sideways' is not one of router, renormalized, raw"
    assert "calibration mix" not in captured.out  # refused before the preflight
    monkeypatch.setattr(sys, "argv", ["bench", "prune", "--model", str(model), "--calibration", "reap-agentic",
                                      "--keep", "4"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2 and "bench prune needs --out" in capsys.readouterr().err
