"""REAP pruning on tiny checkpoints: layer streaming, slicing, config, pruning.json, options."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import vllm_python

from bench.engine.compute.prune import prune_checkpoint
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.moe import resolve
from bench.engine.planning.prune_plan import PruneOptions, keep_count, select_experts
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401

DATA = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "calibration").is_dir(), reason="shared calibration samples not present")


@pytest.fixture(scope="module")
def mix():  # type: ignore[no-untyped-def]
    from bench.engine.planning.calibration import load_mix

    return load_mix("local-sample", data_dir=DATA, seq_len=64, samples=6).model_copy(
        update={"datasets": [d.model_copy(update={"count": 2}) for d in load_mix("local-sample").datasets]}
    )


def load(path: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_layer_streamed_forward_is_the_models_forward(tmp_path: Path) -> None:
    """Layers rebuilt from safetensors one at a time reproduce transformers' own hidden states."""
    from bench.engine.compute.reap import LayerRunner

    for family, layout in [("qwen3_moe", "fused"), ("mixtral", "per_expert"), ("deepseek_v3", "per_expert"),
                           ("qwen3_5_moe", "fused")]:  # hybrid: Gated DeltaNet layers and a shared expert
        path = build_tiny(tmp_path / family, family, layout=layout, layers=3, tokenizer=False)
        checkpoint = Checkpoint.open(path)
        runner = LayerRunner(checkpoint, resolve(checkpoint))
        ids = list(range(3, 40))
        with torch.inference_mode():
            hidden = runner.embed([ids])[0]
            for index in range(2):
                hidden = runner.forward(runner.build(index), hidden)
            reference = load(path)(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        assert torch.allclose(hidden, reference, atol=1e-5), family


def test_built_layer_keeps_bfloat16_experts_and_computes_as_float32(tmp_path: Path) -> None:
    """Experts stay at their stored precision (half the memory) and the layer's output is unchanged."""
    from bench.engine.compute.reap import LayerRunner

    path = build_tiny(tmp_path / "m", "qwen3_moe", layout="per_expert", layers=2, tokenizer=False)
    checkpoint = Checkpoint.open(path)
    assert checkpoint.tensors["model.layers.0.mlp.experts.0.up_proj.weight"].dtype == "BF16"
    runner = LayerRunner(checkpoint, resolve(checkpoint))
    module = runner.build(0)
    experts = module.mlp.experts
    assert experts.gate_up_proj.dtype == experts.down_proj.dtype == torch.bfloat16
    assert module.self_attn.q_proj.weight.dtype == torch.float32
    with torch.inference_mode():
        hidden = runner.embed([list(range(3, 40))])[0]
        lean = runner.forward(module, hidden)
        experts.gate_up_proj.data, experts.down_proj.data = experts.gate_up_proj.float(), experts.down_proj.float()
        wide = runner.forward(module, hidden)
    assert torch.equal(lean, wide)


def test_scored_layer_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    """The scoring hook must not keep a layer's expert weights alive after the layer is dropped."""
    import gc
    import weakref

    from bench.engine.compute.reap import LayerRunner, LayerStats, _experts_module, attach_experts_forward

    path = build_tiny(tmp_path / "m", "qwen3_moe", layout="per_expert", layers=2, tokenizer=False)
    checkpoint = Checkpoint.open(path)
    runner = LayerRunner(checkpoint, resolve(checkpoint))
    module = runner.build(0)
    experts = _experts_module(module)
    attach_experts_forward(experts, LayerStats(8), 16)
    with torch.inference_mode():
        runner.forward(module, runner.embed([list(range(3, 30))])[0])
    ref = weakref.ref(experts)
    gc.disable()
    try:
        del module, experts
        assert ref() is None
    finally:
        gc.enable()


def test_peak_rss_is_this_process_not_its_parent() -> None:
    """A child started from a big parent reports its own peak (ru_maxrss would carry the parent's)."""
    import subprocess
    import sys

    from bench.engine.compute.memory import peak_rss_bytes

    ballast = bytearray(300 << 20)  # touched below, so the parent is resident at 300 MiB+
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])
    child = subprocess.run([sys.executable, "-c", "from bench.engine.compute.memory import peak_rss_bytes; "
                            "print(peak_rss_bytes())"], capture_output=True, text=True, check=True)
    assert int(child.stdout) < 200 << 20 < peak_rss_bytes()
    del ballast


@needs_data
@pytest.mark.parametrize(("family", "layout"), [("qwen3_moe", "per_expert"), ("qwen3_moe", "fused"),
                                                ("mixtral", "per_expert"), ("deepseek_v3", "per_expert")])
