"""Block-FP8 sources (DeepSeek-V3 / Kimi-K2 / Qwen3 FP8 layout): recognised, dequantized for scoring,
pruned with the kept experts' FP8 bytes untouched, and left alone by ``bench quantize``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_source import block_fp8, compute_view
from bench.errors import UserError

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("single_thread")]
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from engine_block_fp8 import build_block_fp8, build_wide  # noqa: E402
from engine_tiny import single_thread  # noqa: E402,F401

DATA = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "calibration").is_dir(), reason="shared calibration samples not present")
EXPERT = "model.layers.1.mlp.experts.{e}.{proj}.weight"  # layer 0 of the tiny DeepSeek-V3 is dense


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wide(tmp_path_factory.mktemp("wide") / "bf16")


@pytest.fixture(scope="module")
def fp8(wide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_block_fp8(tmp_path_factory.mktemp("fp8") / "fp8", wide)


@pytest.fixture(scope="module")
def mix():  # type: ignore[no-untyped-def]
    from bench.engine.planning.calibration import load_mix

    return load_mix("local-sample", data_dir=DATA, seq_len=64, samples=4).model_copy(
        update={"datasets": [d.model_copy(update={"count": 2}) for d in load_mix("local-sample").datasets]}
    )


def raw(path: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch.load_file(str(path / "model.safetensors"))


def bits(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def by_hand(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Each code times its 128x128 tile's scale, written out tile by tile."""
    out = torch.empty(codes.shape, dtype=torch.float32)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            tile = (slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128))
            out[tile] = codes[tile].to(torch.float32) * scales[i, j]
    return out


def test_the_toy_is_laid_out_as_shipped_block_fp8(fp8: Path) -> None:
    """Float8 weights with [ceil(out/128), ceil(in/128)] float32 scales, and vLLM's fp8 config."""
    config = json.loads((fp8 / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]}
    checkpoint = Checkpoint.open(fp8)
    source = block_fp8(checkpoint)
    assert source is not None and source.block == (128, 128)
    gate, down = EXPERT.format(e=3, proj="gate_proj"), EXPERT.format(e=3, proj="down_proj")
    assert checkpoint.tensors[gate].dtype == "F8_E4M3" and checkpoint.tensors[gate].shape == (160, 64)
    assert checkpoint.tensors[gate + "_scale_inv"].shape == (2, 1)  # a whole block and a partial one
    assert checkpoint.tensors[down + "_scale_inv"].shape == (1, 2)
    assert "model.layers.0.self_attn.o_proj.weight" in source.scales  # attention and dense MLP too, as shipped
    assert checkpoint.tensors["model.layers.1.mlp.gate.weight"].dtype == "BF16"  # the router stays
    assert checkpoint.tensors["model.embed_tokens.weight"].dtype == "BF16"


def test_source_checks_name_what_is_wrong(fp8: Path, tmp_path: Path) -> None:
    def variant(name: str, config_change: dict[str, object] | None = None,
                tensors: dict[str, torch.Tensor] | None = None) -> Path:
        out = tmp_path / name
        shutil.copytree(fp8, out)
        if config_change is not None:
            config = json.loads((out / "config.json").read_text())
            config["quantization_config"] = config_change
            (out / "config.json").write_text(json.dumps(config))
        if tensors is not None:
            safetensors_torch.save_file({**raw(fp8), **tensors}, str(out / "model.safetensors"))
        return out

    per_tensor = variant("per-tensor", {"quant_method": "fp8", "activation_scheme": "static"})
    with pytest.raises(UserError, match="one scale per tensor"):
        block_fp8(Checkpoint.open(per_tensor))
    other = variant("gptq", {"quant_method": "gptq", "bits": 4})
    with pytest.raises(UserError, match=r"is quantized \(gptq\)"):
        block_fp8(Checkpoint.open(other))
    scale = EXPERT.format(e=5, proj="up_proj") + "_scale_inv"
    bad = variant("bad-scale", tensors={scale: torch.ones(1, 1)})
    with pytest.raises(UserError, match=rf"{scale} is F32\[1, 1\], expected float scales of shape \[2, 1\]"):
        block_fp8(Checkpoint.open(bad))


def test_unquantized_checkpoint_is_no_fp8_source(wide: Path) -> None:
    assert block_fp8(Checkpoint.open(wide)) is None


def test_reader_returns_real_weights_for_scoring_and_stored_bytes_for_writing(wide: Path, fp8: Path) -> None:
    from bench.engine.compute.tensor_reader import TensorReader

    checkpoint = Checkpoint.open(fp8)
    view = compute_view(checkpoint, block_fp8(checkpoint))  # type: ignore[arg-type]
    stored, original = raw(fp8), raw(wide)
    name = EXPERT.format(e=2, proj="gate_proj")
    assert name + "_scale_inv" not in view.tensors and view.tensors[name].dtype == "BF16"
    assert "quantization_config" not in view.config
    reader = TensorReader(view)
    real = reader.get(name)
    expected = by_hand(stored[name], stored[name + "_scale_inv"])
    assert real.dtype == torch.bfloat16 and torch.equal(real, expected.to(torch.bfloat16))
    # Rows that start and end inside blocks take their blocks' scales.
    assert torch.equal(reader.rows(name, 100, 150), real[100:150])
    assert torch.equal(torch.cat(list(reader.row_chunks(name, max_bytes=128 * 64 * 2))), real)
    # FP8 keeps the weights within a few percent of the bf16 originals.
    error = (real.float() - original[name].float()).norm() / original[name].float().norm()
    assert 0 < error < 0.05
    # The checkpoint itself still reads as stored: codes and scales, bit for bit.
    plain = TensorReader(checkpoint)
    assert bits(next(plain.row_chunks(name))) == bits(stored[name])
    assert plain.get(name).dtype == torch.float8_e4m3fn