def test_pruned_checkpoint_is_a_sliced_copy_that_transformers_loads(tmp_path: Path, mix, family: str,
                                                                    layout: str) -> None:  # type: ignore[no-untyped-def]
    source = build_tiny(tmp_path / "src", family, layout=layout, layers=2)
    result = prune_checkpoint(source, tmp_path / "out", mix, PruneOptions(compression=0.5))
    record = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert record["n_experts_before"] == 8 and record["n_experts_after"] == 4
    assert record["calibration"]["hash"] and record["calibration"]["tokens"] > 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config[record["expert_count_key"]] == 4
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
    before, after = load(source).state_dict(), load(tmp_path / "out").state_dict()
    for layer in record["layers"]:
        kept = layer["kept"]
        assert len(kept) == 4 and len(layer["scores"]) == 8 and sum(layer["frequency"]) > 0
        # Kept experts are the top-4 REAP scores of that layer.
        ranked = sorted(range(8), key=lambda e: -layer["scores"][e])[:4]
        assert sorted(ranked) == kept
        prefix = f"model.layers.{layer['layer']}.mlp."
        assert torch.equal(after[prefix + "gate.weight"], before[prefix + "gate.weight"][kept])
        assert torch.equal(after[prefix + "experts.down_proj"], before[prefix + "experts.down_proj"][kept])
        assert torch.equal(after[prefix + "experts.gate_up_proj"], before[prefix + "experts.gate_up_proj"][kept])
        if family == "deepseek_v3":
            bias = prefix + "gate.e_score_correction_bias"
            assert torch.equal(after[bias], before[bias][kept])
    shared = {k for k in before if "experts" not in k and ".gate." not in k}
    assert all(torch.equal(before[k], after[k]) for k in shared)
    assert result.after_bytes < result.before_bytes


@needs_data
def test_pruned_layer_built_in_memory_is_the_written_layer(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    """What scoring hands to the next layer is exactly what the written checkpoint computes."""
    from bench.engine.compute.reap import LayerRunner

    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=2)
    prune_checkpoint(source, tmp_path / "out", mix, PruneOptions(keep=3, renormalize=False))
    record = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["norm_topk_prob"] is False
    src_ckpt, out_ckpt = Checkpoint.open(source), Checkpoint.open(tmp_path / "out")
    src_runner, out_runner = LayerRunner(src_ckpt, resolve(src_ckpt)), LayerRunner(out_ckpt, resolve(out_ckpt))
    hidden = torch.randn(20, 64)
    with torch.inference_mode():
        in_memory = src_runner.forward(src_runner.build(1, record["layers"][1]["kept"], {"norm_topk_prob": False}),
                                       hidden)
        written = out_runner.forward(out_runner.build(1), hidden)
    assert torch.allclose(in_memory, written, atol=1e-6)


@needs_data
def test_propagation_choice_changes_only_later_layers(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.calibration import build_samples

    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=3)
    checkpoint = Checkpoint.open(source)
    moe = resolve(checkpoint)
    tokens = build_samples(mix, source).token_ids
    pruned = score_experts(checkpoint, moe, tokens, PruneOptions(keep=2), keep=2)
    unpruned = score_experts(checkpoint, moe, tokens, PruneOptions(keep=2, propagate="unpruned"), keep=2)
    chunked = score_experts(checkpoint, moe, tokens, PruneOptions(keep=2, chunk_tokens=7), keep=2)
    assert pruned.scores()[0] == pytest.approx(unpruned.scores()[0], rel=1e-9)
    assert pruned.scores()[2] != pytest.approx(unpruned.scores()[2], rel=1e-3)
    # Fixed-size token chunks change the arithmetic grouping only.
    for layer in range(3):
        assert chunked.scores()[layer] == pytest.approx(pruned.scores()[layer], rel=1e-4)
    assert chunked.kept == pruned.kept


@needs_data
def test_criteria_and_seeded_random(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.calibration import build_samples

    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=1)
    checkpoint = Checkpoint.open(source)
    scoring = score_experts(checkpoint, resolve(checkpoint), build_samples(mix, source).token_ids,
                            PruneOptions(keep=4), keep=4)
    stats = scoring.stats[0]
    assert stats.scores("frequency") == [float(c) for c in stats.count]
    assert sum(stats.count) == 2 * stats.tokens  # top-2 routing
    reap, gate, ean = stats.scores("reap"), stats.scores("mean-gate"), stats.scores("ean")
    for e in range(8):
        if stats.count[e]:
            assert reap[e] == pytest.approx(stats.reap_sum[e] / stats.count[e])
            assert 0 < gate[e] <= 1 and ean[e] > 0
    assert stats.scores("random", seed=3) == stats.scores("random", seed=3)
    assert stats.scores("random", seed=3) != stats.scores("random", seed=4)
    prune_checkpoint(source, tmp_path / "out", mix, PruneOptions(keep=4, criterion="frequency"))
    layer = json.loads((tmp_path / "out" / "pruning.json").read_text())["layers"][0]
    assert layer["scores"] == layer["frequency"]
    assert layer["kept"] == sorted(sorted(range(8), key=lambda e: (-layer["frequency"][e], e))[:4])


def test_select_experts_per_layer_and_global() -> None:
    scores = {0: [1.0, 9.0, 8.0, 7.0], 1: [5.0, 5.0, 5.0, 5.0]}
    assert select_experts(scores, 2) == {0: [1, 2], 1: [0, 1]}
    # Relative to its layer mean, layer 0's experts 2 and 3 (1.28x, 1.12x) beat all of layer 1's (1x);
    # every layer still keeps its top_k best.
    assert select_experts(scores, 2, selection="global", top_k=1) == {0: [1, 2, 3], 1: [0]}


def test_option_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="exactly one of --compression"):
        keep_count(8, 2, compression=None, keep=None)
    with pytest.raises(UserError, match="fewer than the 2 each token is routed to"):
        keep_count(8, 2, compression=0.9, keep=None)
    assert keep_count(8, 2, compression=0.25, keep=None) == 6
    with pytest.raises(UserError, match="--criterion 'magic'"):
        PruneOptions(keep=4, criterion="magic").validate()


@needs_data
def test_mixtral_has_no_renormalization_switch(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    source = build_tiny(tmp_path / "src", "mixtral", layers=1)
    with pytest.raises(UserError, match="Mixtral has no router renormalization switch"):
        prune_checkpoint(source, tmp_path / "out", mix, PruneOptions(keep=4, renormalize=False))


@needs_data
def test_global_selection_with_uneven_layers_explains_itself(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    source = build_tiny(tmp_path / "src", "qwen3_moe", layers=3)
    try:
        prune_checkpoint(source, tmp_path / "out", mix, PruneOptions(keep=4, selection="global"))
    except UserError as error:
        assert "different numbers of experts" in str(error) and "per-layer selection" in str(error)
    else:  # the global ranking happened to keep 4 in every layer: a valid uniform checkpoint
        record = json.loads((tmp_path / "out" / "pruning.json").read_text())
        assert record["propagate"] == "unpruned" and {len(l["kept"]) for l in record["layers"]} == {4}


@needs_data
def test_cli_prune_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bench.cli import app

    source = build_tiny(tmp_path / "src", "olmoe", layers=1)
    result = CliRunner().invoke(app, ["prune", "--model", str(source), "--calibration", "local-sample",
                                      "--data-dir", str(DATA), "--samples", "4", "--seq-len", "32",
                                      "--keep", "4", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "calibration mix local-sample" in result.output and "kept 4/8 experts" in result.output
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_experts"] == 4


@needs_data
@pytest.mark.vllm
def test_pruned_scripted_model_is_served_by_vllm_and_passes_preflight(tmp_path: Path, mix) -> None:  # type: ignore[no-untyped-def]
    from bench.client import ChatClient, ClientConfig
    from bench.engine.toys.builders import build_scripted
    from bench.serve.launch import LaunchConfig, serving
    from bench.serve.model_info import choose_parsers, read_checkpoint
    from bench.serve.options import ServeOptions
    from bench.serve.preflight import PreflightOptions, first_failure, run_preflight

    source = build_scripted(tmp_path / "scripted")
    prune_checkpoint(source, tmp_path / "pruned", mix, PruneOptions(compression=0.5))
    parsers = choose_parsers(read_checkpoint(tmp_path / "pruned"))
    config = LaunchConfig(model=tmp_path / "pruned", served_model_name="pruned", parsers=parsers,
                          serve=ServeOptions(python=vllm_python(), max_model_len=1024), cache_root=tmp_path / "vllm-cache")

    async def probe(base_url: str) -> list:  # type: ignore[type-arg]
        client = ChatClient(ClientConfig(endpoints=[f"{base_url}/v1"], model="pruned", concurrency=1, timeout_s=300.0))
        return await run_preflight(client, PreflightOptions(parsers.reasoning_parser, parsers.tool_call_parser))

    with serving(config, tmp_path / "server.log") as server:
        checks = asyncio.run(probe(server.base_url))
    assert first_failure(checks) is None, [c.model_dump() for c in checks]
    assert {c.name for c in checks} >= {"first_request", "tool_call"}