@needs_data
def test_pruned_block_fp8_keeps_kept_experts_bit_for_bit(fp8: Path, mix, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from bench.engine.compute.prune import prune_checkpoint
    from bench.engine.planning.prune_plan import PruneOptions

    result = prune_checkpoint(fp8, tmp_path / "out", mix, PruneOptions(keep=4))
    record = json.loads((tmp_path / "out" / "pruning.json").read_text())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["n_routed_experts"] == 4
    assert config["quantization_config"] == json.loads((fp8 / "config.json").read_text())["quantization_config"]
    assert record["source"]["quantization"] == "block FP8 128x128"
    before, after = raw(fp8), raw(tmp_path / "out")
    (layer,) = record["layers"]
    assert layer["layer"] == 1 and len(layer["kept"]) == 4 and all(s > 0 for s in layer["scores"])
    for new, old in enumerate(layer["kept"]):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            for suffix in ("", "_scale_inv"):
                kept = EXPERT.format(e=new, proj=proj) + suffix
                assert after[kept].dtype == before[EXPERT.format(e=old, proj=proj) + suffix].dtype
                assert bits(after[kept]) == bits(before[EXPERT.format(e=old, proj=proj) + suffix]), kept
    assert not any(EXPERT.format(e=4, proj="gate_proj") in name for name in after)
    router = "model.layers.1.mlp.gate.weight"
    assert torch.equal(after[router], before[router][layer["kept"]])
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert torch.equal(after[bias], before[bias][layer["kept"]])
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.0.self_attn.o_proj.weight_scale_inv",
                 "model.layers.1.mlp.shared_experts.down_proj.weight"):
        assert bits(after[name]) == bits(before[name]), name
    assert result.after_bytes < result.before_bytes


@needs_data
def test_reap_scores_of_the_fp8_source_track_its_bf16_original(wide: Path, fp8: Path, mix) -> None:  # type: ignore[no-untyped-def]
    """Scoring runs on the dequantized weights: FP8's few-percent weight noise moves scores a little."""
    from bench.engine.compute.reap import score_experts
    from bench.engine.planning.calibration import build_samples
    from bench.engine.planning.moe import resolve
    from bench.engine.planning.prune_plan import PruneOptions

    tokens = build_samples(mix, wide).token_ids
    checkpoint = Checkpoint.open(fp8)
    view = compute_view(checkpoint, block_fp8(checkpoint))  # type: ignore[arg-type]
    original = Checkpoint.open(wide)
    options = PruneOptions(keep=4)
    on_fp8 = score_experts(view, resolve(view), tokens, options, keep=4).scores()[1]
    on_bf16 = score_experts(original, resolve(original), tokens, options, keep=4).scores()[1]
    assert on_fp8 != on_bf16  # the FP8 weights were really read, not the originals
    assert on_fp8 == pytest.approx(on_bf16, rel=0.1)


def test_quantize_says_a_block_fp8_checkpoint_is_already_fp8(fp8: Path, tmp_path: Path) -> None:
    from bench.engine.compute.fp8 import quantize_checkpoint

    with pytest.raises(UserError, match=r"is already FP8 \(block FP8 128x128, \d+ float8 weights\)"):
        quantize_checkpoint(fp8, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_quantize_finishes_a_partly_fp8_checkpoint_in_its_own_format(wide: Path, tmp_path: Path) -> None:
    """Experts stay exactly as stored; the bf16 attention and dense layers get the source's blocks."""
    from bench.engine.compute.fp8 import quantize_checkpoint

    partly = build_block_fp8(tmp_path / "partly", wide, scope="experts")
    assert Checkpoint.open(partly).tensors["model.layers.0.self_attn.o_proj.weight"].dtype == "BF16"
    with pytest.raises(UserError, match="drop --block or pass --block 128"):
        quantize_checkpoint(partly, tmp_path / "b64", block=64)
    with pytest.raises(UserError, match="stores them in FP8 already"):
        quantize_checkpoint(partly, tmp_path / "skip", skip_experts=True)
    result = quantize_checkpoint(partly, tmp_path / "out")
    assert result.scheme.startswith("block FP8 128x128")
    before, after, original = raw(partly), raw(tmp_path / "out"), raw(wide)
    for name in before:
        if ".experts." in name:
            assert bits(after[name]) == bits(before[name]), name
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    assert after[o_proj].dtype == torch.float8_e4m3fn and after[o_proj + "_scale_inv"].shape == (1, 1)
    real = by_hand(after[o_proj], after[o_proj + "_scale_inv"])
    assert (real - original[o_proj].float()).norm() / original[o_proj].float().norm() < 0.05
    for kept in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate.weight"):
        assert after[kept].dtype == torch.bfloat16, kept
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"] == json.loads((partly / "config.json").read_text())["quantization_config"]
    assert block_fp8(Checkpoint.open(tmp_path / "out")) is not None  # consistent: every FP8 weight has its scales
